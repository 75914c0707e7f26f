"""Building the feature cache: every clip's frames (in parallel worker processes) and caption embedding,
written under a temporary name and committed by rename with its completion marker, so a killed
build leaves nothing a later run trusts; a damaged cache is discarded and rebuilt once."""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import socket
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from musegen import features as F
from musegen.data.cache import (
    CACHE_FORMAT,
    DEFAULT_CLIP_SECONDS,
    FRAMES_FILE,
    MARKER,
    META_FILE,
    REPORT_FILE,
    TEXT_FILE,
    CacheDamaged,
    CacheError,
    FeatureCache,
    cache_key,
    discard,
    find_cache,
    is_complete,
    load_cache,
    write_marker,
)
from musegen.data.clips import Clip
from musegen.features import FeatureConfig
from musegen.io import write_json
from musegen.text import TextEncoder

log = logging.getLogger(__name__)


@dataclass
class Extracted:
    """What one file gave: clips of frames with their start (seconds), or the reason it gave none."""

    pieces: list[tuple[float, np.ndarray]] = field(default_factory=list)
    seconds: float = 0.0    # the whole file's duration, whether read or not
    used: float = 0.0       # seconds of audio behind the pieces
    reason: str | None = None


def extract_clip(path: str, features: dict, clip_seconds: float | None,
                 max_file_seconds: float | None) -> Extracted:
    """One file -> its clips' frames, or the reason it has none. Runs in worker processes; never raises."""
    try:
        cfg = FeatureConfig.from_dict(features)
        y, seconds = F.read_audio(path, cfg.sample_rate, max_file_seconds)
        out = Extracted(seconds=seconds)  # a silent file still counts in the seconds there were
        try:
            F.check_usable(y, cfg, path)
        except F.AudioError as e:
            out.reason = str(e)
            return out
        for start, piece in F.split_clips(y, cfg.sample_rate, clip_seconds):
            if F.is_silent(piece, cfg):
                continue
            frames = F.extract(piece, cfg)
            if not np.all(np.isfinite(frames)):
                return Extracted(seconds=seconds, reason=f"{path}: features contain NaN or infinite values")
            if frames.ndim != 2 or frames.shape[1] != cfg.dim:
                return Extracted(seconds=seconds,
                                 reason=f"{path}: features have shape {frames.shape}, expected [T, {cfg.dim}]")
            out.pieces.append((start, np.ascontiguousarray(frames, dtype=np.float32)))
            out.used += len(piece) / cfg.sample_rate
        out.used = min(out.used, seconds)  # resampling may round the length up by a sample
        return out
    except F.AudioError as e:
        return Extracted(reason=str(e))
    except Exception as e:  # noqa: BLE001 - one bad file must never stop the build
        return Extracted(reason=f"{path}: {type(e).__name__}: {e}")


def _extract_all(clips: Sequence[Clip], features: FeatureConfig, num_workers: int,
                 clip_seconds: float | None, max_file_seconds: float | None) -> list[Extracted]:
    """What each clip's file gave, in clip order whatever the completion order."""
    cfg = features.to_dict()
    results = [Extracted(reason="not processed")] * len(clips)
    num_workers = max(1, min(num_workers, len(clips)))
    bar = tqdm(total=len(clips), desc="cache: extracting features", unit="file", dynamic_ncols=True)
    try:
        if num_workers == 1:
            with _single_threaded():
                for i, clip in enumerate(clips):
                    results[i] = extract_clip(clip.path, cfg, clip_seconds, max_file_seconds)
                    bar.update()
            return results
        _warm_up(features)
        with ProcessPoolExecutor(max_workers=num_workers, initializer=_worker_init) as pool:
            futures = {pool.submit(extract_clip, c.path, cfg, clip_seconds, max_file_seconds): i
                       for i, c in enumerate(clips)}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    results[i] = fut.result()
                except Exception as e:  # noqa: BLE001 - e.g. a worker killed by a crashing decoder
                    results[i] = Extracted(reason=f"{clips[i].path}: worker failed ({type(e).__name__}: {e})")
                bar.update()
        return results
    finally:
        bar.close()


