"""The built-in demo set: real melodies from music21's corpus, rendered offline by FluidSynth.

Why this source exists: training and tests need labelled, captioned music with ground-truth MIDI
and no network. Each clip is one excerpt of a real composition (a Bach chorale's top voice, an
Essen or O'Neill folk tune) played by one General MIDI instrument at one tempo, transposed to a
random place in that instrument's range, with a caption that states what is really in it.

Layout under `root/<hash of the settings>/`: `clip_NNNNN.{wav,mid,json}` per clip (the JSON,
written last, marks the clip complete) and `index-<num_clips>.json` listing the clips. Clip k is
the same for every `num_clips`, so a larger set extends a smaller one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pretty_midi
import soundfile as sf

from musegen import fluid
from musegen.data.clips import Clip
from musegen.data.corpus import FAMILIES, Piece, SkipClip, corpus_pieces, melody, parse, segment
from musegen.instruments import INSTRUMENTS, Instrument
from musegen.io import atomic_path, write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STYLE_NOUN = {"bach": "chorale melody", "essen": "folk song", "oneill": "Irish folk tune"}
TEMPO_BPM = {"slow": (60, 84), "moderate": (85, 119), "fast": (120, 160)}  # quarter notes per minute
TEMPLATES = (
    "{tempo} {inst} {noun} in {key}",
    "{a_tempo} {tempo} {inst} {noun} in {key}",
    "{inst} playing {a_tempo} {tempo} {noun} in {key}",
    "{a_tempo} {tempo} {noun} in {key} played on the {inst}",
    "{key} {noun} for solo {inst}, {tempo} tempo",
    "solo {inst}: {a_tempo} {tempo} {noun} in {key}",
)
MIN_NOTES = 3           # an excerpt with fewer notes teaches nothing about melody
MIN_NOTE_SECONDS = 0.05  # notes cut to a sliver at the clip's end are dropped from audio and MIDI
_NAMES = {
    "major": ("C", "D flat", "D", "E flat", "E", "F", "F sharp", "G", "A flat", "A", "B flat", "B"),
    "minor": ("C", "C sharp", "D", "E flat", "E", "F", "F sharp", "G", "G sharp", "A", "B flat", "B"),
}


@dataclass(frozen=True)
class Plan:
    """Everything chosen for clip k before its piece is parsed; `seed` drives the rest."""
    k: int
    piece: Piece
    instrument: str
    tempo: str
    bpm: int
    soundfont: str
    seed: int


# ---------------------------------------------------------------- corpus


def make_plans(seed: int, instruments: list[str], soundfonts: list[str]) -> Iterator[Plan]:
    """The endless, seed-determined sequence of clip plans.

    Instruments and tempo words cycle through seeded permutations so classes stay balanced;
    each family's pieces are visited in a seeded order, so pieces repeat only once exhausted.
    """
    rng = np.random.default_rng(seed)
    pieces = corpus_pieces()
    families = [f for f in FAMILIES if pieces[f]]
    if not families:
        raise RuntimeError("music21's corpus has no Bach chorales or Essen/O'Neill tunes")
    orders = {f: rng.permutation(len(pieces[f])) for f in families}
    used = dict.fromkeys(families, 0)
    k = 0
    while True:
        insts = rng.permutation(instruments)
        tempos = rng.permutation(list(TEMPO_BPM))
        for i, inst in enumerate(insts):
            family = families[int(rng.integers(len(families)))]
            piece = pieces[family][int(orders[family][used[family] % len(orders[family])])]
            used[family] += 1
            tempo = str(tempos[i % len(tempos)])
            lo, hi = TEMPO_BPM[tempo]
            yield Plan(k, piece, str(inst), tempo, int(rng.integers(lo, hi + 1)),
                       soundfonts[int(rng.integers(len(soundfonts)))], int(rng.integers(2**31)))
            k += 1


# ---------------------------------------------------------------- one clip


def _shift(pitches: list[int], inst: Instrument, rng: np.random.Generator) -> int:
    """A random transposition (semitones) that puts every pitch inside the instrument's range."""
    low, high = inst.low - min(pitches), inst.high - max(pitches)
    if low > high:
        raise SkipClip(f"excerpt spans {max(pitches) - min(pitches)} semitones, more than the {inst.name}'s range")
    return int(rng.integers(low, high + 1))


