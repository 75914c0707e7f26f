"""MuseModel: the whole trained model in plain torch - normaliser, conditioner, backbone and head.

Training wraps it (musegen.module.MuseModule holds it as ``self.model``); generation and evaluation
rebuild it from a checkpoint's hyper-parameters and tensors alone (musegen.checkpoint.load_model),
without Lightning, whose import alone takes longer than generating 30 s of music.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from musegen.features import FeatureConfig
from musegen.model.backbone import BiGRUBackbone
from musegen.model.conditioning import Conditioner
from musegen.model.heads import Head, HeadInput, Noise, Sampling, last_frame
from musegen.model.normaliser import Normaliser

#: Heads are named by `_target_` in configs and checkpoints; only musegen's own may be built.
HEAD_NAMESPACE = "musegen.model."


class MuseModel(nn.Module):
    """Raw context frames [B, C, F] + mask + conditioning -> a distribution over the next segment.

    ``features``: the feature settings (musegen.features.FeatureConfig as a dict); ``text_encoder``:
    the Hydra config of the encoder whose embeddings (``text_dim`` wide) condition the model;
    ``backbone``: BiGRUBackbone's arguments; ``head``: a head config with its ``_target_``
    (musegen.model.heads). All plain data: they are the checkpoint's description of the model.
    """

    def __init__(self, features: dict[str, Any], text_encoder: dict[str, Any], text_dim: int,
                 backbone: dict[str, Any], head: dict[str, Any], cond_dim: int = 64, context_frames: int = 32,
                 segment_frames: int = 16, predict_chroma: bool = True) -> None:
        super().__init__()
        self.config = dict(features=dict(features), text_encoder=dict(text_encoder), text_dim=text_dim,
                           backbone=dict(backbone), head=dict(head), cond_dim=cond_dim,
                           context_frames=context_frames, segment_frames=segment_frames,
                           predict_chroma=predict_chroma)
        for name, value in (("context_frames", context_frames), ("segment_frames", segment_frames)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name} must be an int >= 1, got {value!r}")
        self.features = FeatureConfig.from_dict(features)
        self.n_mfcc, self.feature_dim = self.features.n_mfcc, self.features.dim
        self.out_dim = self.feature_dim if predict_chroma else self.n_mfcc
        self.context_frames, self.segment_frames = context_frames, segment_frames
        self.text_encoder = dict(text_encoder)
        self.normaliser = Normaliser(self.feature_dim)
        self.conditioner = Conditioner(text_dim, 2 * self.feature_dim, cond_dim)
        self.backbone = BiGRUBackbone(self.feature_dim, self.conditioner.out_dim, **backbone)
        head = dict(head)
        #: generation's defaults for this head (guidance, temperature, ...), from the head's config
        self.default_sampling: dict[str, Any] = dict(head.pop("sampling", None) or {})
        self.head = build_head(head, state_dim=self.backbone.state_dim, feature_dim=self.feature_dim,
                               out_dim=self.out_dim, segment_frames=segment_frames, context_frames=context_frames,
                               n_mfcc=self.n_mfcc)

    # -- conditioning --------------------------------------------------------------------------
    def condition(self, text: torch.Tensor, reference: torch.Tensor, drop_text: torch.Tensor | None = None,
                  drop_ref: torch.Tensor | None = None) -> torch.Tensor:
        """[B, cond] from text embeddings and raw reference embeddings (null vectors where dropped)."""
        return self.conditioner(text, self.normaliser.normalise_reference(reference), drop_text, drop_ref)

    def generation_rows(self, text: torch.Tensor, reference: torch.Tensor, has_text: torch.Tensor,
                        has_ref: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Conditioning of a generation batch from raw per-item embeddings (2n rows when any item has a
        text, for guidance); see Conditioner.rows."""
        return self.conditioner.rows(text, self.normaliser.normalise_reference(reference), has_text, has_ref)

    # -- prediction ----------------------------------------------------------------------------
    def forward(self, context: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor) -> HeadInput:
        """Raw context [B, C, F] + mask [B, C] + conditioning -> what the head reads."""
        return self.backbone(self.head.read_context(self.normaliser.normalise(context)), mask, cond)

    def loss(self, context: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor,
             target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The head's training loss against a raw target segment [B, K, F]."""
        return self.head.loss(self(context, mask, cond), self.target(target))

    def mean(self, context: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The head's point prediction of the next segment [B, K, out_dim], normalised."""
        return self.head.mean(self(context, mask, cond))

    def target(self, target: torch.Tensor) -> torch.Tensor:
        """A raw target segment [B, K, F] in the units the head predicts: normalised, out_dim wide."""
        return self.normaliser.normalise(target[..., : self.out_dim])

    def persistence(self, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The baseline skill is measured against: the last real context frame repeated over the
        next segment, normalised, [B, K, out_dim] (the mean, i.e. zeros, for an empty context)."""
        last = last_frame(self.normaliser.normalise(context), mask)[:, None, : self.out_dim]
        return last.expand(-1, self.segment_frames, -1)

    def next_frames(self, context: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor, sampling: Sampling,
                    noise: Noise) -> torch.Tensor:
        """One sampled segment as raw frames [n, K, F]: chroma kept in [0, 1], and the training mean
        for chroma when the model does not predict it."""
        n = cond.shape[0] // 2 if sampling.guidance is not None else cond.shape[0]
        if context.shape[0] != cond.shape[0]:
            context, mask = context.repeat(2, 1, 1), mask.repeat(2, 1)
        pred = self.head.sample(self(context, mask, cond), sampling, noise)
        raw = self.normaliser.denormalise(pred)
        if raw.shape[-1] < self.feature_dim:
            raw = torch.cat([raw, self.normaliser.mean[raw.shape[-1]:].expand(n, raw.shape[1], -1)], dim=-1)
        raw[..., self.n_mfcc:] = raw[..., self.n_mfcc:].clamp(0.0, 1.0)
        return raw

    def finish(self, frames: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A whole generation's raw frames [n, T, F] as written, from the raw context [n, C, F] (mask
        [n, C]) it started from: the head's finishing touch (Head.finish), in raw units."""
        sampled = self.normaliser.normalise(frames[..., : self.out_dim])
        change = self.head.finish(sampled, self.normaliser.normalise(context), mask) - sampled
        out = frames.clone()
        out[..., : self.out_dim] += change * self.normaliser.std[: self.out_dim]
        out[..., self.n_mfcc:] = out[..., self.n_mfcc:].clamp(0.0, 1.0)
        return out


def build_head(config: dict[str, Any], **dims: int) -> Head:
    """Instantiate a head config (``_target_`` inside musegen.model) with the model's dimensions."""
    target = str(config.get("_target_", ""))
    if not target.startswith(HEAD_NAMESPACE):
        raise ValueError(f"model.head._target_ must name a head in {HEAD_NAMESPACE}*, got {target!r}")
    module, _, name = target.rpartition(".")
    try:
        settings = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    except (ImportError, AttributeError):
        raise ValueError(f"model.head._target_ {target!r}: no such head in this musegen") from None
    takes_any = any(p.kind is p.VAR_KEYWORD for p in settings.values())
    unknown = [] if takes_any else sorted(set(config) - {"_target_"} - set(settings))
    if unknown:   # a config or checkpoint of another version: one line, not the constructor's TypeError
        raise ValueError(f"model.head: {target} has no setting {', '.join(unknown)}; "
                         f"its settings are {', '.join(k for k in settings if k not in dims)}")
    try:
        head = instantiate(config, **dims, _convert_="all")
    except InstantiationException as err:  # a head's own check (a ValueError naming the key) as it is
        if isinstance(err.__cause__, ValueError):
            raise err.__cause__ from None
        raise
    if not isinstance(head, Head):
        raise ValueError(f"model.head._target_ {target!r} is not a musegen.model.heads.Head")
    return head


def architecture(hyper_parameters: Mapping[str, Any]) -> dict[str, Any]:
    """MuseModel's arguments out of a checkpoint's (or a MuseModule's) hyper-parameters."""
    names = [p for p in inspect.signature(MuseModel.__init__).parameters if p != "self"]
    return {k: hyper_parameters[k] for k in names if k in hyper_parameters}
