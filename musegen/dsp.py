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
