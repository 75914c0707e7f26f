"""Pictures of generated music: log-mel spectrograms and MIDI piano rolls, for the web app and the
per-epoch samples sent to loggers. Plain matplotlib Figures (no pyplot state, no Lightning)."""
from __future__ import annotations

import io
from collections.abc import Sequence

import librosa
import librosa.display
import numpy as np
import pretty_midi
from matplotlib.figure import Figure
from matplotlib.image import imread


def spectrograms(waveforms: Sequence[np.ndarray], sample_rate: int, labels: Sequence[str]) -> Figure:
    """A log-mel spectrogram per waveform, one row each."""
    fig = Figure(figsize=(8, 2.0 * len(labels)), layout="constrained")
    for ax, y, label in zip(fig.subplots(len(labels), squeeze=False)[:, 0], waveforms, labels):
        mel = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sample_rate), ref=np.max)
        librosa.display.specshow(mel, sr=sample_rate, x_axis="time", y_axis="mel", ax=ax)
        ax.set_title(label)
    return fig


def piano_rolls(midi_paths: Sequence[str], labels: Sequence[str]) -> Figure:
    """The notes of each MIDI file as a piano roll, one row each."""
    fig = Figure(figsize=(8, 2.0 * len(labels)), layout="constrained")
    for ax, path, label in zip(fig.subplots(len(labels), squeeze=False)[:, 0], midi_paths, labels):
        for instrument in pretty_midi.PrettyMIDI(path).instruments:
            for note in instrument.notes:
                ax.barh(note.pitch, note.end - note.start, left=note.start, height=0.8, color="C0")
        ax.set(title=label, xlabel="time (s)", ylabel="MIDI pitch")
    return fig


def to_image(fig: Figure) -> np.ndarray:
    """The figure as an RGB float image array [H, W, 3] (what loggers take)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    buffer.seek(0)
    return imread(buffer)[..., :3]
