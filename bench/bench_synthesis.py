"""Synthesis speed: musegen.audio.Synthesizer vs librosa.feature.inverse.mfcc_to_audio.

Prints one JSON object. Both invert the same 30 s of MFCC frames (same n_fft, hop, n_mels and
Griffin-Lim iterations), alternated in one process so machine load hits both alike; figures are
medians over --runs. rtf = seconds of audio per wall-clock second. Ours runs with torch's thread
count and with one thread (on a busy shared machine one thread wins, idle two do). Also times
the pitched renderings (harmonic, mix) that the generator can choose.

    python bench/bench_synthesis.py [--seconds 30] [--runs 3] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import librosa
import numpy as np
import torch

from musegen.audio import Synthesizer
from musegen.features import FeatureConfig, extract


def test_signal(seconds: float, sr: int) -> np.ndarray:
    """A melody of decaying harmonic tones (a stand-in for generated music; content barely matters)."""
    rng = np.random.default_rng(0)
    note = int(0.25 * sr)
    t = np.arange(note) / sr
    tones = []
    for _ in range(int(np.ceil(seconds * sr / note))):
        f0 = 440.0 * 2 ** ((int(rng.integers(55, 80)) - 69) / 12)
        tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 7) if f0 * h < sr / 2)
        tones.append(tone * np.exp(-6.0 * t))
    y = np.concatenate(tones)[: int(seconds * sr)]
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn, cpu: list[float] | None = None) -> float:
    """Wall seconds of fn(); its process CPU seconds appended to ``cpu`` (load-independent-ish)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = FeatureConfig()
    frames = extract(test_signal(args.seconds, cfg.sample_rate), cfg)
    mfcc = frames[:, : cfg.n_mfcc]
    audio_s = len(frames) * cfg.hop_length / cfg.sample_rate
    synth = Synthesizer(cfg)
    single = Synthesizer(cfg, threads=1)
    synth.mfcc_to_audio(mfcc[:64])  # warm-up: thread pools, FFT plans

    def librosa_run() -> None:
        librosa.feature.inverse.mfcc_to_audio(
            mfcc.T, n_mels=cfg.n_mels, sr=cfg.sample_rate, n_fft=cfg.n_fft,
            hop_length=cfg.hop_length, n_iter=synth.n_iter,
        )

    times: dict[str, list[float]] = {"ours": [], "ours_1thread": [], "librosa": [], "harmonic": [], "mix": []}
    cpu: dict[str, list[float]] = {"ours": [], "ours_1thread": [], "librosa": []}
    load_before = os.getloadavg()[0]
    for _ in range(args.runs):
        times["ours"].append(timed(lambda: synth.mfcc_to_audio(mfcc), cpu["ours"]))
        times["ours_1thread"].append(timed(lambda: single.mfcc_to_audio(mfcc), cpu["ours_1thread"]))
        times["librosa"].append(timed(librosa_run, cpu["librosa"]))
        times["harmonic"].append(timed(lambda: synth.render(frames, mode="harmonic")))
        times["mix"].append(timed(lambda: synth.render(frames, mode="mix")))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "what": "synthesis",
        "machine": {
            "cores": os.cpu_count(),
            "cpu": cpu_name(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "librosa": librosa.__version__,
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
        "settings": {
            "audio_seconds": round(audio_s, 3), "frames": len(frames), "runs": args.runs,
            "n_iter": synth.n_iter, "momentum": synth.momentum, "n_fft": cfg.n_fft,
            "hop_length": cfg.hop_length, "n_mels": cfg.n_mels, "sample_rate": cfg.sample_rate,
            "order": "ours (torch threads), ours (1 thread), librosa, harmonic, mix alternated per run; medians",
        },
        "figures": {
            "ours_rtf": round(audio_s / med["ours"], 2),
            "librosa_rtf": round(audio_s / med["librosa"], 2),
            "speedup": round(med["librosa"] / med["ours"], 2),
            "ours_1thread_rtf": round(audio_s / med["ours_1thread"], 2),
            "speedup_1thread": round(med["librosa"] / med["ours_1thread"], 2),
            "harmonic_rtf": round(audio_s / med["harmonic"], 2),
            "mix_rtf": round(audio_s / med["mix"], 2),
            "ours_cpu_seconds": round(statistics.median(cpu["ours"]), 3),
            "ours_1thread_cpu_seconds": round(statistics.median(cpu["ours_1thread"]), 3),
            "librosa_cpu_seconds": round(statistics.median(cpu["librosa"]), 3),
            "ours_seconds": [round(t, 3) for t in times["ours"]],
            "librosa_seconds": [round(t, 3) for t in times["librosa"]],
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