def key_name(tonic_pc: int, mode: str) -> str:
    """Conventional English key name, e.g. (10, "major") -> "B flat major"."""
    mode = mode if mode in _NAMES else "major"
    return f"{_NAMES[mode][tonic_pc % 12]} {mode}"


def caption(plan: Plan, key: str, rng: np.random.Generator) -> str:
    """A caption stating the clip's real attributes, in one of several seeded phrasings."""
    noun = ("melody", "tune", STYLE_NOUN[plan.piece.family])[int(rng.integers(3))]
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    a_tempo = "an" if plan.tempo[0] in "aeiou" else "a"
    return template.format(tempo=plan.tempo, inst=plan.instrument, noun=noun, key=key, a_tempo=a_tempo)


def _to_midi(seg: list[tuple[float, float, int]], shift: int, plan: Plan, key: tuple[int, str],
             meter: tuple[int, int], rng: np.random.Generator) -> pretty_midi.PrettyMIDI:
    """The clip as MIDI in seconds; 960 ticks per beat keep quarter-note positions exact."""
    spq = 60.0 / plan.bpm
    inst = INSTRUMENTS[plan.instrument]
    pm = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=plan.bpm)
    track = pretty_midi.Instrument(program=inst.program, name=inst.name)
    base = int(rng.integers(80, 106))
    for on, off, p in seg:
        if (off - on) * spq >= MIN_NOTE_SECONDS:
            vel = int(np.clip(base + rng.integers(-6, 7), 1, 127))
            track.notes.append(pretty_midi.Note(vel, p + shift, on * spq, off * spq))
    pm.instruments.append(track)
    pm.key_signature_changes.append(pretty_midi.KeySignature(key[0] + (12 if key[1] == "minor" else 0), 0.0))
    if _midi_meter(meter):
        pm.time_signature_changes.append(pretty_midi.TimeSignature(meter[0], meter[1], 0.0))
    return pm


def _midi_meter(meter: tuple[int, int]) -> bool:
    """MIDI stores a meter's denominator as a power of two; others (3/3, 2/6 in some folk tunes) are left out."""
    num, den = meter
    return num > 0 and den > 0 and den & (den - 1) == 0


def render_clip(plan: Plan, out_dir: str, clip_seconds: float, sample_rate: int) -> dict:
    """Parse, cut, transpose, render and write clip `plan.k`; returns its index entry.

    Raises SkipClip for a piece that cannot make a clip; FluidSynthError is left to propagate
    because a missing synthesizer is no reason to skip, it is a broken setup.
    """
    rng = np.random.default_rng(plan.seed)
    try:
        score = parse(plan.piece)
    except Exception as exc:  # noqa: BLE001  (music21 raises many types on odd files)
        raise SkipClip(f"parse failed: {type(exc).__name__}: {exc}") from exc
    notes, length, meter = melody(score)
    start, seg = segment(notes, length, clip_seconds * plan.bpm / 60.0, rng)
    shift = _shift([p for _, _, p in seg], INSTRUMENTS[plan.instrument], rng)
    analysed = score.analyze("key").transpose(shift)
    key = (analysed.tonic.pitchClass, analysed.mode)
    pm = _to_midi(seg, shift, plan, key, meter, rng)
    if len(pm.instruments[0].notes) < MIN_NOTES:
        raise SkipClip(f"only {len(pm.instruments[0].notes)} notes in the excerpt")
    stem = Path(out_dir) / f"clip_{plan.k:05d}"
    audio = _write_midi_and_audio(pm, stem, plan, clip_seconds, sample_rate)
    if not np.any(audio):
        raise SkipClip("rendered audio is silent")
    entry = {
        "k": plan.k, "audio": stem.name + ".wav", "midi": stem.name + ".mid",
        "caption": caption(plan, key_name(*key), rng), "label": plan.instrument, "group": plan.piece.group,
        "key": key_name(*key), "tempo": plan.tempo, "bpm": plan.bpm, "transpose": shift,
        "start_quarter": start, "soundfont": Path(plan.soundfont).name,
        "title": (score.metadata.title if score.metadata else None) or plan.piece.id,
    }
    write_json(stem.with_suffix(".json"), entry)
    return entry


