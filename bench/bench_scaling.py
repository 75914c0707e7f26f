"""Feature-cache scaling: measured at small scale with the real cache code, extrapolated to 10k/100k/1M clips.

    .venv/bin/python bench/bench_scaling.py [--clips 24] [--long-clips 6] [--tile 10000] [--ranks 2]

Prints one JSON object (summarised in docs/SCALING.md). What is measured, and how:

* Build, per clip, for 4 s and 30 s clips (30 s is the cache's cap, data.max_clip_seconds): generated
  audio (bench_cache's clips: 16/22.05/44.1 kHz, mono and stereo) through `build_cache` with one
  extraction worker, after a warm-up build, so CPU seconds per clip are the cost per core. Bytes per clip
  of every cache file (frames.pt, text.pt, meta.json) and frames per clip come from the written cache.
* Caption encoding with the default text encoder (MiniLM), seconds per unique caption, batch of 256.
* Per-rank load: the 4 s and 30 s caches are tiled (their clips repeated, same file format) to `--tile`
  and `--tile // 7` clips, and `--ranks` processes each do what a DDP rank's `setup()` does: `load_cache`
  (frames memory-mapped), normalisation statistics, reference embeddings and the window index. Each then
  reports /proc/self/smaps_rollup while all are alive: Rss vs Pss shows whether the frames are one shared
  copy in the page cache or one per rank; private memory per clip is what every rank holds on its own.
* Builder peak memory is not measured (at this scale it is lost in the interpreter's ~0.5 GB): it follows
  from cache.py's `_write`, which holds every clip's frames and then their concatenation: 2 x frames.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cache import HashEncoder, make_clips, timed_build  # noqa: E402

from musegen.data.build import build_cache  # noqa: E402
from musegen.data.cache import (  # noqa: E402
    FRAMES_FILE,
    META_FILE,
    REPORT_FILE,
    TEXT_FILE,
    load_cache,
    write_marker,
)
from musegen.data.datamodule import clip_references, frame_stats  # noqa: E402
from musegen.data.windows import window_index  # noqa: E402
from musegen.features import FeatureConfig  # noqa: E402
from musegen.io import write_json  # noqa: E402

SIZES = (10_000, 100_000, 1_000_000)
SEGMENT, STRIDE = 16, 8          # conf/model/small.yaml segment_frames, conf/data/base.yaml window_stride
RANK_OVERHEAD_GB = 3.0           # assumed per GPU rank besides the cache: torch, CUDA context, loader buffers
NODE_RAM_GB = (64, 128, 256, 512)
RANKS_PER_NODE = 8


def smaps() -> dict[str, int]:
    """This process's memory from /proc/self/smaps_rollup, bytes."""
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        out[key] = int(value.split()[0]) * 1024
    return out


def mapping(suffix: str) -> dict[str, int]:
    """Memory of this process's mappings of files ending in `suffix` (from /proc/self/smaps), bytes."""
    out: dict[str, int] = {}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            inside = line.rstrip().endswith(suffix)
        elif inside and head and head[0].endswith(":") and len(head) >= 2 and head[1].isdigit():
            out[head[0][:-1]] = out.get(head[0][:-1], 0) + int(head[1]) * 1024
    return out


def rank_worker(cache_path: str) -> None:
    """One 'rank': load the cache and do setup()'s per-rank work; report memory while the others live."""
    base = smaps()
    start = time.perf_counter()
    cache = load_cache(cache_path)
    load_s = time.perf_counter() - start
    clips = list(range(len(cache)))
    stats = frame_stats(cache, clips)
    refs = clip_references(cache)
    ids, starts = window_index(cache.lengths, clips, SEGMENT, STRIDE)
    setup_s = time.perf_counter() - start
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()  # every rank has touched all of its cache: measure now
    mem, frames_map = smaps(), mapping(FRAMES_FILE)
    private = lambda m: m["Private_Clean"] + m["Private_Dirty"]  # noqa: E731
    print(json.dumps({
        "clips": len(cache), "windows": len(starts), "load_s": load_s, "setup_s": setup_s,
        "rss": mem["Rss"] - base["Rss"], "pss": mem["Pss"] - base["Pss"],
        "private": private(mem) - private(base), "shared": mem["Shared_Clean"] - base["Shared_Clean"],
        "frames_mapped": {k: frames_map.get(k, 0) for k in ("Rss", "Pss")},
        "frames_bytes": cache.frames.numel() * 4, "check": float(stats["mean"].sum() + refs.sum() + ids.sum()),
    }), flush=True)


