"""The LightningDataModule: source -> cache (rank 0) -> grouped splits -> training windows.

A window is `context_frames` frames of context (left-padded with zeros and masked when the clip has
fewer before the target, down to none at t = 0, so the model also learns to start from text alone)
followed by a target of `segment_frames` frames. Frames are sliced lazily from the cache, so a
dataset holds only two index tensors.

Clips shorter than one window (fewer than `segment_frames` frames, the model's own
model.segment_frames) are skipped before the split: a target cannot be padded, since the loss is taken
on every target frame, and the context is padded and masked already. Each skipped clip is named in the
setup's summary log with its length, and kept in `skipped`. This is the only length rule: the cache
stores every clip, whatever its length, so cache and model cannot disagree, and a model with a shorter
window uses the same cache. A source where every clip is shorter than a window raises TooShortError,
naming the source and the lengths.

Long recordings are split by the cache into consecutive clips of `max_clip_seconds`, all in the file's
group; `max_file_seconds` caps how much of each file is read (None: all of it).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader

from musegen.data.build import build_cache, open_cache
from musegen.data.cache import DEFAULT_CLIP_SECONDS, CacheError, FeatureCache, cache_key
from musegen.data.clips import Clip
from musegen.data.splits import split_groups
from musegen.data.windows import EpochShuffle, WindowDataset
from musegen.features import FeatureConfig
from musegen.model.conditioning import reference_embedding
from musegen.text import SentenceEncoder

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
STD_FLOOR = 1e-3
SHOW_SKIPPED = 50  # skipped clips named in the summary log line
# Feature settings of earlier versions that no longer exist, dropped so their run folders still load.
RETIRED_FEATURES = {"min_frames": "the minimum clip length is now the model's window, model.segment_frames"}


class TooShortError(CacheError, ValueError):
    """Every clip of a source is shorter than one training window; the message says by how much."""


def plain_config(obj: Any) -> Any:
    """OmegaConf containers -> plain dict/list, so hyper-parameters load with weights_only=True."""
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def feature_config(features: Mapping[str, Any] | FeatureConfig | None) -> FeatureConfig:
    """FeatureConfig from a config dict (unknown keys rejected by name), or the defaults for None."""
    if features is None:
        return FeatureConfig()
    if isinstance(features, FeatureConfig):
        return features
    for key in RETIRED_FEATURES.keys() & set(features):
        log.info("features.%s is ignored: %s", key, RETIRED_FEATURES[key])
    features = {k: v for k, v in features.items() if k not in RETIRED_FEATURES}
    unknown = set(features) - set(FeatureConfig.__dataclass_fields__)
    if unknown:
        known = sorted(FeatureConfig.__dataclass_fields__)
        raise ValueError(f"features: unknown key(s) {sorted(unknown)}; known: {known}")
    return FeatureConfig(**dict(features))


def clip_references(cache: FeatureCache) -> torch.Tensor:
    """Per-clip reference embedding (musegen.model.conditioning.reference_embedding), [n, 2 * dim]."""
    out = torch.empty(len(cache), 2 * cache.frames.shape[1], dtype=torch.float32)
    for i in range(len(cache)):
        out[i] = reference_embedding(cache.clip_frames(i))
    return out


def frame_stats(cache: FeatureCache, clips: list[int], floor: float = STD_FLOOR) -> dict[str, torch.Tensor]:
    """Per-dimension mean and std (floored) over every frame of `clips`, in float64 for stability."""
    dim = cache.frames.shape[1]
    total, sq, n = torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64), 0
    for i in clips:
        frames = cache.clip_frames(i).double()
        total += frames.sum(0)
        sq += (frames * frames).sum(0)
        n += len(frames)
    if n == 0:
        raise ValueError("frame_stats: no frames in the given clips")
    mean = total / n
    std = (sq / n - mean * mean).clamp_min(0).sqrt().clamp_min(floor)
    return {"mean": mean.float(), "std": std.float()}


def absolute(clip: Clip) -> Clip:
    return replace(clip, path=str(Path(clip.path).resolve()),
                   midi=str(Path(clip.midi).resolve()) if clip.midi else None)


class MuseDataModule(L.LightningDataModule):
    """Source -> feature cache -> grouped train/val/test windows, with train-only normalisation stats."""

    def __init__(self, source: Any, features: Mapping[str, Any] | None = None, cache_dir: str = "data/cache",
                 text_encoder: Any = None, context_frames: int = 32, segment_frames: int = 16,
                 window_stride: int = 8, batch_size: int = 32, num_workers: int = 2, loader_workers: int = 0,
                 val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                 max_clip_seconds: float | None = DEFAULT_CLIP_SECONDS, max_file_seconds: float | None = None) -> None:
        super().__init__()
        features = feature_config(plain_config(features)).to_dict()  # plain dict: checkpoints load weights_only
        self._check_args(context_frames, segment_frames, window_stride, batch_size, num_workers,
                         loader_workers, val_fraction, test_fraction, max_clip_seconds, max_file_seconds)
        self.save_hyperparameters(ignore=["source", "text_encoder"])
        self.source = source
        self.feature_config = FeatureConfig.from_dict(features)
        self._text_encoder = text_encoder
        self._clips: list[Clip] | None = None
        self._key: str | None = None
        self.cache: FeatureCache | None = None
        self.stats: dict[str, torch.Tensor] | None = None
        self.labels: list[str] = []
        self.split_clips: dict[str, list[int]] = {}
        self.skipped: list[int] = []  # clips (into `cache`) shorter than one window
        self.datasets: dict[str, WindowDataset] = {}

    @staticmethod
    def _check_args(context_frames: int, segment_frames: int, window_stride: int, batch_size: int,
                    num_workers: int, loader_workers: int, val_fraction: float, test_fraction: float,
                    max_clip_seconds: float | None, max_file_seconds: float | None) -> None:
        """Fail fast with the argument's name, before any audio is read."""
        positive = dict(context_frames=context_frames, segment_frames=segment_frames,
                        window_stride=window_stride, batch_size=batch_size, num_workers=num_workers)
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{name} must be an int >= 1, got {value!r}")
        if not isinstance(loader_workers, int) or loader_workers < 0:
            raise ValueError(f"data.loader_workers must be an int >= 0, got {loader_workers!r}")
        for name, value in dict(val_fraction=val_fraction, test_fraction=test_fraction).items():
            if not 0 <= value < 1:
                raise ValueError(f"data.{name} must be in [0, 1), got {value!r}")
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"data.val_fraction + data.test_fraction must be < 1, got {val_fraction + test_fraction}")
        for name, value in dict(max_clip_seconds=max_clip_seconds, max_file_seconds=max_file_seconds).items():
            if value is not None and not value > 0:
                raise ValueError(f"data.{name} must be > 0 or null, got {value!r}")

    # -- cache -------------------------------------------------------------------------------
    @property
    def text_encoder(self) -> Any:
        """The encoder given by train.py, else the default offline MiniLM (created on first use)."""
        if self._text_encoder is None:
            self._text_encoder = SentenceEncoder()
        return self._text_encoder

    def clips(self) -> list[Clip]:
        """The source's clips with absolute paths (so the cache key does not depend on the directory a
        command runs in), listed once per process."""
        if self._clips is None:
            self._clips = [absolute(c) for c in self.source.clips()]
        return self._clips

    def _build_args(self) -> dict[str, Any]:
        """build_cache's settings, the one place prepare_data, setup and the key agree on."""
        hp = self.hparams
        return dict(num_workers=hp.num_workers, clip_seconds=hp.max_clip_seconds,
                    max_file_seconds=hp.max_file_seconds, source=repr(self.source), key=self.cache_key())

    def cache_key(self) -> str:
        """The cache key for this source/config."""
        if self._key is None:
            self._key = cache_key(self.clips(), self.feature_config, self.text_encoder.identity,
                                  self.hparams.max_clip_seconds, self.hparams.max_file_seconds)
        return self._key

    def prepare_data(self) -> None:
        """Build the cache if missing (Lightning calls this on local rank 0 only)."""
        build_cache(self.clips(), self.feature_config, self.text_encoder, self.hparams.cache_dir,
                    **self._build_args())

    def _load(self) -> FeatureCache:
        """The cache, built here when prepare_data was not called (plain use) or the files changed since,
        and rebuilt when damaged."""
        return open_cache(self.clips(), self.feature_config, self.text_encoder, self.hparams.cache_dir,
                          **self._build_args())

    # -- setup -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Load the cache (every rank), split by group, compute train stats and build the windows."""
        if self.cache is not None:
            return
        cache = self._load()
        hp = self.hparams
        if cache.features != self.feature_config:
            raise CacheError(f"data: cache {cache.path} was built with other feature settings")
        lengths = cache.lengths.tolist()
        kept = [i for i, n in enumerate(lengths) if n >= hp.segment_frames]
        self.skipped = [i for i, n in enumerate(lengths) if n < hp.segment_frames]
        if not kept:
            raise self._too_short(cache)
        self.labels = sorted({cache.labels[i] for i in kept})
        label_ids = torch.tensor([self.labels.index(y) if y in self.labels else -1 for y in cache.labels],
                                 dtype=torch.long)  # -1: a skipped clip's label, never used
        parts = split_groups([cache.groups[i] for i in kept], [cache.labels[i] for i in kept],
                             hp.val_fraction, hp.test_fraction, hp.seed)
        where = {g: s for s, gs in parts.items() for g in gs}
        self.split_clips = {s: [i for i in kept if where[cache.groups[i]] == s] for s in SPLITS}
        self.stats = frame_stats(cache, self.split_clips["train"])
        references = clip_references(cache)
        self.datasets = {
            s: WindowDataset(cache, self.split_clips[s], hp.context_frames, hp.segment_frames, hp.window_stride,
                             references, label_ids)
            for s in SPLITS
        }
        self.cache = cache
        self._log_summary(parts)

    def _seconds(self, frames: int) -> float:
        return frames * self.feature_config.frame_seconds

    def _describe(self, i: int) -> str:
        """'kick.wav (0.209 s)', or 'long.wav from 60 s (0.1 s)' for a later clip of a split file."""
        start = self.cache.starts[i]
        where = f" from {start:g} s" if start else ""
        return f"{Path(self.cache.paths[i]).name}{where} ({self._seconds(int(self.cache.lengths[i])):.3f} s)"

    def _too_short(self, cache: FeatureCache) -> TooShortError:
        longest = int(cache.lengths.max())
        k = self.hparams.segment_frames
        return TooShortError(
            f"data: every one of the {len(cache)} clips from {self.source!r} is shorter than one training "
            f"window: the longest has {longest} frames ({self._seconds(longest):.3f} s), a window needs "
            f"model.segment_frames={k} frames ({self._seconds(k):.3f} s). Add longer recordings or choose a "
            f"model with a smaller segment_frames.")

    def _log_summary(self, parts: dict[str, list[str]]) -> None:
        sizes = ", ".join(f"{s}: {len(parts[s])} groups / {len(self.split_clips[s])} clips / "
                          f"{len(self.datasets[s])} windows" for s in SPLITS)
        log.info("data: %d clips, labels %s; %s", len(self.cache) - len(self.skipped), self.labels, sizes)
        if self.skipped:
            k, lengths = self.hparams.segment_frames, self.cache.lengths
            names = [self._describe(i) for i in self.skipped[:SHOW_SKIPPED]]
            more = len(self.skipped) - len(names)
            log.warning("data: skipped %d of %d clips (%.1f s of audio) shorter than one window of "
                        "model.segment_frames=%d frames (%.3f s): %s%s", len(self.skipped), len(self.cache),
                        self._seconds(int(lengths[self.skipped].sum())), k, self._seconds(k), ", ".join(names),
                        f" and {more} more" if more else "")
        for s in ("val", "test"):
            if not self.datasets[s] and getattr(self.hparams, f"{s}_fraction") > 0:
                log.warning("data: the %s split is empty (%d groups in all)", s, sum(map(len, parts.values())))

    # -- accessors ----------------------------------------------------------------------------
    def clip_indices(self, split: str) -> list[int]:
        """Clip indices of 'train', 'val' or 'test'."""
        self._require_setup()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return list(self.split_clips[split])

    def train_clips(self, max_frames: int = 1 << 18) -> list[torch.Tensor]:
        """Raw frames of the train split's clips ([T_i, dim] each), about ``max_frames`` frames at
        most (an evenly spaced subset of the clips beyond that): what a head fits its codebook on
        before training. Whole clips, so that a head can quantise runs of consecutive frames."""
        self._require_setup()
        clips = [self.cache.clip_frames(i) for i in self.split_clips["train"]]
        total = sum(len(c) for c in clips)
        if total > max_frames:
            clips = clips[:: math.ceil(total / max_frames)]
        return clips

    def _require_setup(self) -> None:
        if self.cache is None:
            raise RuntimeError("MuseDataModule: call setup() first")

    # -- loaders ------------------------------------------------------------------------------
    def dataloader(self, split: str, shuffle: bool = False) -> DataLoader:
        """Batches of one split's windows (train/val/test); shuffled by seed and epoch when asked."""
        self._require_setup()
        workers = self.hparams.loader_workers
        sampler = EpochShuffle(self.datasets[split], self.hparams.seed) if shuffle else None
        generator = torch.Generator().manual_seed(self.hparams.seed) if shuffle else None
        return DataLoader(self.datasets[split], batch_size=self.hparams.batch_size, sampler=sampler,
                          generator=generator, num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test", shuffle=False)
