"""The LightningDataModule: source -> cache (rank 0) -> grouped splits -> training windows.

A window is `context_frames` frames of context (left-padded with zeros and masked when the clip has
fewer before the target, down to none at t = 0, so the model also learns to start from text alone)
followed by a target of `segment_frames` frames. Frames are sliced lazily from the cache, so a
dataset holds only two index tensors.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, RandomSampler

from musegen.data.cache import (
    DEFAULT_MAX_SECONDS, CacheError, FeatureCache, build_cache, cache_key, find_cache, load_cache,
)
from musegen.data.clips import Clip
from musegen.features import FeatureConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
STD_FLOOR = 1e-3


def _plain(obj: Any) -> Any:
    """OmegaConf containers -> plain dict/list, so hyper-parameters load with weights_only=True."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        pass
    return obj


def feature_config(features: Mapping[str, Any] | FeatureConfig | None) -> FeatureConfig:
    """FeatureConfig from a config dict (unknown keys rejected by name), or the defaults for None."""
    if features is None:
        return FeatureConfig()
    if isinstance(features, FeatureConfig):
        return features
    unknown = set(features) - set(FeatureConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"features: unknown key(s) {sorted(unknown)}; known: {sorted(FeatureConfig.__dataclass_fields__)}")
    return FeatureConfig(**dict(features))


def clip_references(cache: FeatureCache) -> torch.Tensor:
    """Per-clip pooled reference embedding: mean and std over time of the raw frames, [n, 2 * dim]."""
    out = torch.empty(len(cache), 2 * cache.frames.shape[1], dtype=torch.float32)
    for i in range(len(cache)):
        frames = cache.clip_frames(i).double()
        out[i] = torch.cat([frames.mean(0), frames.std(0, unbiased=False)]).float()
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


def split_groups(groups: list[str], labels: list[str], val_fraction: float, test_fraction: float,
                 seed: int) -> dict[str, list[str]]:
    """Assign whole groups to train/val/test with scikit-learn, stratified by label where possible.

    With >= 2 groups val gets at least one (if val_fraction > 0); with >= 3 test does too (if
    test_fraction > 0); train always keeps at least one.
    """
    unique = sorted(set(groups))
    group_label = _group_labels(groups, labels)
    n_test, n_val = _split_sizes(len(unique), val_fraction, test_fraction)
    rest, test = _take(unique, group_label, n_test, seed)
    train, val = _take(rest, group_label, n_val, seed + 1)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def _group_labels(groups: list[str], labels: list[str]) -> dict[str, str]:
    """The majority label of each group (a piece can be rendered on several instruments)."""
    counts: dict[str, Counter] = {}
    for g, y in zip(groups, labels):
        counts.setdefault(g, Counter())[y] += 1
    return {g: c.most_common(1)[0][0] for g, c in counts.items()}


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_test = round(test_fraction * n)
    n_val = round(val_fraction * n)
    if test_fraction > 0 and n >= 3:
        n_test = max(n_test, 1)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    while n_test + n_val > n - 1 and (n_test or n_val):  # train keeps at least one group
        if n_test >= n_val and n_test:
            n_test -= 1
        else:
            n_val -= 1
    return n_test, n_val


def _take(items: list[str], group_label: dict[str, str], n: int, seed: int) -> tuple[list[str], list[str]]:
    """Split `n` items off `items`, stratified by their label when every class allows it."""
    if n == 0:
        return list(items), []
    strata = [group_label[g] for g in items]
    try:
        rest, taken = train_test_split(items, test_size=n, random_state=seed, stratify=strata)
    except ValueError:  # a class with one group, or fewer taken than classes: plain random
        rest, taken = train_test_split(items, test_size=n, random_state=seed)
    return list(rest), list(taken)


