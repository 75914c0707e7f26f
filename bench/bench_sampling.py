"""Sampling settings against the music they give: for each (temperature, top_k, top_p, min_p,
pitch_temperature, min_note_frames), the median transcribed note length and notes per second of the generated frames
(transcribed as evaluate.py's `realism` does; medians over prompts, and the quartiles and share of
blips of all their notes pooled), and the onsets per second and chroma change of the
written audio (musegen.eval.realism), held-out prompts from a neutral start, all in one run. The references (the
test clips' ground-truth MIDI and resynthesised audio) are evaluate.py's `realism` metric; this
compares settings quickly.

    python bench/bench_sampling.py --ckpt outputs/demo/make-demo/checkpoints/last.ckpt
"""
from __future__ import annotations

import argparse
import json
import statistics

from common import generate_each, machine

import musegen
from musegen.apps.errors import user_errors
from musegen.eval import realism
from musegen.eval.harness import musegen_notes
from musegen.eval.prompts import HELD_OUT_PROMPTS
from musegen.instruments import find_instrument

#: (temperature, top_k, top_p, min_p, pitch_temperature, min_note_frames); min_note_frames 1 is no minimum
GRID = ((1.0, 250, None, None, None, 1), (0.9, 250, None, None, None, 1), (1.0, 250, 0.95, None, None, 1),
        (1.0, 250, 0.9, None, None, 1), (1.0, 250, None, 0.003, None, 1), (1.0, 250, None, 0.006, None, 1),
        (1.0, 250, None, 0.01, None, 1), (1.0, 250, None, 0.02, None, 1), (1.0, 250, None, None, 0.9, 1),
        (1.0, 250, None, None, 0.8, 1), (1.0, 250, None, None, 0.6, 1), (1.0, 250, None, None, None, 4),
        (1.0, 250, None, None, None, 6), (1.0, 250, None, None, None, 8))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--prompts", type=int, default=16, help="held-out prompts, evenly over the instruments")
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    with user_errors("bench_sampling"):
        run(args)


def run(args: argparse.Namespace) -> None:
    """Sample every setting of GRID and print the figures as one JSON line."""
    model = musegen.load(args.ckpt, device="cpu")
    features = model.generator.features
    prompts = list(HELD_OUT_PROMPTS[:: max(1, len(HELD_OUT_PROMPTS) // args.prompts)][: args.prompts])
    rows = []
    for temperature, top_k, top_p, min_p, pitch_temperature, min_note_frames in GRID:
        waveforms, frames_each = generate_each(model, prompts, duration=args.seconds, temperature=temperature,
                                               top_k=top_k, top_p=top_p, min_p=min_p,
                                               pitch_temperature=pitch_temperature, min_note_frames=min_note_frames)
        stats, transcriptions = [], []
        for y, frames, prompt in zip(waveforms, frames_each, prompts):
            instrument = find_instrument(prompt)
            notes = musegen_notes(frames, features, instrument.name if instrument else None)
            transcriptions.append(notes)
            stats.append({**realism.note_statistics(notes, args.seconds),
                          **realism.descriptors(y, features.sample_rate, features)})
        durations = realism.note_durations(transcriptions)
        rows.append({"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
                     "pitch_temperature": pitch_temperature, "min_note_frames": min_note_frames,
                     **{k: round(statistics.median(s[k] for s in stats), 3)
                        for k in ("median_note_seconds", "notes_per_second", "onsets_per_second", "chroma_change")},
                     **{f"pooled_{k}": round(durations[k], 3) for k in ("q25", "median", "q75", "short_share")
                        if k in durations}})
    print(json.dumps({"what": "sampling_settings", "machine": machine(),
                      "settings": {"ckpt": args.ckpt, "prompts": len(prompts), "seconds": args.seconds,
                                   "defaults": model.generator.model.default_sampling},
                      "figures": rows}))


if __name__ == "__main__":
    main()
