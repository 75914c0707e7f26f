"""Training windows: `context_frames` frames of context (left-padded and masked where the clip has fewer
before the target, down to none at t = 0) followed by a target of `segment_frames` frames, sliced
lazily from the feature cache."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, RandomSampler

from musegen.data.cache import FeatureCache


def window_index(lengths: torch.Tensor, clips: list[int], segment: int,
                 stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(clip, start) of every target window: starts 0, stride, ... while the target fits (none for a
    clip shorter than `segment`)."""
    clip_ids, starts = [], []
    for c in clips:
        t = torch.arange(0, max(int(lengths[c]) - segment + 1, 0), stride, dtype=torch.long)
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
