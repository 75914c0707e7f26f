"""Frames and the audio they came from, for training a vocoder on any musegen data source.

The clips, their cached frames and the train/val/test split are musegen.data.datamodule.MuseDataModule's
(same source config, same cache, same seed), so a clip the generator is tested on is never a vocoder
training clip either. Each clip's audio is read once, at the features' sample rate; cached frame j is
centred on sample j * hop of the clip's samples (librosa's center=True with zero padding; a long file
is split into consecutive clips, each starting at its cache ``start``), so a crop of frames [s, s + N)
pairs with the clip's samples [s * hop, (s + N) * hop). Every audio crop also carries n_fft / 2 samples
of context on each side (zeros past the clip's ends, as the feature extraction saw them), so the
target spectrogram of a crop is exactly the clip's own, edges included.

Clips shorter than one crop give no training or validation crop; their number is logged.
"""
from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from musegen.data.datamodule import MuseDataModule
from musegen.features import AudioError, FeatureConfig, load_audio

log = logging.getLogger(__name__)


class CropDataset(Dataset):
    """(frames [N, dim], audio [N * hop + n_fft]) crops of some clips (``clips``: their cache indices).

    ``starts`` None: one random crop per item, each clip drawn in proportion to its length (an epoch
    covers about every frame once); otherwise the fixed (clip, start) pairs given.
    """

    def __init__(self, clips: list[int], frames: list[torch.Tensor], audio: list[torch.Tensor], crop_frames: int,
                 features: FeatureConfig, starts: list[tuple[int, int]] | None = None) -> None:
        self.clips, self.frames, self.audio, self.crop, self.features = clips, frames, audio, crop_frames, features
        self.starts = starts
        lengths = [len(f) for f in frames]
        self.random_index = [c for c, n in enumerate(lengths) for _ in range(n // crop_frames)]

    def __len__(self) -> int:
        return len(self.random_index) if self.starts is None else len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.starts is None:
            c = self.random_index[i]
            s = int(torch.randint(0, len(self.frames[c]) - self.crop + 1, ()))
        else:
            c, s = self.starts[i]
        hop, n_fft = self.features.hop_length, self.features.n_fft
        return {
            "frames": self.frames[c][s:s + self.crop].clone(),
            "audio": self.audio[c][s * hop:(s + self.crop) * hop + n_fft].clone(),
        }


def clip_audio(y: np.ndarray, start: float, n_frames: int, features: FeatureConfig,
               clip_seconds: float | None, file_seconds: float | None = None) -> torch.Tensor:
    """The samples of one cached clip of a file's audio ``y``, as its frames saw them.

    A clip starts ``start`` seconds into its file and ends where the next clip starts (every
    ``clip_seconds``, musegen.features.split_clips) or at the end of the file (or of its first
    ``file_seconds``, when only those were read); its frames were
    extracted from those samples alone. Returned zero-padded by n_fft / 2 in front and to
    n_frames * hop + n_fft samples in all.
    """
    sr = features.sample_rate
    first = int(round(start * sr))
    last = len(y) if clip_seconds is None else first + max(1, int(round(clip_seconds * sr)))
    if file_seconds is not None:
        last = min(last, int(round(file_seconds * sr)))
    half, total = features.n_fft // 2, n_frames * features.hop_length + features.n_fft
    piece = torch.from_numpy(np.ascontiguousarray(y[first:min(last, first + total - half)]))
    piece = F.pad(piece, (half, 0))
    return F.pad(piece, (0, total - len(piece)))


class VocoderDataModule(L.LightningDataModule):
    """MuseDataModule's clips and split, as random training crops and fixed validation crops of audio.

    Every argument but the ones below goes to MuseDataModule unchanged (the data group's config);
    ``text_encoder`` too, because its identity is part of the cache key. ``crop_frames``: frames per
    crop; ``val_crops_per_clip``: non-overlapping crops from the start of each validation clip.
    """

    def __init__(self, crop_frames: int = 32, val_crops_per_clip: int = 2, batch_size: int = 16,
                 loader_workers: int = 0, text_encoder: Any = None, **data: Any) -> None:
        super().__init__()
        for name, value in dict(crop_frames=crop_frames, val_crops_per_clip=val_crops_per_clip,
                                batch_size=batch_size).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{name} must be an int >= 1, got {value!r}")
        self.crop_frames, self.val_crops_per_clip = crop_frames, val_crops_per_clip
        self.batch_size, self.loader_workers = batch_size, loader_workers
        self.clips = MuseDataModule(text_encoder=text_encoder, batch_size=batch_size,
                                    loader_workers=loader_workers, **data)
        self.features: FeatureConfig = self.clips.feature_config
        self.stats: dict[str, torch.Tensor] | None = None
        self.datasets: dict[str, CropDataset] = {}

    @property
    def cache(self):
        return self.clips.cache

    @property
    def split_clips(self) -> dict[str, list[int]]:
        return self.clips.split_clips

    def prepare_data(self) -> None:
        self.clips.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Set up the clips, then read the audio of the train and validation clips once."""
        if self.datasets:
            return
        self.clips.setup(stage)
        self.stats = self.clips.stats
        self.datasets = {"train": self._dataset("train", fixed=False), "val": self._dataset("val", fixed=True)}
        log.info("vocoder data: %d training crops per epoch, %d validation crops of %d frames",
                 len(self.datasets["train"]), len(self.datasets["val"]), self.crop_frames)
        if not len(self.datasets["train"]):
            raise ValueError(f"vocoder data: no training clip has crop_frames={self.crop_frames} frames")

    def _dataset(self, split: str, fixed: bool) -> CropDataset:
        cache, clips, frames, audio, short = self.cache, [], [], [], 0
        clip_seconds, file_seconds = self.clips.hparams.max_clip_seconds, self.clips.hparams.max_file_seconds
        loaded: tuple[str, np.ndarray] | None = None  # the clips of one file are consecutive: read it once
        for i in tqdm(self.split_clips[split], desc=f"vocoder {split} audio", leave=False):
            clip_frames = cache.clip_frames(i)
            if len(clip_frames) < self.crop_frames:
                short += 1
                continue
            try:
                if loaded is None or loaded[0] != cache.paths[i]:
                    loaded = (cache.paths[i], load_audio(cache.paths[i], self.features.sample_rate))
            except AudioError as err:  # the file changed since the cache was built
                log.warning("vocoder data: skipping %s", err)
                continue
            audio.append(clip_audio(loaded[1], cache.starts[i], len(clip_frames), self.features,
                                    clip_seconds, file_seconds))
            clips.append(i)
            frames.append(clip_frames.clone())
        if short:
            log.warning("vocoder data: %d %s clips are shorter than crop_frames=%d and give no crop",
                        short, split, self.crop_frames)
        starts = None
        if fixed:
            starts = [(c, k * self.crop_frames) for c, f in enumerate(frames)
                      for k in range(min(self.val_crops_per_clip, len(f) // self.crop_frames))]
        return CropDataset(clips, frames, audio, self.crop_frames, self.features, starts)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        workers = self.loader_workers
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

