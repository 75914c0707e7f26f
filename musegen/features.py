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
    def from_dict(cls, d: dict) -> FeatureConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _read(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int, float]:
    """(mono samples of at most `max_seconds`, their rate, the whole file's duration in seconds)."""
    try:
        info = sf.info(str(path))
        frames = -1 if max_seconds is None else int(round(max_seconds * info.samplerate))
        y, sr = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
        return y.mean(axis=1), sr, info.frames / info.samplerate
    except Exception as sf_err:  # noqa: BLE001 - fall back to pydub/ffmpeg for other containers
        try:
            from pydub import AudioSegment  # noqa: PLC0415 - only for containers soundfile cannot read

            seg = AudioSegment.from_file(str(path))
        except Exception:  # noqa: BLE001
            raise AudioError(f"{path}: not readable as audio ({sf_err})") from sf_err
        seconds = len(seg) / 1000
        if max_seconds is not None:
            seg = seg[: int(round(max_seconds * 1000))]
        samples = np.array(seg.get_array_of_samples(), dtype=np.float32)
        samples = samples.reshape(-1, seg.channels).mean(axis=1) / float(1 << (8 * seg.sample_width - 1))
        return samples, seg.frame_rate, seconds


def read_audio(path: str | Path, sample_rate: int, max_seconds: float | None = None) -> tuple[np.ndarray, float]:
    """(mono float32 samples at `sample_rate`, the file's whole duration in seconds).

    Only the first `max_seconds` are read and decoded when given, so capping a long file costs
    little; the duration still counts the whole file (for reports of how much was used).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file")
    y, sr, seconds = _read(path, max_seconds)
    if y.size == 0:
        raise AudioError(f"{path}: contains no samples")
    if not np.all(np.isfinite(y)):
        raise AudioError(f"{path}: contains NaN or infinite samples")
    if sr != sample_rate:
        y = librosa.resample(y, orig_sr=sr, target_sr=sample_rate)
    return y.astype(np.float32), seconds


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read any soundfile-readable file (pydub+ffmpeg for the rest) as mono float32 at `sample_rate`."""
    return read_audio(path, sample_rate)[0]


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


def is_silent(y: np.ndarray, cfg: FeatureConfig) -> bool:
    """True when no sample of `y` rises above cfg.silence_db (or there are none)."""
    return y.size == 0 or float(np.max(np.abs(y))) <= 10 ** (cfg.silence_db / 20)


def check_usable(y: np.ndarray, cfg: FeatureConfig, name: str) -> None:
    """Raise AudioError for silent audio. Length is not judged here: how many frames a clip needs
    is the model's window (model.segment_frames), which the datamodule applies."""
    if is_silent(y, cfg):
        peak = float(np.max(np.abs(y))) if y.size else 0.0
        raise AudioError(f"{name}: silent (peak {peak:.2e})")


def split_clips(y: np.ndarray, sample_rate: int, clip_seconds: float | None) -> list[tuple[float, np.ndarray]]:
    """Consecutive pieces of at most `clip_seconds` (the last one holds the rest), each with its start
    in seconds; None keeps the whole signal as one piece. Pieces are views, not copies."""
    if clip_seconds is None:
        return [(0.0, y)]
    step = max(1, int(round(clip_seconds * sample_rate)))
    return [(start / sample_rate, y[start:start + step]) for start in range(0, len(y), step)]


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
