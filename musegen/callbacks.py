"""Per-epoch sample rendering: files to the run folder; audio, a mel spectrogram and a piano roll to every
logger that takes media (TensorBoard, Weights & Biases, MLflow)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import soundfile as sf
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from musegen.audio import Synthesizer
from musegen.export import ExportSettings, Renderer, export_sample, slug
from musegen.features import FeatureConfig
from musegen.figures import piano_rolls, spectrograms, to_image
from musegen.generation import Generator, encoder_from_config
from musegen.text import TextEncoder
from musegen.vocoder.checkpoint import load_vocoder

log = logging.getLogger(__name__)


class SampleRenderer(L.Callback):
    """Every `every_n_epochs`, generate `seconds` of audio for each prompt from a neutral start and
    save .wav/.mid under `out_dir/epoch_NNN/`; send audio and figures to every logger that takes them
    (TensorBoard, Weights & Biases, MLflow; others, such as CSV, get nothing). Rank zero only."""

    def __init__(self, prompts: list[str], synth: Callable[[FeatureConfig], Synthesizer], export: ExportSettings,
                 every_n_epochs: int = 5, seconds: float = 4.0, seed: int = 0, out_dir: str = "samples",
                 vocoder: str | None = None) -> None:
        """``synth``/``export``: generate.py's synthesis and export settings (conf/synth, conf/export);
        the per-epoch samples write WAV and MIDI only. Sampling uses the model's defaults. ``vocoder``:
        a vocoder checkpoint that renders the samples instead of ``synth``, as generate.py's
        vocoder=PATH; read when fitting starts, so a wrong one fails before the first epoch."""
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.prompts, self.every, self.seconds, self.seed = list(prompts), every_n_epochs, seconds, seed
        self.out_dir = Path(out_dir)
        self.synth, self.vocoder_path = synth, vocoder
        self.settings = replace(export, formats=("wav",), render_midi=False,
                                synthesis="vocoder" if vocoder is not None else export.synthesis)
        self._encoder: TextEncoder | None = None
        self._renderer: Renderer | None = None

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        return trainer.is_global_zero and not trainer.sanity_checking and (
            epoch % self.every == 0 or epoch == trainer.max_epochs)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._renderer_for(pl_module)

    def _renderer_for(self, pl_module: L.LightningModule) -> Renderer:
        """The vocoder, or the analytic synthesis, for the model's features; made once."""
        if self._renderer is None:
            features = pl_module.model.features
            self._renderer = (self.synth(features) if self.vocoder_path is None
                              else load_vocoder(self.vocoder_path, features))
        return self._renderer

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        if self._encoder is None:
            self._encoder = encoder_from_config(pl_module.model.text_encoder)
        was_training = pl_module.training
        generator = Generator(pl_module.model, self._encoder, device=str(pl_module.device))
        synth = self._renderer_for(pl_module)
        epoch = trainer.current_epoch + 1
        epoch_dir = self.out_dir / f"epoch_{epoch:03d}"
        media = [(lg, send) for lg in trainer.loggers if (send := _media_sender(lg)) is not None]
        for i, prompt in enumerate(self.prompts):
            result = generator.generate(prompt=prompt, duration=self.seconds, seed=self.seed)
            paths = export_sample(result.frames[0], result.features, epoch_dir, slug(prompt), prompt, synth,
                                  self.settings, self.seconds, result.metadata)
            if media:
                sample = Sample.read(i, prompt, paths, epoch, trainer.global_step)
                for lg, send in media:
                    send(lg, sample)
        pl_module.train(was_training)


@dataclass(frozen=True)
class Sample:
    """One rendered sample as the loggers take it: the written audio, its figures and files."""

    index: int                      # the prompt's place in the renderer's list
    prompt: str
    audio: np.ndarray
    sample_rate: int
    figures: dict[str, np.ndarray]  # "mel", and "pianoroll" when MIDI was written: RGB arrays
    files: dict[str, str]           # export_sample's {kind: path}
    epoch: int
    step: int

    @property
    def name(self) -> str:
        """"<index>_<prompt slug>": unique within an epoch, readable in every logger's list."""
        return f"{self.index}_{slug(self.prompt)}"

    @classmethod
    def read(cls, index: int, prompt: str, files: dict[str, str], epoch: int, step: int) -> Sample:
        """The sample as written (what a listener gets), its figures drawn once for all loggers."""
        y, sr = sf.read(files["wav"], dtype="float32")
        figures = {"mel": mel_figure(y, sr)}
        if "mid" in files:
            figures["pianoroll"] = piano_roll_figure(files["mid"])
        return cls(index, prompt, y, sr, figures, files, epoch, step)


def _to_tensorboard(logger: TensorBoardLogger, s: Sample) -> None:
    tb = logger.experiment
    tb.add_audio(f"samples/{s.name}", s.audio[None], s.step, sample_rate=s.sample_rate)
    for kind, image in s.figures.items():
        tb.add_image(f"{kind}/{s.name}", image, s.step, dataformats="HWC")
    tb.add_text(f"prompt/{s.index}", s.prompt, s.step)


def _to_wandb(logger: WandbLogger, s: Sample) -> None:
    """wandb.Audio and wandb.Image through the logger's helpers, which import wandb themselves."""
    logger.log_audio(f"samples/{s.name}", [s.files["wav"]], step=s.step, caption=[s.prompt])
    for kind, image in s.figures.items():
        logger.log_image(f"{kind}/{s.name}", [image], step=s.step, caption=[s.prompt])


def _to_mlflow(logger: MLFlowLogger, s: Sample) -> None:
    """The files and figures as artifacts of the run, under samples/epoch_NNN/ as in the run folder."""
    folder = f"samples/epoch_{s.epoch:03d}"
    for kind in ("wav", "mid"):
        if kind in s.files:
            logger.experiment.log_artifact(logger.run_id, s.files[kind], artifact_path=folder)
    for kind, image in s.figures.items():
        logger.experiment.log_image(logger.run_id, image, artifact_file=f"{folder}/{s.name}_{kind}.png")


#: the loggers that take audio and figures, each with how it is sent
_MEDIA_LOGGERS: dict[type[Logger], Callable[[Any, Sample], None]] = {
    TensorBoardLogger: _to_tensorboard, WandbLogger: _to_wandb, MLFlowLogger: _to_mlflow,
}


def _media_sender(logger: Logger) -> Callable[[Any, Sample], None] | None:
    """How samples reach `logger` (subclasses included), or None for loggers of numbers only."""
    return next((send for kind, send in _MEDIA_LOGGERS.items() if isinstance(logger, kind)), None)


def mel_figure(y: np.ndarray, sr: int) -> np.ndarray:
    """A log-mel spectrogram of `y` as an RGB image array."""
    return to_image(spectrograms([y], sr, ["mel spectrogram"]))


def piano_roll_figure(midi_path: str) -> np.ndarray:
    """The MIDI file's notes as a piano roll, as an RGB image array."""
    return to_image(piano_rolls([midi_path], ["piano roll"]))
