"""The arena: every temporary of a loop program in one allocation, reused by liveness.

A temporary is live from the first kernel that writes it to the last that reads it (fetched ones
to the end: they are copied out after the call). Two temporaries share bytes only when their live
ranges are disjoint, so buffers used by one kernel never overlap (the generated code marks them
`noalias`). The layout depends on the batch size only through buffer sizes: it is planned for a
capacity and re-planned (in Python, never overflowing) when a call brings a larger batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .loopir import LoopProgram

ALIGN = 64


@dataclass
class ArenaPlan:
    capacity: int  # the largest batch this layout holds
    offsets: dict  # temp buffer id -> byte offset
    nbytes: int


def live_ranges(lp: LoopProgram) -> dict[int, tuple[int, int]]:
    """Temp buffer id -> (first kernel, last kernel) using it."""
    temps = {b.id for b in lp.buffers if b.kind == "temp"}
    ranges: dict[int, list[int]] = {}
    for i, k in enumerate(lp.kernels):
        for b in k.buffers():
            if b in temps:
                r = ranges.setdefault(b, [i, i])
                r[0], r[1] = min(r[0], i), max(r[1], i)
    for b in lp.fetches:
        if b in ranges:
            ranges[b][1] = len(lp.kernels)
    return {b: (r[0], r[1]) for b, r in ranges.items()}


def plan_arena(lp: LoopProgram, capacity: int) -> ArenaPlan:
    """First-fit placement of the temporaries, largest first, among those live at the same time."""
    ranges = live_ranges(lp)
    sizes = {b: _round(lp.buffers[b].elements(capacity) * lp.buffers[b].dtype.itemsize) for b in ranges}
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
    offsets = {}
    for b in sorted(ranges, key=lambda b: (-sizes[b], b)):
        first, last = ranges[b]
        busy = sorted((o, s) for o, s, f, l in placed if not (l < first or last < f))
        offset = 0
        for o, s in busy:
            if offset + sizes[b] <= o:
                break
            offset = max(offset, o + s)
        offsets[b] = offset
        placed.append((offset, sizes[b], first, last))
    total = max((o + s for o, s, _, _ in placed), default=0)
    return ArenaPlan(capacity, offsets, total)


def allocate(nbytes: int) -> np.ndarray:
    """A zeroed byte array whose data pointer is ALIGN-aligned."""
    raw = np.zeros(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + nbytes]


def _round(n: int) -> int:
    return max(ALIGN, -(-n // ALIGN) * ALIGN)
