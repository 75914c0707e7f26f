"""MIDI -> audio with FluidSynth (pyfluidsynth): the one place musegen renders General MIDI.

Why drive `fluidsynth.Synth` ourselves instead of `PrettyMIDI.fluidsynth()`:
- speed: reading a soundfont takes seconds, so one synth per (soundfont, sample rate) is kept per
  process to hold its samples in FluidSynth's sample cache; each render then gets a fresh synth
  that loads only the presets it plays, from that cache, in a few tens of milliseconds;
- determinism: a fresh synth per render, and samples pulled as float32 (`fluid_synth_write_float`),
  not int16, whose dither state carries over between calls; the same MIDI renders to the same
  samples whatever was rendered before it, in whichever process;
- correctness: every instrument gets its own channel (pretty_midi plays all on channel 0) and
  event times are rounded to samples once, so audio stays aligned with the MIDI over long pieces.
"""
from __future__ import annotations

import ctypes
import glob
import logging
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pretty_midi

log = logging.getLogger(__name__)

PEAK_DBFS = -1.0        # peak level of every rendered clip
DEFAULT_GAIN = 0.5      # FluidSynth's own default (0.2) is very quiet; float output cannot clip
DEFAULT_RELEASE = 1.0   # seconds rendered after the last note-off, for the instrument's release
DEBIAN_SF2_DIR = "/usr/share/sounds/sf2"
_DRUM_CHANNEL = 9
_MELODIC_CHANNELS = [c for c in range(16) if c != _DRUM_CHANNEL]

_lock = threading.Lock()
_synths: dict[tuple[str, int], tuple[Any, int]] = {}


class FluidSynthError(RuntimeError):
    """libfluidsynth or a soundfont is missing or unusable."""


def default_soundfont() -> str:
    """pretty_midi's bundled TimGM6mb.sf2: small, always installed with pretty_midi."""
    return str(Path(pretty_midi.__file__).parent / "TimGM6mb.sf2")


def available_soundfonts() -> list[str]:
    """The default soundfont plus Debian's General MIDI soundfonts when installed (more timbres)."""
    found = [default_soundfont()]
    for path in sorted(glob.glob(os.path.join(DEBIAN_SF2_DIR, "*.sf2"))):
        real = os.path.realpath(path)
        if os.path.isfile(real) and real not in {os.path.realpath(f) for f in found}:
            found.append(path)
    return found


@lru_cache(maxsize=1)
def _fluidsynth_module() -> Any:
    """Import pyfluidsynth lazily: importing it raises when libfluidsynth is not installed."""
    try:
        import fluidsynth  # noqa: PLC0415
    except (ImportError, OSError) as exc:
        raise FluidSynthError(
            f"libfluidsynth could not be loaded ({exc}); install it (Debian: apt-get install libfluidsynth3, "
            "macOS: brew install fluid-synth)"
        ) from exc
    fl = fluidsynth._fl
    buffer = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]  # pointer, offset, increment
    fl.fluid_synth_write_float.argtypes = [ctypes.c_void_p, ctypes.c_int, *buffer, *buffer]
    fl.fluid_synth_write_float.restype = ctypes.c_int
    return fluidsynth


def _fresh_synth(soundfont: str | None, sample_rate: int) -> tuple[Any, int]:
    """A fresh (Synth, sfid) for one render; the soundfont's samples are read from disk once.

    The first synth per (soundfont, rate) is kept for the life of the process: it pins the
    soundfont's samples in FluidSynth's sample cache, so the per-render synths, which load only
    the presets they play, take a few tens of milliseconds. A fresh synth
    per render is what makes rendering reproducible: a reused synth keeps per-voice amplitude
    ramps and reverb state across resets, so the same MIDI would come out slightly different
    depending on what was rendered before it (and so on which worker rendered it).
    """
    path = os.path.realpath(soundfont or default_soundfont())
    key = (path, int(sample_rate))
    with _lock:
        if key not in _synths:
            _synths[key] = _load(path, int(sample_rate), dynamic=False)
    return _load(path, int(sample_rate), dynamic=True)


