"""Per-epoch sample rendering: audio, a mel-spectrogram and a piano roll to TensorBoard, files to the run folder."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")
import librosa  # noqa: E402
import librosa.display  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pretty_midi  # noqa: E402
import soundfile as sf  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from musegen.audio import Synthesizer  # noqa: E402
from musegen.export import ExportSettings, export_sample, slug  # noqa: E402
from musegen.generation import Generator, encoder_from_config  # noqa: E402

log = logging.getLogger(__name__)


class SampleRenderer(L.Callback):
    """Every `every_n_epochs`, generate `seconds` of audio for each prompt from a neutral start and
    save .wav/.mid under `out_dir/epoch_NNN/`; log audio and figures to TensorBoard. Rank zero only."""

    def __init__(self, prompts: list[str], every_n_epochs: int = 5, seconds: float = 4.0,
                 guidance: float = 3.0, temperature: float = 0.5, seed: int = 0, out_dir: str = "samples",
                 synthesis: str = "mix") -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.prompts, self.every, self.seconds = list(prompts), every_n_epochs, seconds
        self.guidance, self.temperature, self.seed = guidance, temperature, seed
        self.out_dir = Path(out_dir)
        self.settings = ExportSettings(formats=("wav",), synthesis=synthesis, render_midi=False)
        self._encoder = None

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        return trainer.is_global_zero and not trainer.sanity_checking and (
            epoch % self.every == 0 or epoch == trainer.max_epochs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        if self._encoder is None:
            self._encoder = encoder_from_config(pl_module.hparams.text_encoder)
        was_training = pl_module.training
        generator = Generator(pl_module, self._encoder, device=str(pl_module.device))
        synth = Synthesizer(generator.features)
        epoch_dir = self.out_dir / f"epoch_{trainer.current_epoch + 1:03d}"
        for i, prompt in enumerate(self.prompts):
            result = generator.generate(prompt=prompt, duration=self.seconds, guidance=self.guidance,
                                        temperature=self.temperature, seed=self.seed)
            paths = export_sample(result.frames[0], result.features, epoch_dir, slug(prompt), prompt, synth,
                                  self.settings, self.seconds, result.metadata)
            self._log_tensorboard(trainer, prompt, i, paths, generator.features.sample_rate)
        pl_module.train(was_training)

    def _log_tensorboard(self, trainer: L.Trainer, prompt: str, i: int, paths: dict[str, str], sr: int) -> None:
        tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tb is None:
            return
        y, _ = sf.read(paths["wav"], dtype="float32")
        step = trainer.global_step
        tb.experiment.add_audio(f"samples/{i}_{slug(prompt)}", y[None], step, sample_rate=sr)
        tb.experiment.add_image(f"mel/{i}_{slug(prompt)}", mel_figure(y, sr), step, dataformats="HWC")
        if "mid" in paths:
            tb.experiment.add_image(f"pianoroll/{i}_{slug(prompt)}", piano_roll_figure(paths["mid"]), step,
                                    dataformats="HWC")
        tb.experiment.add_text(f"prompt/{i}", prompt, step)


def _figure_to_array(fig: plt.Figure) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    return plt.imread(buf)[..., :3]


def mel_figure(y: np.ndarray, sr: int) -> np.ndarray:
    """A log-mel spectrogram of `y` as an RGB image array."""
    fig, ax = plt.subplots(figsize=(6, 3))
    mel = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr), ref=np.max)
    librosa.display.specshow(mel, sr=sr, x_axis="time", y_axis="mel", ax=ax)
    ax.set_title("mel spectrogram")
    return _figure_to_array(fig)


def piano_roll_figure(midi_path: str) -> np.ndarray:
    """The MIDI file's notes as a piano roll, as an RGB image array."""
    pm = pretty_midi.PrettyMIDI(midi_path)
    fig, ax = plt.subplots(figsize=(6, 3))
    for inst in pm.instruments:
        for n in inst.notes:
            ax.barh(n.pitch, n.end - n.start, left=n.start, height=0.8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.set_title("piano roll")
    return _figure_to_array(fig)
