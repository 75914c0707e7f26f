"""Quality metrics as pure maths: arrays in, numbers out, one definition each (docs/DESIGN.md,
"Metrics"), used by the LightningModule (skill), the evaluation harness, tests and bench/.

- ``skill``: next-segment MFCC error against persistence, so 0 means "learned nothing beyond
  repeating the last frame" whatever the data's scale.
- ``pitch_class_profile`` / ``profile_correlation`` (melody adherence): Pearson correlation of
  time-averaged chroma; frame-wise chroma cosine is not used because a flat chroma scores higher
  than a random real clip on it.
- ``pitch_fidelity``: does the written audio sound the pitch classes the model generated?
- ``fad``: Frechet distance between Gaussian fits of pooled-feature embeddings.
- ``mel_fad``: the same distance on log-mel windows of the audio itself, which hears what the
  32 features cannot describe (harmonic partials against broadband smear, the synthesis's timbre).
- ``note_f1``: mir_eval note F1 of a transcription against ground-truth MIDI.
- ``InstrumentClassifier``: the fixed judge of prompt adherence.
- ``rtf``: seconds of audio per wall-clock second.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import librosa
import mir_eval
import numpy as np
import pretty_midi
import scipy.linalg
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from musegen.features import FeatureConfig, extract
from musegen.midi import Note
from musegen.model.conditioning import reference_embedding


# -- skill ---------------------------------------------------------------------------------------
def skill(model_mse: float | torch.Tensor, persistence_mse: float | torch.Tensor) -> torch.Tensor:
    """1 - MSE(model) / MSE(persistence): 0 for repeating the last frame, 1 for a perfect predictor."""
    model_mse = torch.as_tensor(model_mse, dtype=torch.float64)
    persistence_mse = torch.as_tensor(persistence_mse, dtype=torch.float64)
    return 1.0 - model_mse / persistence_mse.clamp(min=1e-12)


# -- pitch-class profiles ------------------------------------------------------------------------
def pitch_class_profile(chroma: np.ndarray) -> np.ndarray:
    """[T, 12] chroma -> [12] time average: which pitch classes the passage dwells on (its key)."""
    chroma = np.asarray(chroma, dtype=np.float64)
    if chroma.ndim != 2 or chroma.shape[0] == 0:
        raise ValueError(f"chroma must be [T, 12] with T >= 1, got {chroma.shape}")
    return chroma.mean(axis=0)


def profile_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two profiles; identical -> 1, and 0 when either is flat (no key)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"profiles differ in shape: {a.shape} vs {b.shape}")
    if np.array_equal(a, b):
        return 1.0
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / denom) if denom > 1e-12 else 0.0


# -- pitch fidelity ------------------------------------------------------------------------------
def voiced_frames(
    audio: np.ndarray, features: FeatureConfig, rel_db: float = 30.0, floor_db: float = -60.0,
) -> np.ndarray:
    """Boolean per frame (aligned with features.extract): loud enough that a pitch is audible."""

    rms = librosa.feature.rms(y=np.asarray(audio, dtype=np.float32), frame_length=features.n_fft,
                              hop_length=features.hop_length)[0]
    db = 20.0 * np.log10(np.maximum(rms, 1e-10))
    return (db >= db.max() - rel_db) & (db >= floor_db)


def pitch_fidelity(generated_frames: np.ndarray, written_audio: np.ndarray, features: FeatureConfig) -> float:
    """Fraction of voiced frames whose chroma argmax re-extracted from the audio equals the generated one.

    Voicing comes from the audio (a silent frame sounds no pitch, so it cannot be judged); no
    voiced frame at all scores 0 (the audio sounds none of the intended notes).
    """

    gen = np.asarray(generated_frames)[:, features.n_mfcc:]
    voiced = voiced_frames(written_audio, features)
    if not voiced[: len(gen)].any():
        return 0.0
    heard = extract(np.asarray(written_audio, dtype=np.float32), features)[:, features.n_mfcc:]
    t = min(len(gen), len(heard), len(voiced))
    voiced = voiced[:t]
    same = np.argmax(gen[:t], axis=1) == np.argmax(heard[:t], axis=1)
    return float(same[voiced].mean())


# -- FAD -----------------------------------------------------------------------------------------
def pooled_embedding(frames: np.ndarray) -> np.ndarray:
    """[T, F] frames -> [2F]: the model's own reference embedding (mean and std over time), the
    clip-level summary of timbre and pitch use that FAD and the instrument classifier compare."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 2 or frames.shape[0] == 0:
        raise ValueError(f"frames must be [T, F] with T >= 1, got {frames.shape}")
    return reference_embedding(torch.from_numpy(frames)).double().numpy()


