"""Direct convolution with the output row along the vector lanes, for narrow convolutions.

The implicit GEMM (igemm.py) puts a conv kernel's N columns (its output channels, or a gradient's
input channels) along the vector lanes: a 6-channel convolution leaves most lanes idle and spends
its time packing. This path turns the kernel around: over (v0, v1, v2, group, v4, v5, v6, v7) it
vectorises along v2, the output row, whose consecutive values read consecutive image elements (the
window's address steps by 1 along v2: a one-channel NHWC image, or the channel-major copy that
gemm_schedule.planar_conv_images makes), so that per k = (v5, v6, v7) a register tile of `rows`
vectors of positions loads one vector each and broadcasts each of the N filter values (B[k, j], the
dense operand) once:

    for v0 (split over threads), tiles of `rows` x lanes positions (v1, v2) (the last vector masked):
        acc[r][j] = 0                                   r < rows, j < N: one vector each
        for v5, v6, v7:  a[r] = image[address(v0, positions of r, v5, v6, v7)]   (vector loads)
                         acc[r][j] += a[r] * broadcast(B[offset(j, v5, v6, v7)])
        tile[r][j] = acc[r][j]; the kernel's stores for each position and column, acc from the tile

A tile's vectors are consecutive output rows (v1, v1 + 1, ...), or, where the image's rows follow
each other as the output's do (its v1 stride is the output row's width: a 1-wide filter, or the
input gradient's copy with rows `row_pitch` apart), consecutive runs of the (v1, v2) positions taken
as one: no lane idles but the last vector's. The geometry is static (compiled in: no descriptor),
the image is read in place, nothing is packed, and the epilogue (the kernel's stores: bias, relu,
...) runs on each tile while it is in L1, with no C in memory. The sums run in the float type over k,
as a GEMM's do. Chosen by `wants` (at most MAX_COLUMN_SHARE of a vector of columns, a row filling at
least MIN_ROW_SHARE of its vectors, the image's row contiguous once copied).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from llvmlite import ir

from ..loopir import Kernel
from ..window import Window, guarded_axes, row_strides
from . import igemm
from .direct import I64, PTR, VectorEmitter, call_in_parallel
from .loops import for_range
from .target import TargetInfo

ORDER = (0, 1, 3, 4, 5, 6, 7, 2)  # a row conv kernel's loop order: v2, the row, runs along the lanes
ROW, MAX_ROWS = 2, 4  # the var along the lanes; at most this many output rows per register tile
MAX_COLUMN_SHARE = 0.5  # a conv whose columns fill at most this share of a vector is narrow ...
MIN_ROW_SHARE = 0.5  # ... and a row conv's when its output row fills at least this share of its vectors


@dataclass(frozen=True)
class RowConv:
    """How a row conv kernel runs (the LLVM schedule's decision, see the module docstring)."""

    rows: int  # output rows (v1 values) per register tile
    lanes: int  # vector width along v2
    fused = True  # the kernel's stores run on each tile (no scratch C, no separate epilogue)
    split = "images"  # what the threads share (the schedule's text)

    def emit(self, em, red, threads: int) -> None:
        """C of the kernel em renders (render.py's _KernelEmitter), split over `threads`."""
        emit(em, red, self, threads)

    def __str__(self) -> str:
        return f"direct conv, output rows along {self.lanes} lanes in {self.rows}-row tiles, stores per tile"


def row_axis(w: Window) -> int | None:
    """The image axis whose coordinate holds v2 (once, with coefficient 1, undivided), else None."""
    axes = [a for a, c in enumerate(w.coords) if any(v == ROW for v, _ in c.terms)]
    if len(axes) != 1 or dict(w.coords[axes[0]].terms)[ROW] != 1 or any(c.div != 1 for c in w.coords) \
            or w.shape[axes[0]] is None:
        return None
    return axes[0]


def wants(k: Kernel, target: TargetInfo) -> bool:
    """Would a row conv compute conv kernel `k` (given a contiguous, unguarded image row)? An
    implicit-GEMM conv with at most MAX_COLUMN_SHARE of a vector of columns, whose output row (v2)
    fills at least MIN_ROW_SHARE of the vectors it takes, on a vector target."""
    found = igemm.operands(k)
    if found is None or not igemm.worth_it(k) or not target.vector_bits or row_axis(found[0]) is None:
        return False
    lanes = target.lanes(found[0].dtype.name)
    columns, width = k.domain[igemm.COLUMN], k.domain[ROW]
    return columns <= MAX_COLUMN_SHARE * lanes and width >= MIN_ROW_SHARE * lanes * -(-width // lanes)


def address(w: Window) -> tuple[dict, int]:
    """({var: coefficient}, constant) of an undivided window's element address."""
    coefs, const = {}, 0
    for coord, (stride, nexp) in zip(w.coords, row_strides(w.shape)):
        if nexp and (coord.terms or coord.const):
            raise ValueError("a window axis scaled by N has a coordinate")
        const += coord.const * stride
        for var, coef in coord.terms:
            coefs[var] = coefs.get(var, 0) + coef * stride
    return coefs, const


def ready(k: Kernel, target: TargetInfo) -> bool:
    """`wants`, and its image row is contiguous and unguarded (copied if need be): a row conv now."""
    if not wants(k, target):
        return False
    w = igemm.operands(k)[0]
    return not any(guarded_axes(w, k.domain)) and address(w)[0].get(ROW) == 1


def marked(k: Kernel) -> bool:
    """Is `k` a conv kernel gemm_schedule.use_implicit_gemm gave to a row conv (its loop order says so)?"""
    return len(k.domain) == 8 and k.order == ORDER and k.reduce is not None and k.reduce.contraction is not None


def plan(k: Kernel, target: TargetInfo) -> RowConv:
    """The register tile: `rows` x N accumulators, plus a vector per row and N broadcasts, in the
    vector registers (at most MAX_ROWS rows, at most the kernel's v1 extent)."""
    columns = k.domain[igemm.COLUMN]
    rows = max(1, min(MAX_ROWS, k.domain[1], (target.vector_registers - 2 - columns) // (columns + 1)))
    return RowConv(rows, target.lanes(k.reduce.value.dtype.name))


def emit(em, red, rc: RowConv, threads: int) -> None:
    """Row conv kernel em.k by `rc` with its epilogue, at em's builder (render.py's _KernelEmitter,
    whose `stores` the tiles run: see _Emitter.epilogue)."""
    buffers = list(em.ptrs)
    fn = _Emitter(em, rc, red.value.dtype.name).function(buffers)
    outer = em.extent(0)
    work = em.b.mul(outer, ir.Constant(I64, math.prod(d for d in em.k.domain[1:] if d is not None) * 2))
    for _ in range(em.k.domain[1:].count(None)):  # a filter gradient sums over the batch
        work = em.b.mul(work, em.N)
    call_in_parallel(em, fn, "rows", outer, [em.N] + [em.ptrs[x] for x in buffers], threads, work)


class _Emitter(VectorEmitter):
    """Writes `void <kernel>_rowconv(i64 N, i64 begin, i64 end, ptr noalias b...)` (the kernel's buffers in
    the emitter's order): v0 in [begin, end), each tile's results through the kernel's stores."""

    def __init__(self, em, rc: RowConv, dtype: str) -> None:
        super().__init__(em.r.module, dtype, rc.lanes)
        self.em, self.k, self.rc = em, em.k, rc
        window, other = self.k.reduce.contraction
        self.a_coef, self.a_const = address(window)
        self.b_coef = {var: coef for var, coef, _ in other.offset.terms}
        self.b_const = sum(coef for coef, _ in other.offset.base)
        self.columns = self.k.domain[igemm.COLUMN]

    def function(self, buffers: list) -> ir.Function:
        fn = self.fn = self.open_function(f"{self.k.name}_rowconv", [f"b{buf}" for buf in buffers])
        self.n, begin, end = fn.args[:3]
        self.ptrs = dict(zip(buffers, fn.args[3:]))
        window, other = self.k.reduce.contraction
        self.image, self.bmat = self.ptrs[window.buffer], self.ptrs[other.buffer]
        self.tile_buffer = self.b.alloca(ir.ArrayType(self.t, self.rc.rows * self.rc.lanes * self.columns), name="tile")
        self.tile_buffer.align, self.tile_buffer.type = 64, PTR
        d = self.k.domain
        height, width, lanes, rows = d[1], d[ROW], self.rc.lanes, self.rc.rows
        with self.loop(begin, end, "v0") as v0:
            if self.a_coef.get(1) == width:  # rows follow each other in the image: one flat run of positions
                self.flat_tiles(v0, height * width, rows, lanes)
            else:
                full = height // rows * rows
                with self.loop(0, full, "v1", step=rows) as v1:
                    self.row_tiles(v0, v1, rows, width, lanes)
                if full < height:
                    with self.loop(full, height, "v1r") as v1:
                        self.row_tiles(v0, v1, 1, width, lanes)
        self.b.ret_void()
        return fn

    def row_tiles(self, v0: ir.Value, v1: ir.Value, rows: int, width: int, lanes: int) -> None:
        """The tiles of `rows` output rows from v1: whole vectors along v2, then a masked last one."""
        b, whole = self.b, width // lanes * lanes
        a1 = self._i(self.a_coef.get(1, 0))

        def tile(v2: ir.Value, count: int) -> None:
            starts = [b.add(b.mul(b.add(v1, self._i(r)), a1), v2) for r in range(rows)]
            self.tile(v0, starts, count, lambda r, p: (b.add(v1, self._i(r)), b.add(v2, p)))
        if whole:
            with self.loop(0, whole, "v2", step=lanes) as v2:
                tile(v2, lanes)
        if whole < width:
            tile(self._i(whole), width - whole)

    def flat_tiles(self, v0: ir.Value, total: int, rows: int, lanes: int) -> None:
        """The image's rows are consecutive (its v1 stride is the output row's width): the `total`
        positions of (v1, v2) as one run, `rows` vectors per tile, then the vectors left one by one
        (the last one masked)."""
        b, width, step = self.b, self.k.domain[ROW], rows * lanes

        def at(first: ir.Value):
            def coords(u: int, p: ir.Value) -> tuple:
                f = b.add(b.add(first, self._i(u * lanes)), p)
                return b.udiv(f, self._i(width)), b.urem(f, self._i(width))
            return coords
        full = total // step * step
        if full:
            with self.loop(0, full, "f", step=step) as f:
                self.tile(v0, [b.add(f, self._i(u * lanes)) for u in range(rows)], lanes, at(f))
        for start in range(full, total, lanes):
            self.tile(v0, [self._i(start)], min(lanes, total - start), at(self._i(start)))

    def tile(self, v0: ir.Value, starts: list, count: int, coords) -> None:
        """One register tile: a vector of `count` positions (count < lanes: masked) from each of `starts`
        (the image address of its first, less v0's and the constant part) x N columns; coords(u, p) is
        (v1, v2) of position p of vector u."""
        b, lanes, rows = self.b, self.rc.lanes, len(starts)
        mask = None if count == lanes else ir.Constant(ir.VectorType(ir.IntType(1), lanes),
                                                       [i < count for i in range(lanes)])
        origin = b.add(b.mul(v0, self._i(self.a_coef.get(0, 0))), self._i(self.a_const))
        base = [b.add(origin, start) for start in starts]
        zero = ir.Constant(self.vt, None)
        acc = self.reduce([zero] * (rows * self.columns), base, rows, mask)
        for i, vector in enumerate(acc):  # the tile, (row, column)-major: each column's positions contiguous
            b.store(vector, b.gep(self.tile_buffer, [self._i(i * lanes)], inbounds=True, source_etype=self.t),
                    align=self.align)
        self.epilogue(v0, coords, rows, count)

    def epilogue(self, v0: ir.Value, coords, rows: int, count: int) -> None:
        """The kernel's stores for the tile's `count` positions, acc read from the tile (in L1; a
        column's positions contiguous: the loop over them vectorizes): the renderer's `stores` with its
        builder, buffers and vars pointed here."""
        em = self.em
        saved = (em.b, em.fn, em.N, em.ptrs, em.vars)
        em.b, em.fn, em.N, em.ptrs = self.b, self.fn, self.n, self.ptrs
        for r in range(rows):
            with for_range(self.b, 0, count, 1, "p") as p:
                v1, v2 = coords(r, p)
                for j in range(self.columns):
                    em.vars = {0: v0, 1: v1, 2: v2, 3: self._i(0), igemm.COLUMN: self._i(j)}
                    at = self.b.add(p, self._i((r * self.columns + j) * self.rc.lanes))
                    em.acc = self.b.load(self.b.gep(self.tile_buffer, [at], inbounds=True, source_etype=self.t),
                                         typ=self.t)
                    em.stores()
        em.b, em.fn, em.N, em.ptrs, em.vars = saved

    def reduce(self, init: list, base: list, rows: int, mask) -> list:
        """The accumulators after the loops over v5, v6, v7 (their values carried through phis)."""
        d = self.k.domain

        def level(depth: int, acc: list, a_off: ir.Value, b_off: ir.Value) -> list:
            var = igemm.COLS[depth]
            out = []

            def body(i: ir.Value, carried: list) -> list:
                a_at = self.b.add(a_off, self.b.mul(i, self._i(self.a_coef.get(var, 0))))
                b_at = self.b.add(b_off, self.b.mul(i, self._i(self.b_coef.get(var, 0))))
                if depth < 2:
                    return level(depth + 1, carried, a_at, b_at)
                return self.step(carried, [self.b.add(x, a_at) for x in base], b_at, rows, mask)
            out = self.carried(self.n if d[var] is None else d[var], acc, body, f"v{var}")  # v5: N in a filter gradient
            return out
        return level(0, init, self._i(0), self._i(self.b_const))

    def step(self, acc: list, rows_at: list, b_at: ir.Value, rows: int, mask) -> list:
        """One k: a vector of each row, each column's B broadcast, rows x N FMAs."""
        b = self.b
        a = [self.load_row(at, mask) for at in rows_at]
        out = list(acc)
        for j in range(self.columns):
            at = b.add(b_at, self._i(self.b_coef.get(igemm.COLUMN, 0) * j))
            value = b.load(b.gep(self.bmat, [at], inbounds=True, source_etype=self.t), typ=self.t, align=self.align)
            splat = self.splat(value)
            for r in range(rows):
                out[r * self.columns + j] = self.fma(a[r], splat, out[r * self.columns + j])
        return out

    def load_row(self, at: ir.Value, mask) -> ir.Value:
        return self.vector_load(self.image, at, mask)