def window_index(lengths: torch.Tensor, clips: list[int], segment: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(clip, start) of every target window: starts 0, stride, ... while the target fits."""
    clip_ids, starts = [], []
    for c in clips:
        t = torch.arange(0, int(lengths[c]) - segment + 1, stride, dtype=torch.long)
        clip_ids.append(torch.full_like(t, c))
        starts.append(t)
    if not clip_ids:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(clip_ids), torch.cat(starts)


class WindowDataset(Dataset):
    """Training windows of some clips of a FeatureCache; frames are sliced on access."""

    def __init__(self, cache: FeatureCache, clips: list[int], context_frames: int, segment_frames: int,
                 stride: int, references: torch.Tensor, label_ids: torch.Tensor) -> None:
        self.frames, self.offsets = cache.frames, cache.offsets
        self.text, self.caption_index = cache.text, cache.caption_index
        self.references, self.label_ids = references, label_ids
        self.context_frames, self.segment_frames = context_frames, segment_frames
        self.clips = list(clips)
        self.clip_ids, self.starts = window_index(cache.lengths, self.clips, segment_frames, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        c, t = int(self.clip_ids[i]), int(self.starts[i])
        base, C, K = int(self.offsets[c]), self.context_frames, self.segment_frames
        n = min(t, C)
        context = torch.zeros(C, self.frames.shape[1], dtype=torch.float32)
        mask = torch.zeros(C, dtype=torch.bool)
        if n:
            context[C - n:] = self.frames[base + t - n: base + t]
            mask[C - n:] = True
        return {
            "context": context,
            "context_mask": mask,
            "target": self.frames[base + t: base + t + K].clone(),
            "text": self.text[self.caption_index[c]].clone(),
            "reference": self.references[c].clone(),
            "label": self.label_ids[c].clone(),
            "clip": torch.tensor(c, dtype=torch.long),
        }


class EpochShuffle(RandomSampler):
    """Shuffles with a generator seeded by (seed, epoch), so epoch e has the same order whether the run
    was interrupted and resumed or not (Lightning calls set_epoch before every training epoch). A
    RandomSampler, so under DDP Lightning swaps in its DistributedSampler, which does the same per rank."""

    def __init__(self, data_source: Dataset, seed: int) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


def absolute(clip: Clip) -> Clip:
    return replace(clip, path=str(Path(clip.path).resolve()),
                   midi=str(Path(clip.midi).resolve()) if clip.midi else None)


class MuseDataModule(L.LightningDataModule):
    """Source -> feature cache -> grouped train/val/test windows, with train-only normalisation stats."""

    def __init__(self, source: Any, features: Mapping[str, Any] | None = None, cache_dir: str = "data/cache",
                 text_encoder: Any = None, context_frames: int = 32, segment_frames: int = 16,
                 window_stride: int = 8, batch_size: int = 32, num_workers: int = 2, loader_workers: int = 0,
                 val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                 max_clip_seconds: float | None = DEFAULT_MAX_SECONDS) -> None:
        super().__init__()
        features = feature_config(_plain(features)).to_dict()  # plain dict: checkpoints load weights_only
        self._check_args(context_frames, segment_frames, window_stride, batch_size, num_workers,
                         loader_workers, val_fraction, test_fraction, max_clip_seconds)
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
        self.datasets: dict[str, WindowDataset] = {}

    @staticmethod
    def _check_args(context_frames: int, segment_frames: int, window_stride: int, batch_size: int,
                    num_workers: int, loader_workers: int, val_fraction: float, test_fraction: float,
                    max_clip_seconds: float | None) -> None:
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
        if max_clip_seconds is not None and max_clip_seconds <= 0:
            raise ValueError(f"data.max_clip_seconds must be > 0 or null, got {max_clip_seconds!r}")

    # -- cache -------------------------------------------------------------------------------
    @property
    def text_encoder(self) -> Any:
        """The encoder given by train.py, else the default offline MiniLM (created on first use)."""
        if self._text_encoder is None:
            from musegen.text import SentenceEncoder

            self._text_encoder = SentenceEncoder()
        return self._text_encoder

    def clips(self) -> list[Clip]:
        """The source's clips with absolute paths (so the cache key does not depend on the directory a
        command runs in), listed once per process."""
        if self._clips is None:
            self._clips = [absolute(c) for c in self.source.clips()]
        return self._clips

    def cache_key(self) -> str:
        """The cache key for this source/config: the one place prepare_data and setup agree on."""
        if self._key is None:
            self._key = cache_key(self.clips(), self.feature_config, self.text_encoder.identity,
                                  self.hparams.max_clip_seconds)
        return self._key

    def prepare_data(self) -> None:
        """Build the cache if missing (Lightning calls this on local rank 0 only)."""
        build_cache(self.clips(), self.feature_config, self.text_encoder, self.hparams.cache_dir,
                    num_workers=self.hparams.num_workers, max_seconds=self.hparams.max_clip_seconds,
                    source=repr(self.source), key=self.cache_key())

    def _load(self) -> FeatureCache:
        path = find_cache(self.hparams.cache_dir, self.cache_key())
        if path is None:  # prepare_data not called (plain use) or the files changed since: build now
            log.info("data: no complete cache for key %s; building it in setup", self.cache_key())
            self.prepare_data()
            path = find_cache(self.hparams.cache_dir, self.cache_key())
        if path is None:
            raise CacheError(f"data: cache {self.cache_key()} missing under {self.hparams.cache_dir} after build")
        return load_cache(path)

    # -- setup -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Load the cache (every rank), split by group, compute train stats and build the windows."""
        if self.cache is not None:
            return
        cache = self._load()
        hp = self.hparams
        if cache.features != self.feature_config:
            raise CacheError(f"data: cache {cache.path} was built with other feature settings")
        self.labels = sorted(set(cache.labels))
        label_ids = torch.tensor([self.labels.index(y) for y in cache.labels], dtype=torch.long)
        parts = split_groups(cache.groups, cache.labels, hp.val_fraction, hp.test_fraction, hp.seed)
        where = {g: s for s, gs in parts.items() for g in gs}
        self.split_clips = {s: [i for i, g in enumerate(cache.groups) if where[g] == s] for s in SPLITS}
        self.stats = frame_stats(cache, self.split_clips["train"])
        references = clip_references(cache)
        self.datasets = {
            s: WindowDataset(cache, self.split_clips[s], hp.context_frames, hp.segment_frames, hp.window_stride,
                             references, label_ids)
            for s in SPLITS
        }
        self.cache = cache
        self._log_summary(parts)

    def _log_summary(self, parts: dict[str, list[str]]) -> None:
        sizes = ", ".join(f"{s}: {len(parts[s])} groups / {len(self.split_clips[s])} clips / "
                          f"{len(self.datasets[s])} windows" for s in SPLITS)
        log.info("data: %d clips, labels %s; %s", len(self.cache), self.labels, sizes)
        short = int((self.cache.lengths < self.hparams.segment_frames).sum())
        if short:
            log.warning("data: %d clips are shorter than segment_frames=%d and give no window",
                        short, self.hparams.segment_frames)
        for s in ("val", "test"):
            if not self.datasets[s] and getattr(self.hparams, f"{s}_fraction") > 0:
                log.warning("data: the %s split is empty (%d groups in all)", s, sum(map(len, parts.values())))

    # -- accessors ----------------------------------------------------------------------------
    @property
    def text_dim(self) -> int:
        """Size of the caption embeddings (from the cache once set up, else from the encoder)."""
        return self.cache.text_dim if self.cache is not None else int(self.text_encoder.dim)

    def test_clips(self) -> list[int]:
        """Clip indices (into `cache`) of the test split: frames via cache.clip_frames, paths, midi."""
        self._require_setup()
        return list(self.split_clips["test"])

    def clip_indices(self, split: str) -> list[int]:
        """Clip indices of 'train', 'val' or 'test'."""
        self._require_setup()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return list(self.split_clips[split])

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