def frechet_distance(emb_a: np.ndarray, emb_b: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussian fits of two embedding sets [N, D] and [M, D].

    ``eps`` on the covariance diagonals keeps the matrix square root defined when there are
    fewer samples than dimensions; identical sets give 0 (up to rounding, clamped at 0).
    """

    a, b = np.atleast_2d(np.asarray(emb_a, dtype=np.float64)), np.atleast_2d(np.asarray(emb_b, dtype=np.float64))
    if a.shape[1] != b.shape[1] or len(a) == 0 or len(b) == 0:
        raise ValueError(f"embeddings must be [N, D] and [M, D] with N, M >= 1, got {a.shape} and {b.shape}")
    cov_a, cov_b = _cov(a) + eps * np.eye(a.shape[1]), _cov(b) + eps * np.eye(b.shape[1])
    covmean = np.real(scipy.linalg.sqrtm(cov_a @ cov_b))
    if not np.all(np.isfinite(covmean)):
        raise ValueError("frechet_distance: covariance square root is not finite")
    diff = a.mean(axis=0) - b.mean(axis=0)
    d = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(d, 0.0)


def _cov(x: np.ndarray) -> np.ndarray:
    return np.cov(x, rowvar=False, bias=True) if len(x) > 1 else np.zeros((x.shape[1], x.shape[1]))


def fad(generated: Sequence[np.ndarray], real: Sequence[np.ndarray],
        mean: np.ndarray | None = None, std: np.ndarray | None = None) -> float:
    """FAD of two sets of clips' frames [T, F]: frechet_distance of their pooled embeddings.

    With `mean`/`std` (the model's training statistics) frames are standardised first, so the
    loud MFCC 0 does not drown every other dimension; baselines must use the same statistics.
    """
    def embed(clips: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for f in clips:
            f = np.asarray(f, dtype=np.float64)
            if mean is not None and std is not None:
                f = (f - np.asarray(mean)) / np.asarray(std)
            out.append(pooled_embedding(f))
        return np.stack(out)

    return frechet_distance(embed(generated), embed(real))


def mel_embedding(clips: Sequence[np.ndarray], features: FeatureConfig, window_seconds: float = 1.0,
                  n_mels: int = 64) -> np.ndarray:
    """Mono clips -> [windows, 2 * n_mels]: per whole `window_seconds` window, the mean and std over time
    of the log10 mel power (features' FFT size and hop), each clip peak-normalised first as written
    files are, so a level difference between sets is not mistaken for a difference in sound.

    A 64-band mel spectrum resolves the low partials of a note, so a harmonic stack and the same
    energy smeared between partials embed apart, where MFCCs and chroma summarise both alike. A
    clip shorter than one window gives no row."""
    sr, n = features.sample_rate, int(round(window_seconds * features.sample_rate))
    rows = []
    for y in clips:
        y = np.asarray(y, dtype=np.float64)
        peak = float(np.max(np.abs(y))) if y.size else 0.0
        y = y / peak if peak > 0 else y
        for start in range(0, len(y) - n + 1, n):
            mel = librosa.feature.melspectrogram(y=y[start:start + n], sr=sr, n_fft=features.n_fft,
                                                 hop_length=features.hop_length, n_mels=n_mels)
            log_mel = np.log10(np.maximum(mel, 1e-8))
            rows.append(np.concatenate([log_mel.mean(axis=1), log_mel.std(axis=1)]))
    if not rows:
        raise ValueError(f"mel_embedding: no clip lasts one {window_seconds} s window")
    return np.stack(rows)


def mel_fad(generated: Sequence[np.ndarray], real: Sequence[np.ndarray], features: FeatureConfig) -> float:
    """FAD of two sets of mono audio clips on their log-mel windows (mel_embedding)."""
    return frechet_distance(mel_embedding(generated, features), mel_embedding(real, features))


# -- notes ---------------------------------------------------------------------------------------
def note_f1(est_notes: Sequence[Note], ref_notes: Sequence[Note]) -> float:
    """mir_eval note F1: onset within 50 ms, pitch within 50 cents, offsets ignored.

    Both empty is a perfect transcription (1); one empty scores 0. Zero-length notes are dropped
    (mir_eval rejects them).
    """

    est, ref = _note_arrays(est_notes), _note_arrays(ref_notes)
    if len(ref[0]) == 0 or len(est[0]) == 0:
        return 1.0 if len(ref[0]) == len(est[0]) else 0.0
    _, _, f1, _ = mir_eval.transcription.precision_recall_f1_overlap(
        ref[0], ref[1], est[0], est[1], onset_tolerance=0.05, pitch_tolerance=50.0, offset_ratio=None)
    return float(f1)


def _note_arrays(notes: Sequence[Note]) -> tuple[np.ndarray, np.ndarray]:
    """Notes -> (intervals [N, 2] seconds, pitches [N] Hz), positive durations only."""
    kept = [(float(n[0]), float(n[1]), float(n[2])) for n in notes if float(n[1]) > float(n[0])]
    if not kept:
        return np.zeros((0, 2)), np.zeros(0)
    arr = np.array(kept)
    return arr[:, :2], 440.0 * 2.0 ** ((arr[:, 2] - 69.0) / 12.0)


def midi_notes(path: str | Path, max_seconds: float | None = None) -> list[Note]:
    """Ground-truth notes of a MIDI file (pretty_midi), drums excluded, cut at `max_seconds`."""

    pm = pretty_midi.PrettyMIDI(str(path))
    notes = [(n.start, n.end, n.pitch, n.velocity) for inst in pm.instruments if not inst.is_drum for n in inst.notes]
    if max_seconds is not None:
        notes = [(s, min(e, max_seconds), p, v) for s, e, p, v in notes if s < max_seconds]
    return sorted(notes)


# -- instrument classifier -----------------------------------------------------------------------
class InstrumentClassifier:
    """A fixed judge for prompt_adherence: StandardScaler + LogisticRegression on pooled MFCCs.

    Mean and std over time of the MFCCs only (timbre, not pitch), fit on real training clips.
    Fixed means it never sees generated audio, so it cannot learn the model's artefacts.
    """

    def __init__(self, n_mfcc: int = 20, c: float = 1.0, seed: int = 0) -> None:

        self.n_mfcc = n_mfcc
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))

    def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([pooled_embedding(np.asarray(f)[:, : self.n_mfcc]) for f in clips])

    def fit(self, clips: Sequence[np.ndarray], labels: Sequence[str]) -> InstrumentClassifier:
        if len(set(labels)) < 2:
            raise ValueError(f"InstrumentClassifier needs >= 2 classes in the training clips, "
                             f"got {sorted(set(labels))}")
        self.model.fit(self.embed(clips), list(labels))
        return self

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.model.classes_]

    def predict(self, clips: Sequence[np.ndarray]) -> list[str]:
        return [str(p) for p in self.model.predict(self.embed(clips))]

    def accuracy(self, clips: Sequence[np.ndarray], labels: Sequence[str]) -> float:
        """Fraction of clips classified as their label (0 for no clips)."""
        if not clips:
            return 0.0
        return float(np.mean([p == y for p, y in zip(self.predict(clips), labels)]))


# -- speed ---------------------------------------------------------------------------------------
def rtf(audio_seconds: float, wall_seconds: float) -> float:
    """Real-time factor: seconds of audio produced per wall-clock second (> 1 is faster than real time)."""
    if wall_seconds <= 0:
        raise ValueError(f"wall_seconds must be > 0, got {wall_seconds}")
    return float(audio_seconds) / float(wall_seconds)

