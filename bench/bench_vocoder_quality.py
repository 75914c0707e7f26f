"""Vocoder quality beside the analytic `mix` synthesis, each rebuilding audio from its true features, on
three sets of clips in one run:

- demo: demo-style clips (the demo's compositions and soundfonts, a seed the demo set does not use);
- unseen soundfont: the same compositions played by a General MIDI soundfont the demo never uses
  (default: Debian's musescore-general-soundfont-small);
- recordings: a folder of real recordings (default: Debian's sonic-pi-samples), first 8 s of each;
- with --demo-test: the demo set's own test split (`experiment=demo`'s data under ./data, built and
  cached as training builds it), the clips the vocoder's validation never trained on.

Per set and rendering: the two-sample accuracy of a classifier told to separate rebuilt from original
windows (musegen.eval.realism; 0.5 = indistinguishable), pitch-class match, log-spectral distance,
RMS variation (each rebuild matched to its original's RMS) and, for the labelled sets, how often the
instrument is still recognised: evaluate.py's InstrumentClassifier, fit on other demo-style clips'
originals, on the originals and on each rebuild. Prints one JSON object.

    python bench/bench_vocoder_quality.py --ckpt outputs/vocoder_demo/make-demo/checkpoints/last.ckpt
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from common import machine
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from musegen.audio import Synthesizer
from musegen.data.demo import DemoSource
from musegen.data.sources import audio_files
from musegen.eval import realism
from musegen.eval.metrics import InstrumentClassifier
from musegen.features import extract, load_audio
from musegen.instruments import find_instrument
from musegen.vocoder import load_vocoder

ROOT = Path(__file__).resolve().parents[1]
UNSEEN_SOUNDFONT = "/usr/share/sounds/sf3/MuseScore_General_Lite.sf3"
RECORDINGS = "/usr/share/sonic-pi/samples"
SEED = 20261201          # demo-style clips the demo set (seed 0) does not contain
MIX_ITERATIONS = 16      # generate.py's setting (conf/synth/default.yaml)
JUDGE_CLIPS = 160        # demo-style clips (another seed) the instrument classifier is fit on


def demo_clips(root: Path, n: int, soundfonts: list[str] | None, seed: int = SEED) -> list[tuple[np.ndarray, int, str]]:
    """(audio, register of its instrument, label) of n demo-style clips, rendered with `soundfonts`
    (None: the demo's)."""
    source = DemoSource(str(root), num_clips=n, seed=seed, soundfonts=soundfonts)
    out = []
    for clip in source.clips():
        y, _ = sf.read(clip.path, dtype="float32")
        instrument = find_instrument(clip.caption)
        out.append((y, instrument.register if instrument else 60, clip.label))
    return out


def recordings(folder: Path, n: int, sample_rate: int, seconds: float) -> list[tuple[np.ndarray, int, None]]:
    """The first `seconds` of up to n recordings at least 4 s long, with the default register, unlabelled."""
    out = []
    for path in audio_files(folder):
        y = load_audio(path, sample_rate)[: int(seconds * sample_rate)]
        if len(y) >= 4 * sample_rate and np.abs(y).max() > 1e-3:
            out.append((y.astype(np.float32), 60, None))
        if len(out) == n:
            break
    return out


def demo_test_clips() -> list[tuple[np.ndarray, int, str]]:
    """(audio, register, label) of the demo set's test clips, split as train.py experiment=demo splits them."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", "paths.output_dir=."])
    datamodule = instantiate(cfg.data, text_encoder=instantiate(cfg.text))
    datamodule.prepare_data()
    datamodule.setup("test")
    out = []
    for i in datamodule.split_clips["test"]:
        y, _ = sf.read(datamodule.cache.paths[i], dtype="float32")
        label = datamodule.cache.labels[i]
        instrument = find_instrument(label)
        out.append((y, instrument.register if instrument else 60, label))
    return out


def level_matched(y: np.ndarray, reference: np.ndarray) -> np.ndarray:
    rms = lambda x: float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))  # noqa: E731
    return (y * (rms(reference) / max(rms(y), 1e-12))).astype(np.float32)


def measure(clips: list[tuple[np.ndarray, int, str | None]], renders: dict, sample_rate: int, features,
            judge: InstrumentClassifier) -> dict:
    originals, labels = [y for y, _, _ in clips], [label for _, _, label in clips]
    labelled = all(labels)
    figures = {"clips": len(clips), "original_rms_variation": statistics.median(
        realism.rms_variation(y, features) for y in originals)}
    if labelled:
        figures["original_instrument_recognised"] = round(
            judge.accuracy([extract(y, features) for y in originals], labels), 3)
    for name, render in renders.items():
        rebuilt = []
        for y, register, _ in clips:
            frames = extract(y, features)
            rebuilt.append(level_matched(render(frames, register)[: len(y)], y))
        rms_var = statistics.median(realism.rms_variation(r, features) for r in rebuilt)
        figures[name] = {
            "two_sample_accuracy": round(realism.two_sample_accuracy(rebuilt, originals, sample_rate, features), 3),
            "pitch_class_match": round(float(np.nanmedian(
                [realism.pitch_class_match(y, r, sample_rate, features) for y, r in zip(originals, rebuilt)])), 3),
            "log_spectral_distance": round(statistics.median(
                realism.log_spectral_distance(y, r, features) for y, r in zip(originals, rebuilt)), 3),
            "rms_variation": round(rms_var, 3),
            "rms_variation_ratio": round(rms_var / figures["original_rms_variation"], 2),
        }
        if labelled:
            figures[name]["instrument_recognised"] = round(
                judge.accuracy([extract(r, features) for r in rebuilt], labels), 3)
    figures["original_rms_variation"] = round(figures["original_rms_variation"], 3)
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="a vocoder checkpoint (train.py experiment=vocoder_demo)")
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--soundfont", default=UNSEEN_SOUNDFONT)
    p.add_argument("--recordings", default=RECORDINGS)
    p.add_argument("--seconds", type=float, default=8.0, help="of each recording")
    p.add_argument("--demo-test", action="store_true", help="also the demo set's own test split")
    args = p.parse_args()
    vocoder = load_vocoder(args.ckpt)
    features = vocoder.features
    sr = features.sample_rate
    synth = Synthesizer(features, n_iter=MIX_ITERATIONS)
    renders = {"mix": lambda frames, register: synth.render(frames, mode="mix", register=register),
               "vocoder": lambda frames, register: vocoder.render(frames)}
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"demo": demo_clips(Path(tmp) / "demo", args.clips, None),
                "unseen_soundfont": demo_clips(Path(tmp) / "unseen", args.clips, [args.soundfont]),
                "recordings": recordings(Path(args.recordings), args.clips, sr, args.seconds)}
        if args.demo_test:
            sets["demo_test"] = demo_test_clips()
        judged = demo_clips(Path(tmp) / "judge", JUDGE_CLIPS, None, seed=SEED + 1)
        judge = InstrumentClassifier(features.n_mfcc).fit([extract(y, features) for y, _, _ in judged],
                                                          [label for _, _, label in judged])
        results = {name: measure(clips, renders, sr, features, judge) for name, clips in sets.items()}
    print(json.dumps({
        "what": "vocoder_quality", "machine": machine(),
        "settings": {"ckpt": args.ckpt, "vocoder": vocoder.hparams, "clips": args.clips, "seed": SEED,
                     "unseen_soundfont": Path(args.soundfont).name, "recordings": args.recordings,
                     "recording_seconds": args.seconds, "mix_n_iter": MIX_ITERATIONS},
        "figures": results,
    }))


if __name__ == "__main__":
    main()