def _single_threaded() -> contextlib.AbstractContextManager:
    """BLAS/OpenMP limited to one thread while extracting. Each clip's work is small, so extra threads
    mostly spin: measured here, single-threaded extraction used about 3x less CPU per clip. It also
    keeps results bit-identical whatever the number of workers."""
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415 - optional (it comes with scikit-learn)

        return threadpool_limits(1)
    except Exception:  # noqa: BLE001 - threadpoolctl is optional (it comes with scikit-learn)
        log.debug("cache: could not limit BLAS/OpenMP threads", exc_info=True)
        return contextlib.nullcontext()


def _worker_init() -> None:
    """Extraction workers stay single-threaded for their whole life: the workers are the parallelism."""
    _single_threaded()


def _warm_up(features: FeatureConfig) -> None:
    """Run the extractor once on a synthetic tone before forking, so every forked worker inherits
    librosa's JIT-compiled (numba) functions instead of compiling them again (seconds each)."""
    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    if method != "fork":
        return
    t = np.arange(features.sample_rate // 2) / features.sample_rate
    try:
        F.extract((0.3 * np.sin(2 * np.pi * 440.0 * t) * (1 + 0.2 * np.sin(2 * np.pi * 3 * t))).astype(np.float32),
                  features)
    except Exception:  # noqa: BLE001 - a warm-up only; real errors surface per file
        log.debug("cache: extractor warm-up failed", exc_info=True)


def _encode_captions(encoder: TextEncoder, captions: list[str]) -> torch.Tensor:
    """Embeddings of the unique captions, float32 [U, D], checked for shape and finiteness."""
    emb = encoder.encode(captions)
    emb = torch.as_tensor(emb).detach().to("cpu", torch.float32).contiguous()
    if emb.shape != (len(captions), encoder.dim):
        raise CacheError(f"text encoder {encoder.identity} returned {tuple(emb.shape)} for "
                         f"{len(captions)} captions, expected ({len(captions)}, {encoder.dim})")
    if not torch.isfinite(emb).all():
        raise CacheError(f"text encoder {encoder.identity} returned NaN/inf embeddings")
    return emb


def _summarise(report: dict[str, Any], report_path: Path) -> None:
    seconds = report["seconds"]
    log.info("cache: %d of %d files usable, %d clips, %.1f of %.1f s of audio used (%s)", report["usable"],
             report["total"], report["clips"], seconds["used"], seconds["total"], report_path)
    skipped, total = report["skipped"], report["total"]
    if not skipped:
        return
    kinds = Counter(_reason_kind(s["reason"]) for s in skipped)
    examples = "; ".join(s["reason"] for s in skipped[:3])
    log.warning("cache: skipped %d of %d files (%s), e.g. %s. Full list: %s", len(skipped), total,
                ", ".join(f"{k}: {n}" for k, n in kinds.most_common()), examples, report_path)


def _reason_kind(reason: str) -> str:
    """Short category of a skip reason for the summary line ('silent', 'no such file', ...)."""
    for kind in ("no such file", "empty file", "not readable", "silent", "NaN", "no samples"):
        if kind in reason:
            return kind
    return "other"


def _tmp_dir(cache_dir: Path, key: str) -> Path:
    return cache_dir / f".{key}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _remove_stale(cache_dir: Path, key: str) -> None:
    """Delete leftovers of interrupted builds of `key` on this host (their process is gone)."""
    host, prefix = socket.gethostname(), f".{key}.tmp-"
    for tmp in cache_dir.glob(f"{prefix}*"):
        owner = tmp.name[len(prefix):].rsplit("-", 2)  # host-pid-random; host may contain dashes
        if len(owner) == 3 and owner[0] == host and owner[1].isdigit() and not _pid_alive(int(owner[1])):
            log.info("cache: removing interrupted build %s", tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    final = cache_dir / key
    if final.exists() and not is_complete(final):
        log.warning("cache: %s has no %s marker (interrupted or foreign); rebuilding it", final, MARKER)
        shutil.rmtree(final, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build_cache(clips: Sequence[Clip], features: FeatureConfig, encoder: TextEncoder, cache_dir: str | Path,
                num_workers: int = 1, clip_seconds: float | None = DEFAULT_CLIP_SECONDS,
                max_file_seconds: float | None = None, source: str | None = None, key: str | None = None) -> Path:
    """Return the complete cache directory for these clips, building it if needed.

    A hit touches no audio. On a miss: extract (in parallel), split long files into clips, skip and
    report bad files, encode each unique caption once, write everything under a temporary name and
    rename it into place. `key` may be passed when the caller already computed cache_key(...) with
    the same arguments.
    """
    cache_dir = Path(cache_dir)
    key = key or cache_key(clips, features, encoder.identity, clip_seconds, max_file_seconds)
    if (hit := find_cache(cache_dir, key)) is not None:
        log.info("cache: hit %s", hit)
        return hit
    if not clips:
        raise CacheError(f"cache: source {source or '?'} yielded no clips")
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(cache_dir, key)
    log.info("cache: building %s from %d files (%s, %d workers)", key, len(clips), source or "clips", num_workers)
    results = _extract_all(clips, features, num_workers, clip_seconds, max_file_seconds)
    report = _report(clips, results, source, key, clip_seconds, max_file_seconds)
    pieces = [(clip, start, frames) for clip, r in zip(clips, results) for start, frames in r.pieces]
    if not pieces:
        failed = cache_dir / f"{key}.report.json"
        write_json(failed, report)
        raise CacheError(f"cache: no usable audio among {len(clips)} clips from {source or 'the source'}; "
                         f"every file was skipped, reasons in {failed}")
    tmp = _tmp_dir(cache_dir, key)
    tmp.mkdir()
    try:
        _write(tmp, pieces, encoder, features, key, report)
        return _commit(tmp, cache_dir / key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _report(clips: Sequence[Clip], results: list[Extracted], source: str | None, key: str,
            clip_seconds: float | None, max_file_seconds: float | None) -> dict[str, Any]:
    skipped = [{"path": c.path, "reason": r.reason} for c, r in zip(clips, results) if r.reason is not None]
    return {"source": source, "key": key, "total": len(clips), "usable": len(clips) - len(skipped),
            "clips": sum(len(r.pieces) for r in results), "clip_seconds": clip_seconds,
            "max_file_seconds": max_file_seconds,
            "seconds": {"total": round(sum(r.seconds for r in results), 3),
                        "used": round(sum(r.used for r in results), 3)},
            "skipped": skipped}


def _write(tmp: Path, pieces: list[tuple[Clip, float, np.ndarray]], encoder: TextEncoder,
           features: FeatureConfig, key: str, report: dict) -> None:
    """Write every cache file into `tmp`; the marker, with every file's size and checksum, goes last."""
    frames = [f for _, _, f in pieces]
    lengths = torch.tensor([len(f) for f in frames], dtype=torch.long)
    offsets = torch.zeros(len(frames) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)
    torch.save({"frames": torch.from_numpy(np.concatenate(frames, axis=0)), "offsets": offsets}, tmp / FRAMES_FILE)
    unique = sorted({c.caption for c, _, _ in pieces})
    index = {caption: i for i, caption in enumerate(unique)}
    emb = _encode_captions(encoder, unique)
    torch.save({"embeddings": emb, "caption_index": torch.tensor([index[c.caption] for c, _, _ in pieces]),
                "captions": unique}, tmp / TEXT_FILE)
    meta = {
        "format": CACHE_FORMAT, "key": key, "features": features.to_dict(), "text_identity": encoder.identity,
        "text_dim": int(encoder.dim), "clip_seconds": report["clip_seconds"],
        "max_file_seconds": report["max_file_seconds"],
        "clips": [{"path": c.path, "caption": c.caption, "label": c.label, "group": c.group, "midi": c.midi,
                   "start": start} for c, start, _ in pieces],
    }
    write_json(tmp / META_FILE, meta)
    write_json(tmp / REPORT_FILE, report)
    _summarise(report, tmp.parent / key / REPORT_FILE)
    write_marker(tmp, key)


def _commit(tmp: Path, final: Path) -> Path:
    """Rename the finished build into place; if another process won the race, keep its copy."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not is_complete(final):
            raise
        log.info("cache: %s was completed by another process; discarding this build", final)
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("cache: wrote %s", final)
    return final


def open_cache(clips: Sequence[Clip], features: FeatureConfig, encoder: TextEncoder, cache_dir: str | Path,
               **build: Any) -> FeatureCache:
    """The loaded cache for these clips: built when missing, and discarded and rebuilt once when damaged.
    `build` holds build_cache's keyword arguments."""
    path = build_cache(clips, features, encoder, cache_dir, **build)
    try:
        return load_cache(path)
    except CacheDamaged as e:
        log.warning("%s; discarding it and rebuilding", e)
        discard(path)
    return load_cache(build_cache(clips, features, encoder, cache_dir, **build))
