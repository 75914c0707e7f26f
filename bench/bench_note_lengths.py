"""Which notes the model gets wrong: note lengths pooled over clips (quartiles, share under 0.15 s) and
how much they vary within one 4 s window, for real clips, for music generated from held-out prompts
and for continuations of real clips (their audio as the reference), all transcribed as evaluate.py's
`realism` does, in one run; and where generated notes start within a segment.

A median alone hides whether short notes are blips, a fast pace or a mixture: the quartiles say which
end of the distribution is off, the within-window spread whether a piece keeps one pace (real pieces
are quick or slow throughout), and the continuations whether the model keeps a pace it is given.

    python bench/bench_note_lengths.py --ckpt outputs/demo/make-demo/checkpoints/last.ckpt \\
        [--cache data/cache/<key>]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from common import checkpoint_and_cache_parser, generate_each, machine, trained_cache

import musegen
from musegen.apps.errors import user_errors
from musegen.eval.harness import musegen_notes
from musegen.eval.prompts import HELD_OUT_PROMPTS
from musegen.eval.realism import WINDOW_SECONDS, note_durations


def main() -> None:
    p = checkpoint_and_cache_parser(__doc__, prompts=32)
    p.add_argument("--continuations", type=int, default=32, help="real clips to continue (evenly over the cache)")
    args = p.parse_args()
    with user_errors("bench_note_lengths"):
        report(args)


def spread_within_windows(notes_per_window: list[list]) -> float | None:
    """Median over windows of the standard deviation of log2 note length (windows with 4+ notes)."""
    spreads = [float(np.std(np.log2([n[1] - n[0] for n in notes]))) for notes in notes_per_window if len(notes) >= 4]
    return float(np.median(spreads)) if spreads else None


def summary(notes_per_window: list[list]) -> dict:
    return {**{k: round(v, 3) for k, v in note_durations(notes_per_window).items()},
            "spread_log2_within_window": spread_within_windows(notes_per_window), "windows": len(notes_per_window)}


def report(args: argparse.Namespace) -> None:
    """Measure the three sets and print them as one JSON line."""
    model = musegen.load(args.ckpt, device="cpu")
    cache = trained_cache(args.cache, args.ckpt, model)
    feats = model.generator.features
    window = int(round(WINDOW_SECONDS * feats.sample_rate / feats.hop_length))
    segment = model.generator.model.segment_frames

    def windows(frames: np.ndarray) -> list[np.ndarray]:
        return [frames[s:s + window] for s in range(0, len(frames) - window + 1, window)] or [frames]

    real = [musegen_notes(w, feats, None) for i in range(0, len(cache), args.every)
            for w in windows(cache.clip_frames(i).float().numpy())]
    prompts = list(HELD_OUT_PROMPTS[:: max(1, len(HELD_OUT_PROMPTS) // args.prompts)][: args.prompts])
    generated_frames = generate_each(model, prompts, duration=args.seconds)[1]
    generated = [musegen_notes(w, feats, None) for f in generated_frames for w in windows(f)]
    # where notes start within a segment: the generation starts empty, so segments begin at multiples of K
    hop = feats.hop_length / feats.sample_rate
    starts = np.zeros(segment)
    for f in generated_frames:
        for note in musegen_notes(f, feats, None):
            starts[int(round(note[0] / hop)) % segment] += 1
    ids = np.linspace(0, len(cache) - 1, min(args.continuations, len(cache))).astype(int).tolist()
    music = model.generate([cache.captions[cache.caption_index[i]] for i in ids], audio=[cache.paths[i] for i in ids],
                           duration=WINDOW_SECONDS, seed=list(range(len(ids))), progress=False)
    continued = [musegen_notes(f, feats, None) for f in music.frames]
    references = [musegen_notes(w, feats, None) for i in ids for w in windows(cache.clip_frames(i).float().numpy())]
    positions = (starts / starts.mean()).round(2).tolist() if starts.sum() else starts.tolist()
    print(json.dumps({"what": "note_lengths", "machine": machine(),
                      "settings": {"ckpt": args.ckpt, "cache": str(cache.path), "every": args.every,
                                   "prompts": len(prompts), "seconds": args.seconds, "continuations": len(ids),
                                   "window_frames": window},
                      "figures": {"real_clips": summary(real), "generated": summary(generated),
                                  "continuations": summary(continued), "continued_clips": summary(references),
                                  "note_starts_by_segment_position_over_mean": positions}}))


if __name__ == "__main__":
    main()
