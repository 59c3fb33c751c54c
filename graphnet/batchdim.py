"""The batch dimension N meeting a static extent (TF1's and Theano's rule).

Where shapes meet (broadcasting, matmul's inner dimensions, concat, reshape), `None` meeting a static
extent k gives k, except that an extent 1 still broadcasts against N. Such a node's result is only
right when N == k, so shape rules report k through `fix_batch`; `Graph.apply` records it on the node
(`Node.fixes_batch`), `fixed_batch` finds a program's one requirement, and the call-time feed checks
(graphnet/feeds.py) refuse any other batch before native code sees a buffer of the wrong size.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

from .errors import ShapeError

if TYPE_CHECKING:
    from .graph import Node

# The extents fixed by the shape rule now running under `Graph.apply` (None outside one: a rule
# re-run by a pass's verification reports nothing, its node recorded it when it was made).
_fixing: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("graphnet_fixing", default=None)


def fix_batch(extent: int) -> int:
    """A shape rule's report that N meets the static `extent` (the result takes it); returns it."""
    fixed = _fixing.get()
    if fixed is not None:
        fixed.append(int(extent))
    return extent


def unify_extents(a: int | None, b: int | None) -> int | None:
    """The extent where two extents that must be equal meet: equal ones, or N and a static k (N == k).
    ShapeError for two different static extents (the caller says where)."""
    if a == b:
        return a
    if a is None or b is None:
        return fix_batch(b if a is None else a)
    raise ShapeError(f"extents {a} and {b} differ")


def unify_shapes(a: tuple, b: tuple) -> tuple:
    """Two shapes that must be equal, unified axis by axis (`unify_extents`); ShapeError otherwise."""
    if len(a) != len(b):
        raise ShapeError(f"ranks {len(a)} and {len(b)} differ")
    return tuple(unify_extents(x, y) for x, y in zip(a, b))


@contextlib.contextmanager
def recording() -> Iterator[list[int]]:
    """Collect the extents `fix_batch` reports inside the block (one shape rule's run)."""
    fixed: list[int] = []
    token = _fixing.set(fixed)
    try:
        yield fixed
    finally:
        _fixing.reset(token)


def one_extent(fixed: list[int]) -> int | None:
    """The batch one shape rule fixed (None: it fixed none); ShapeError if it fixed two, or 0 (a batch
    holds at least one sample: the feed checks refuse an empty one, so no call could run)."""
    sizes = sorted(set(fixed))
    if len(sizes) > 1:
        raise ShapeError(f"the batch N would be {' and '.join(map(str, sizes))} at once")
    if sizes == [0]:
        raise ShapeError("the batch N would be 0 (it meets an empty static axis), but a batch holds at least one "
                         "sample")
    return sizes[0] if sizes else None


@dataclass(frozen=True)
class FixedBatch:
    """A program's requirement N == size, and the node whose shape rule fixed it (for the error)."""

    size: int
    node: "Node"

    def mismatch(self, what: str, batch: int) -> str:
        """The error for `what` (the feed that set the batch) giving `batch` instead."""
        return (f"{what}: batch size {batch}, but the program needs batch {self.size}: {self.node.op.name} "
                f"at {self.node.source} met the batch dimension N with a static extent {self.size}")


def fixed_batch(nodes: Iterable["Node"]) -> FixedBatch | None:
    """The batch the nodes' shape rules fixed (None if none did); ShapeError if two fixed different ones."""
    found: FixedBatch | None = None
    for n in nodes:
        if n.fixes_batch is None:
            continue
        if found is None:
            found = FixedBatch(n.fixes_batch, n)
        elif n.fixes_batch != found.size:
            raise ShapeError(f"the batch N is fixed to {found.size} by {found.node.op.name} at {found.node.source} "
                             f"and to {n.fixes_batch} by {n.op.name} at {n.source}")
    return found
