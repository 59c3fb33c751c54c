"""The arena: every temporary of a loop program in one allocation, reused by liveness.

A temporary is live from the first kernel that writes it to the last that reads it (fetched ones
to the end: they are copied out after the call). Two temporaries share bytes only when their live
ranges are disjoint, so buffers used by one kernel never overlap (the generated code marks them
`noalias`). The layout depends on the batch size only through buffer sizes: it is planned for a
capacity and re-planned (in Python, never overflowing) when a call brings a larger batch.

A `StepLayout` is what running a compiled step needs of its loop program (buffers, feeds, fetches,
storage, the temporaries' live ranges), without its kernels; it is what the compiled-function cache
stores (`to_json`) and a hit rebuilds on the user's variables (`from_json`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from graphnet.graph import Variable, shape_str

if TYPE_CHECKING:
    from .loopir import LoopProgram

ALIGN = 64


@dataclass(frozen=True)
class Buffer:
    id: int
    name: str
    kind: str  # input | variable | constant | temp
    shape: tuple
    dtype: np.dtype

    def elements(self, batch: int) -> int:
        return int(np.prod([batch if d is None else d for d in self.shape], dtype=np.int64))

    def __str__(self) -> str:
        return f"b{self.id} {self.kind} {self.name}: {self.dtype} {shape_str(self.shape)}"


@dataclass
class StepLayout:
    buffers: list  # Buffer, indexed by id
    inputs: list  # the feeds' buffer ids, in sorted-name order
    fetches: list  # the buffer ids holding each fetch after the call
    storage: dict  # variable/constant buffer id -> its numpy array
    ranges: dict  # temp buffer id -> (first kernel, last kernel) using it
    kernels: int  # how many kernels the step runs

    @classmethod
    def of(cls, lp: "LoopProgram") -> "StepLayout":
        return cls(lp.buffers, list(lp.inputs), list(lp.fetches), dict(lp.storage), live_ranges(lp), len(lp.kernels))

    def to_json(self, variables: Sequence[Variable]) -> tuple[dict, list[bytes]]:
        """A JSON-able description and the constants' bytes; a variable's buffer is named by its
        position in `variables` (whose arrays the storage holds)."""
        index = {id(v.array): i for i, v in enumerate(variables)}
        storage, blobs = [], []
        for b, array in sorted(self.storage.items()):
            if self.buffers[b].kind == "variable":
                storage.append([b, "variable", index[id(array)]])
            else:
                storage.append([b, "constant", len(blobs)])
                blobs.append(np.ascontiguousarray(array).tobytes())
        described = {"buffers": [[b.name, b.kind, list(b.shape), b.dtype.str] for b in self.buffers],
                     "inputs": self.inputs, "fetches": self.fetches, "storage": storage,
                     "ranges": sorted([b, f, last] for b, (f, last) in self.ranges.items()), "kernels": self.kernels}
        return described, blobs

    @classmethod
    def from_json(cls, described: dict, blobs: Sequence[memoryview], variables: Sequence[Variable]) -> "StepLayout":
        """`to_json`'s description on these variables; ValueError (or KeyError, IndexError, TypeError)
        where it is inconsistent or does not fit them."""
        buffers = [Buffer(i, str(name), kind, shape_from_json(shape), np.dtype(dtype))
                   for i, (name, kind, shape, dtype) in enumerate(described["buffers"])]
        ids = range(len(buffers))
        storage = {}
        for b, kind, which in described["storage"]:
            buffer = buffers[b]
            if kind != buffer.kind or b in storage:
                raise ValueError(f"storage of buffer {b}")
            if kind == "variable":
                array = variables[which].array
            elif kind == "constant":
                array = np.frombuffer(blobs[which], buffer.dtype).reshape(buffer.shape).copy()
            else:
                raise ValueError(f"storage kind {kind}")
            if array.shape != buffer.shape or array.dtype != buffer.dtype:
                raise ValueError(f"buffer {b} does not fit its storage")
            storage[b] = array
        ranges = {b: (first, last) for b, first, last in described["ranges"]}
        kernels = described["kernels"]
        slots = [*described["inputs"], *described["fetches"], *ranges]
        if not all(type(b) is int and b in ids for b in slots) or type(kernels) is not int or \
                any(buffers[b].kind != "temp" or not 0 <= f <= last <= kernels for b, (f, last) in ranges.items()) or \
                {b.id for b in buffers if b.kind in ("variable", "constant")} != set(storage):
            raise ValueError("inconsistent step layout")
        return cls(buffers, list(described["inputs"]), list(described["fetches"]), storage, ranges, kernels)


@dataclass
class ArenaPlan:
    capacity: int  # the largest batch this layout holds
    offsets: dict  # temp buffer id -> byte offset
    nbytes: int


def live_ranges(lp: "LoopProgram") -> dict[int, tuple[int, int]]:
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


def plan_arena(lp: "LoopProgram | StepLayout", capacity: int) -> ArenaPlan:
    """First-fit placement of the temporaries, largest first, among those live at the same time."""
    ranges = lp.ranges if isinstance(lp, StepLayout) else live_ranges(lp)
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


def shape_from_json(shape: list) -> tuple:
    """A shape read back from JSON (ValueError unless every extent is None or an int >= 0)."""
    if not all(d is None or (type(d) is int and d >= 0) for d in shape):
        raise ValueError(f"bad shape {shape}")
    return tuple(shape)


def _round(n: int) -> int:
    return max(ALIGN, -(-n // ALIGN) * ALIGN)
