"""The LightningModule: loss, optimisation and logging around a musegen.model.MuseModel.

The trained model is ``self.model``; everything it needs to generate is in its hyper-parameters and
tensors, so a checkpoint alone rebuilds it without Lightning (musegen.checkpoint.load_model).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torchmetrics import Metric

from musegen.checkpoint import CHECKPOINT_FORMAT
from musegen.eval.metrics import skill
from musegen.model.conditioning import ConditioningDropout
from musegen.model.muse import MuseModel, architecture

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


def warmup_cosine(total: int, warmup_fraction: float, floor: float = 0.05) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up, then cosine decay to `floor`."""
    warmup = max(1, int(total * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class MuseModule(L.LightningModule):
    """Trains a MuseModel (its arguments come first; all are stored in every checkpoint) with
    conditioning dropout (musegen.model.conditioning.ConditioningDropout), AdamW and a warm-up/cosine schedule; logs
    loss, MSE, persistence MSE and skill of the head's point prediction."""

    def __init__(self, features: dict[str, Any], text_encoder: dict[str, Any], text_dim: int,
                 backbone: dict[str, Any], head: dict[str, Any], cond_dim: int = 64, context_frames: int = 32,
                 segment_frames: int = 16, predict_chroma: bool = True, cond_dropout: float = 0.2,
                 ref_dropout: float = 0.5, context_dropout: float = 0.3, lr: float = 2e-3,
                 weight_decay: float = 1e-4, warmup_fraction: float = 0.05,
                 format_version: int = CHECKPOINT_FORMAT) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.dropout = ConditioningDropout(cond_dropout, ref_dropout, context_dropout)
        self.model = MuseModel(**architecture(self.hparams))
        self.val_errors = SquaredErrors(self.model.out_dim)

    def setup(self, stage: str) -> None:
        """Take normalisation statistics from the datamodule's train split, unless already set (a
        fine-tuned model keeps the statistics it was trained with), then let the head fit what it
        learns from data (a codebook) on the normalised training frames."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or getattr(dm, "stats", None) is None:
            return
        norm = self.model.normaliser
        if not bool(norm.ready):
            norm.set_stats(dm.stats["mean"].to(norm.mean), dm.stats["std"].to(norm.std))
        if stage == "fit":
            self.model.head.prepare([norm.normalise(c).to(norm.mean) for c in dm.train_clips()])

    def _conditioned(self, batch: dict[str, torch.Tensor], train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(context mask, conditioning) of a batch; in training with conditioning dropout."""
        if not train:
            return batch["context_mask"], self.model.condition(batch["text"], batch["reference"])
        mask, drop_text, drop_ref = self.dropout(batch["context_mask"])
        return mask, self.model.condition(batch["text"], batch["reference"], drop_text, drop_ref)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        mask, cond = self._conditioned(batch, train=True)
        losses = self.model.loss(batch["context"], mask, cond, batch["target"])
        size = batch["target"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        for name, value in losses.items():
            if name != "loss":
                self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=size)
        return losses["loss"]

    def _eval_step(self, batch: dict[str, torch.Tensor], prefix: str) -> None:
        mask, cond = self._conditioned(batch, train=False)
        state = self.model(batch["context"], mask, cond)
        target = self.model.target(batch["target"])
        self.val_errors.update(self.model.head.mean(state), self.model.persistence(batch["context"], mask), target)
        size = target.shape[0]
        for name, value in self.model.head.loss(state, target).items():
            self.log(f"{prefix}/{name}", value, prog_bar=name == "loss", sync_dist=True, batch_size=size)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_errors(self, prefix: str) -> torch.Tensor:
        """Log MSE, persistence MSE and skill on the MFCC dimensions (and chroma skill); return per-dim MSE."""
        errors = self.val_errors.compute()
        self.val_errors.reset()
        model, persist, m = errors["model"], errors["persistence"], self.model.n_mfcc
        self.log_dict({
            f"{prefix}/mse": model[:m].mean().float(),
            f"{prefix}/persistence_mse": persist[:m].mean().float(),
        })
        self.log(f"{prefix}/skill", skill(model[:m].mean(), persist[:m].mean()).float(), prog_bar=True)
        if self.model.out_dim > m:
            self.log(f"{prefix}/chroma_skill", skill(model[m:].mean(), persist[m:].mean()).float())
        return model

    def on_validation_epoch_end(self) -> None:
        self.model.head.calibrate(self._log_errors("val"))

    def on_test_epoch_end(self) -> None:
        self._log_errors("test")

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, self.hparams.warmup_fraction))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
