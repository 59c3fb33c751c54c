"""The windowed load: the loop IR's form for reading an image at a window position (convolution,
pooling and their gradients, lowered by codegen/lower_conv.py).

`Window` is a `Load` whose element is given per buffer axis by a `Coord`: (sum of var * coef +
const) / div. Where a coordinate leaves its axis (the padding) or does not divide exactly (a
strided op's gradient, read at the positions a stride skipped), the value is `fill` and nothing is
read: renderers clamp the address and select (`guarded_axes` says which axes need the test). Its
`offset` (the Load field) is the affine part of the address over the undivided axes: what loop
passes read for strides and loop-var ranges; renderers compute the address from `coords`.

A window reading a zero-bordered copy of an image (gemm_schedule's `planar` copies) may say where
the copy holds the image: `inside`, one `Inside` per axis. Every element outside is a zero, so a
schedule may skip the products of a tap that reads only zeros (`live`); renderers read every element
they are told to, in or out.
"""
from __future__ import annotations

from dataclasses import dataclass

from .loopir import Affine, Buffer, Kernel, Load, expr_node


@dataclass(frozen=True)
class Coord:
    """One axis's index: (sum of var * coef over `terms` + const) / div (an exact division)."""

    terms: tuple  # ((var, coef), ...)
    const: int = 0
    div: int = 1

    def __str__(self) -> str:
        parts = [f"v{v}" if c == 1 else f"{c}*v{v}" for v, c in self.terms] + ([str(self.const)] if self.const else [])
        text = " + ".join(parts) or "0"
        return f"({text})/{self.div}" if self.div != 1 else text


@dataclass(frozen=True)
class Inside:
    """Where a zero-bordered copy holds its image along one axis: the indices i with lo <= i < hi
    (`hi` None: to the axis's end); with `pitch`, the axis is rows `pitch` long, and i holds the image
    where its row i // pitch is in [lo, hi) and its column i % pitch in [col_lo, col_hi)."""

    lo: int = 0
    hi: int | None = None
    pitch: int = 0
    col_lo: int = 0
    col_hi: int = 0

    def meets(self, first: int, last: int) -> bool:
        """Does some index in [first, last] hold the image?"""
        if not self.pitch:
            return last >= self.lo and (self.hi is None or first < self.hi)
        end = last // self.pitch + 1
        rows = range(max(self.lo, first // self.pitch), end if self.hi is None else min(self.hi, end))
        return any(first < r * self.pitch + self.col_hi and r * self.pitch + self.col_lo <= last for r in rows)

    def __str__(self) -> str:
        rows = f"{self.lo}..{'' if self.hi is None else self.hi}"
        return f"rows {rows} x {self.col_lo}..{self.col_hi} of {self.pitch}" if self.pitch else rows


@expr_node
class Window(Load):
    coords: tuple = ()  # one Coord per axis of the buffer
    shape: tuple = ()  # the buffer's shape (None: N)
    fill: float = 0.0
    inside: tuple = ()  # one Inside per axis where the buffer is a zero-bordered copy, else empty

    def text(self, args: list[str]) -> str:
        inside = f"; image at {', '.join(map(str, self.inside))}" if self.inside else ""
        return f"b{self.buffer}<{', '.join(map(str, self.coords))}; else {self.fill!r}{inside}>"


def window(buffer: int, shape: tuple, coords: tuple, dtype, fill: float = 0.0, inside: tuple = ()) -> Window:
    """A windowed load of `buffer` (of `shape`), its `offset` the affine part of the address."""
    terms: dict = {}
    for coord, stride in zip(coords, row_strides(shape)):
        if coord.div == 1:
            for var, coef in coord.terms:
                key = (var, stride[1])
                terms[key] = terms.get(key, 0) + coef * stride[0]
    offset = Affine(tuple(sorted((v, c, nexp) for (v, nexp), c in terms.items() if c)))
    return Window(buffer, offset, dtype, tuple(coords), tuple(shape), float(fill), tuple(inside))


def row_strides(shape: tuple) -> list[tuple[int, int]]:
    """Each axis's row-major stride as (static factor, power of N)."""
    out, coef, nexp = [], 1, 0
    for d in reversed(shape):
        out.append((coef, nexp))
        if d is None:
            nexp += 1
        else:
            coef *= d
    return list(reversed(out))


def guarded_axes(w: Window, domain: tuple) -> list[bool]:
    """Per axis: can its coordinate fall outside the axis or between multiples of div over the
    kernel's domain? (An axis indexed by a batch var alone, as the buffer's batch axis, cannot.)"""
    out = []
    for coord, dim in zip(w.coords, w.shape):
        if coord.div != 1:
            out.append(True)
            continue
        if any(domain[v] is None for v, _ in coord.terms):
            batch_axis = dim is None and len(coord.terms) == 1 and coord.terms[0][1] == 1 and coord.const == 0
            out.append(not batch_axis)
            continue
        lo, hi = _extremes(coord, domain)
        out.append(lo < 0 or dim is None or hi >= dim)
    return out


def _extremes(coord: Coord, domain: tuple) -> tuple[int, int]:
    """The least and greatest value of an undivided coordinate over a static `domain`."""
    lo = coord.const + sum(min(0, c * (domain[v] - 1)) for v, c in coord.terms)
    hi = coord.const + sum(max(0, c * (domain[v] - 1)) for v, c in coord.terms)
    return lo, hi


def check_window(k: Kernel, w: Window, buffer: Buffer) -> None:
    """verify_loops' rules for a windowed load: one coordinate per axis of the buffer as it is
    declared, loop vars of the kernel, positive divisors."""
    if w.shape != buffer.shape or len(w.coords) != len(w.shape):
        raise AssertionError(f"{k.name}: window on b{w.buffer} has shape {w.shape} / {len(w.coords)} coordinates, "
                             f"the buffer is {buffer.shape}")
    for coord in w.coords:
        if coord.div < 1 or any(not 0 <= v < len(k.domain) for v, _ in coord.terms):
            raise AssertionError(f"{k.name}: window coordinate {coord} of b{w.buffer} is outside the domain "
                                 f"{k.domain} or divides by {coord.div}")


def border(w: Window, domain: tuple) -> tuple[tuple, tuple] | None:
    """(shape, shift): the smallest zero-bordered copy of w's image that every coordinate over `domain`
    lands in, at coordinate + shift per axis; None when no axis is guarded or a guarded one divides
    (a strided gradient's skipped positions are not a border) or ranges over N."""
    guarded = guarded_axes(w, domain)
    if not any(guarded):
        return None
    shape, shift = [], []
    for coord, dim, g in zip(w.coords, w.shape, guarded):
        if not g:
            shape.append(dim)
            shift.append(0)
            continue
        if coord.div != 1 or dim is None or any(domain[v] is None for v, _ in coord.terms):
            return None
        lo, hi = _extremes(coord, domain)
        shape.append(max(0, -lo) + max(hi + 1, dim))
        shift.append(max(0, -lo))
    return tuple(shape), tuple(shift)


def bordered(w: Window, buffer: int, shift: tuple, shape: tuple) -> Window:
    """w reading the bordered copy `buffer` (of `shape`, see `border`) of its image instead."""
    coords = tuple(Coord(c.terms, c.const + s, c.div) for c, s in zip(w.coords, shift))
    return window(buffer, shape, coords, w.dtype, w.fill)
