"""Loudness normalisation of finished audio: integrated loudness (ITU-R BS.1770, pyloudnorm) under a
true-peak ceiling.

Peak normalisation alone leaves two samples with the same peak many decibels apart in loudness, so
a listener comparing prompts or checkpoints hears level, not music. Each file is brought to one
integrated loudness instead (streaming services use -14 LUFS) while no inter-sample peak exceeds
the ceiling (-1 dBTP: the streaming services' headroom; musegen.export trims an MP3 whose decoded
peaks still pass it). Audio whose peak-to-loudness ratio is too large for both gets a look-ahead
limiter on its peaks, up to ``max_limiting_db`` of gain reduction; past that the gain stops short of
the target and the report says so.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import pyloudnorm
from scipy.ndimage import minimum_filter1d, uniform_filter1d
from scipy.signal import resample_poly

log = logging.getLogger(__name__)

#: pyloudnorm's gating block: shorter audio has no integrated loudness
BLOCK_SECONDS = 0.4
#: true peak is read on audio oversampled to at least this rate (BS.1770-4 Annex 2: 4x at 48 kHz)
_TRUE_PEAK_RATE = 192_000
#: samples per oversampling chunk, so hours of audio never need all their oversampled copy at once
_CHUNK = 1 << 16
#: the limiter's look-ahead and its release: gain falls over this long before a peak and rises over it
#: after. Measured on FluidSynth piano: 2 ms reaches -14 LUFS with 6 dB of limiting, 10 ms needs over 12
_LIMITER_SECONDS = 0.002
#: tolerance on the reached loudness (LU); the limiter's gain is searched in steps of _STEP_DB, then halved
_TOLERANCE_LU, _STEP_DB, _HALVINGS = 0.05, 1.0, 8


@dataclass(frozen=True)
class LoudnessReport:
    """What normalisation did to one file, for its JSON sidecar. Loudness in LUFS, peaks in dBTP."""

    target_lufs: float
    before_lufs: float | None
    after_lufs: float | None
    true_peak_before_dbtp: float | None
    true_peak_dbtp: float | None
    gain_db: float
    limiting_db: float          # the limiter's largest gain reduction on a peak (0: plain gain)
    limited: bool               # the target was not reached: the true-peak ceiling stopped the gain
    reason: str | None          # why the audio was left as it was or stopped short of the target

    def to_dict(self) -> dict[str, float | bool | str | None]:
        return asdict(self)


def true_peak_envelope(y: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per sample, the largest magnitude of the oversampled signal between it and the next sample."""
    factor = max(1, -(-_TRUE_PEAK_RATE // sample_rate))
    pad = 64                                                   # beyond resample_poly's filter reach
    env = np.empty(y.shape[-1], dtype=np.float64)
    for start in range(0, y.shape[-1], _CHUNK):
        lo, hi = max(0, start - pad), min(y.shape[-1], start + _CHUNK + pad)
        up = np.abs(resample_poly(y[lo:hi].astype(np.float64), factor, 1))
        block = up.reshape(hi - lo, factor).max(axis=1)
        stop = min(start + _CHUNK, y.shape[-1])
        env[start:stop] = np.maximum(block[start - lo:stop - lo], np.abs(y[start:stop]))
    return env


def true_peak_db(y: np.ndarray, sample_rate: int) -> float:
    """True peak in dBTP (-inf for silence)."""
    peak = float(true_peak_envelope(y, sample_rate).max(initial=0.0))
    return 20.0 * np.log10(peak) if peak > 0 else -np.inf


def _db(x: float) -> float:
    return 10.0 ** (x / 20.0)


def _limit(y: np.ndarray, envelope: np.ndarray, ceiling: float, sample_rate: int) -> np.ndarray:
    """``y`` with its peaks above ``ceiling`` (linear) turned down by a smooth look-ahead gain.

    The gain each sample needs is spread by a minimum filter and then averaged over the same width:
    every average then covers only values at or below the sample's own need, so no peak is missed,
    and the gain moves over ``_LIMITER_SECONDS`` instead of jumping (which would distort).
    """
    need = np.minimum(1.0, ceiling / np.maximum(envelope, 1e-12))
    width = 2 * int(round(_LIMITER_SECONDS * sample_rate)) + 1
    gain = uniform_filter1d(minimum_filter1d(need, width, mode="nearest"), width, mode="nearest")
    return y * np.minimum(gain, need)


def normalize_loudness(y: np.ndarray, sample_rate: int, target_lufs: float, peak_db: float,
                       max_limiting_db: float) -> tuple[np.ndarray, LoudnessReport]:
    """Mono ``y`` at ``target_lufs`` integrated loudness with its true peak at most ``peak_db`` dBTP.

    Plain gain when the headroom allows; otherwise the limiter takes the peaks down by up to
    ``max_limiting_db`` and the gain is corrected for the loudness the limiting removed; past that the
    gain stops at the ceiling (``limited``). Silence and audio shorter than pyloudnorm's 0.4 s block
    come back unchanged with the reason. The arguments are checked where they are configured
    (musegen.export.ExportSettings).
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"loudness normalisation expects mono [samples], got shape {y.shape}")

    def unchanged(reason: str) -> tuple[np.ndarray, LoudnessReport]:
        log.info("loudness left as it is: %s", reason)
        return y.astype(np.float32), LoudnessReport(target_lufs, None, None, None, None, 0.0, 0.0, False, reason)

    if y.shape[-1] < BLOCK_SECONDS * sample_rate:
        return unchanged(f"shorter than the {BLOCK_SECONDS} s loudness block ({y.shape[-1] / sample_rate:.3f} s)")
    meter = pyloudnorm.Meter(sample_rate)
    before = float(meter.integrated_loudness(y))
    envelope = true_peak_envelope(y, sample_rate)
    peak = float(envelope.max(initial=0.0))
    if not np.isfinite(before) or peak <= 0:
        return unchanged("silent (below the -70 LUFS gate of BS.1770)")
    peak_before = 20.0 * np.log10(peak)
    headroom = peak_db - peak_before              # the largest plain gain the ceiling allows
    most = headroom + max_limiting_db             # the largest gain the limiter may make up for
    ceiling = _db(peak_db)

    def at(gain_db: float) -> tuple[np.ndarray, float]:
        """The audio at this gain, limited where the gain passes the headroom, and its loudness."""
        out = y * _db(gain_db)
        if gain_db > headroom:
            out = _limit(out, envelope * _db(gain_db), ceiling, sample_rate)
        return out, float(meter.integrated_loudness(out))

    # limiting takes loudness away as it adds gain, and not monotonically: step up until the target is
    # passed, then halve the last step until within tolerance; the loudest try stands when none reaches it
    gain_db = min(target_lufs - before, headroom)
    out, loudness = at(gain_db)
    loudest, low = (out, loudness, gain_db), gain_db
    while loudness < target_lufs - _TOLERANCE_LU and gain_db < most:
        low, gain_db = gain_db, min(gain_db + _STEP_DB, most)
        out, loudness = at(gain_db)
        loudest = max(loudest, (out, loudness, gain_db), key=lambda tried: tried[1])
    limited = loudness < target_lufs - _TOLERANCE_LU
    if limited:
        out, loudness, gain_db = loudest
    elif loudness > target_lufs + _TOLERANCE_LU and gain_db > headroom:
        high = gain_db
        for _ in range(_HALVINGS):
            gain_db = (low + high) / 2
            out, loudness = at(gain_db)
            if abs(loudness - target_lufs) <= _TOLERANCE_LU:
                break
            low, high = (gain_db, high) if loudness < target_lufs else (low, gain_db)
    # the limiter's gain is smooth but not band-limited: catch the hundredths of a dB it may let through
    final_peak = float(true_peak_envelope(out, sample_rate).max())
    if final_peak > ceiling:
        out, final_peak = out * (ceiling / final_peak), ceiling
    after = float(meter.integrated_loudness(out))
    reason = None
    if limited:
        reason = (f"true-peak ceiling {peak_db} dBTP with at most {max_limiting_db} dB of limiting: "
                  f"{target_lufs - after:.1f} LU short of the target")
        log.warning("loudness: %s", reason)
    report = LoudnessReport(target_lufs, before, after, peak_before, float(20.0 * np.log10(final_peak)),
                            float(gain_db), float(max(0.0, gain_db - headroom)), limited, reason)
    return out.astype(np.float32), report