def _load(path: str, sample_rate: int, dynamic: bool) -> tuple[Any, int]:
    """A synth with `path` loaded; `dynamic` loads only the samples of presets selected (faster)."""
    if not os.path.isfile(path):
        raise FluidSynthError(f"soundfont not found: {path}")
    try:
        fluidsynth = _fluidsynth_module()
    except FluidSynthError as exc:
        raise FluidSynthError(f"cannot render with soundfont {path}: {exc}") from exc
    # chorus off: it detunes, which blurs the pitch a dataset of melodies is about
    settings = {"synth.chorus.active": 0, "synth.dynamic-sample-loading": int(dynamic)}
    synth = fluidsynth.Synth(gain=DEFAULT_GAIN, samplerate=float(sample_rate), **settings)
    sfid = synth.sfload(path)
    if sfid < 0:
        synth.delete()
        raise FluidSynthError(f"FluidSynth could not load soundfont {path}")
    return synth, sfid


def _events(pm: pretty_midi.PrettyMIDI, synth: Any, sfid: int, sample_rate: int) -> list[tuple]:
    """(sample, order, kind, channel, a, b) for every event, programs selected per channel."""
    events = []
    melodic = iter(_MELODIC_CHANNELS)
    for inst in pm.instruments:
        if inst.is_drum:
            chan = _DRUM_CHANNEL
            if synth.program_select(chan, sfid, 128, inst.program) < 0:
                synth.program_select(chan, sfid, 128, 0)
        else:
            chan = next(melodic, None)
            if chan is None:
                log.warning("more than 15 melodic instruments; %s not rendered", inst.name or inst.program)
                continue
            synth.program_select(chan, sfid, 0, inst.program)
        for n in inst.notes:
            events.append((round(n.start * sample_rate), 2, "on", chan, n.pitch, n.velocity))
            events.append((round(n.end * sample_rate), 0, "off", chan, n.pitch, 0))
        for cc in inst.control_changes:
            events.append((round(cc.time * sample_rate), 1, "cc", chan, cc.number, cc.value))
        for bend in inst.pitch_bends:
            events.append((round(bend.time * sample_rate), 1, "bend", chan, bend.pitch, 0))
    events.sort(key=lambda e: e[:2])
    return events


def _send(synth: Any, kind: str, chan: int, a: int, b: int) -> None:
    if kind == "on":
        synth.noteon(chan, a, b)
    elif kind == "off":
        synth.noteoff(chan, a)
    elif kind == "cc":
        synth.cc(chan, a, b)
    else:
        synth.pitch_bend(chan, a)


def _write(synth: Any, left: np.ndarray, right: np.ndarray, start: int, stop: int) -> None:
    """Synthesise samples [start, stop) into the float buffers, in blocks."""
    fl = _fluidsynth_module()._fl
    block = 4096
    while start < stop:
        n = min(block, stop - start)
        fl.fluid_synth_write_float(
            synth.synth, n,
            left[start:].ctypes.data, 0, 1,
            right[start:].ctypes.data, 0, 1,
        )
        start += n


def render(
    pm: pretty_midi.PrettyMIDI,
    sample_rate: int,
    soundfont: str | None = None,
    release: float = DEFAULT_RELEASE,
) -> np.ndarray:
    """Render `pm` to mono float32 peaking at -1 dBFS, covering its end plus `release` seconds.

    Sample i of the result is time i / sample_rate of the MIDI, so notes and audio line up.
    Raises FluidSynthError naming the soundfont when it or libfluidsynth is missing.
    """
    synth, sfid = _fresh_synth(soundfont, sample_rate)
    total = int(np.ceil((pm.get_end_time() + release) * sample_rate))
    left = np.zeros(total, dtype=np.float32)
    right = np.zeros(total, dtype=np.float32)
    try:
        pos = 0
        for sample, _, kind, chan, a, b in _events(pm, synth, sfid, sample_rate):
            _write(synth, left, right, pos, min(sample, total))
            pos = max(pos, min(sample, total))
            _send(synth, kind, chan, a, b)
        _write(synth, left, right, pos, total)
    finally:
        synth.delete()
    return peak_normalise(0.5 * (left + right))


def peak_normalise(audio: np.ndarray, peak_dbfs: float = PEAK_DBFS) -> np.ndarray:
    """Scale so the absolute peak is `peak_dbfs`; silence stays silence."""
    audio = np.asarray(audio, dtype=np.float32)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak <= 0.0 or not np.isfinite(peak):
        return audio
    return (audio * (10.0 ** (peak_dbfs / 20.0) / peak)).astype(np.float32)
