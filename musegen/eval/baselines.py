"""Baselines every metric is reported beside: what a simpler method scores on the same data."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import librosa
import numpy as np
import scipy.signal
import torch
from sklearn.linear_model import Ridge

from musegen.dsp import mfcc_to_log_mel
from musegen.eval.metrics import skill
from musegen.features import FeatureConfig, extract
from musegen.instruments import find_instrument
from musegen.midi import Note
from musegen.model.muse import MuseModel


def _ridge_arrays(model: MuseModel, batches: Iterable[Mapping[str, torch.Tensor]],
                  frames: int) -> tuple[np.ndarray, ...]:
    """Inputs (the last `frames` normalised context frames, masked, and the text), next-segment MFCC
    targets and persistence predictions, all in normalised units."""
    m, xs, ys, ps = int(model.n_mfcc), [], [], []
    with torch.no_grad():
        for b in batches:
            mask = b["context_mask"]
            ctx = model.normaliser.normalise(b["context"]) * mask[..., None]
            target = model.normaliser.normalise(b["target"])[..., :m]
            xs.append(torch.cat([ctx[:, -frames:].flatten(1), mask[:, -frames:].float(), b["text"]], 1))
            ys.append(target.flatten(1))
            ps.append(model.persistence(b["context"], mask)[..., :m].flatten(1))
    return tuple(torch.cat(a).double().numpy() for a in (xs, ys, ps))


def linear_skill(model: MuseModel, train: Iterable[Mapping[str, torch.Tensor]],
                 test: Iterable[Mapping[str, torch.Tensor]], frames: int = 4, alpha: float = 100.0) -> float:
    """The linear baseline the BiGRU must beat: ridge regression from the last `frames` context frames
    and the text embedding to the next segment's MFCC, fit on `train` windows, skill on `test` windows
    (normalised with the model's statistics, as the model's own skill)."""

    x_train, y_train, _ = _ridge_arrays(model, train, frames)
    x_test, y_test, persist = _ridge_arrays(model, test, frames)
    pred = Ridge(alpha=alpha).fit(x_train, y_train).predict(x_test)
    return float(skill(((pred - y_test) ** 2).mean(), ((persist - y_test) ** 2).mean()))


def white_noise_audio(n: int, seconds: float, features: FeatureConfig, seed: int = 0) -> list[np.ndarray]:
    """`n` white-noise clips: the "knows nothing about music" end of FAD's scale."""

    rng = np.random.default_rng(seed)
    samples = int(round(seconds * features.sample_rate))
    return [(0.1 * rng.standard_normal(samples)).astype(np.float32) for _ in range(n)]


def white_noise_frames(n: int, seconds: float, features: FeatureConfig, seed: int = 0) -> list[np.ndarray]:
    """Features of white_noise_audio's clips."""

    return [extract(y, features) for y in white_noise_audio(n, seconds, features, seed)]


def pyin_notes(y: np.ndarray, features: FeatureConfig, fmin: float = 65.4, fmax: float = 2093.0,
               min_note_frames: int = 3) -> list[Note]:
    """A plain pitch-tracker transcription, the baseline for note_f1.

    librosa.pyin gives f0 per frame; a note runs while the rounded MIDI pitch (median-filtered
    over 5 frames) holds and the frame is voiced, and a librosa onset starts a new one (repeated
    notes). Runs shorter than `min_note_frames` are dropped.
    """

    sr, hop = features.sample_rate, features.hop_length
    f0, voiced, _ = librosa.pyin(y, fmin=fmin, fmax=fmax, sr=sr, frame_length=features.n_fft, hop_length=hop)
    pitch = np.where(voiced & np.isfinite(f0), np.round(librosa.hz_to_midi(np.nan_to_num(f0, nan=1.0))), -1)
    pitch = scipy.signal.medfilt(pitch, 5).astype(int)
    onsets = set(librosa.onset.onset_detect(y=y, sr=sr, hop_length=hop, units="frames").tolist())
    notes, start = [], 0
    for t in range(1, len(pitch) + 1):
        if t == len(pitch) or pitch[t] != pitch[start] or t in onsets:
            if pitch[start] > 0 and t - start >= min_note_frames:
                notes.append((start * hop / sr, t * hop / sr, int(pitch[start]), 80))
            start = t
    return notes


def argmax_notes(frames: np.ndarray, features: FeatureConfig, register: int = 60, voicing_db: float = 35.0,
                 min_note_frames: int = 2) -> list[Note]:
    """The naive transcription musegen's must beat: a note per run of one chroma argmax over loud
    frames (within `voicing_db` of the clip's loudest), in the octave nearest `register`."""

    frames = np.asarray(frames, dtype=np.float64)
    log_mel = mfcc_to_log_mel(frames[:, : features.n_mfcc], features.n_mels)
    loud = 10.0 * np.log10(np.sum(10.0 ** (log_mel / 10.0), axis=-1) + 1e-30)
    pcs = np.where(loud >= loud.max() - voicing_db, np.argmax(frames[:, features.n_mfcc:], axis=-1), -1)
    notes, start, sec = [], 0, features.frame_seconds
    for t in range(1, len(pcs) + 1):
        if t == len(pcs) or pcs[t] != pcs[start]:
            if pcs[start] >= 0 and t - start >= min_note_frames:
                pitch = register + (int(pcs[start]) - register + 6) % 12 - 6
                notes.append((start * sec, t * sec, pitch, 80))
            start = t
    return notes


def pyin_range(label: str | None) -> tuple[float, float]:
    """pyin's search range: the instrument's playable range +- 2 semitones, else C2..C7."""
    inst = find_instrument(label)
    if inst is None:
        return 65.4, 2093.0
    return 440.0 * 2.0 ** ((inst.low - 2 - 69) / 12.0), 440.0 * 2.0 ** ((inst.high + 2 - 69) / 12.0)


def random_chroma(frames: np.ndarray, n_mfcc: int, rng: np.random.Generator) -> np.ndarray:
    """The same frames with uniformly random chroma: pitch_fidelity's chance level (about 1/12)."""
    out = np.array(frames, dtype=np.float32, copy=True)
    out[:, n_mfcc:] = rng.random((len(out), out.shape[1] - n_mfcc))
    return out

