"""Melodies from music21's bundled corpus: Bach chorales' top voices, Essen and O'Neill folk tunes,
as (onset, duration, pitch) notes in quarter lengths, and excerpts of them for the demo set."""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

FAMILIES = ("bach", "essen", "oneill")


class SkipClip(Exception):
    """This plan cannot make a clip (unparseable piece, too few notes, out of range): try the next."""


@dataclass(frozen=True)
class Piece:
    family: str          # bach | essen | oneill
    path: str            # corpus-relative path, e.g. "essenFolksong/han1.abc"
    number: int | None   # tune number inside a multi-tune ABC file

    @property
    def id(self) -> str:
        return self.path if self.number is None else f"{self.path}#{self.number}"

    @property
    def group(self) -> str:
        """Every clip of one piece stays on one side of a split.

        Bach files with a suffix are versions of one chorale (bwv18.5-lz, bwv18.5-w): one group.
        """
        if self.family == "bach":
            return re.sub(r"(-[a-z0-9]+)?\.(mxl|xml|krn)$", "", self.path)
        return self.id


@lru_cache(maxsize=1)
def corpus_pieces() -> dict[str, list[Piece]]:
    """Every usable piece per family, in a stable order, found without parsing any score.

    Folk files hold hundreds of tunes each; their tune numbers come from the ABC `X:` lines, so a
    single tune can later be parsed on its own (a whole Essen file takes about a minute).
    """
    from music21 import corpus  # noqa: PLC0415  (heavy import, only when building)

    base = Path(corpus.getComposer("bach")[0]).parents[1]
    pieces: dict[str, list[Piece]] = {f: [] for f in FAMILIES}
    oneill_seen: set[int] = set()
    for path in sorted(corpus.getPaths()):
        rel = Path(path).relative_to(base).as_posix()
        if rel.startswith("bach/") and rel.endswith((".mxl", ".xml", ".krn")):
            pieces["bach"].append(Piece("bach", rel, None))
        elif rel.startswith("essenFolksong/") and rel.endswith(".abc") and not Path(rel).name.startswith("test"):
            pieces["essen"].extend(Piece("essen", rel, n) for n in _tune_numbers(Path(path)))
        elif rel.startswith("oneills1850/") and rel.endswith(".abc"):
            # X: is O'Neill's own tune number and some files overlap (0626-0635, 0626-0700):
            # keep one copy of each tune, or one tune could land in two groups
            fresh = [n for n in _tune_numbers(Path(path)) if n not in oneill_seen]
            oneill_seen.update(fresh)
            pieces["oneill"].extend(Piece("oneill", rel, n) for n in fresh)
    return pieces


def _tune_numbers(path: Path) -> list[int]:
    numbers = re.findall(r"(?m)^X:\s*(\d+)", path.read_text(encoding="latin-1"))
    return sorted({int(n) for n in numbers})


def parse(piece: Piece) -> Any:
    from music21 import corpus, stream  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score = corpus.parse(piece.path, number=piece.number, forceSource=True)
    if isinstance(score, stream.Opus):
        score = score.scores[0]
    return score


def melody(score: Any) -> tuple[list[tuple[float, float, int]], float, tuple[int, int]]:
    """(onset, offset, pitch) in quarter notes for the top voice, its length and time signature.

    The top voice is the part with the highest mean pitch (Humdrum files list the bass first);
    ties are merged and chords reduced to their highest note, so the result is monophonic.
    """
    best, best_mean = None, -1.0
    for part in getattr(score, "parts", None) or [score]:
        pitches = [p.midi for n in part.recurse().notes for p in n.pitches]
        if len(pitches) >= 8 and np.mean(pitches) > best_mean:
            best, best_mean = part, float(np.mean(pitches))
    if best is None:
        raise SkipClip("no part with at least 8 notes")
    flat = best.stripTies().flatten()
    notes = []
    for n in flat.notes:
        on, dur = float(n.offset), float(n.quarterLength)
        if dur > 0 and n.pitches:
            notes.append((on, on + dur, max(p.midi for p in n.pitches)))
    notes.sort(key=lambda n: (n[0], -n[2]))
    heads = [n for i, n in enumerate(notes) if i == 0 or n[0] > notes[i - 1][0]]  # top note per onset
    mono = [(on, min(off, heads[i + 1][0]) if i + 1 < len(heads) else off, p) for i, (on, off, p) in enumerate(heads)]
    ts = flat.getElementsByClass("TimeSignature")
    meter = (ts[0].numerator, ts[0].denominator) if ts else (4, 4)
    return mono, max(float(flat.highestTime), mono[-1][1]) if mono else 0.0, meter


def segment(notes: list[tuple[float, float, int]], length: float, clip_ql: float,
             rng: np.random.Generator) -> tuple[float, list[tuple[float, float, int]]]:
    """A random excerpt of `clip_ql` quarter notes starting on a note; short tunes are repeated."""
    if not notes or length <= 0:
        raise SkipClip("no notes")
    reps = 1 if length >= clip_ql else math.ceil(clip_ql / length) + 1
    tiled = [(on + r * length, off + r * length, p) for r in range(reps) for on, off, p in notes]
    total = reps * length
    starts = [on for on, _, _ in tiled if on + clip_ql <= total + 1e-9] or [tiled[0][0]]
    start = float(starts[int(rng.integers(len(starts)))])
    seg = [(on - start, min(off - start, clip_ql), p) for on, off, p in tiled if start <= on < start + clip_ql]
    return start, seg
