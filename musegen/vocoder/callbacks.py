"""Per-epoch listening: a few whole validation clips, original beside vocoded, in TensorBoard."""
from __future__ import annotations

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger

from musegen.callbacks import mel_figure

FULL_SCALE = 0.99


def within_full_scale(y: np.ndarray) -> np.ndarray:
    """``y`` scaled down to a peak of FULL_SCALE when it passes full scale, else as it is: an early
    vocoder can render louder than 1, which TensorBoard would clip (with a printed warning), and
    generation normalises peaks before writing anyway."""
    peak = float(np.abs(y).max(initial=0.0))
    return y * (FULL_SCALE / peak) if peak > 1.0 else y


class VocoderAudioLogger(L.Callback):
    """Every ``every_n_epochs``, the first ``clips`` validation clips: audio and mel spectrograms of the
    original (once) and of the vocoder's rendering of its frames. Rank zero, TensorBoard only."""

    def __init__(self, clips: int = 2, every_n_epochs: int = 1) -> None:
        if clips < 1 or every_n_epochs < 1:
            raise ValueError(f"clips and every_n_epochs must be >= 1, got {clips}, {every_n_epochs}")
        self.clips, self.every = clips, every_n_epochs

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        epoch = trainer.current_epoch + 1
        if tb is None or not trainer.is_global_zero or trainer.sanity_checking or epoch % self.every:
            return
        val = trainer.datamodule.datasets["val"]
        cfg = pl_module.vocoder.features
        half, step = cfg.n_fft // 2, trainer.global_step
        for i in range(min(self.clips, len(val.frames))):
            frames = val.frames[i]
            vocoded = pl_module.vocoder.render(frames)
            images = {"vocoded": vocoded}
            if epoch == self.every:  # the original does not change: once is enough
                images["original"] = val.audio[i][half:half + len(frames) * cfg.hop_length].numpy()
            for kind, y in images.items():
                tb.experiment.add_audio(f"vocoder/{i}_{kind}", within_full_scale(y)[None], step,
                                        sample_rate=cfg.sample_rate)
                tb.experiment.add_image(f"vocoder_mel/{i}_{kind}", mel_figure(y, cfg.sample_rate), step,
                                        dataformats="HWC")
