"""The unit every data source yields."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Clip:
    path: str            # audio file
    caption: str         # text the clip is conditioned on
    label: str           # class name (instrument)
    group: str           # source piece/recording: all windows of a group stay on one side of a split
    midi: str | None = None  # aligned ground-truth MIDI, when the source has one
