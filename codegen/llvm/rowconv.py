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

Where the image is a zero-bordered copy that says where the image lies in it (`Window.inside`: an
input gradient's full border, a padded conv), a vector whose positions read only the border's zeros
for some v5 (a filter row) would add nothing but products of zeros: the plan then writes the tiles
out (at most MAX_STATIC_TILES of them, positions compiled in) with each vector's live v5 values
(`Vector.live`), and per v5 the loops over (v6, v7) update only the vectors live there.
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
MAX_STATIC_TILES = 64  # tiles written out where the border's zeros are skipped (the code grows with them) ...
MAX_LIVE_PAIRS = 64  # ... and their live (vector, v5) pairs, each its own (v6, v7) loops: LLVM's time grows with them


@dataclass(frozen=True)
class Vector:
    """One vector of a written-out tile: its first position (v1 * width + v2; the lanes follow it) and
    the v5 values at which some lane reads the image (at the others, all read the border's zeros)."""

    start: int
    live: tuple


@dataclass(frozen=True)
class RowConv:
    """How a row conv kernel runs (the LLVM schedule's decision, see the module docstring)."""

    rows: int  # output rows (v1 values) per register tile
    lanes: int  # vector width along v2
    tiles: tuple = ()  # written-out tiles, ((Vector, ...), positions per vector) each; empty: loops over tiles
    paired: bool = False  # rows of tiles: two rows' tails (their last width % lanes positions) per vector
    fused = True  # the kernel's stores run on each tile (no scratch C, no separate epilogue)
    split = "images"  # what the threads share (the schedule's text)

    def emit(self, em, red, threads: int) -> None:
        """C of the kernel em renders (render.py's _KernelEmitter), split over `threads`."""
        emit(em, red, self, threads)

    def __str__(self) -> str:
        text = f"direct conv, output rows along {self.lanes} lanes in {self.rows}-row tiles, stores per tile"
        if self.paired:
            text += ", two rows' tails per vector"
        if not self.tiles:
            return text
        vectors = [v for tile, _ in self.tiles for v in tile]
        live = sum(len(v.live) for v in vectors)
        return text + f", {len(self.tiles)} tiles written out, {live} live (vector, v5) pairs of " \
                      f"{len(vectors)} vectors (the border's zeros skipped)"


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
    vector registers (at most MAX_ROWS rows, at most the kernel's v1 extent); the tiles written out
    with their live v5 values where some vector reads only the border's zeros at some v5."""
    columns = k.domain[igemm.COLUMN]
    rows = max(1, min(MAX_ROWS, k.domain[1], (target.vector_registers - 2 - columns) // (columns + 1)))
    lanes = target.lanes(k.reduce.value.dtype.name)
    tiles = skipping_tiles(k, rows, lanes)
    return RowConv(rows, lanes, tiles, not tiles and pairs_tails(k, lanes))


def pairs_tails(k: Kernel, lanes: int) -> bool:
    """Would rows of tiles put two rows' tails in one vector? Where the rows are not one run and a
    row's tail (width % lanes positions) fills at most half a vector: the tails of rows 2u and 2u + 1
    are the low and high halves of one vector (two half-vector loads), not two vectors mostly idle."""
    height, width = k.domain[1], k.domain[ROW]
    tail = width % lanes
    return address(igemm.operands(k)[0])[0].get(1) != width and height >= 2 and 0 < tail <= lanes // 2


def tile_positions(k: Kernel, rows: int, lanes: int) -> list[tuple[tuple, int]]:
    """The register tiles in the emitter's order, each (first position of each vector, positions per
    vector): a flat run (`_Emitter.flat_tiles`) or rows at a time (`_Emitter.row_tiles`)."""
    height, width = k.domain[1], k.domain[ROW]
    w = igemm.operands(k)[0]
    if address(w)[0].get(1) == width:
        total, step = height * width, rows * lanes
        full = total // step * step
        tiles = [(tuple(f + u * lanes for u in range(rows)), lanes) for f in range(0, full, step)]
        return tiles + [((f,), min(lanes, total - f)) for f in range(full, total, lanes)]
    whole, full = width // lanes * lanes, height // rows * rows
    tiles = []
    for first, count in [(v1, rows) for v1 in range(0, full, rows)] + [(v1, 1) for v1 in range(full, height)]:
        chunks = [(v2, lanes) for v2 in range(0, whole, lanes)] + ([(whole, width - whole)] if whole < width else [])
        tiles += [(tuple((first + r) * width + v2 for r in range(count)), n) for v2, n in chunks]
    return tiles


def skipping_tiles(k: Kernel, rows: int, lanes: int) -> tuple:
    """RowConv.tiles: the tiles with each vector's live v5 values, where the image is a bordered copy
    saying where the image lies (Window.inside), v5 is static, there are at most MAX_STATIC_TILES tiles
    with at most MAX_LIVE_PAIRS live (vector, v5) pairs, and some vector reads only zeros at some v5;
    else ()."""
    w = igemm.operands(k)[0]
    first = igemm.COLS[0]
    if not w.inside or k.domain[first] is None:
        return ()
    tiles = tile_positions(k, rows, lanes)
    if len(tiles) > MAX_STATIC_TILES:
        return ()
    out = tuple((tuple(Vector(start, tuple(v5 for v5 in range(k.domain[first]) if _reads_image(k, w, start, count, v5)))
                       for start in starts), count) for starts, count in tiles)
    every = sum(len(starts) for starts, _ in tiles) * k.domain[first]
    live = sum(len(v.live) for tile, _ in out for v in tile)
    return out if live < every and live <= MAX_LIVE_PAIRS else ()


def _reads_image(k: Kernel, w: Window, start: int, count: int, v5: int) -> bool:
    """Does some lane of the vector of `count` positions from `start` read the image (not only the
    border's zeros) at this v5, for some values of the other vars? Each axis's coordinate is bounded
    over the vars other than v1, v2 and v5 (a superset of what it reads: never a live lane missed)."""
    width = k.domain[ROW]
    for f in range(start, start + count):
        fixed = {1: f // width, ROW: f % width, igemm.COLS[0]: v5}
        if all(_meets(inside, coord, fixed, k.domain) for inside, coord in zip(w.inside, w.coords)):
            return True
    return False


def _meets(inside, coord, fixed: dict, domain: tuple) -> bool:
    """Does `coord` (the other vars ranging over their extents) meet where the image lies along its axis?"""
    lo = hi = coord.const
    for var, coef in coord.terms:
        if var in fixed:
            lo, hi = lo + coef * fixed[var], hi + coef * fixed[var]
        elif domain[var] is None:
            return True
        else:
            lo, hi = lo + min(0, coef * (domain[var] - 1)), hi + max(0, coef * (domain[var] - 1))
    return inside.meets(lo, hi)


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
        self.poison = self.filter_poison() if self.rc.tiles else None
        d = self.k.domain
        height, width, lanes, rows = d[1], d[ROW], self.rc.lanes, self.rc.rows
        with self.loop(begin, end, "v0") as v0:
            if self.rc.tiles:
                self.written_tiles(v0, width)
            elif self.a_coef.get(1) == width:  # rows follow each other in the image: one flat run of positions
                self.flat_tiles(v0, height * width, rows, lanes)
            else:
                full, tails = height // rows * rows, not self.rc.paired
                with self.loop(0, full, "v1", step=rows) as v1:
                    self.row_tiles(v0, v1, rows, width, lanes, tails)
                if full < height:
                    with self.loop(full, height, "v1r") as v1:
                        self.row_tiles(v0, v1, 1, width, lanes, tails)
                if self.rc.paired:
                    self.all_paired_tails(v0, height, rows, width, lanes)
        self.b.ret_void()
        return fn

    def row_tiles(self, v0: ir.Value, v1: ir.Value, rows: int, width: int, lanes: int, tails: bool = True) -> None:
        """The tiles of `rows` output rows from v1: whole vectors along v2, then (with `tails`) a masked last one."""
        b, whole = self.b, width // lanes * lanes
        a1 = self._i(self.a_coef.get(1, 0))

        def tile(v2: ir.Value, count: int) -> None:
            starts = [b.add(b.mul(b.add(v1, self._i(r)), a1), v2) for r in range(rows)]
            self.tile(v0, starts, count, lambda r, p, half: (b.add(v1, self._i(r)), b.add(v2, p)))
        if whole:
            with self.loop(0, whole, "v2", step=lanes) as v2:
                tile(v2, lanes)
        if whole < width and tails:
            tile(self._i(whole), width - whole)

    def all_paired_tails(self, v0: ir.Value, height: int, rows: int, width: int, lanes: int) -> None:
        """Every row's tail (RowConv.paired): tiles of `rows` vectors of two rows' tails each, then the
        pairs left one per tile, then an odd last row's tail alone."""
        step = 2 * rows
        full = height // step * step
        if full:
            with self.loop(0, full, "v1p", step=step) as v1:
                self.paired_tails(v0, v1, rows, width, lanes)
        for v1 in range(full, height - 1, 2):
            self.paired_tails(v0, self._i(v1), 1, width, lanes)
        if height % 2:
            self.tail_alone(v0, height - 1, width, lanes)

    def tail_alone(self, v0: ir.Value, v1: int, width: int, lanes: int) -> None:
        """Row v1's tail, one masked vector."""
        whole = width // lanes * lanes
        start = self._i(v1 * self.a_coef.get(1, 0) + whole)
        self.tile(v0, [start], width - whole, lambda r, p, half: (self._i(v1), self.b.add(self._i(whole), p)))

    def paired_tails(self, v0: ir.Value, v1: ir.Value, pairs: int, width: int, lanes: int) -> None:
        """The tails of rows v1 .. v1 + 2 * pairs - 1 in `pairs` vectors: row v1 + 2u's in the low half of
        vector u, row v1 + 2u + 1's in its high half."""
        b, whole = self.b, width // lanes * lanes
        a1 = self._i(self.a_coef.get(1, 0))

        def start(r: int) -> ir.Value:
            return b.add(b.mul(b.add(v1, self._i(r)), a1), self._i(whole))
        starts = [(start(2 * u), start(2 * u + 1)) for u in range(pairs)]
        self.tile(v0, starts, width - whole,
                  lambda u, p, half: (b.add(v1, self._i(2 * u + half)), b.add(self._i(whole), p)))

    def flat_tiles(self, v0: ir.Value, total: int, rows: int, lanes: int) -> None:
        """The image's rows are consecutive (its v1 stride is the output row's width): the `total`
        positions of (v1, v2) as one run, `rows` vectors per tile, then the vectors left one by one
        (the last one masked)."""
        b, width, step = self.b, self.k.domain[ROW], rows * lanes

        def at(first: ir.Value):
            def coords(u: int, p: ir.Value, half: int = 0) -> tuple:
                f = b.add(b.add(first, self._i(u * lanes)), p)
                return b.udiv(f, self._i(width)), b.urem(f, self._i(width))
            return coords
        full = total // step * step
        if full:
            with self.loop(0, full, "f", step=step) as f:
                self.tile(v0, [b.add(f, self._i(u * lanes)) for u in range(rows)], lanes, at(f))
        for start in range(full, total, lanes):
            self.tile(v0, [self._i(start)], min(lanes, total - start), at(self._i(start)))

    def written_tiles(self, v0: ir.Value, width: int) -> None:
        """The plan's tiles written out (RowConv.tiles), each vector's positions and live v5 values
        compiled in."""
        b, a1 = self.b, self.a_coef.get(1, 0)
        for vectors, count in self.rc.tiles:
            starts = [self._i(v.start // width * a1 + v.start % width) for v in vectors]

            def coords(u: int, p: ir.Value, half: int = 0, vectors=vectors) -> tuple:
                f = b.add(self._i(vectors[u].start), p)
                return b.udiv(f, self._i(width)), b.urem(f, self._i(width))
            self.tile(v0, starts, count, coords, [v.live for v in vectors])

    def filter_poison(self) -> list:
        """Per v5 value and column: the sum over (v6, v7) of B - B, 0 where B's taps are finite and NaN
        where one is not: a vector skipping v5 starts from it, so that its sums are NaN where the
        skipped products of the border's zeros (0 * inf, 0 * NaN) would have made them NaN."""
        d, b = self.k.domain, self.b
        poison = []
        for value in range(d[igemm.COLS[0]]):
            first = self.b_const + self.b_coef.get(igemm.COLS[0], 0) * value
            starts = [ir.Constant(self.t, 0.0)] * self.columns

            def taps(i: ir.Value, carried: list, first=first) -> list:
                def inner(j: ir.Value, sums: list) -> list:
                    at = b.add(b.add(self._i(first), b.mul(i, self._i(self.b_coef.get(igemm.COLS[1], 0)))),
                               b.mul(j, self._i(self.b_coef.get(igemm.COLS[2], 0))))
                    out = []
                    for column, total in enumerate(sums):
                        tap = b.add(at, self._i(self.b_coef.get(igemm.COLUMN, 0) * column))
                        value = b.load(b.gep(self.bmat, [tap], inbounds=True, source_etype=self.t), typ=self.t)
                        out.append(b.fadd(total, b.fsub(value, value)))
                    return out
                return self.carried(d[igemm.COLS[2]], carried, inner, "poison.v7")
            poison.append(self.carried(d[igemm.COLS[1]], starts, taps, "poison.v6"))
        return poison

    def start_values(self, live: list) -> list:
        """The accumulators' first values, vector-major: each vector's sum of filter_poison over the v5
        values it skips (zeros where it skips none)."""
        zero, out = ir.Constant(self.vt, None), []
        for values in live:
            for column in range(self.columns):
                skipped = [self.poison[v][column] for v in range(len(self.poison)) if v not in values]
                total = skipped[0] if skipped else None
                for term in skipped[1:]:
                    total = self.b.fadd(total, term)
                out.append(zero if total is None else self.splat(total))
        return out

    def tile(self, v0: ir.Value, starts: list, count: int, coords, live: list | None = None) -> None:
        """One register tile: a vector of `count` positions (count < lanes: masked) from each of `starts`
        (the image address of its first, less v0's and the constant part; a pair of them: `count` from
        each into the vector's two halves) x N columns; coords(u, p, half) is (v1, v2) of position p (of
        that half) of vector u; `live`: each vector's live v5 values (None: all)."""
        b, lanes, rows = self.b, self.rc.lanes, len(starts)
        width = lanes // 2 if isinstance(starts[0], tuple) else lanes
        mask = self.half_mask(count) if width < lanes else None if count == lanes else \
            ir.Constant(ir.VectorType(ir.IntType(1), lanes), [i < count for i in range(lanes)])
        origin = b.add(b.mul(v0, self._i(self.a_coef.get(0, 0))), self._i(self.a_const))
        base = [self.shifted(start, origin) for start in starts]
        init = [ir.Constant(self.vt, None)] * (rows * self.columns) if live is None else self.start_values(live)
        acc = self.reduce(init, base, mask, live)
        for i, vector in enumerate(acc):  # the tile, (row, column)-major: each column's positions contiguous
            b.store(vector, b.gep(self.tile_buffer, [self._i(i * lanes)], inbounds=True, source_etype=self.t),
                    align=self.align)
        self.epilogue(v0, coords, rows, count, (0, width) if width < lanes else (0,))

    def shifted(self, at, by: ir.Value):
        """An address, or a pair of them (a vector's two halves), plus `by`."""
        return tuple(self.b.add(x, by) for x in at) if isinstance(at, tuple) else self.b.add(at, by)

    def epilogue(self, v0: ir.Value, coords, rows: int, count: int, halves: tuple = (0,)) -> None:
        """The kernel's stores for the tile's `count` positions, acc read from the tile (in L1; a
        column's positions contiguous: the loop over them vectorizes): the renderer's `stores` with its
        builder, buffers and vars pointed here."""
        em = self.em
        saved = (em.b, em.fn, em.N, em.ptrs, em.vars)
        em.b, em.fn, em.N, em.ptrs = self.b, self.fn, self.n, self.ptrs
        for r in range(rows):
            for half, lane in enumerate(halves):
                self.positions(v0, coords, r, count, half, lane)
        em.b, em.fn, em.N, em.ptrs, em.vars = saved

    def positions(self, v0: ir.Value, coords, r: int, count: int, half: int, lane: int) -> None:
        """The kernel's stores for `count` positions of vector r from lane `lane` (of its half `half`)."""
        em = self.em
        with for_range(self.b, 0, count, 1, "p") as p:
            v1, v2 = coords(r, p, half)
            for j in range(self.columns):
                em.vars = {0: v0, 1: v1, 2: v2, 3: self._i(0), igemm.COLUMN: self._i(j)}
                at = self.b.add(p, self._i((r * self.columns + j) * self.rc.lanes + lane))
                em.acc = self.b.load(self.b.gep(self.tile_buffer, [at], inbounds=True, source_etype=self.t),
                                     typ=self.t)
                em.stores()

    def reduce(self, init: list, base: list, mask, live: list | None = None) -> list:
        """The accumulators (vector-major, N columns each) after the loops over v5, v6, v7 (their values
        carried through phis); with `live` (each vector's live v5 values), v5 written out and, per
        value, the loops over v6, v7 updating only the vectors live there."""
        d, first = self.k.domain, igemm.COLS[0]
        if live is None:
            return self.level(0, init, self._i(0), self._i(self.b_const), base, mask)
        acc = list(init)
        for value in range(d[first]):
            active = [u for u in range(len(base)) if value in live[u]]
            picked = [u * self.columns + j for u in active for j in range(self.columns)]
            if not picked:
                continue
            out = self.level(1, [acc[i] for i in picked], self._i(self.a_coef.get(first, 0) * value),
                             self._i(self.b_const + self.b_coef.get(first, 0) * value), [base[u] for u in active], mask)
            for i, vector in zip(picked, out):
                acc[i] = vector
        return acc

    def level(self, depth: int, acc: list, a_off: ir.Value, b_off: ir.Value, base: list, mask) -> list:
        """The loops over COLS[depth:] (a carried loop each), the FMAs of each k inside."""
        var = igemm.COLS[depth]

        def body(i: ir.Value, carried: list) -> list:
            a_at = self.b.add(a_off, self.b.mul(i, self._i(self.a_coef.get(var, 0))))
            b_at = self.b.add(b_off, self.b.mul(i, self._i(self.b_coef.get(var, 0))))
            if depth < 2:
                return self.level(depth + 1, carried, a_at, b_at, base, mask)
            return self.step(carried, [self.shifted(x, a_at) for x in base], b_at, len(base), mask)
        extent = self.k.domain[var]
        return self.carried(self.n if extent is None else extent, acc, body, f"v{var}")  # v5: N in a filter gradient

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

    def load_row(self, at, mask) -> ir.Value:
        """The vector at `at`, or at a pair of addresses its two halves (`mask` then a half's)."""
        if not isinstance(at, tuple):
            return self.vector_load(self.image, at, mask)
        return self.pair_load(self.image, *at, mask)
