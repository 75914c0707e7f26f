"""Generated frames -> files: WAV/MP3 audio, MIDI, the MIDI's FluidSynth rendition and a JSON sidecar.

Shared by generate.py, evaluation and the per-epoch SampleRenderer callback, so all write the same things.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf

from musegen.audio import MODES, finalize, write_audio
from musegen.features import FeatureConfig
from musegen.instruments import Instrument, find_instrument, register_for
from musegen.io import write_json
from musegen.midi import render_midi, transcribe

log = logging.getLogger(__name__)

SYNTHESES = (*MODES, "vocoder")
#: lossy encodings whose decoded peaks can overshoot the input's (by about 0.2 dB for MP3 here)
LOSSY = ("mp3", "ogg")
_TRIM_MARGIN_DB, _TRIM_PASSES = 0.05, 4


@dataclass(frozen=True)
class ExportSettings:
    """What is written per sample; conf/export/default.yaml holds the defaults."""

    formats: tuple[str, ...]
    synthesis: str                  # mfcc | harmonic | mix (musegen.audio.Synthesizer) | vocoder
    midi: bool
    render_midi: bool               # also write <name>.midi.wav: the MIDI played by FluidSynth
    musicxml: bool                  # also write <name>.musicxml: the transcription as a score (music21)
    tempo_bpm: float
    peak_db: float                  # sample peak, and with loudness_lufs true peak, never above this dBFS
    loudness_lufs: float | None     # integrated loudness of every written audio file; None: peak_db only
    max_limiting_db: float          # peak reduction allowed to reach loudness_lufs (0: gain only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", tuple(self.formats))
        if self.synthesis not in SYNTHESES:
            raise ValueError(f"export.synthesis must be one of {SYNTHESES}, got {self.synthesis!r}")
        if self.peak_db > 0:
            raise ValueError(f"export.peak_db must be <= 0 dBFS, got {self.peak_db}")
        if self.loudness_lufs is not None and self.loudness_lufs >= 0:
            raise ValueError(f"export.loudness_lufs must be negative (LUFS) or null, got {self.loudness_lufs}")
        if self.max_limiting_db < 0:
            raise ValueError(f"export.max_limiting_db must be >= 0 dB, got {self.max_limiting_db}")


def check_vocoder_given(synthesis: str, vocoder: object | None) -> None:
    """ValueError when `synthesis` asks for the vocoder and none was given: the one check of
    generate.py, the Python API and evaluation alike."""
    if synthesis == "vocoder" and vocoder is None:
        raise ValueError("export.synthesis=vocoder needs vocoder=PATH (a checkpoint from experiment=vocoder_demo)")


def slug(text: str | None, max_len: int = 48) -> str:
    """A file-name-safe slug of a prompt ("Calm piano, melody!" -> "calm-piano-melody")."""
    s = re.sub(r"[^a-z0-9]+", "-", (text or "").lower()).strip("-")
    return s[:max_len].rstrip("-") or "untitled"


def free_stem(out_dir: Path, base: str, suffixes: tuple[str, ...]) -> Path:
    """`out_dir/base`, or `base-1`, `base-2`... so no existing output is ever overwritten."""
    for i in range(10_000):
        stem = out_dir / (base if i == 0 else f"{base}-{i}")
        if not any(stem.with_name(stem.name + s).exists() for s in suffixes):
            if i:
                log.warning("%s exists; writing %s instead", out_dir / base, stem.name)
            return stem
    raise FileExistsError(f"{out_dir}: too many outputs named {base}-*")


class Renderer(Protocol):
    """Frames -> audio: musegen.audio.Synthesizer (analytic) or musegen.vocoder.Vocoder (learnt)."""

    def render(self, frames: np.ndarray, mode: str, register: int) -> np.ndarray: ...


def master(y: np.ndarray, sample_rate: int, settings: ExportSettings) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Rendered audio -> the audio written: faded and peak-normalised, then, with settings.loudness_lufs,
    at that loudness; returns it with the loudness report for the sidecar (None without loudness_lufs)."""
    y = finalize(y, sample_rate, peak_db=settings.peak_db)
    if settings.loudness_lufs is None:
        return y, None
    # pyloudnorm imports scipy.signal, seconds of start-up that only loudness normalisation needs
    from musegen.loudness import normalize_loudness  # noqa: PLC0415

    y, report = normalize_loudness(y, sample_rate, settings.loudness_lufs, settings.peak_db,
                                   settings.max_limiting_db)
    return y, report.to_dict()


def _rendered(frames: np.ndarray, synth: Renderer, samples: int, settings: ExportSettings,
              register: int) -> np.ndarray:
    """[T, F] frames -> raw mono audio of exactly `samples` samples."""
    y = synth.render(frames, mode=settings.synthesis, register=register)[:samples]
    return np.pad(y, (0, samples - y.shape[-1])) if y.shape[-1] < samples else y


def synthesize(frames: np.ndarray, features: FeatureConfig, synth: Renderer, samples: int,
               settings: ExportSettings, register: int) -> np.ndarray:
    """[T, F] frames -> finished mono audio of exactly `samples` samples, as export_sample writes it."""
    return master(_rendered(frames, synth, samples, settings, register), features.sample_rate, settings)[0]


