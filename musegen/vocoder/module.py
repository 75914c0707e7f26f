"""VocoderModule: the Lightning training of musegen.vocoder.network.Vocoder on (frames, audio) crops.

Losses (musegen.vocoder.losses): the istft head trains on its waveform (multi-resolution STFT, mel,
and the chroma of its audio against the frames') and on its log-magnitude; the griffin_lim head, whose
audio is not differentiable, on its log-magnitude alone. No adversarial discriminator: on the CPU
budgets this project trains in, a GAN's second network and its slow start cost more steps than they
return.

Validation logs val/loss (the training loss) and val/lsd: log-spectral distance between the STFT of
the rendered audio (Griffin-Lim included) and the original, over the frames not touched by a crop's edges.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from musegen.data.datamodule import plain_config
from musegen.vocoder.checkpoint import VOCODER_FORMAT
from musegen.vocoder.losses import (
    ChromaLoss,
    MelLoss,
    MultiResolutionSTFTLoss,
    log_magnitude_loss,
    log_spectral_distance,
)
from musegen.vocoder.network import Vocoder


class VocoderModule(L.LightningModule):
    def __init__(
        self,
        features: dict[str, Any],
        net: dict[str, Any],
        stft_weight: float = 1.0,
        mel_weight: float = 1.0,
        magnitude_weight: float = 1.0,
        chroma_weight: float = 0.0,
        resolutions: Sequence[Sequence[int]] = ((1024, 256), (2048, 512)),
        lr: float = 4e-3,
        weight_decay: float = 1e-2,
        warmup_fraction: float = 0.05,
        vocoder_format: int = VOCODER_FORMAT,
    ) -> None:
        super().__init__()
        features, net, resolutions = plain_config(features), plain_config(net), plain_config(resolutions)
        self.save_hyperparameters({"features": features, "net": net, "stft_weight": stft_weight,
                                   "mel_weight": mel_weight, "magnitude_weight": magnitude_weight,
                                   "chroma_weight": chroma_weight,
                                   "resolutions": [list(r) for r in resolutions], "lr": lr,
                                   "weight_decay": weight_decay, "warmup_fraction": warmup_fraction,
                                   "vocoder_format": vocoder_format})
        self.vocoder = Vocoder(features=features, **net)
        cfg = self.vocoder.features
        self.stft_loss = MultiResolutionSTFTLoss(resolutions)
        self.mel_loss = MelLoss(cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels)
        self.chroma_loss = ChromaLoss(cfg.sample_rate, cfg.n_fft, cfg.n_chroma)
        # the features' analysis window (librosa's periodic Hann), for the target spectrogram of a crop
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    def setup(self, stage: str) -> None:
        """Normalise inputs with the training frames' statistics (a resumed run's checkpoint overrides them)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and getattr(datamodule, "stats", None) is not None:
            self.vocoder.set_normalisation(datamodule.stats["mean"], datamodule.stats["std"])

    # ---------------------------------------------------------------- steps
    def _targets(self, audio: torch.Tensor, n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop audio with n_fft / 2 context each side -> (waveform [B, N * hop], magnitude [B, N, F])."""
        cfg = self.vocoder.features
        half = cfg.n_fft // 2
        wave = audio[:, half:half + n_frames * cfg.hop_length]
        frames = audio.unfold(-1, cfg.n_fft, cfg.hop_length)[:, :n_frames]
        return wave, torch.fft.rfft(frames * self.window, dim=-1).abs()

    def _step(self, batch: dict[str, torch.Tensor], render: bool) -> dict[str, torch.Tensor]:
        """Losses of a batch; with ``render``, also the log-spectral distance of the rendered audio."""
        frames = batch["frames"]
        wave, magnitude = self._targets(batch["audio"], frames.shape[1])
        log_mag, phase = self.vocoder(frames)
        hp = self.hparams
        losses = {"magnitude": log_magnitude_loss(log_mag, magnitude)}
        loss = hp.magnitude_weight * losses["magnitude"]
        cfg = self.vocoder.features
        edge = cfg.n_fft // (2 * cfg.hop_length)   # frames whose analysis window reaches past the crop
        if phase is not None or render:   # the griffin_lim head's audio is rendered only to be measured
            pred = self.vocoder.to_audio(log_mag, phase, wave.shape[-1])
            pred_mag = self.vocoder.synthesizer(frames.device).stft(pred)[:, :frames.shape[1]].abs()
        if phase is not None:
            losses["stft"] = self.stft_loss(pred, wave)
            losses["mel"] = self.mel_loss(pred, wave)
            losses["chroma"] = self.chroma_loss(pred_mag[:, edge:-edge], frames[:, edge:-edge, cfg.n_mfcc:])
            loss = loss + hp.stft_weight * losses["stft"] + hp.mel_weight * losses["mel"]
            loss = loss + hp.chroma_weight * losses["chroma"]
        losses["loss"] = loss
        if render:
            losses["lsd"] = log_spectral_distance(pred_mag[:, edge:-edge], magnitude[:, edge:-edge])
        return losses

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self._step(batch, render=False)
        bs = batch["frames"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=name == "loss", on_epoch=True, batch_size=bs,
                     prog_bar=name == "loss")
        return losses["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        losses = self._step(batch, render=True)
        for name, value in losses.items():
            self.log(f"val/{name}", value, on_epoch=True, batch_size=batch["frames"].shape[0],
                     prog_bar=name in ("loss", "lsd"), sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, betas=(0.8, 0.99))
        total = max(2, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, int(total * hp.warmup_fraction))
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / warmup, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total - warmup), eta_min=0.05 * hp.lr),
        ], milestones=[warmup])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
