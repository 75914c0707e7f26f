"""Process-wide torch settings, scoped to one block of work and restored after it."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to ``threads`` (None: leave it).

    The right count depends on the work: a recurrent step over a few dozen frames is all
    per-op overhead and runs fastest on one thread (the demo BiGRU: 3.2 ms a step on one
    thread, 5.5 ms on two, 2 cores), while long FFTs gain from every core.
    """
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(before)
