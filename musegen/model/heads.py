"""Output heads: what the model says about the next segment, behind one small interface.

The backbone reads the context once per segment and summarises it (with the conditioning) in a
state vector; a head turns that state into a distribution over the next ``segment_frames`` frames,
with a training loss, a point prediction (for the skill metric) and a sampler (for generation).
Frames are in normalised units throughout (musegen.model.normaliser).

Classifier-free guidance reaches a head as a batch of 2n rows, the n conditional ones then the n
unconditional ones (musegen.model.conditioning builds it); each head combines the two halves
where its prediction allows, with musegen.model.conditioning.guide.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from musegen.model.conditioning import guide


@dataclass
class HeadInput:
    """What a head sees: the backbone's summary and the (normalised) context it summarised."""

    state: torch.Tensor     # [B, state_dim]: backbone summary, conditioning and has-context flag
    context: torch.Tensor   # [B, C, feature_dim] normalised context frames (padding positions undefined)
    mask: torch.Tensor      # [B, C] bool: which context frames are real


@dataclass(frozen=True)
class Sampling:
    """How a head samples. ``guidance`` None: the batch holds conditional rows only."""

    guidance: float | None
    temperature: float
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    pitch_temperature: float | None = None
    min_note_frames: int | None = None


class Noise:
    """The random numbers of a generation batch: one stream per item, seeded on its own.

    An item's sample then depends on its seed alone, not on which other items share its batch or in
    which order: a batch of prompts gives each the frames a call with that prompt alone would give.
    Each draw has one row per item, ``shape`` each.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.device = torch.device(device)

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) draws [items, *shape]."""
        return torch.stack([torch.rand(shape, generator=g, device=self.device) for g in self.generators])

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal draws [items, *shape]."""
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.generators])


class Head(nn.Module, ABC):
    """Distribution over the next segment [B, K, out_dim] given a HeadInput."""

    def __init__(self, state_dim: int, feature_dim: int, out_dim: int, segment_frames: int,
                 context_frames: int, n_mfcc: int) -> None:
        super().__init__()
        self.state_dim, self.feature_dim, self.out_dim = state_dim, feature_dim, out_dim
        self.segment_frames, self.context_frames, self.n_mfcc = segment_frames, context_frames, n_mfcc

    @abstractmethod
    def loss(self, x: HeadInput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training loss on a normalised target [B, K, out_dim]: {"loss": scalar, other scalars to log}."""

    @abstractmethod
    def mean(self, x: HeadInput) -> torch.Tensor:
        """Point prediction [B, K, out_dim], normalised: what the skill metric scores."""

    @abstractmethod
    def sample(self, x: HeadInput, sampling: Sampling, noise: Noise) -> torch.Tensor:
        """Sampled next segment [n, K, out_dim], normalised (n = B, or B / 2 under guidance), item i's
        randomness drawn from its own stream in ``noise`` (n streams)."""

    def read_context(self, context: torch.Tensor) -> torch.Tensor:
        """What the backbone reads of a normalised context [B, C, feature_dim]: the frames as they are.
        A head whose samples are restricted to a set of frames may map the context onto that set, so
        that training reads frames like the ones generation feeds back."""
        return context

    def finish(self, frames: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A whole generation's sampled frames [n, T, out_dim], normalised, as they are written, given
        the context it started from ([n, C, feature_dim] normalised, mask [n, C]): as sampled. A head
        may shape what it sampled once the rollout is over, where the shaping cannot feed back into it."""
        return frames

    def prepare(self, clips: Sequence[torch.Tensor]) -> None:
        """Fit what the head learns from data before training (a codebook), from normalised training
        clips ([T_i, feature_dim] each). Called once, before the first epoch of a fresh model."""

    def calibrate(self, val_mse: torch.Tensor) -> None:
        """Per-dimension validation MSE of ``mean`` [out_dim], after each validation epoch."""


def last_frame(context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last real frame of each context window (zeros, i.e. the mean, when the context is empty)."""
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last_idx = torch.where(mask, idx, torch.full_like(idx, -1)).max(dim=1).values
    frames = context[torch.arange(context.shape[0], device=context.device), last_idx.clamp(min=0)]
    return frames * (last_idx >= 0).unsqueeze(-1).to(context.dtype)


class MSEHead(Head):
    """The regression baseline: the conditional mean of the next segment, trained with MSE, sampled
    by adding Gaussian noise scaled by the validation residual (``resid_std``) times the temperature.

    The mean is a residual on the last real context frame (so "repeat the last frame" is the
    zero-effort prediction), through an MLP on the state plus a linear skip path from the last
    ``skip_frames`` context frames: the mean reversion a ridge regression finds, which the
    recurrent path then only has to correct.
    """

    def __init__(self, state_dim: int, feature_dim: int, out_dim: int, segment_frames: int, context_frames: int,
                 n_mfcc: int, hidden: int = 128, dropout: float = 0.1, skip_frames: int = 4,
                 chroma_weight: float = 1.0) -> None:
        super().__init__(state_dim, feature_dim, out_dim, segment_frames, context_frames, n_mfcc)
        if skip_frames > context_frames:
            raise ValueError(f"model.head.skip_frames ({skip_frames}) must be <= model.context_frames "
                             f"({context_frames})")
        self.skip_frames, self.chroma_weight = skip_frames, chroma_weight
        self.skip = nn.Linear(skip_frames * (feature_dim + 1), segment_frames * out_dim) if skip_frames else None
        self.mlp = nn.Sequential(
            nn.Linear(state_dim, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, segment_frames * out_dim),
        )
        self.register_buffer("resid_std", torch.ones(out_dim))  # per-dimension validation residual

    def mean(self, x: HeadInput) -> torch.Tensor:
        delta = self.mlp(x.state)
        if self.skip is not None:
            m = x.mask.unsqueeze(-1).to(x.context.dtype)
            recent = torch.cat([x.context * m, m], dim=-1)[:, -self.skip_frames:]
            delta = delta + self.skip(recent.flatten(1))
        delta = delta.view(-1, self.segment_frames, self.out_dim)
        return last_frame(x.context, x.mask)[:, None, : self.out_dim] + delta

    def loss(self, x: HeadInput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        err = F.mse_loss(self.mean(x), target, reduction="none").mean(dim=(0, 1))
        weights = torch.ones_like(err)
        weights[self.n_mfcc:] = self.chroma_weight
        return {"loss": (err * weights).sum() / weights.sum()}

    def sample(self, x: HeadInput, sampling: Sampling, noise: Noise) -> torch.Tensor:
        pred = self.mean(x)
        if sampling.guidance is not None:
            n = pred.shape[0] // 2
            pred = guide(pred[:n], pred[n:], sampling.guidance)
        return pred + sampling.temperature * self.resid_std * noise.randn(*pred.shape[1:]).to(pred.dtype)

    def calibrate(self, val_mse: torch.Tensor) -> None:
        self.resid_std.copy_(val_mse.sqrt().to(self.resid_std))