def tile_cache(src: Path, dst: Path, n: int) -> Path:
    """A cache of n clips in the real format: src's clips repeated (frames, captions, metadata)."""
    frames = torch.load(src / FRAMES_FILE, weights_only=True)
    text = torch.load(src / TEXT_FILE, weights_only=True)
    meta = json.loads((src / META_FILE).read_text())
    lengths = frames["offsets"][1:] - frames["offsets"][:-1]
    pick = torch.arange(n) % len(lengths)
    clip_frames = [frames["frames"][frames["offsets"][i]:frames["offsets"][i + 1]] for i in range(len(lengths))]
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths[pick], 0)
    dst.mkdir(parents=True)
    torch.save({"frames": torch.cat([clip_frames[int(i)] for i in pick]), "offsets": offsets}, dst / FRAMES_FILE)
    torch.save({**text, "caption_index": text["caption_index"][pick]}, dst / TEXT_FILE)
    clips = meta["clips"]
    meta["clips"] = [{**clips[int(i)], "path": f"{clips[int(i)]['path']}#{k}", "group": f"g{k}"}
                     for k, i in enumerate(pick)]
    write_json(dst / META_FILE, meta)
    write_json(dst / REPORT_FILE, {})
    write_marker(dst, meta["key"])
    return dst


def run_ranks(cache: Path, ranks: int) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, __file__, "--rank-worker", str(cache)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
             for _ in range(ranks)]
    for p in procs:
        assert json.loads(p.stdout.readline())["ready"]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.stdout.readline()) for p in procs]
    for p in procs:
        p.wait()
    return results


def measure_build(root: Path, n: int, seconds: float) -> tuple[dict, Path]:
    folder = root / f"audio-{seconds:g}s"
    folder.mkdir()
    clips = make_clips(folder, n, seconds)
    timed_build(clips[:2], root / f"warm-{seconds:g}", 1)
    wall, cpu = timed_build(clips, root / f"cache-{seconds:g}", 1)
    path = build_cache(clips, FeatureConfig(), HashEncoder(), root / f"cache-{seconds:g}")
    cache = load_cache(path)
    size = {f: (path / f).stat().st_size for f in (FRAMES_FILE, TEXT_FILE, META_FILE)}
    return {
        "clips": n, "clip_seconds": seconds, "frames_per_clip": float(cache.lengths.float().mean()),
        "cpu_s_per_clip": cpu / n, "wall_s_per_clip": wall / n,
        "frames_bytes_per_clip": size[FRAMES_FILE] / n, "meta_bytes_per_clip": size[META_FILE] / n,
        "text_file_bytes": size[TEXT_FILE], "unique_captions": int(cache.text.shape[0]),
        "embedding_bytes_per_caption": cache.text.shape[1] * 4,
    }, path


def measure_text(n: int = 256) -> dict:
    from musegen.text import SentenceEncoder

    encoder = SentenceEncoder()
    captions = [f"a {tempo} {inst} melody in {key} number {i}" for i, (tempo, inst, key) in enumerate(
        zip(["slow", "fast", "moderate"] * n, ["piano", "violin", "guitar", "flute"] * n, ["C", "D minor"] * n))][:n]
    encoder.encode(captions[:8])
    start = time.perf_counter()
    emb = encoder.encode(captions)
    return {"encoder": encoder.identity, "dim": int(emb.shape[1]), "captions": n,
            "s_per_caption": (time.perf_counter() - start) / n, "threads": torch.get_num_threads()}


def gb(x: float) -> float:
    return round(x / 1e9, 3)


