"""Signal-processing conversions shared by synthesis, transcription and evaluation, defined once.

Each works on Python numbers, numpy arrays and torch tensors alike (plain arithmetic only), except
``mfcc_to_log_mel``, which is numpy (scipy's DCT).
"""
from __future__ import annotations

from typing import TypeVar

import numpy as np
import scipy.fft

T = TypeVar("T")


def midi_to_hz(pitch: T) -> T:
    """MIDI pitch (69 = A4 = 440 Hz) -> frequency in Hz."""
    return 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)


def nearest_pitch(pitch_class: T, register: int) -> T:
    """The MIDI pitch of ``pitch_class`` (0 = C) in the octave centred on ``register``."""
    return register + (pitch_class - register + 6) % 12 - 6


def idct_matrix(n_mfcc: int, n_mels: int) -> np.ndarray:
    """[n_mfcc, n_mels]: MFCC @ this = log-mel (dB), the inverse ortho DCT-II librosa.mfcc_to_mel uses."""
    return scipy.fft.idct(np.eye(n_mfcc, n_mels), type=2, norm="ortho", axis=-1)


def mfcc_to_log_mel(mfcc: np.ndarray, n_mels: int) -> np.ndarray:
    """[.., n_mfcc] MFCC -> [.., n_mels] log-mel envelope in dB (inverse ortho DCT-II)."""
    return scipy.fft.idct(mfcc, axis=-1, type=2, norm="ortho", n=n_mels)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """[n_mels, 1 + n_fft // 2] Slaney mel filterbank, as librosa.filters.mel with its defaults
    (fmin 0, fmax sample_rate / 2, Slaney area normalisation).

    librosa.filters imports scipy.signal, whose import alone takes seconds (it rewrites hundreds of
    docstrings), and librosa's unit conversions import numba; the synthesis and the transcription
    need only this matrix and the band frequencies, so generation computes them here.
    """
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    mel_hz = mel_frequencies(n_mels + 2, sample_rate / 2.0)
    width = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]
    rising, falling = -ramps[:-2] / width[:-1, None], ramps[2:] / width[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (mel_hz[2 : n_mels + 2] - mel_hz[:n_mels]))[:, None]


#: Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above
_HZ_PER_MEL, _LOG_START_HZ, _LOG_STEP = 200.0 / 3.0, 1000.0, float(np.log(6.4) / 27.0)
_LOG_START_MEL = _LOG_START_HZ / _HZ_PER_MEL


def mel_frequencies(n_mels: int, fmax: float) -> np.ndarray:
    """``n_mels`` frequencies (Hz) evenly spaced on the Slaney mel scale from 0 to ``fmax``, as
    librosa.mel_frequencies(n_mels, fmin=0, fmax=fmax)."""
    top = fmax / _HZ_PER_MEL if fmax < _LOG_START_HZ else _LOG_START_MEL + np.log(fmax / _LOG_START_HZ) / _LOG_STEP
    mels = np.linspace(0.0, top, n_mels)
    log_part = _LOG_START_HZ * np.exp(_LOG_STEP * (mels - _LOG_START_MEL))
    return np.where(mels >= _LOG_START_MEL, log_part, _HZ_PER_MEL * mels)
