"""The LightningModule: conditioning dropout, loss, validation skill, optimiser, around the
network and normalisation of musegen.predictor.NextSegment.

Everything generation needs lives in this module's hyper-parameters and buffers, so a checkpoint
alone rebuilds it, as a musegen.predictor.Predictor, without Lightning.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import Metric

from musegen.checkpoint import CHECKPOINT_FORMAT, read_checkpoint
from musegen.evaluation import skill
from musegen.predictor import NextSegment

log = logging.getLogger(__name__)


class SquaredErrors(Metric):
    """Per-dimension squared-error sums of the model and of persistence, summed across DDP ranks."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.add_state("model", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("persistence", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, persist: torch.Tensor, target: torch.Tensor) -> None:
        self.model += ((pred - target) ** 2).double().sum(dim=(0, 1))
        self.persistence += ((persist - target) ** 2).double().sum(dim=(0, 1))
        self.count += target.shape[0] * target.shape[1]

    def compute(self) -> dict[str, torch.Tensor]:
        return {"model": self.model / self.count, "persistence": self.persistence / self.count}


def warmup_cosine(total: int, warmup_fraction: float, floor: float = 0.05):
    """Learning-rate factor per step: linear warm-up, then cosine decay to `floor`."""
    warmup = max(1, int(total * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class MuseModule(NextSegment, L.LightningModule):
    def __init__(
        self,
        net: dict,
        text_dim: int,
        features: dict,
        text_encoder: dict | None = None,
        context_frames: int = 32,
        segment_frames: int = 16,
        predict_chroma: bool = True,
        cond_dropout: float = 0.2,
        ref_dropout: float = 0.5,
        context_dropout: float = 0.3,
        chroma_weight: float = 1.0,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        warmup_fraction: float = 0.05,
        format_version: int = CHECKPOINT_FORMAT,
    ) -> None:
        super().__init__()
        for name, p in (("cond_dropout", cond_dropout), ("ref_dropout", ref_dropout), ("context_dropout", context_dropout)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"model.{name} must be in [0, 1], got {p}")
        if net.get("skip_frames", 0) > context_frames:
            raise ValueError(f"model.net.skip_frames ({net['skip_frames']}) must be <= model.context_frames ({context_frames})")
        self.save_hyperparameters()
        self.build_net(net, text_dim, features, segment_frames, predict_chroma)
        self.val_errors = SquaredErrors(self.out_dim)

    def setup(self, stage: str) -> None:
        """Take normalisation statistics from the datamodule's train split, unless already set
        (a fine-tuned model keeps the statistics it was trained with)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if not bool(self.stats_ready) and dm is not None and getattr(dm, "stats", None) is not None:
            self.set_stats(dm.stats["mean"].to(self.mean), dm.stats["std"].to(self.std))

    def _inputs(self, batch: dict[str, torch.Tensor], train: bool) -> tuple[torch.Tensor, ...]:
        mask = batch["context_mask"]
        drop_text = drop_ref = None
        if train:
            b = mask.shape[0]
            mask = self._shorten_context(mask)
            drop_text = torch.rand(b, device=mask.device) < self.hparams.cond_dropout
            drop_ref = torch.rand(b, device=mask.device) < self.hparams.ref_dropout
        return mask, drop_text, drop_ref

    def _shorten_context(self, mask: torch.Tensor) -> torch.Tensor:
        """With probability context_dropout keep only a random number (0..C-1) of the last frames,
        so the model learns to start from the text alone (generation from a neutral start)."""
        b, c = mask.shape
        keep = torch.randint(0, c, (b, 1), device=mask.device)
        shortened = mask & (torch.arange(c, device=mask.device)[None, :] >= c - keep)
        chosen = torch.rand(b, 1, device=mask.device) < self.hparams.context_dropout
        return torch.where(chosen, shortened, mask)

    def _loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        err = F.mse_loss(pred, target, reduction="none").mean(dim=(0, 1))
        weights = torch.ones_like(err)
        weights[self.n_mfcc:] = self.hparams.chroma_weight
        return (err * weights).sum() / weights.sum()

    def _step(self, batch: dict[str, torch.Tensor], train: bool) -> tuple[torch.Tensor, ...]:
        mask, drop_text, drop_ref = self._inputs(batch, train)
        pred = self.predict_next(batch["context"], mask, batch["text"], batch["reference"], drop_text, drop_ref)
        target = self.normalise(batch["target"][..., : self.out_dim])
        return pred, target, mask

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        pred, target, _ = self._step(batch, train=True)
        loss = self._loss(pred, target)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=target.shape[0])
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], prefix: str) -> None:
        pred, target, mask = self._step(batch, train=False)
        persist = self.persistence(batch["context"], mask)
        self.val_errors.update(pred, persist, target)
        self.log(f"{prefix}/loss", self._loss(pred, target), prog_bar=True, sync_dist=True, batch_size=target.shape[0])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_errors(self, prefix: str) -> torch.Tensor:
        """Log MSE, persistence MSE and skill on the MFCC dimensions (and chroma skill); return per-dim MSE."""
        errors = self.val_errors.compute()
        self.val_errors.reset()
        model, persist, m = errors["model"], errors["persistence"], self.n_mfcc
        self.log_dict({
            f"{prefix}/mse": model[:m].mean().float(),
            f"{prefix}/persistence_mse": persist[:m].mean().float(),
        })
        self.log(f"{prefix}/skill", skill(model[:m].mean(), persist[:m].mean()).float(), prog_bar=True)
        if self.out_dim > m:
            self.log(f"{prefix}/chroma_skill", skill(model[m:].mean(), persist[m:].mean()).float())
        return model

    def on_validation_epoch_end(self) -> None:
        """Also keep the per-dimension residual std: generation scales its sampling noise by it."""
        model_mse = self._log_errors("val")
        self.resid_std.copy_(model_mse.sqrt().to(self.resid_std))

    def on_test_epoch_end(self) -> None:
        self._log_errors("test")

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, self.hparams.warmup_fraction))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def module_from_checkpoint(path: str | Path) -> MuseModule:
    """Rebuild the trained LightningModule from a checkpoint file alone, in eval mode (to evaluate or
    fine-tune it; generation needs only musegen.checkpoint.load_predictor)."""
    ckpt = read_checkpoint(path)
    module = MuseModule(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()
