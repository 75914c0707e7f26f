"""Text-encoding speed of the default MiniLM encoder; prints one JSON object to stdout.

Measures the first load (transformers import + tokenizer + weights + first encode) and captions/s for 1,000 distinct
captions at batch size 1 and 64. The two batch sizes alternate within each repeat so that both
see the same machine load, which makes their ratio meaningful on a shared machine.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_text.py [--captions 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from typing import Any


def make_captions(n: int) -> list[str]:
    """``n`` distinct captions shaped like the demo source's ("slow violin melody in D minor")."""
    tempos = ["slow", "calm", "moderate", "lively", "fast", "upbeat"]
    instruments = ["piano", "violin", "guitar", "flute", "cello", "drum", "organ", "trumpet"]
    forms = ["melody", "piece", "solo", "song", "etude"]
    keys = [f"{k} {m}" for k in ["C", "D", "E", "F", "G", "A", "B", "B-flat"]
            for m in ["major", "minor"]]
    combos = itertools.product(tempos, instruments, forms, keys)
    captions = [f"{t} {i} {f} in {k}" for t, i, f, k in itertools.islice(combos, n)]
    if len(captions) < n:
        raise ValueError(f"at most {len(tempos) * len(instruments) * len(forms) * len(keys)} captions")
    return captions


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    import torch
    import transformers

    return {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_model": cpu_model(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "loadavg_1m_after": round(os.getloadavg()[0], 2)}


def captions_per_s(encoder: Any, captions: list[str], batch_size: int) -> float:
    encoder.batch_size = batch_size
    start = time.perf_counter()
    out = encoder.encode(captions)
    elapsed = time.perf_counter() - start
    assert out.shape[0] == len(captions)
    return len(captions) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0 = torch default); on a shared, loaded "
                             "machine 1 thread avoids spin-wait thrashing")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)

    from musegen.text import SentenceEncoder  # cheap: transformers is imported on first load

    load_before = os.getloadavg()[0]
    t1 = time.perf_counter()
    encoder = SentenceEncoder(device=args.device)
    encoder.encode(["warm-up caption"])
    first_load_s = time.perf_counter() - t1

    captions = make_captions(args.captions)
    runs: dict[int, list[float]] = {1: [], 64: []}
    for _ in range(args.repeats):
        for bs in runs:  # alternate so both batch sizes see the same load
            runs[bs].append(captions_per_s(encoder, captions, bs))
    med = {bs: statistics.median(v) for bs, v in runs.items()}
    print(json.dumps({
        "what": "text_encoding",
        "machine": {**machine(), "loadavg_1m_before": round(load_before, 2)},
        "settings": {"encoder": encoder.identity, "device": encoder.device,
                     "captions": len(captions), "distinct": len(set(captions)),
                     "repeats": args.repeats, "batch_sizes": list(runs),
                     "max_length": encoder.max_length, "dim": encoder.dim},
        "figures": {"first_load_s": round(first_load_s, 3),
                    "captions_per_s_bs1": round(med[1], 1), "captions_per_s_bs64": round(med[64], 1),
                    "speedup_bs64_vs_bs1": round(med[64] / med[1], 2),
                    "runs_captions_per_s": {str(bs): [round(x, 1) for x in v]
                                            for bs, v in runs.items()}},
    }))


if __name__ == "__main__":
    main()
