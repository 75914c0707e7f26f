"""Batched prompts: N prompts in one `model.generate([...])` call against N sequential calls, audio
rendered in both (musegen.api, by conf/synth's mix or by --vocoder; files are not written), and
whether each batched item equals its single-prompt call with the same seed.

Prints one JSON object. Uses the demo-sized model with freshly initialised weights unless --ckpt is
given: the cost of generation does not depend on what the weights learned.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generation import demo_checkpoint  # noqa: E402
from common import machine  # noqa: E402

import musegen  # noqa: E402
from musegen.eval.prompts import HELD_OUT_PROMPTS  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ckpt", type=Path)
    p.add_argument("--head", default="tokens", help="the head of the fresh demo model when no --ckpt is given")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocoder", type=Path, help="a vocoder checkpoint renders the audio (default: conf/synth's mix)")
    args = p.parse_args()
    prompts = list(HELD_OUT_PROMPTS[:: len(HELD_OUT_PROMPTS) // args.prompts][: args.prompts])
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or demo_checkpoint(Path(tmp) / "demo.ckpt", args.head)
        model = musegen.load(ckpt, device="cpu", vocoder=args.vocoder)
        model.generate(prompts[:1], duration=1.0, progress=False)          # text model and kernels loaded
        batched_s, sequential_s = [], []
        for _ in range(args.repeats):                                    # interleaved: same machine state
            start = time.perf_counter()
            batch = model.generate(prompts, duration=args.duration, seed=0, progress=False)
            batched_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            alone = [model.generate(prompt, duration=args.duration, seed=0, progress=False) for prompt in prompts]
            sequential_s.append(time.perf_counter() - start)
    frames_diff = max(float(np.abs(batch.frames[i] - a.frames[0]).max()) for i, a in enumerate(alone))
    audio_diff = max(float(np.abs(batch.waveforms[i] - a.waveforms[0]).max()) for i, a in enumerate(alone))
    print(json.dumps({
        "what": "batched_generation", "machine": machine(),
        "settings": {"prompts": args.prompts, "duration_s": args.duration, "repeats": args.repeats,
                     "checkpoint": str(args.ckpt or f"demo model, fresh weights, head {args.head}"),
                     "synthesis": batch.export.synthesis, "vocoder": str(args.vocoder) if args.vocoder else None,
                     "rollout_threads": model.generator.threads},
        "figures": {
            "batched_s": [round(s, 3) for s in batched_s], "sequential_s": [round(s, 3) for s in sequential_s],
            "speedup_median": round(statistics.median(sequential_s) / statistics.median(batched_s), 2),
            "batched_rtf": round(args.prompts * args.duration / statistics.median(batched_s), 1),
            "max_abs_frame_difference_batched_vs_alone": frames_diff,
            "max_abs_audio_difference_batched_vs_alone": audio_diff,
        },
    }))


if __name__ == "__main__":
    main()
