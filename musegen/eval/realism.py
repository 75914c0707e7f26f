"""Does written audio sound like music? Descriptors measured on audio, the same for every source.

Generated audio, real clips resynthesised from their true frames (what the vocoder alone loses)
and the real clips themselves go through one set of pure functions (arrays in, numbers out), so a
gap between "generated" and "resynthesised real" is the model's, and a gap between
"resynthesised real" and "real" is the synthesis's.

Audio is cut into non-overlapping windows of ``WINDOW_SECONDS`` (a trailing part shorter than a
window is dropped; a clip shorter than one window is one window) and each descriptor is measured
per window; a clip's or a set's value is the median over its windows, so one odd window (a
silent tail, a click) does not move it. Every frame-level quantity uses the features' STFT
(``n_fft``, ``hop_length``, centred Hann frames), so frame t here is frame t of features.extract.

Descriptors of one window (``window_descriptors`` gives them per window of a clip):

- ``onsets_per_second``: onsets in the window / window seconds; onsets from onset_envelope
  (librosa.onset.onset_detect on the onset strength, same hop as the features) of the whole clip.
- ``spectral_flux``: mean over the window's frames of librosa's onset strength, i.e. the
  half-wave rectified frame-to-frame increase of the log-mel spectrum (dB), averaged over mel bands.
- ``spectral_flatness``: librosa's spectral flatness (geometric / arithmetic mean of the power
  spectrum; 1 for white noise, near 0 for a pure tone), mean over voiced frames.
- ``chroma_change``: chroma (features.extract's) normalised to max 1 per frame, so it does not
  follow loudness; the mean absolute difference over the 12 classes between consecutive frames
  (L1 distance / 12), mean over pairs of consecutive voiced frames. 0 for a held pitch; a jump
  between two pure pitch classes is 2/12.
- ``chroma_peakiness``: max / sum of the chroma per frame, mean over voiced frames: 1 when one
  pitch class holds all the energy, 1/12 when all are equal.
- ``rms_cv``: coefficient of variation (std / mean) of frame RMS over voiced frames: how much
  the loudness moves (note attacks and decays), independent of overall gain.
- ``mfccNN_mean``, ``mfccNN_std``, ``mfccNN_delta_std``: per MFCC coefficient, mean and std over
  the window's frames and std of librosa.feature.delta (width 9): timbre and how fast it moves.

Voiced frames are musegen.eval.metrics.voiced_frames of the window (within 30 dB of its loudest
frame and above -60 dBFS): on silence, flatness and chroma are undefined, so those descriptors
are NaN for a window without voiced frames and such windows are left out of the classifier.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from musegen.eval.metrics import Note, voiced_frames
from musegen.features import FeatureConfig, extract
from musegen.io import finite_or_none

log = logging.getLogger(__name__)

WINDOW_SECONDS = 4.0
MIN_SECONDS = 0.5          # shorter audio has too few frames for deltas (width 9) and onsets
DELTA_WIDTH = 9
#: The descriptors that describe the music rather than the timbre; the two-sample test uses these
#: by default, so it asks "is the note structure different", not "is the instrument different".
MUSICAL = ("onsets_per_second", "spectral_flux", "spectral_flatness", "chroma_change",
           "chroma_peakiness", "rms_cv")


# ============================================================================ input checks
def _audio(y: Any, name: str) -> np.ndarray:
    """`y` as a finite 1-D float32 array, or a ValueError naming `name`."""
    a = np.asarray(y, dtype=np.float32)
    if a.ndim != 1:
        raise ValueError(f"{name}: audio must be 1-D (mono samples), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: audio contains NaN or infinite samples")
    return a


def _check_rate(sr: int, features: FeatureConfig) -> None:
    if int(sr) != features.sample_rate:
        raise ValueError(f"sr={sr} differs from features.sample_rate={features.sample_rate}; "
                         "resample the audio to the features' rate first")


def _long_enough(y: np.ndarray, features: FeatureConfig, name: str) -> np.ndarray:
    if y.size < MIN_SECONDS * features.sample_rate:
        raise ValueError(f"{name}: {y.size / features.sample_rate:.3f} s of audio, need at least {MIN_SECONDS} s")
    return y


def windows(y: np.ndarray, features: FeatureConfig, seconds: float = WINDOW_SECONDS,
            name: str = "y") -> list[np.ndarray]:
    """Non-overlapping windows of `seconds`; the trailing remainder is dropped, a shorter clip is one window."""
    y = _long_enough(_audio(y, name), features, name)
    n = int(round(seconds * features.sample_rate))
    if y.size < n:
        return [y]
    return [y[i * n:(i + 1) * n] for i in range(y.size // n)]


# ============================================================================ descriptors
def _voiced_mean(values: np.ndarray, voiced: np.ndarray) -> float:
    t = min(len(values), len(voiced))
    v = values[:t][voiced[:t]]
    return float(v.mean()) if v.size else math.nan


def _per_frame(chroma: np.ndarray, norm: str) -> np.ndarray:
    """[T, 12] chroma scaled per frame to max 1 (norm="max") or sum 1 ("sum"); all-zero frames stay zero."""
    c = np.asarray(chroma, dtype=np.float64)
    scale = c.max(axis=1, keepdims=True) if norm == "max" else c.sum(axis=1, keepdims=True)
    return np.divide(c, scale, out=np.zeros_like(c), where=scale > 0)


def chroma_change(chroma: np.ndarray, voiced: np.ndarray) -> float:
    """Mean over pairs of consecutive voiced frames of the mean absolute difference over the 12
    classes of max-normalised chroma (librosa's own normalisation); NaN without such a pair."""
    c = _per_frame(chroma, "max")
    t = min(len(c), len(voiced))
    pairs = voiced[: t - 1] & voiced[1:t]
    if not pairs.any():
        return math.nan
    return float(np.abs(np.diff(c[:t], axis=0)).mean(axis=1)[pairs].mean())


def chroma_peakiness(chroma: np.ndarray, voiced: np.ndarray) -> float:
    """Mean over voiced frames of max / sum of the chroma (1: one pitch class, 1/12: flat); NaN if none voiced."""
    return _voiced_mean(_per_frame(chroma, "sum").max(axis=1), voiced)


def _frame_rms(y: np.ndarray, features: FeatureConfig) -> np.ndarray:
    import librosa  # noqa: PLC0415

    return librosa.feature.rms(y=y, frame_length=features.n_fft, hop_length=features.hop_length)[0]


def rms_variation(y: np.ndarray, features: FeatureConfig) -> float:
    """std / mean of frame RMS over voiced frames (voicing as musegen.eval.metrics.voiced_frames); NaN if none voiced.

    Gain-independent: the same signal at any level scores the same.
    """
    y = _audio(y, "y")
    rms = _frame_rms(y, features)[voiced_frames(y, features)]
    if rms.size == 0 or rms.mean() <= 0:
        return math.nan
    return float(rms.std() / rms.mean())


def onset_envelope(y: np.ndarray, features: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """librosa's onset strength per frame of `y` (hop = features.hop_length) and the onset frames
    librosa.onset.onset_detect picks from it, with librosa's defaults.

    librosa's envelope is zero for its first frames, so a note starting at 0 s is not an onset:
    a 4 s clip that starts on a note counts one fewer (0.25 per second). Padding silence in front
    would count it, but that attack from silence is then the clip's strongest, and onset_detect's
    normalisation by the maximum hides weaker onsets, so it is not done.
    """
    import librosa  # noqa: PLC0415

    y = _audio(y, "y")
    sr, hop = features.sample_rate, features.hop_length
    strength = librosa.onset.onset_strength(y=y, sr=sr, n_fft=features.n_fft, hop_length=hop)
    return strength, librosa.onset.onset_detect(onset_envelope=strength, sr=sr, hop_length=hop)


def onset_times(y: np.ndarray, features: FeatureConfig) -> np.ndarray:
    """Onset times (s) of the onsets onset_envelope finds."""
    return onset_envelope(y, features)[1] * features.frame_seconds


def _window_descriptors(y: np.ndarray, features: FeatureConfig, onsets: int, flux: np.ndarray) -> dict[str, float]:
    """Every descriptor of one window holding `onsets` onsets and `flux` (onset strength of its frames)."""
    import librosa  # noqa: PLC0415

    sr, hop, n_fft = features.sample_rate, features.hop_length, features.n_fft
    voiced = voiced_frames(y, features)
    frames = extract(y, features)
    mfcc, chroma = frames[:, : features.n_mfcc].T, frames[:, features.n_mfcc:]
    flatness = librosa.feature.spectral_flatness(y=y, n_fft=n_fft, hop_length=hop)[0]
    out = {
        "onsets_per_second": onsets / (y.size / sr),
        "spectral_flux": float(flux.mean()),
        "spectral_flatness": _voiced_mean(flatness, voiced),
        "chroma_change": chroma_change(chroma, voiced),
        "chroma_peakiness": chroma_peakiness(chroma, voiced),
        "rms_cv": rms_variation(y, features),
    }
    delta = librosa.feature.delta(mfcc, width=DELTA_WIDTH)
    for i in range(features.n_mfcc):
        out[f"mfcc{i:02d}_mean"] = float(mfcc[i].mean())
        out[f"mfcc{i:02d}_std"] = float(mfcc[i].std())
        out[f"mfcc{i:02d}_delta_std"] = float(delta[i].std())
    return out


def window_descriptors(y: np.ndarray, features: FeatureConfig, name: str = "y") -> list[dict[str, float]]:
    """Every descriptor of each window of a clip, in order.

    Onsets and flux come from one onset envelope of the whole clip, each frame assigned to the
    window holding its centre: a note sounding across a window boundary is not a new onset where
    the next window starts.
    """
    y = _audio(y, name)
    ws = windows(y, features, name=name)
    strength, onsets = onset_envelope(y, features)
    owner = np.arange(len(strength)) * features.hop_length // ws[0].size  # windows tile the clip from 0 s
    return [_window_descriptors(w, features, int(np.sum(owner[onsets] == i)), strength[owner == i])
            for i, w in enumerate(ws)]


def descriptors(y: np.ndarray, sr: int, features: FeatureConfig) -> dict[str, float]:
    """Every descriptor of a clip: the median over its windows (NaN windows ignored; NaN if all are)."""
    _check_rate(sr, features)
    return median_descriptors(window_descriptors(y, features))


def median_descriptors(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each descriptor's median over rows of descriptors (windows, or clips): NaN ignored; NaN if all are."""
    return {k: _nanmedian([r[k] for r in rows]) for k in rows[0]}


def _nanmedian(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else math.nan


# ============================================================================ two-sample test
def window_table(clips: Sequence[np.ndarray], features: FeatureConfig) -> tuple[list[dict[str, float]], np.ndarray]:
    """Descriptors of every window of every clip, and the clip index of each window."""
    if len(clips) == 0:
        raise ValueError("clips: empty; need at least one clip")
    rows, owner = [], []
    for i, y in enumerate(clips):
        clip_rows = window_descriptors(y, features, name=f"clip {i}")
        rows += clip_rows
        owner += [i] * len(clip_rows)
    return rows, np.asarray(owner)


def _matrix(rows: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    unknown = [n for n in names if n not in rows[0]]
    if unknown:
        raise ValueError(f"names: unknown descriptor(s) {unknown}; known: {sorted(rows[0])}")
    return np.array([[r[n] for n in names] for r in rows], dtype=np.float64).reshape(len(rows), len(names))


def clip_folds(groups: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) window indices per fold: stratified by label, every clip's windows on one side only.

    Grouping matters because windows of one clip share timbre, key and tempo: with a clip on both
    sides the classifier could recognise the clip instead of the set.
    """
    from sklearn.model_selection import StratifiedGroupKFold  # noqa: PLC0415

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def _two_sample(xa: np.ndarray, ga: np.ndarray, xb: np.ndarray, gb: np.ndarray, folds: int, seed: int) -> float:
    """Cross-validated accuracy on two window matrices with their clip ids (distinct across sets)."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.model_selection import cross_val_predict  # noqa: PLC0415
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    keep_a, keep_b = np.isfinite(xa).all(axis=1), np.isfinite(xb).all(axis=1)
    if not (keep_a.all() and keep_b.all()):
        log.warning("two-sample test: leaving out %d + %d windows without voiced frames",
                    (~keep_a).sum(), (~keep_b).sum())
    xa, ga, xb, gb = xa[keep_a], ga[keep_a], xb[keep_b], gb[keep_b]
    for name, g in (("a", ga), ("b", gb)):
        if len(np.unique(g)) < folds:
            raise ValueError(f"{name}: {len(np.unique(g))} clip(s) with voiced windows, need at least folds={folds} "
                             "so that every fold tests clips of both sets")
    rng = np.random.default_rng(seed)
    n = min(len(xa), len(xb))
    ia, ib = np.sort(rng.permutation(len(xa))[:n]), np.sort(rng.permutation(len(xb))[:n])  # balanced classes
    x = np.concatenate([xa[ia], xb[ib]])
    labels = np.r_[np.zeros(n, dtype=int), np.ones(n, dtype=int)]
    groups = np.concatenate([ga[ia], gb[ib] + ga.max() + 1])
    # logistic regression: with tens of windows and six descriptors a linear model has little
    # variance, so chance-level sets score near 0.5 instead of a forest's memorised noise
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))
    pred = cross_val_predict(model, x, labels, cv=clip_folds(groups, labels, folds, seed))
    return float(np.mean(pred == labels))


def two_sample_accuracy(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], sr: int, features: FeatureConfig, folds: int = 5,
    seed: int = 0, names: Sequence[str] = MUSICAL,
) -> float:
    """Cross-validated accuracy of a classifier told to tell windows of clips `a` from windows of clips `b`.

    Standardised descriptors `names` per window, logistic regression, `folds`-fold CV with folds
    grouped by clip (clip_folds); the larger set's windows are subsampled (seeded) to the smaller's
    count, so 0.5 is chance: the sets are indistinguishable by these descriptors; 1.0 always tells them apart.
    """
    _check_rate(sr, features)
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    for name, clips in (("a", a), ("b", b)):
        if len(clips) < folds:
            raise ValueError(f"{name}: {len(clips)} clip(s), need at least folds={folds}")
    rows_a, ga = window_table(a, features)
    rows_b, gb = window_table(b, features)
    return _two_sample(_matrix(rows_a, names), ga, _matrix(rows_b, names), gb, folds, seed)


# ============================================================================ resynthesis fidelity
def pitch_class_match(original: np.ndarray, rebuilt: np.ndarray, sr: int, features: FeatureConfig) -> float:
    """Fraction of the original's voiced frames where the rebuilt audio's chroma argmax equals the original's.

    Voicing comes from the original (musegen.eval.metrics.voiced_frames): its silent frames sound no
    pitch to match. Frames are aligned from the start and cut to the shorter; NaN if no frame is voiced.
    """
    _check_rate(sr, features)
    original, rebuilt = _audio(original, "original"), _audio(rebuilt, "rebuilt")
    n = features.n_mfcc
    a, b = extract(original, features)[:, n:], extract(rebuilt, features)[:, n:]
    voiced = voiced_frames(original, features)
    t = min(len(a), len(b), len(voiced))
    voiced = voiced[:t]
    if not voiced.any():
        return math.nan
    same = np.argmax(a[:t], axis=1) == np.argmax(b[:t], axis=1)
    return float(same[voiced].mean())


def log_spectral_distance(original: np.ndarray, rebuilt: np.ndarray, features: FeatureConfig,
                          top_db: float = 80.0) -> float:
    """Mean over frames of the RMS over frequency bins of log10 |STFT|^2(original) - log10 |STFT|^2(rebuilt).

    The features' STFT (n_fft, hop_length, Hann, centred); both signals cut to the shorter length.
    Each log spectrum is floored `top_db` below its own peak (librosa.power_to_db with ref=1,
    amin=1e-10), so bins no one could hear next to the peak, and digital silence, do not
    dominate. In log10 power units: 1.0 is a 10 dB typical difference. Gain-sensitive.
    """
    import librosa  # noqa: PLC0415

    original, rebuilt = _audio(original, "original"), _audio(rebuilt, "rebuilt")
    t = min(original.size, rebuilt.size)
    if t < features.n_fft // 2:
        raise ValueError(f"original/rebuilt: {t} common samples, need at least n_fft/2 = {features.n_fft // 2}")

    def log_power(y: np.ndarray) -> np.ndarray:
        s = librosa.stft(y[:t], n_fft=features.n_fft, hop_length=features.hop_length)
        return librosa.power_to_db(np.abs(s) ** 2, ref=1.0, amin=1e-10, top_db=top_db) / 10.0

    diff = log_power(original) - log_power(rebuilt)
    return float(np.sqrt((diff ** 2).mean(axis=0)).mean())


# ============================================================================ notes
SHORT_NOTE_SECONDS = 0.15   # about 6 frames at 22050 Hz / hop 512: a blip rather than a note


def note_durations(notes_per_clip: Sequence[Sequence[Note]]) -> dict[str, float | int]:
    """Quantiles of note length (s) pooled over clips, and the share of notes under
    ``SHORT_NOTE_SECONDS``.

    A median alone cannot tell why notes are short: a sampler whose notes end at a constant rate
    (lengths spread like an exponential) has its median at 0.69 of its mean, with many blips and a
    few long notes, while played music clusters around the beat. The quartiles and the short share
    say which end of the distribution differs from the reference.
    """
    lengths = np.array([float(n[1]) - float(n[0]) for notes in notes_per_clip for n in notes])
    if lengths.size == 0:
        return {"notes": 0}
    q10, q25, q50, q75, q90 = np.quantile(lengths, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"notes": int(lengths.size), "mean": float(lengths.mean()), "q10": float(q10), "q25": float(q25),
            "median": float(q50), "q75": float(q75), "q90": float(q90),
            "short_share": float((lengths < SHORT_NOTE_SECONDS).mean())}


def note_statistics(notes: Sequence[Note], seconds: float | None = None) -> dict[str, float]:
    """Notes per second and median note length (s) of (start, end, pitch, velocity) notes.

    The same for transcriptions of generated frames and for ground-truth MIDI
    (musegen.eval.metrics.midi_notes), so the two compare directly. `seconds` is the clip's
    length (default: the last note's end); no notes gives a rate of 0 and a NaN median.
    """
    starts, ends = np.array([float(n[0]) for n in notes]), np.array([float(n[1]) for n in notes])
    if np.any(ends < starts) or np.any(starts < 0):
        raise ValueError("notes: every note needs 0 <= start <= end")
    span = float(seconds) if seconds is not None else (float(ends.max()) if len(notes) else 0.0)
    if seconds is not None and span <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return {
        "notes_per_second": len(notes) / span if span > 0 else 0.0,
        "median_note_seconds": float(np.median(ends - starts)) if len(notes) else math.nan,
    }


# ============================================================================ report
def realism_report(
    generated: Sequence[np.ndarray], reference: Sequence[np.ndarray], features: FeatureConfig,
    real: Sequence[np.ndarray] | None = None, folds: int = 5, seed: int = 0, names: Sequence[str] = MUSICAL,
) -> dict[str, Any]:
    """Descriptor medians over all windows of each set, two-sample accuracies and generated/reference ratios.

    `reference` is what generated audio should be indistinguishable from with this synthesis (real
    clips resynthesised from their true frames); `real` (optional) the real clips, which shows
    what the synthesis itself changes. Ratios are given for the descriptors that cannot be
    negative (not the MFCC means) where the reference median is > 0. Plain JSON-able (NaN -> None).
    """
    sets = {"generated": generated, "reference": reference}
    if real is not None:
        sets["real"] = real
    tables = {k: window_table(v, features) for k, v in sets.items()}
    medians = {k: {n: _nanmedian([r[n] for r in rows]) for n in rows[0]} for k, (rows, _) in tables.items()}
    json_medians = {k: {n: finite_or_none(float(v)) for n, v in m.items()} for k, m in medians.items()}
    matrices = {k: (_matrix(rows, names), owner) for k, (rows, owner) in tables.items()}
    pairs = [("generated", "reference"), ("generated", "real"), ("reference", "real")]
    accuracy = {f"{a}_vs_{b}": _two_sample(*matrices[a], *matrices[b], folds, seed)
                for a, b in pairs if a in sets and b in sets}
    gen, ref = medians["generated"], medians["reference"]
    ratios = {n: finite_or_none(float(gen[n] / ref[n])) for n in gen if not n.endswith("_mean") and ref[n] > 0}
    return {
        "descriptors": json_medians,
        "two_sample_accuracy": accuracy,
        "ratios_generated_over_reference": ratios,
        "clips": {k: len(v) for k, v in sets.items()},
        "windows": {k: len(owner) for k, (_, owner) in tables.items()},
        "classifier_descriptors": list(names),
        "window_seconds": WINDOW_SECONDS,
        "folds": folds,
        "seed": seed,
    }