def render(frames: np.ndarray, features: FeatureConfig, synth: Renderer, settings: ExportSettings,
           duration: float, prompts: Sequence[str | None]) -> list[tuple[np.ndarray, dict[str, Any] | None]]:
    """[B, T, F] frames -> each item's audio as written (`duration` seconds, mastered) with its loudness
    report. The analytic synthesis plays each item in the register of the instrument its prompt names.
    Items are rendered one by one: a batch of spectrograms outgrows the CPU caches, and Griffin-Lim on
    eight items at once takes several times as long as on each in turn (docs/BENCHMARKS.md)."""
    samples = int(round(duration * features.sample_rate))
    rendered = []
    for item, prompt in zip(frames, prompts):
        y = _rendered(item, synth, samples, settings, register_for(prompt))
        rendered.append(master(y, features.sample_rate, settings))
    return rendered


def export_sample(
    frames: np.ndarray, features: FeatureConfig, out_dir: str | Path, base: str, prompt: str | None,
    synth: Renderer, settings: ExportSettings, duration: float, metadata: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Render one sample and write its files; returns {kind: path}."""
    [(y, loudness)] = render(frames[None], features, synth, settings, duration, [prompt])
    return write_sample(y, loudness, frames, features, out_dir, base, prompt, settings, metadata)


def write_sample(
    y: np.ndarray, loudness: dict[str, Any] | None, frames: np.ndarray, features: FeatureConfig,
    out_dir: str | Path, base: str, prompt: str | None, settings: ExportSettings,
    metadata: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Write one rendered sample's files (audio `y` as `render` made it, with its loudness report, and the
    transcription of its frames) under a stem no existing file has; returns {kind: path}. The sidecar
    JSON is written last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffixes = tuple(f".{f}" for f in settings.formats) + (".mid", ".midi.wav", ".musicxml", ".json")
    stem = free_stem(out_dir, base, suffixes)
    instrument = find_instrument(prompt)
    start = time.perf_counter()
    # the audio files (MP3 encoding is the slow part, in C without the GIL) are written beside the MIDI work
    with ThreadPoolExecutor(max_workers=1) as pool:
        audio_files = pool.submit(_write_under_ceiling, y, stem, features.sample_rate, settings)
        midi_files, midi_loudness = (_write_midi(frames, features, stem, instrument, settings) if settings.midi
                                     else ({}, None))
        written, trims = audio_files.result()
        paths = {p.suffix.lstrip("."): str(p) for p in written}
    paths.update(midi_files)
    sidecar = stem.with_suffix(".json")
    write_json(sidecar, {
        **(metadata or {}), "instrument": instrument.name if instrument else None, "files": paths,
        "export_seconds": time.perf_counter() - start, "export": settings.__dict__,
        "loudness": {"audio": loudness, "midi.wav": midi_loudness, "lossy_trim_db": trims},
        "features": features.to_dict(),
    })
    paths["json"] = str(sidecar)
    return paths


def _write_under_ceiling(y: np.ndarray, stem: Path, sample_rate: int, settings: ExportSettings
                         ) -> tuple[list[Path], dict[str, float]]:
    """write_audio, then, with loudness normalisation (whose ceiling is a true peak), each lossy file read
    back and, while its decoded true peak passes settings.peak_db,
    encoded again quieter by the overshoot and _TRIM_MARGIN_DB (the encoder's overshoot changes with its
    input); returns the paths and the trim in dB of each file encoded again."""
    paths = write_audio(y, stem, sample_rate, settings.formats)
    trims: dict[str, float] = {}
    if settings.loudness_lufs is None:  # peak normalisation promises sample peaks only, not decoded true peaks
        return paths, trims
    from musegen.loudness import true_peak_db  # noqa: PLC0415 - as in master
    for path in paths:
        fmt = path.suffix.lstrip(".")
        if fmt not in LOSSY:
            continue
        for _ in range(_TRIM_PASSES):
            over = true_peak_db(sf.read(str(path), dtype="float32")[0], sample_rate) - settings.peak_db
            if over <= 0:
                break
            trims[fmt] = trims.get(fmt, 0.0) - over - _TRIM_MARGIN_DB
            write_audio(y * 10.0 ** (trims[fmt] / 20.0), stem, sample_rate, (fmt,))
        else:
            log.warning("%s: decoded true peak still above export.peak_db after %d trims", path, _TRIM_PASSES)
    return paths, trims


def _write_midi(frames: np.ndarray, features: FeatureConfig, stem: Path, instrument: Instrument | None,
                settings: ExportSettings) -> tuple[dict[str, str], dict[str, Any] | None]:
    """The transcription as .mid and, with settings.render_midi, its FluidSynth rendition as .midi.wav,
    mastered like the audio so the two compare at one loudness; returns the paths and its loudness report."""
    name = instrument.name if instrument else None
    mid = transcribe(frames, features, name, stem.with_suffix(".mid"), tempo_bpm=settings.tempo_bpm,
                     musicxml=settings.musicxml)
    paths = {"mid": str(mid)}
    if settings.musicxml:
        paths["musicxml"] = str(mid.with_suffix(".musicxml"))
    if not settings.render_midi:
        return paths, None
    rendition, loudness = master(render_midi(mid, features.sample_rate, name), features.sample_rate, settings)
    paths["midi.wav"] = str(write_audio(rendition, stem.with_name(stem.name + ".midi"),
                                        features.sample_rate, ("wav",))[0])
    return paths, loudness
