"""The trained model as generation and evaluation use it: MuseNet plus the normalisation it was trained
with, in plain torch.

`NextSegment` holds the arithmetic (normalise, predict the next segment, the persistence baseline);
MuseModule (training, Lightning) and `Predictor` (inference) both mix it in and register the same
tensors under the same names, so one checkpoint's state_dict loads into either. Generation builds a
Predictor: importing Lightning alone costs several seconds, longer than generating 30 s of music.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from musegen.model import MuseNet, last_frame

#: Hyper-parameters that shape the network and its inputs; the rest (dropouts, optimiser) only train it.
ARCHITECTURE = ("net", "text_dim", "features", "segment_frames", "predict_chroma")


class HyperParameters(dict):
    """A checkpoint's hyper-parameters, also readable as attributes (as Lightning's ``hparams``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class NextSegment:
    """Mixin over an nn.Module: builds ``net`` and the buffers ``mean``, ``std``, ``resid_std``,
    ``stats_ready``, and predicts in normalised units from raw frames."""

    net: MuseNet
    mean: torch.Tensor
    std: torch.Tensor
    resid_std: torch.Tensor
    stats_ready: torch.Tensor

    def build_net(self, net: dict, text_dim: int, features: dict, segment_frames: int, predict_chroma: bool) -> None:
        self.n_mfcc = int(features["n_mfcc"])
        self.feature_dim = self.n_mfcc + int(features["n_chroma"])
        self.out_dim = self.feature_dim if predict_chroma else self.n_mfcc
        self.net = MuseNet(
            feature_dim=self.feature_dim, out_dim=self.out_dim, text_dim=text_dim,
            ref_dim=2 * self.feature_dim, segment_frames=segment_frames, **net,
        )
        self.register_buffer("mean", torch.zeros(self.feature_dim))
        self.register_buffer("std", torch.ones(self.feature_dim))
        self.register_buffer("resid_std", torch.ones(self.out_dim))  # per-dimension validation residual
        self.register_buffer("stats_ready", torch.tensor(False))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std)
        self.stats_ready.fill_(True)

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        return (frames - self.mean[: frames.shape[-1]]) / self.std[: frames.shape[-1]]

    def denormalise(self, frames: torch.Tensor) -> torch.Tensor:
        return frames * self.std[: frames.shape[-1]] + self.mean[: frames.shape[-1]]

    def normalise_reference(self, reference: torch.Tensor) -> torch.Tensor:
        """Reference = [mean over time, std over time] of raw frames -> normalised units."""
        mean, std = reference.split(self.feature_dim, dim=-1)
        return torch.cat([(mean - self.mean) / self.std, std / self.std], dim=-1)

    def conditioning(
        self, text: torch.Tensor, reference: torch.Tensor,
        drop_text: torch.Tensor | None = None, drop_ref: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, 2 * cond_dim] from a text embedding and a raw reference; null vectors where dropped."""
        return self.net.conditioning(text, self.normalise_reference(reference), drop_text, drop_ref)

    def predict_with(self, context: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Normalised next segment [B, K, out_dim] from raw context and a conditioning vector (a
        rollout computes that once and reuses it at every step)."""
        return self.net(self.normalise(context), mask, cond)

    def predict_next(
        self, context: torch.Tensor, mask: torch.Tensor, text: torch.Tensor, reference: torch.Tensor,
        drop_text: torch.Tensor | None = None, drop_ref: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalised next segment [B, K, out_dim] from raw context/reference and a text embedding."""
        return self.predict_with(context, mask, self.conditioning(text, reference, drop_text, drop_ref))

    def persistence(self, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The baseline skill is measured against: the last real context frame repeated over the
        next segment, normalised, [B, K, out_dim] (the mean, i.e. zeros, for an empty context)."""
        last = last_frame(self.normalise(context), mask)[:, None, : self.out_dim]
        return last.expand(-1, self.net.segment_frames, -1)


class Predictor(NextSegment, nn.Module):
    """Inference-only model rebuilt from a checkpoint's hyper-parameters (see musegen.checkpoint)."""

    def __init__(self, hyper_parameters: dict) -> None:
        super().__init__()
        self.hparams = HyperParameters(hyper_parameters)
        self.build_net(**{k: hyper_parameters[k] for k in ARCHITECTURE})
