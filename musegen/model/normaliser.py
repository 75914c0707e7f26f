"""Per-dimension normalisation of feature frames, learned from the training split and kept in the
checkpoint, so generation and evaluation see frames exactly as training did."""
from __future__ import annotations

import torch
from torch import nn


class Normaliser(nn.Module):
    """Buffers ``mean`` and ``std`` [dim] and ``ready`` (set once from the training split; a
    fine-tuned model keeps the statistics it was first trained with)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("ready", torch.tensor(False))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std)
        self.ready.fill_(True)

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """Raw frames [.., D'] (D' <= dim: the leading dimensions) -> normalised units."""
        return (frames - self.mean[: frames.shape[-1]]) / self.std[: frames.shape[-1]]

    def denormalise(self, frames: torch.Tensor) -> torch.Tensor:
        return frames * self.std[: frames.shape[-1]] + self.mean[: frames.shape[-1]]

    def normalise_reference(self, reference: torch.Tensor) -> torch.Tensor:
        """Reference embedding [.., 2 * dim] = [mean over time, std over time] of raw frames -> normalised."""
        mean, std = reference.split(self.mean.numel(), dim=-1)
        return torch.cat([(mean - self.mean) / self.std, std / self.std], dim=-1)
