"""Spectrograms of real clips beside generated samples, one row each, into one PNG: what
docs/BENCHMARKS.md shows of a model's music.

    python bench/plot_spectrograms.py --real data/demo/*/clip_00007.wav \\
        --ckpt outputs/demo/make-demo/checkpoints/last.ckpt --prompt "a gentle piano tune" --out docs/sample.png

Each generated row is `musegen.load(ckpt).generate(prompt)` with the checkpoint's default sampling
(or its --min-p / --min-note-frames), rendered by its --vocoder or conf/synth's mix; real clips are
shown as recorded, cut to --seconds. One checkpoint given twice, with `--vocoder mix PATH`, shows the
same generation through both.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import musegen
from musegen.apps.errors import user_errors
from musegen.features import load_audio
from musegen.figures import spectrograms

log = logging.getLogger(__name__)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", nargs="*", default=[], type=Path, help="audio files shown as they are")
    p.add_argument("--ckpt", nargs="+", required=True, type=Path, help="one generated row per checkpoint")
    p.add_argument("--label", nargs="*", default=[], help="a title per checkpoint (default: its run folder)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-p", nargs="*", default=[], type=float,
                   help="min_p per checkpoint, in order (0 = off; default: each checkpoint's own)")
    p.add_argument("--min-note-frames", nargs="*", default=[], type=int,
                   help="min_note_frames per checkpoint, in order (1 = off; default: each checkpoint's own)")
    p.add_argument("--vocoder", nargs="*", default=[],
                   help="per checkpoint, in order: a vocoder checkpoint that renders its audio, or mix (the default) "
                        "for conf/synth's analytic synthesis")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    with user_errors("plot_spectrograms"):
        run(args)


def run(args: argparse.Namespace) -> None:
    """Render the rows and write the figure."""
    logging.basicConfig(level=logging.INFO)
    pad = [None] * len(args.ckpt)
    vocoders = [None if v in (None, "mix") else Path(v) for v in args.vocoder + pad]
    models = [musegen.load(ckpt, device="cpu", vocoder=vocoder) for ckpt, vocoder in zip(args.ckpt, vocoders)]
    sample_rate = models[0].sample_rate
    rows = [load_audio(path, sample_rate)[: int(args.seconds * sample_rate)] for path in args.real]
    titles = [f"real clip: {path.name}" for path in args.real]
    for model, ckpt, label, min_p, min_note_frames in zip(models, args.ckpt, args.label + pad, args.min_p + pad,
                                                          args.min_note_frames + pad):
        music = model.generate(args.prompt, args.seconds, seed=args.seed, min_p=min_p,
                               min_note_frames=min_note_frames, progress=False)
        rows.append(music.waveforms[0])
        titles.append(f"{label or ckpt.parent.parent.name}: \"{args.prompt}\"")
    fig = spectrograms(rows, sample_rate, titles)
    fig.savefig(args.out, dpi=80)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
