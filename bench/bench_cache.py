"""Cache build throughput (1 vs 2 extraction workers) and cached-load time; prints one JSON object.

    .venv/bin/python bench/bench_cache.py [--clips 64] [--seconds 4] [--repeats 3]

Clips are generated (tones with harmonics and noise hits at 16/22.05/44.1 kHz, mono and stereo) into
a temporary folder. Builds with 1 and 2 workers alternate, each into a fresh cache directory, and the
median of `repeats` is reported. The text encoder is a deterministic hash stub so the figures measure
feature extraction and cache writing, not the language model (caption encoding is once per unique
caption, 4 here). One untimed build first compiles librosa's numba functions, as a long-running
process would have. CPU seconds per clip (process + workers) do not depend on how busy the machine
is; wall-clock figures do, so the 1-minute load average before and after is recorded.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch

from musegen.data.build import build_cache
from musegen.data.cache import load_cache
from musegen.data.clips import Clip
from musegen.features import FeatureConfig

LABELS = ("guitar", "piano", "violin", "drum")


class HashEncoder:
    """Deterministic stand-in text encoder: a seeded random vector per caption."""

    identity = "bench-hash-384"
    dim = 384

    def encode(self, texts: list[str]) -> torch.Tensor:
        seeds = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) for t in texts]
        return torch.stack([torch.randn(self.dim, generator=torch.Generator().manual_seed(s)) for s in seeds])


def make_clips(folder: Path, n: int, seconds: float) -> list[Clip]:
    """n generated clips with varied pitch, timbre, sample rate and channel count."""
    rng = np.random.default_rng(0)
    clips = []
    for i in range(n):
        sr = (16000, 22050, 44100)[i % 3]
        t = np.arange(int(sr * seconds)) / sr
        label = LABELS[i % len(LABELS)]
        if label == "drum":
            y = rng.standard_normal(t.size) * np.exp(-10 * (t % 0.5))
        else:
            f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
            y = sum(np.sin(2 * np.pi * f0 * k * t) / k ** (1 + i % 2) for k in range(1, 6))
        y = (0.3 * y / np.max(np.abs(y))).astype(np.float32)
        path = folder / f"{label}_{i:03d}.wav"
        sf.write(path, np.stack([y, y], 1) if i % 2 else y, sr)
        clips.append(Clip(str(path), f"a {label} recording", label, path.stem))
    return clips


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the extraction workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed_build(clips: list[Clip], cache_dir: Path, workers: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one cold build."""
    start, cpu = time.perf_counter(), _cpu_s()
    build_cache(clips, FeatureConfig(), HashEncoder(), cache_dir, num_workers=workers, source="bench")
    return time.perf_counter() - start, _cpu_s() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="musegen-bench-") as tmp:
        root = Path(tmp)
        (root / "audio").mkdir()
        clips = make_clips(root / "audio", args.clips, args.seconds)
        load_before = os.getloadavg()
        timed_build(clips[:4], root / "warmup", 1)
        times: dict[int, list[float]] = {1: [], 2: []}
        cpu: dict[int, list[float]] = {1: [], 2: []}
        for r in range(args.repeats):
            for w in (1, 2):
                wall, cpu_s = timed_build(clips, root / f"cache-{w}-{r}", w)
                times[w].append(wall)
                cpu[w].append(cpu_s)
        loads = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            cache = load_cache(build_cache(clips, FeatureConfig(), HashEncoder(), root / "cache-1-0", num_workers=1))
            _ = float(cache.frames.sum())  # touch the memory-mapped frames
            loads.append(time.perf_counter() - start)
        t1, t2 = statistics.median(times[1]), statistics.median(times[2])
        result = {
            "what": "cache_build",
            "machine": {
                "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                "loadavg_1m_before": round(load_before[0], 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
                "torch": torch.__version__, "librosa": librosa.__version__,
            },
            "settings": {
                "clips": args.clips, "clip_seconds": args.seconds, "repeats": args.repeats, "statistic": "median",
                "sample_rates": [16000, 22050, 44100], "features": "20 MFCC + 12 chroma, sr 22050, hop 512",
                "text_encoder": HashEncoder.identity, "frames_total": int(cache.offsets[-1]),
                "cache_mb": round(sum(f.stat().st_size for f in cache.path.iterdir()) / 2**20, 2),
            },
            "figures": {
                "clips_per_s_1_worker": round(args.clips / t1, 2),
                "clips_per_s_2_workers": round(args.clips / t2, 2),
                "cached_load_s": round(statistics.median(loads), 4),
                "speedup_2_vs_1": round(t1 / t2, 2),
                "cpu_s_per_clip_1_worker": round(statistics.median(cpu[1]) / args.clips, 4),
                "cpu_s_per_clip_2_workers": round(statistics.median(cpu[2]) / args.clips, 4),
                "build_s_1_worker": [round(t, 3) for t in times[1]],
                "build_s_2_workers": [round(t, 3) for t in times[2]],
            },
        }
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
