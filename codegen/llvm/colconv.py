"""Direct convolution with exactly one vector of columns (a 16-filter float32 conv on AVX-512).

Such a conv is an implicit GEMM (igemm.py) whose register tile is one vector wide: its packing and
run-time geometry cost as much as its FMAs at lenet's sizes. Here the geometry is compiled in and the
image read in place: a tile of positions, `rows` output rows x `span` consecutive positions along
the row, holds one accumulator vector per position; per k = (v5, v6, v7) one vector of B (the
filter's row of N columns, contiguous) and one broadcast of the image per position, whose offsets
from the tile's first are constants (the tile's shape is the same everywhere):

    for v0 (split over threads), v1 in steps of `rows`, v2 in segments of `span`:
        acc[p] = 0                                      p < rows * span: one vector each
        for v5, v6, v7:  b = B[offset(v5, v6, v7) ..]   acc[p] += broadcast(image[address(p, k)]) * b
        C[v0, v1.., v2.., :] = acc[p]                   contiguous rows of C; the epilogue reads C

A filter gradient (its K the batch's pixels, its rows the static taps) runs tiles of taps instead,
each tap's image element at a constant offset from the pixel's, and adds each image's float32 sums
into per-lane float64 totals (as kconv.py).

Chosen by `wants`: N one vector, rows and k static (but the batch), at most MAX_TILES tiles written
out, the image unguarded (gemm_schedule's bordered copies make padded ones so) and B's columns
contiguous. The sums run in the float type over k, as a GEMM's do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from llvmlite import ir

from ..loopir import Kernel
from ..window import guarded_axes
from . import igemm, rowconv
from .direct import I64, PTR, VectorEmitter, call_in_parallel, kernel_flops
from .loops import carried_loop, for_range
from .target import TargetInfo

ORDER = (0, 1, 2, 3, 5, 6, 7, 4)  # a column conv kernel's loop order: v4, the columns, along the lanes
VECTORS = 1  # the column count, in vectors, of the convs this path computes
MAX_TILES = 16  # tiles written out (a filter gradient's tiles of taps, a forward row's segments): code size



@dataclass(frozen=True)
class ColConv:
    """How a column conv kernel runs (the LLVM schedule's decision, see the module docstring)."""

    rows: int  # output rows (v1) per tile
    span: int  # positions along the row (v2) per tile
    lanes: int
    taps: int = 0  # a filter gradient's: rows of C (its taps) per tile; 0: a forward conv's tiles of positions
    fused = False  # C is written whole, then the epilogue runs

    @property
    def split(self) -> str:
        """What the threads share (the schedule's text)."""
        return "taps" if self.taps else "images"

    def emit(self, em, red, threads: int) -> None:
        """C of the kernel em renders (render.py's _KernelEmitter), split over `threads`."""
        emit(em, red, self, threads)

    def __str__(self) -> str:
        if self.taps:
            return f"direct filter gradient, one vector of columns, {self.taps} taps per tile"
        return f"direct conv, one vector of columns, {self.rows} x {self.span} positions per tile"


def wants(k: Kernel, target: TargetInfo) -> bool:
    """An implicit-GEMM conv with exactly one vector of columns, static rows (v1, v2) and k, an undivided
    window and B's columns contiguous, on a vector target (and not a narrow one's: rowconv, kconv)."""
    found = igemm.operands(k)
    if found is None or not igemm.worth_it(k) or not target.vector_bits:
        return False
    w, other = found
    d = k.domain
    if d[igemm.COLUMN] != VECTORS * target.lanes(w.dtype.name) or any(d[v] is None for v in (1, 2, 6, 7)):
        return False
    if d[5] is None and d[0] is None:
        return False
    most = max(1, target.vector_registers - 4)
    written = -(-math.prod(d[:3]) // most) if d[5] is None else -(-d[2] // most)
    if written > MAX_TILES:
        return False
    if any(c.div != 1 for c in w.coords):
        return False
    return {v: c for v, c, _ in other.offset.terms}.get(igemm.COLUMN) == 1 and not other.offset.base


def ready(k: Kernel, target: TargetInfo) -> bool:
    """`wants`, and the image unguarded (bordered if need be): a column conv now."""
    return wants(k, target) and not any(guarded_axes(igemm.operands(k)[0], k.domain))


def marked(k: Kernel) -> bool:
    """Is `k` a conv kernel gemm_schedule.use_implicit_gemm gave to a column conv (its loop order says so)?"""
    return len(k.domain) == 8 and k.order == ORDER and k.reduce is not None and k.reduce.contraction is not None


def plan(k: Kernel, target: TargetInfo) -> ColConv:
    """Accumulators for as many positions as the vector registers hold besides B's vector and a
    broadcast: whole output rows where they fit, else a segment of one."""
    most = max(1, target.vector_registers - 4)
    width, height, lanes = k.domain[2], k.domain[1], target.lanes(k.reduce.value.dtype.name)
    if k.domain[5] is None:  # K holds the batch: tiles of taps, balanced
        taps = math.prod(k.domain[:3])
        return ColConv(1, 1, lanes, -(-taps // -(-taps // most)))
    span = min(width, most)
    return ColConv(max(1, min(height, most // span)), span, lanes)


def emit(em, red, cc: ColConv, threads: int) -> None:
    """C (red.scratch) of column conv kernel em.k by `cc`, at em's builder: split over the images (a
    forward conv's v0) or the tiles of taps (a filter gradient's)."""
    window, other = red.contraction
    emitter = _Emitter(em.r.module, em.k, cc, red.value.dtype.name)
    fn = emitter.gradient() if cc.taps else emitter.function()
    args = [em.N, em.ptrs[window.buffer], em.ptrs[other.buffer], em.ptrs[red.scratch]]
    outer = ir.Constant(I64, -(-math.prod(em.k.domain[:3]) // cc.taps)) if cc.taps else em.extent(0)
    work = kernel_flops(em)
    call_in_parallel(em, fn, "cols", outer, args, threads, work)


class _Emitter(VectorEmitter):
    """Writes `void <kernel>_colconv(i64 N, i64 begin, i64 end, T* image, T* B, T* C)`: v0 in [begin, end)."""

    def __init__(self, module: ir.Module, k: Kernel, cc: ColConv, dtype: str) -> None:
        super().__init__(module, dtype, cc.lanes)
        self.k, self.cc = k, cc
        window, other = k.reduce.contraction
        self.a_coef, self.a_const = rowconv.address(window)
        self.b_coef = {var: coef for var, coef, _ in other.offset.terms}

    def declare(self) -> ir.Function:
        fn = self.open_function(f"{self.k.name}_colconv", ["image", "B", "C"])
        self.n = fn.args[0]
        return fn

    def function(self) -> ir.Function:
        """The forward form: tiles of output positions of each image v0 in [begin, end)."""
        fn = self.declare()
        _, begin, end, self.image, self.bmat, self.c = fn.args
        d, cc = self.k.domain, self.cc
        full = d[1] // cc.rows * cc.rows
        with for_range(self.b, begin, end, 1, "v0") as v0:
            if full:
                with for_range(self.b, 0, full, cc.rows, "v1") as v1:
                    self.segments(v0, v1, cc.rows)
            if full < d[1]:
                with for_range(self.b, full, d[1], 1, "v1r") as v1:
                    self.segments(v0, v1, 1)
        self.b.ret_void()
        return fn

    def gradient(self) -> ir.Function:
        """The filter gradient's form: `void <kernel>_colconv(N, begin, end, image, B, C)` over tiles of
        taps [begin, end), each tile's taps (rows of C) at constant offsets in the image; per image
        (v5) the float32 sums go into per-lane float64 totals."""
        fn = self.declare()
        _, begin, end, self.image, self.bmat, self.c = fn.args
        b, d, taps = self.b, self.k.domain, self.cc.taps
        count = math.prod(d[:3])
        a = self.a_coef
        for t, first in enumerate(range(0, count, taps)):
            rows = range(first, min(count, first + taps))
            with b.if_then(b.and_(b.icmp_signed("<=", begin, self._i(t)), b.icmp_signed("<", self._i(t), end))):
                offsets = [a.get(0, 0) * (m // (d[1] * d[2])) + a.get(1, 0) * (m // d[2] % d[1])
                           + a.get(2, 0) * (m % d[2]) for m in rows]
                self.tap_tile(first, offsets)
        b.ret_void()
        return fn

    def tap_tile(self, first: int, offsets: list) -> None:
        b, d = self.b, self.k.domain
        f64 = ir.VectorType(ir.DoubleType(), self.cc.lanes)
        totals = b.alloca(ir.ArrayType(f64, len(offsets)), name="totals")
        totals.align, totals.type = 64, PTR

        def total(r: int) -> ir.Value:
            return b.gep(totals, [self._i(r * self.cc.lanes)], inbounds=True, source_etype=ir.DoubleType())
        for r in range(len(offsets)):
            b.store(ir.Constant(f64, None), total(r), align=8)
        with for_range(b, 0, self.n if d[5] is None else d[5], 1, "v5") as v5:
            base = b.add(b.mul(v5, self._i(self.a_coef.get(5, 0))), self._i(self.a_const))
            b_base = b.mul(v5, self._i(self.b_coef.get(5, 0)))
            zero = ir.Constant(self.vt, None)

            def row(v6: ir.Value, acc: list) -> list:
                a_row = b.add(base, b.mul(v6, self._i(self.a_coef.get(6, 0))))
                b_row = b.add(b_base, b.mul(v6, self._i(self.b_coef.get(6, 0))))
                return carried_loop(b, d[7], acc, lambda v7, acc: self.step(
                    acc, b.add(a_row, b.mul(v7, self._i(self.a_coef.get(7, 0)))),
                    b.add(b_row, b.mul(v7, self._i(self.b_coef.get(7, 0)))), offsets), "v7")
            acc = carried_loop(b, d[6], [zero] * len(offsets), row, "v6")
            for r, vector in enumerate(acc):
                part = vector if self.dtype == "float64" else b.fpext(vector, f64)
                b.store(b.fadd(b.load(total(r), typ=f64, align=8), part), total(r), align=8)
        for r in range(len(offsets)):
            value = b.load(total(r), typ=f64, align=8)
            value = value if self.dtype == "float64" else b.fptrunc(value, self.vt)
            at = self._i((first + r) * d[igemm.COLUMN])
            b.store(value, b.gep(self.c, [at], inbounds=True, source_etype=self.t), align=self.align)

    def segments(self, v0: ir.Value, v1: ir.Value, rows: int) -> None:
        width, span = self.k.domain[2], self.cc.span
        for start in range(0, width, span):
            self.tile(v0, v1, start, rows, min(span, width - start))

    def tile(self, v0: ir.Value, v1: ir.Value, v2: int, rows: int, span: int) -> None:
        """rows x span positions from (v1, v2): their accumulators over k, then into C."""
        b, d = self.b, self.k.domain
        a = self.a_coef
        base = b.add(b.add(b.mul(v0, self._i(a.get(0, 0))), b.mul(v1, self._i(a.get(1, 0)))),
                     self._i(v2 * a.get(2, 0) + self.a_const))
        offsets = [r * a.get(1, 0) + s * a.get(2, 0) for r in range(rows) for s in range(span)]
        acc = self.reduce([ir.Constant(self.vt, None)] * len(offsets), base, offsets)
        n = d[igemm.COLUMN]
        for i, vector in enumerate(acc):
            r, s = divmod(i, span)
            row = b.add(b.mul(v0, self._i(d[1])), b.add(v1, self._i(r)))
            at = b.mul(b.add(b.mul(row, self._i(d[2])), self._i(v2 + s)), self._i(n))
            b.store(vector, b.gep(self.c, [at], inbounds=True, source_etype=self.t), align=self.align)

    def reduce(self, init: list, base: ir.Value, offsets: list) -> list:
        """The accumulators after the loops over v5, v6, v7 (carried through phis)."""
        d = self.k.domain

        def level(depth: int, acc: list, a_off: ir.Value, b_off: ir.Value) -> list:
            var = igemm.COLS[depth]

            def body(i: ir.Value, carried: list) -> list:
                a_at = self.b.add(a_off, self.b.mul(i, self._i(self.a_coef.get(var, 0))))
                b_at = self.b.add(b_off, self.b.mul(i, self._i(self.b_coef.get(var, 0))))
                if depth < 2:
                    return level(depth + 1, carried, a_at, b_at)
                return self.step(carried, a_at, b_at, offsets)
            return carried_loop(self.b, d[var], acc, body, f"v{var}")
        return level(0, init, base, self._i(0))

    def step(self, acc: list, a_at: ir.Value, b_at: ir.Value, offsets: list) -> list:
        """One k: B's vector, a broadcast of each position's image element, one FMA each."""
        b = self.b
        bv = b.load(b.gep(self.bmat, [b_at], inbounds=True, source_etype=self.t), typ=self.vt, align=self.align)
        out = []
        for value, offset in zip(acc, offsets):
            x = b.load(b.gep(self.image, [b.add(a_at, self._i(offset))], inbounds=True, source_etype=self.t),
                       typ=self.t, align=self.align)
            out.append(self.fma(self.splat(x), bv, value))
        return out