def _write_midi_and_audio(pm: pretty_midi.PrettyMIDI, stem: Path, plan: Plan,
                          clip_seconds: float, sample_rate: int) -> np.ndarray:
    """Write the MIDI, then render the MIDI as written back, so audio and file agree exactly."""
    n = int(round(clip_seconds * sample_rate))
    with atomic_path(stem.with_suffix(".mid")) as tmp:
        pm.write(str(tmp))
        written = pretty_midi.PrettyMIDI(str(tmp))
        release = max(0.0, clip_seconds - written.get_end_time()) + 0.01  # the rest is cut anyway
        audio = fluid.render(written, sample_rate, plan.soundfont, release=release)[:n]
        audio = fluid.peak_normalise(np.pad(audio, (0, n - len(audio))))
        with atomic_path(stem.with_suffix(".wav")) as wav:
            sf.write(str(wav), audio, sample_rate, subtype="PCM_16")
    return audio


def _job(args: tuple[Plan, str, float, int]) -> tuple[dict | None, str | None]:
    """Worker entry: (entry, None) or (None, reason). Top-level so spawned processes can run it."""
    try:
        return render_clip(*args), None
    except SkipClip as exc:
        return None, str(exc)
    except fluid.FluidSynthError:
        raise
    except Exception as exc:  # noqa: BLE001  (one odd piece must not stop the build)
        return None, f"render failed: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- the source

