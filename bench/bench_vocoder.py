"""Vocoder speed: a trained vocoder beside the analytic renderings, on the same 30 s of frames, one thread.

Prints one JSON object. The frames are bench_synthesis' test melody; each renderer runs --runs times,
alternated in one process so machine load hits all alike; figures are medians.
rtf = seconds of audio per wall-clock second. Compared: the vocoder checkpoint (--ckpt), musegen's
``mix`` synthesis at 16 Griffin-Lim iterations (generate.py's setting), and
librosa.feature.inverse.mfcc_to_audio (32 iterations, librosa's default).

    python bench/bench_vocoder.py --ckpt PATH [--seconds 30] [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import librosa
import torch
from bench_synthesis import test_signal
from common import machine

from musegen.audio import Synthesizer
from musegen.features import extract
from musegen.vocoder import load_vocoder

MIX_ITERATIONS = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a vocoder checkpoint (VocoderModule's .ckpt)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    vocoder = load_vocoder(args.ckpt)
    cfg = vocoder.features
    frames = extract(test_signal(args.seconds, cfg.sample_rate), cfg)
    audio_s = len(frames) * cfg.hop_length / cfg.sample_rate
    synth = Synthesizer(cfg, n_iter=MIX_ITERATIONS, threads=1)
    vocoder.render(frames[:64])  # warm-up: thread pools, FFT plans
    synth.render(frames[:64], mode="mix")

    def librosa_run() -> None:
        librosa.feature.inverse.mfcc_to_audio(frames[:, :cfg.n_mfcc].T, n_mels=cfg.n_mels, sr=cfg.sample_rate,
                                              n_fft=cfg.n_fft, hop_length=cfg.hop_length)

    runs = {"vocoder": lambda: vocoder.render(frames), "mix": lambda: synth.render(frames, mode="mix"),
            "librosa_mfcc_to_audio": librosa_run}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.runs):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "what": "vocoder",
        "machine": machine(),
        "settings": {"ckpt": args.ckpt, "vocoder": vocoder.hparams, "audio_seconds": round(audio_s, 3),
                     "frames": len(frames), "runs": args.runs, "mix_n_iter": MIX_ITERATIONS,
                     "librosa_n_iter": 32, "threads": 1},
        "figures": {**{f"{k}_rtf": round(audio_s / v, 2) for k, v in med.items()},
                    **{f"{k}_seconds": [round(t, 3) for t in v] for k, v in times.items()}},
    }))


if __name__ == "__main__":
    main()