def extrapolate(build: dict, per_rank: dict, text: dict | None) -> list[dict]:
    """Sizes, times and memory for SIZES clips, every caption unique (the worst case for text)."""
    rows = []
    for n in SIZES:
        frames = n * build["frames_bytes_per_clip"]
        emb = n * (build["embedding_bytes_per_caption"] + 8)
        disk = frames + emb + n * build["meta_bytes_per_clip"]
        private = n * per_rank["private_bytes_per_clip"]
        need = {ram: frames + RANKS_PER_NODE * (private + RANK_OVERHEAD_GB * 1e9) <= 0.8 * ram * 1e9
                for ram in NODE_RAM_GB}
        rows.append({
            "clips": n, "clip_seconds": build["clip_seconds"], "frames_gb": gb(frames), "embeddings_gb": gb(emb),
            "disk_gb": gb(disk), "build_cpu_hours": round(n * build["cpu_s_per_clip"] / 3600, 2),
            "build_hours_on_32_cores": round(n * build["cpu_s_per_clip"] / 3600 / 32, 2),
            "caption_encoding_cpu_hours": round(n * text["s_per_caption"] / 3600, 2) if text else None,
            "builder_peak_gb": gb(2 * frames + emb),
            "page_cache_per_node_gb": gb(frames), "private_per_rank_gb": gb(private),
            "setup_s_per_rank": round(n * per_rank["setup_s_per_clip"], 1),
            f"fits_node_with_{RANKS_PER_NODE}_ranks": {f"{ram}GB": ok for ram, ok in need.items()},
        })
    return rows


def max_clips(build: dict, per_rank: dict) -> dict:
    """Largest cache (clips) that fits 80 % of a node's RAM with RANKS_PER_NODE ranks, and the builder limit."""
    out = {}
    for ram in NODE_RAM_GB:
        budget = 0.8 * ram * 1e9 - RANKS_PER_NODE * RANK_OVERHEAD_GB * 1e9
        per_clip = build["frames_bytes_per_clip"] + RANKS_PER_NODE * per_rank["private_bytes_per_clip"]
        builder = 2 * build["frames_bytes_per_clip"] + build["embedding_bytes_per_caption"]
        out[f"{ram}GB"] = {"training": int(max(budget, 0) / per_clip), "builder": int(0.8 * ram * 1e9 / builder)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=24, help="4 s clips built")
    ap.add_argument("--long-clips", type=int, default=6, help="30 s clips built")
    ap.add_argument("--tile", type=int, default=10_000, help="clips in the tiled 4 s cache (30 s: tile // 7)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--no-text", action="store_true", help="skip the MiniLM caption-encoding measurement")
    ap.add_argument("--rank-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_worker:
        return rank_worker(args.rank_worker)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="musegen-scaling-") as tmp:
        root = Path(tmp)
        builds, per_rank = {}, {}
        for seconds, n, tile in ((4.0, args.clips, args.tile), (30.0, args.long_clips, args.tile // 7)):
            build, path = measure_build(root, n, seconds)
            ranks = run_ranks(tile_cache(path, root / f"tiled-{seconds:g}", tile), args.ranks)
            r0 = ranks[0]
            per_rank[seconds] = {
                "tiled_clips": r0["clips"], "ranks": args.ranks, "frames_mb": round(r0["frames_bytes"] / 2**20, 1),
                "load_s": round(statistics.median(r["load_s"] for r in ranks), 3),
                "setup_s": round(statistics.median(r["setup_s"] for r in ranks), 3),
                "setup_s_per_clip": statistics.median(r["setup_s"] for r in ranks) / r0["clips"],
                "rss_mb_per_rank": round(statistics.median(r["rss"] for r in ranks) / 2**20, 1),
                "pss_mb_per_rank": round(statistics.median(r["pss"] for r in ranks) / 2**20, 1),
                "shared_mb_per_rank": round(statistics.median(r["shared"] for r in ranks) / 2**20, 1),
                "private_bytes_per_clip": statistics.median(r["private"] for r in ranks) / r0["clips"],
                "windows_per_clip": r0["windows"] / r0["clips"],
                "frames_mapping_mb_rank0": {k: round(v / 2**20, 1) for k, v in r0["frames_mapped"].items()},
            }
            builds[seconds] = build
        text = None if args.no_text else measure_text()
    result = {
        "what": "cache_scaling",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "mem_total_gb": gb(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")),
                    "loadavg_1m_before": round(load_before, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "assumptions": {"segment_frames": SEGMENT, "window_stride": STRIDE, "ranks_per_node": RANKS_PER_NODE,
                        "rank_overhead_gb": RANK_OVERHEAD_GB, "usable_ram_fraction": 0.8,
                        "captions": "every caption unique (worst case for text)"},
        "build": {f"{s:g}s": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in b.items()}
                  for s, b in builds.items()},
        "per_rank": {f"{s:g}s": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}
                     for s, r in per_rank.items()},
        "text": text,
        "extrapolated": [row for s in builds for row in extrapolate(builds[s], per_rank[s], text)],
        "max_clips_per_node": {f"{s:g}s": max_clips(builds[s], per_rank[s]) for s in builds},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
