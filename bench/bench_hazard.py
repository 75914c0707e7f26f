"""How long the token head holds a pitch class: the probability that a frame's pitch class differs from
the one before it, after a run of r frames of one class, in real clips, in the model's teacher-forced
predictions on those clips, and in music it generates from held-out prompts, all in one run.

A frame's pitch class is the strongest chroma bin of its token's centroid, so the three are read through
the same codebook. A model whose change rate matches the data's on average can still play short notes:
if it changes class as readily one frame after a change as twenty frames into a note, its runs are
geometric and short where real ones are not. The teacher-forced column tells whether that is the
model's prediction (it forecasts the data's hazard badly) or the sampler's (it forecasts it, and the
rollout drifts). The clips are every ``--every``-th clip of the cache, training clips among them.

    python bench/bench_hazard.py --ckpt outputs/demo/make-demo/checkpoints/last.ckpt \\
        [--cache data/cache/<key>] [--sampling '{"min_p": 0.006}']
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from common import checkpoint_and_cache_parser, generate_each, machine, trained_cache

import musegen
from musegen.apps.errors import user_errors
from musegen.eval.prompts import HELD_OUT_PROMPTS

RUNS = (1, 2, 3, 4, 6, 8, 12, 16, 24)


def run_lengths(classes: np.ndarray) -> np.ndarray:
    """[T]: how many frames the class of each frame has lasted, that frame included."""
    runs = np.ones(len(classes), dtype=np.int64)
    for t in range(1, len(classes)):
        if classes[t] == classes[t - 1]:
            runs[t] = runs[t - 1] + 1
    return runs


class Hazard:
    """Change probabilities summed per run length of the frame before, then averaged."""

    def __init__(self) -> None:
        self.changes: dict[int, float] = {}
        self.counts: dict[int, int] = {}

    def add(self, run: int, change: float) -> None:
        self.changes[run] = self.changes.get(run, 0.0) + change
        self.counts[run] = self.counts.get(run, 0) + 1

    def add_sequence(self, classes: np.ndarray) -> None:
        for run, before, after in zip(run_lengths(classes)[:-1], classes[:-1], classes[1:]):
            self.add(int(run), float(before != after))

    def figures(self) -> dict[str, float | None]:
        rates = {f"r{r}": round(self.changes[r] / self.counts[r], 3) if self.counts.get(r) else None for r in RUNS}
        total = sum(self.counts.values())
        return {**rates, "all": round(sum(self.changes.values()) / max(total, 1), 3), "frames": total}


def main() -> None:
    p = checkpoint_and_cache_parser(__doc__, prompts=16)
    p.add_argument("--sampling", default="{}", help="generate()'s sampling settings as JSON ({} = the defaults)")
    args = p.parse_args()
    with user_errors("bench_hazard"):
        report(args)


def report(args: argparse.Namespace) -> None:
    """Measure the three hazards and print them as one JSON line."""
    try:
        sampling = json.loads(args.sampling)
    except json.JSONDecodeError as err:
        raise ValueError(f"--sampling {args.sampling!r} is not JSON ({err})") from None
    if not isinstance(sampling, dict):
        raise ValueError(f"--sampling {args.sampling!r} must be a JSON object, e.g. '{{\"min_p\": 0.006}}'")
    model = musegen.load(args.ckpt, device="cpu")
    cache = trained_cache(args.cache, args.ckpt, model)
    net = model.generator.model.eval()
    head = net.head
    if not hasattr(head, "codebook"):
        raise ValueError(f"{args.ckpt}: not a token-head checkpoint (model.head has no codebook)")
    if net.out_dim <= net.n_mfcc:
        raise ValueError(f"{args.ckpt}: the model predicts no chroma, so its tokens have no pitch class")
    p = head.frames_per_token
    classes_of = head.codebook.centroids.reshape(head.vocab, p, -1)[..., net.n_mfcc:].argmax(-1)   # [V, P]

    def classes(frames: torch.Tensor) -> torch.Tensor:
        """Per-frame pitch classes of frames [T, F] through the codebook (T cut to a multiple of P)."""
        frames = frames[len(frames) % p:]
        return classes_of[head._tokens(net.normaliser.normalise(frames.float()))].flatten()

    real, forced = Hazard(), Hazard()
    c, k = net.context_frames, net.segment_frames
    with torch.no_grad():
        for i in range(0, len(cache), args.every):
            frames = cache.clip_frames(i).float()
            frames = frames[len(frames) % p:]   # whole tokens, aligned to the clip's end
            seq = classes(frames)
            real.add_sequence(seq.numpy())
            runs = run_lengths(seq.numpy())
            text = cache.text[cache.caption_index[i]][None].float()
            cond = net.condition(text, torch.zeros(1, 2 * net.feature_dim), torch.tensor([False]), torch.tensor([True]))
            for t in range(c, len(frames) - k + 1, k):
                x = net(frames[t - c:t][None], torch.ones(1, c, dtype=torch.bool), cond)
                target = net.target(frames[t:t + k][None])
                tokens = head._tokens(target)
                logits, _ = head._teacher_forced(x, tokens, head._levels(target, tokens))
                probs = logits[0].softmax(-1)
                for j in range(k):
                    # A token covers P frames: frame j's forecast is conditional on the earlier
                    # frames of its token having the classes they have.
                    group, offset = probs[j // p], j % p
                    agrees = (classes_of[:, :offset] == seq[t + j - offset:t + j]).all(1)
                    before = int(seq[t + j - 1])
                    changes = group[agrees & (classes_of[:, offset] != before)].sum() / group[agrees].sum()
                    forced.add(int(runs[t + j - 1]), float(changes))
    prompts = list(HELD_OUT_PROMPTS[:: max(1, len(HELD_OUT_PROMPTS) // args.prompts)][: args.prompts])
    generated = Hazard()
    for frames in generate_each(model, prompts, duration=args.seconds, **sampling)[1]:
        generated.add_sequence(classes(torch.as_tensor(frames)).numpy())
    print(json.dumps({"what": "pitch_class_hazard", "machine": machine(),
                      "settings": {"ckpt": args.ckpt, "clips_every": args.every, "prompts": len(prompts),
                                   "seconds": args.seconds, "sampling": {**net.default_sampling, **sampling}},
                      "figures": {"real": real.figures(), "teacher_forced": forced.figures(),
                                  "generated": generated.figures()}}))


if __name__ == "__main__":
    main()
