"""Held-out prompt wordings: each names one of the demo's instruments in a phrasing no training caption uses.

The demo captions (musegen.data.demo.TEMPLATES) state tempo word, instrument, noun and key in six
fixed patterns, and the other sources' captions (musegen.data.sources.CAPTION_TEMPLATES) wrap
a bare instrument noun ("solo x", "x playing", "a x recording"...). These prompts avoid those
patterns and their fill-in words (slow/moderate/fast, key names, "solo", "playing", "played on
the", "recording", "sample"), so audio generated from them measures how the model handles a new
wording of a known instrument, not recall of a caption it was trained on.
"""
from __future__ import annotations

from musegen.instruments import find_instrument

#: Four per instrument of musegen.instruments.INSTRUMENTS, in its order.
HELD_OUT_PROMPTS: tuple[str, ...] = (
    "a quiet lullaby performed on piano",
    "piano music for a rainy afternoon",
    "someone improvising softly at the piano",
    "gentle grand piano with a singing right hand",
    "a hymn echoing from a church organ",
    "a stately processional on the organ",
    "organ music in a stone cathedral",
    "sustained organ tones, reverent and calm",
    "fingerpicked acoustic guitar by a campfire",
    "a wistful guitar ballad",
    "guitar music for a summer porch",
    "nylon guitar lines, warm and intimate",
    "a lyrical violin line, sweet and singing",
    "fiddle music for a country dance",
    "an expressive violin passage",
    "violin, tender and bowed with care",
    "warm, dark cello phrases",
    "a mournful cello lament",
    "cello music with a deep, rich tone",
    "the cello sings of longing",
    "a bright trumpet fanfare",
    "a trumpet call at dawn",
    "a bold, brassy trumpet line",
    "muted trumpet in a smoky club",
    "a mellow clarinet reverie",
    "clarinet music, smooth and woody",
    "a playful clarinet line",
    "the clarinet wanders through a dusky evening",
    "an airy flute over a meadow",
    "flute music like birdsong",
    "a breathy, floating flute phrase",
    "the flute drifts above a still lake",
)


def prompts_for(label: str) -> list[str]:
    """The held-out wordings naming the instrument `label` names (musegen.instruments.find_instrument),
    or, for an instrument outside that table, one plain wording of the label itself."""
    inst = find_instrument(label)
    if inst is None:
        return [f"music for {label.replace('_', ' ').lower()}"]
    return [p for p in HELD_OUT_PROMPTS if find_instrument(p) is inst]
