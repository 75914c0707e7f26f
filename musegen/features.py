"""Audio -> feature frames: the one definition of what the model sees.

Every frame is 20 MFCCs followed by 12 chroma values (librosa), float32, shape [T, 32].
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)


class AudioError(ValueError):
    """An audio input that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 22050
    n_mfcc: int = 20
    n_chroma: int = 12
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    max_frames: int = 174
    min_frames: int = 8
    silence_db: float = -60.0

    @property
    def dim(self) -> int:
        return self.n_mfcc + self.n_chroma

    @property
    def frame_seconds(self) -> float:
        return self.hop_length / self.sample_rate

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _read(path: Path) -> tuple[np.ndarray, int]:
    try:
        y, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return y.mean(axis=1), sr
    except Exception as sf_err:  # noqa: BLE001 - fall back to pydub/ffmpeg for other containers
        try:
            from pydub import AudioSegment

            seg = AudioSegment.from_file(str(path))
        except Exception:  # noqa: BLE001
            raise AudioError(f"{path}: not readable as audio ({sf_err})") from sf_err
        samples = np.array(seg.get_array_of_samples(), dtype=np.float32)
        samples = samples.reshape(-1, seg.channels).mean(axis=1) / float(1 << (8 * seg.sample_width - 1))
        return samples, seg.frame_rate


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read any soundfile-readable file (pydub+ffmpeg for the rest) as mono float32 at `sample_rate`."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file")
    y, sr = _read(path)
    if y.size == 0:
        raise AudioError(f"{path}: contains no samples")
    if not np.all(np.isfinite(y)):
        raise AudioError(f"{path}: contains NaN or infinite samples")
    if sr != sample_rate:
        y = librosa.resample(y, orig_sr=sr, target_sr=sample_rate)
    return y.astype(np.float32)


def extract(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Waveform -> [T, n_mfcc + n_chroma] float32 frames."""
    mfcc = librosa.feature.mfcc(
        y=y, sr=cfg.sample_rate, n_mfcc=cfg.n_mfcc, n_fft=cfg.n_fft,
        hop_length=cfg.hop_length, n_mels=cfg.n_mels,
    )
    chroma = librosa.feature.chroma_stft(
        y=y, sr=cfg.sample_rate, n_chroma=cfg.n_chroma, n_fft=cfg.n_fft, hop_length=cfg.hop_length
    )
    return np.concatenate([mfcc, chroma], axis=0).T.astype(np.float32)


def check_usable(y: np.ndarray, cfg: FeatureConfig, name: str) -> None:
    """Raise AudioError for silent or too-short audio."""
    min_samples = cfg.min_frames * cfg.hop_length
    if y.size < min_samples:
        raise AudioError(f"{name}: too short ({y.size / cfg.sample_rate:.3f} s, need {min_samples / cfg.sample_rate:.3f} s)")
    peak = float(np.max(np.abs(y)))
    if peak <= 10 ** (cfg.silence_db / 20):
        raise AudioError(f"{name}: silent (peak {peak:.2e})")


def extract_file(path: str | Path, cfg: FeatureConfig) -> np.ndarray:
    """Load, validate and extract one file; raises AudioError naming the file."""
    y = load_audio(path, cfg.sample_rate)
    check_usable(y, cfg, str(path))
    return extract(y, cfg)


def fit_length(frames: np.ndarray, max_frames: int) -> np.ndarray:
    """Pad with zeros or truncate to exactly `max_frames` rows."""
    if len(frames) >= max_frames:
        return frames[:max_frames]
    pad = np.zeros((max_frames - len(frames), frames.shape[1]), dtype=frames.dtype)
    return np.concatenate([frames, pad], axis=0)