class DemoSource:
    """Builds (once) and lists the demo clips; see the module docstring for what and why."""

    def __init__(
        self,
        root: str,
        num_clips: int = 240,
        seed: int = 0,
        clip_seconds: float = 4.0,
        sample_rate: int = 22050,
        num_workers: int = 1,
        instruments: list[str] | None = None,
        soundfonts: list[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.num_clips = int(num_clips)
        self.seed = int(seed)
        self.clip_seconds = float(clip_seconds)
        self.sample_rate = int(sample_rate)
        self.num_workers = max(1, int(num_workers))
        self.instruments = list(instruments) if instruments else list(INSTRUMENTS)
        self.soundfonts = list(soundfonts) if soundfonts else fluid.available_soundfonts()
        self._validate()

    def _validate(self) -> None:
        if self.num_clips < 1:
            raise ValueError(f"data.num_clips must be >= 1, got {self.num_clips}")
        if self.clip_seconds <= 0 or self.sample_rate <= 0:
            raise ValueError(f"clip_seconds and sample_rate must be > 0, got {self.clip_seconds}, {self.sample_rate}")
        unknown = [i for i in self.instruments if i not in INSTRUMENTS]
        if unknown:
            raise ValueError(f"unknown instruments {unknown}; known: {sorted(INSTRUMENTS)}")
        missing = [s for s in self.soundfonts if not os.path.isfile(s)]
        if missing:
            raise ValueError(f"soundfonts not found: {missing}")

    def settings(self) -> dict:
        """Everything a clip depends on (not num_clips: clip k is the same for any size)."""
        from music21 import VERSION_STR  # noqa: PLC0415

        return {
            "format": FORMAT_VERSION, "seed": self.seed, "clip_seconds": self.clip_seconds,
            "sample_rate": self.sample_rate, "instruments": self.instruments, "music21": VERSION_STR,
            "soundfonts": [[Path(s).name, os.path.getsize(s)] for s in self.soundfonts],
        }

    @property
    def directory(self) -> Path:
        digest = hashlib.sha1(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:10]
        return self.root / digest

    def clips(self) -> list[Clip]:
        """The clips, rendering only those not on disk yet."""
        out = self.directory
        index_path = out / f"index-{self.num_clips}.json"
        entries = self._read_index(index_path)
        if entries is None:
            entries, skipped = self._build(out)
            write_json(index_path, {"settings": self.settings(), "clips": entries, "skipped": skipped})
            log.info("demo set: %d clips in %s (%d plans skipped)", len(entries), out, len(skipped))
        return [Clip(str(out / e["audio"]), e["caption"], e["label"], e["group"], str(out / e["midi"]))
                for e in entries]

    def _read_index(self, path: Path) -> list[dict] | None:
        """The indexed entries when the index matches these settings and every file is there."""
        if not path.is_file():
            return None
        try:
            index = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable demo index %s: %s", path, exc)
            return None
        entries = index.get("clips", [])
        if index.get("settings") != json.loads(json.dumps(self.settings())):
            return None
        if not all((path.parent / e[f]).is_file() for e in entries for f in ("audio", "midi")):
            return None
        return entries

    def _build(self, out: Path) -> tuple[list[dict], list[dict]]:
        """Walk the plan sequence until num_clips clips exist; skipped plans are reported."""
        plans = make_plans(self.seed, self.instruments, self.soundfonts)
        entries: list[dict] = []
        skipped: list[dict] = []
        max_plans = 3 * self.num_clips + 20
        tried = 0
        while len(entries) < self.num_clips and tried < max_plans:
            batch = list(islice(plans, min(self.num_clips - len(entries), max_plans - tried)))
            tried += len(batch)
            for plan, (entry, reason) in zip(batch, self._run(batch, out), strict=True):
                if entry is not None:
                    entries.append(entry)
                else:
                    log.info("skipped demo clip %d (%s): %s", plan.k, plan.piece.id, reason)
                    skipped.append({"k": plan.k, "piece": plan.piece.id, "reason": reason})
        if not entries:
            raise RuntimeError(f"no demo clip could be made from {tried} plans; first reasons: {skipped[:3]}")
        if len(entries) < self.num_clips:
            log.warning("demo set has %d of %d clips after %d plans", len(entries), self.num_clips, tried)
        return entries, skipped

    def _run(self, batch: list[Plan], out: Path) -> list[tuple[dict | None, str | None]]:
        """Results in plan order: clips already on disk are read, the rest rendered in parallel."""
        results: dict[int, tuple[dict | None, str | None]] = {}
        todo = []
        for plan in batch:
            done = _read_entry(out / f"clip_{plan.k:05d}")
            if done is not None:
                results[plan.k] = (done, None)
            else:
                todo.append((plan, str(out), self.clip_seconds, self.sample_rate))
        for args, result in zip(todo, self._map(todo), strict=True):
            results[args[0].k] = result
        return [results[p.k] for p in batch]

    def _map(self, todo: list[tuple]) -> Iterator[tuple[dict | None, str | None]]:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = dict(total=len(todo), desc="rendering demo clips", unit="clip", disable=len(todo) < 16 or None)
        workers = min(self.num_workers, len(todo))
        if workers <= 1:
            yield from tqdm(map(_job, todo), **bar)
            return
        ctx = multiprocessing.get_context("spawn")  # fork is unsafe once torch/OpenMP threads exist
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            chunk = max(1, len(todo) // (workers * 8))
            yield from tqdm(pool.map(_job, todo, chunksize=chunk), **bar)


def _read_entry(stem: Path) -> dict | None:
    """A finished clip's entry: its JSON is written after its WAV and MIDI, so it marks completion."""
    try:
        entry = json.loads(stem.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if stem.with_suffix(".wav").is_file() and stem.with_suffix(".mid").is_file():
        return entry
    return None


__all__ = ["DemoSource", "Piece", "Plan", "SkipClip", "caption", "corpus_pieces", "key_name",
           "make_plans", "render_clip"]
