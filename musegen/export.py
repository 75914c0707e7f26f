"""Generated frames -> files: WAV/MP3 audio, MIDI, the MIDI's FluidSynth rendition and a JSON sidecar.

Shared by generate.py and the per-epoch SampleRenderer callback, so both write the same things.
"""
from __future__ import annotations

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from musegen.audio import Synthesizer, finalize, write_audio
from musegen.features import FeatureConfig
from musegen.instruments import Instrument, find_instrument
from musegen.io import write_json
from musegen.midi import render_midi, transcribe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportSettings:
    formats: tuple[str, ...] = ("wav", "mp3")
    synthesis: str = "mix"          # mfcc | harmonic | mix (see musegen.audio.Synthesizer.render)
    midi: bool = True
    render_midi: bool = True        # also write <name>.midi.wav: the MIDI played by FluidSynth
    tempo_bpm: float = 120.0
    peak_db: float = -1.0


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


def synthesize(frames: np.ndarray, features: FeatureConfig, synth: Synthesizer, samples: int,
               settings: ExportSettings, register: int) -> np.ndarray:
    """[T, F] frames -> finished mono audio of exactly `samples` samples."""
    y = synth.render(frames, mode=settings.synthesis, register=register)[:samples]
    if y.shape[-1] < samples:
        y = np.pad(y, (0, samples - y.shape[-1]))
    return finalize(y, features.sample_rate, peak_db=settings.peak_db)


def export_sample(
    frames: np.ndarray, features: FeatureConfig, out_dir: str | Path, base: str, prompt: str | None,
    synth: Synthesizer, settings: ExportSettings, duration: float, metadata: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Write one sample's files; returns {kind: path}. The sidecar JSON is written last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffixes = tuple(f".{f}" for f in settings.formats) + (".mid", ".midi.wav", ".json")
    stem = free_stem(out_dir, base, suffixes)
    instrument = find_instrument(prompt)
    register = instrument.register if instrument else 60
    start = time.perf_counter()
    samples = int(round(duration * features.sample_rate))
    y = synthesize(frames, features, synth, samples, settings, register)
    # the audio files (MP3 encoding is the slow part, in C without the GIL) are written beside the MIDI work
    with ThreadPoolExecutor(max_workers=1) as pool:
        audio_files = pool.submit(write_audio, y, stem, features.sample_rate, settings.formats)
        midi_files = _write_midi(frames, features, stem, instrument, settings) if settings.midi else {}
        paths = {p.suffix.lstrip("."): str(p) for p in audio_files.result()}
    paths.update(midi_files)
    sidecar = stem.with_suffix(".json")
    write_json(sidecar, {
        **(metadata or {}), "instrument": instrument.name if instrument else None, "files": paths,
        "export_seconds": time.perf_counter() - start, "export": settings.__dict__,
        "features": features.to_dict(),
    })
    paths["json"] = str(sidecar)
    return paths


def _write_midi(frames: np.ndarray, features: FeatureConfig, stem: Path, instrument: Instrument | None,
                settings: ExportSettings) -> dict[str, str]:
    """The transcription as .mid and, with settings.render_midi, its FluidSynth rendition as .midi.wav."""
    name = instrument.name if instrument else None
    mid = transcribe(frames, features, name, stem.with_suffix(".mid"), tempo_bpm=settings.tempo_bpm)
    paths = {"mid": str(mid)}
    if settings.render_midi:
        rendition = finalize(render_midi(mid, features.sample_rate, name), features.sample_rate, settings.peak_db)
        paths["midi.wav"] = str(write_audio(rendition, stem.with_name(stem.name + ".midi"),
                                            features.sample_rate, ("wav",))[0])
    return paths


def generate_files(cfg: Any) -> list[dict[str, str]]:
    """generate.py's work: load, validate and generate before writing anything; then write each sample."""
    from musegen.checkpoint import file_sha256
    from musegen.generation import Generator
    from musegen.text import write_lyrics

    start = time.perf_counter()
    gen = Generator.from_checkpoint(cfg.ckpt, device=cfg.device, max_duration=cfg.max_duration,
                                   threads=cfg.threads)
    loaded = time.perf_counter()
    lyrics = cfg.lyrics
    if cfg.lyrics_from_prompt:
        lyrics = write_lyrics(cfg.prompt or "", model=cfg.lyrics_model,
                              max_new_tokens=cfg.lyrics_max_new_tokens, seed=cfg.seed)
    result = gen.generate(prompt=cfg.prompt, lyrics=lyrics, audio=cfg.audio, duration=cfg.duration,
                          guidance=cfg.guidance, temperature=cfg.temperature, seed=cfg.seed,
                          num_samples=cfg.num_samples, progress=True)
    settings = ExportSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.export.items()})
    synth = Synthesizer(result.features, **cfg.synth)
    meta = {**result.metadata, "checkpoint": str(cfg.ckpt), "checkpoint_sha256": file_sha256(cfg.ckpt),
            "load_seconds": loaded - start, "versions": _versions()}
    written = []
    for i, frames in enumerate(result.frames):
        base = f"{slug(cfg.prompt or lyrics or 'unconditional')}-s{cfg.seed}" + (f"-{i}" if cfg.num_samples > 1 else "")
        written.append(export_sample(frames, result.features, cfg.out, base, cfg.prompt, synth, settings,
                                     cfg.duration, {**meta, "sample": i}))
    return written


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    return {p: md.version(p) for p in ("musegen", "torch", "lightning", "librosa", "music21", "transformers")}
