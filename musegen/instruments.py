"""General MIDI instruments musegen knows by name: program, playable range and register.

One table used by the demo set (what to render), MIDI transcription (which octave to write)
and evaluation (which prompts to ask for).
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Instrument:
    name: str
    program: int      # General MIDI program, 0-based
    low: int          # lowest comfortable MIDI pitch
    high: int         # highest comfortable MIDI pitch
    aliases: tuple[str, ...] = ()

    @property
    def register(self) -> int:
        """Median pitch of the playable range: where transcribed notes are placed."""
        return (self.low + self.high) // 2


INSTRUMENTS: dict[str, Instrument] = {
    i.name: i
    for i in (
        Instrument("piano", 0, 48, 84, ("keys", "keyboard", "grand piano")),
        Instrument("organ", 19, 48, 84, ("church organ", "pipe organ")),
        Instrument("guitar", 24, 40, 76, ("acoustic guitar", "nylon guitar")),
        Instrument("violin", 40, 55, 93, ("fiddle",)),
        Instrument("cello", 42, 36, 72, ("violoncello",)),
        Instrument("trumpet", 56, 55, 82, ("horn", "brass")),
        Instrument("clarinet", 71, 50, 86, ()),
        Instrument("flute", 73, 60, 96, ("piccolo",)),
    )
}


def find_instrument(text: str | None) -> Instrument | None:
    """The first instrument named in `text` (by name or alias, whole words; underscores count as
    spaces, so class labels such as "Sound_Violin" work), else None: the one instrument lookup."""
    if not text:
        return None
    lowered = text.lower().replace("_", " ")
    hits = []
    for inst in INSTRUMENTS.values():
        for word in (inst.name, *inst.aliases):
            m = re.search(rf"\b{re.escape(word)}s?\b", lowered)
            if m:
                hits.append((m.start(), inst))
    return min(hits, key=lambda h: h[0])[1] if hits else None


def register_for(text: str | None) -> int:
    """The register of the instrument `text` names (where its notes are synthesised and transcribed),
    else middle C."""
    inst = find_instrument(text)
    return inst.register if inst else 60
