"""The feature cache: every clip's frames and caption embedding, computed once, trusted only when complete.

A cache lives in `cache_dir/<key>/`, where the key hashes everything it depends on (clips and their
files' size and mtime, feature settings, text encoder, clip length and per-file cap, CACHE_FORMAT). It is
built under a temporary name and renamed when complete, with a COMPLETE marker written last, so a killed
build leaves nothing a later run trusts. The marker records the size and sha256 of every file it covers;
loading checks them, so a cache damaged later (a truncated copy, a full disk) is refused as CacheDamaged
and rebuilt by `open_cache`. Files are plain tensors/dicts (torch.save) and JSON: loading uses
`torch.load(weights_only=True)` and never unpickles an object.

Long recordings are not cut: each file is split into consecutive clips of `clip_seconds` (the last one
holds the rest), all with the file's group, so a split never puts parts of one recording on both sides.
`max_file_seconds` optionally caps how much of each file is read. Silent pieces are dropped. Clips are
never judged by length here: how long a clip must be is the model's window, which the datamodule applies.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from musegen.data.clips import Clip
from musegen.features import FeatureConfig

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
DEFAULT_CLIP_SECONDS = 30.0
MARKER = "COMPLETE"
FRAMES_FILE, TEXT_FILE, META_FILE, REPORT_FILE = "frames.pt", "text.pt", "meta.json", "report.json"
CHECKED_FILES = (FRAMES_FILE, TEXT_FILE, META_FILE, REPORT_FILE)


class CacheError(RuntimeError):
    """A cache that cannot be built (nothing usable) or loaded (incomplete, wrong format)."""


class CacheDamaged(CacheError):
    """A complete cache whose files no longer match the sizes and checksums its marker recorded."""


@dataclass
class FeatureCache:
    """Loaded cache: frames of all usable clips concatenated, plus per-clip text and metadata."""

    path: Path
    key: str
    frames: torch.Tensor          # float32 [sum(T_i), dim]
    offsets: torch.Tensor         # long [n + 1]: clip i is frames[offsets[i]:offsets[i + 1]]
    text: torch.Tensor            # float32 [U, D]: one embedding per unique caption
    caption_index: torch.Tensor   # long [n]: row of `text` for each clip
    paths: list[str]
    captions: list[str]
    labels: list[str]
    groups: list[str]
    midi: list[str | None]
    starts: list[float]           # where each clip begins in its file, seconds
    features: FeatureConfig
    text_identity: str
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def lengths(self) -> torch.Tensor:
        """Frames per clip, long [n]."""
        return self.offsets[1:] - self.offsets[:-1]

    def clip_frames(self, i: int) -> torch.Tensor:
        """Raw frames of clip i, [T_i, dim] (a view, no copy)."""
        return self.frames[self.offsets[i]:self.offsets[i + 1]]

    def clip_text(self, i: int) -> torch.Tensor:
        """Caption embedding of clip i, [D]."""
        return self.text[self.caption_index[i]]


def _file_stamp(path: str) -> tuple[int | None, int | None]:
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None, None


def cache_key(clips: Sequence[Clip], features: FeatureConfig, text_identity: str,
              clip_seconds: float | None = DEFAULT_CLIP_SECONDS, max_file_seconds: float | None = None) -> str:
    """Hash of everything the cache content depends on; any change gives a new cache directory."""
    spec = {
        "format": CACHE_FORMAT,
        "features": features.to_dict(),
        "text": text_identity,
        "clip_seconds": clip_seconds,
        "max_file_seconds": max_file_seconds,
        "clips": [[c.path, *_file_stamp(c.path), c.caption, c.label, c.group, c.midi] for c in clips],
    }
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:20]


def is_complete(path: Path) -> bool:
    """A cache directory is trusted only with its marker, which is written last."""
    return (path / MARKER).is_file()


def find_cache(cache_dir: str | Path, key: str) -> Path | None:
    """The complete cache for `key` under cache_dir, or None."""
    path = Path(cache_dir) / key
    return path if is_complete(path) else None


def write_marker(path: Path, key: str) -> None:
    """Mark a cache directory complete, recording the size and sha256 of each of its files."""
    files = {name: _fingerprint(path / name) for name in CHECKED_FILES}
    (path / MARKER).write_text(json.dumps({"format": CACHE_FORMAT, "key": key, "files": files}))


def _fingerprint(path: Path) -> dict[str, Any]:
    """Size and sha256 of one cache file (small files: hashing all of them at load costs milliseconds)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def verify(path: Path) -> None:
    """Raise CacheDamaged unless every file the marker covers has its recorded size and checksum."""
    try:
        recorded = json.loads((path / MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheDamaged(f"cache: {path}/{MARKER} is unreadable or lists no files ({type(e).__name__}: {e})") from e
    for name, expected in recorded.items():
        file = path / name
        actual = _fingerprint(file) if file.is_file() else {"size": None, "sha256": None}
        if actual != expected:
            raise CacheDamaged(f"cache: {file} is damaged (size {actual['size']}, expected {expected.get('size')}; "
                               f"sha256 {'matches' if actual['sha256'] == expected.get('sha256') else 'differs'})")


def discard(path: Path) -> None:
    """Remove a cache directory: first renamed out of the way (atomic), so no reader finds half of it."""
    doomed = path.parent / f".{path.name}.discarded-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, doomed)
    except OSError:  # already gone (another process discarded it first)
        return
    shutil.rmtree(doomed, ignore_errors=True)


def load_cache(path: str | Path) -> FeatureCache:
    """Load a complete cache directory (weights_only, memory-mapped frames). Refuses incomplete ones
    (CacheError) and damaged ones (CacheDamaged: a file differs from what the marker recorded)."""
    path = Path(path)
    if not is_complete(path):
        raise CacheError(f"cache: {path} is not a complete cache (no {MARKER} marker); it will be rebuilt")
    verify(path)
    meta = json.loads((path / META_FILE).read_text())
    if meta.get("format") != CACHE_FORMAT:
        raise CacheError(f"cache: {path} has format {meta.get('format')}, this code reads {CACHE_FORMAT}")
    frames = torch.load(path / FRAMES_FILE, map_location="cpu", weights_only=True, mmap=True)
    text = torch.load(path / TEXT_FILE, map_location="cpu", weights_only=True, mmap=True)
    report_path = path / REPORT_FILE
    clips = meta["clips"]
    return FeatureCache(
        path=path, key=meta["key"], frames=frames["frames"], offsets=frames["offsets"],
        text=text["embeddings"], caption_index=text["caption_index"],
        paths=[c["path"] for c in clips], captions=[c["caption"] for c in clips],
        labels=[c["label"] for c in clips], groups=[c["group"] for c in clips], midi=[c["midi"] for c in clips],
        starts=[c["start"] for c in clips],
        features=FeatureConfig.from_dict(meta["features"]), text_identity=meta["text_identity"],
        report=json.loads(report_path.read_text()) if report_path.is_file() else {},
    )


