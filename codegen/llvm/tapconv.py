"""Direct convolution with few taps and several vectors of columns (a 3-channel image's 3x3 conv into
32 filters: K = 27), the taps written out.

Such a conv is an implicit GEMM (igemm.py) whose depth K is so short that the routine's per-tile and
per-block costs (tables, in-place tests, C's rows stored and read back) weigh as much as its FMAs. Here
the geometry is compiled in, the image is read in place and the short side of the product is written
out, each of its elements at a constant offset in the image.

A padded image is read in place too (`reads_guards`; else gemm_schedule's bordered copy): the values
of a position var at which a tap may leave the image (at most MAX_PEELED: a 3 x 3 "same" conv's first
and last rows) are written out of its loop, their elements outside the image zeros (0 * inf is NaN,
as the copy's zeros make it), the others (`interior`) run the loops unguarded. A forward tile's
columns are static, so are their guards; a peeled row tests its row guard per value of the looped
K var.

Forward form (K = (v5, v6, v7) static, at most MAX_TAPS): a tile of positions, `rows` output rows x
`span` positions along the row `spacing` apart, holds `vectors` accumulators per position (the
columns, B's row contiguous); per tap, `vectors` loads of B and one broadcast of the image per
position. The first K var of more than one value (a filter row) is a loop, the taps within it
written out: B's loads then vary with the loop, so LLVM does not hoist all K x vectors of them out of
the tiles' loops into spilled registers. `spacing` (the filter's width for a 3 x 3 conv of 3
channels) keeps a tile's positions from reading one image element twice in one iteration, whose
broadcast LLVM would otherwise keep across taps, and spill:

    for v0 (split over threads), v1 in steps of `rows`, v2 in phases (v2 mod spacing), segments of `span`:
        acc[p][c] = 0
        for the outer K var:  for each tap t within it (written out):
            b[c] = B[t, c..]   acc[p][c] += broadcast(image[at(p) + off(t)]) * b[c]
        the kernel's stores for each position and column, acc from the tile (no C in memory)

Filter-gradient form (rows (v0, v1, v2) static, at most MAX_TAPS: the taps of a filter gradient,
whose K holds the batch): tiles of `taps` rows of C at constant offsets from the position's image
element, per position `vectors` loads of B (dy's channels) and a broadcast per tap; each image's
float32 sums are added into per-lane float64 totals (as kconv.py, colconv.py), and every tile runs
its share of an image before the next image, so the image's B is read from cache by the later tiles:

    for v5 (each image):  for each tile (split over threads):
        acc[t][c] = 0
        for v6, v7:  b[c] = B[v5, v6, v7, c..]   acc[t][c] += broadcast(image[at(v5, v6, v7) + off(t)]) * b[c]
        total[t][c] += acc[t][c]                               (per lane, float64)
    C[t, c..] = total[t][c]                                    the epilogue reads C

Chosen by `wants`: N a whole number of vectors, two to MAX_VECTORS of them, an undivided window, B's
columns contiguous, on a target whose registers hold at least MIN_TILE accumulator rows. The forward
form's sums run in the float type over its taps, as a GEMM's do.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass

from llvmlite import ir

from ..loopir import Kernel
from ..window import guarded_axes
from . import igemm, rowconv
from .direct import I64, PTR, VectorEmitter, call_in_parallel, kernel_flops
from .loops import carried_loop, for_range
from .target import TargetInfo

ORDER = (3, 0, 1, 2, 4, 5, 6, 7)  # a tap conv kernel's loop order: the columns along the lanes, taps written out
MAX_TAPS = 32  # taps written out (the forward's K, the gradient's rows of C): code size
MAX_VECTORS = 4  # columns, in vectors, of the convs this path computes (at least two: one is colconv's)
MIN_TILE = 4  # positions (or taps) per register tile below which the implicit GEMM's taller tile wins
MAX_PEELED = 4  # values of a position var at which a tap may leave the image, written out (code size)
LINE_BYTES = 64  # a cache line: the forward tile prefetches each line of its outputs once


@dataclass(frozen=True)
class TapConv:
    """How a tap conv kernel runs (the LLVM schedule's decision, see the module docstring)."""

    rows: int  # forward: output rows (v1) per tile
    span: int  # forward: positions along the row (v2) per tile
    spacing: int  # forward: v2 between a tile's positions (their taps then read distinct image elements)
    vectors: int  # columns, in vectors
    lanes: int
    taps: int = 0  # the gradient form's rows of C per tile; 0: the forward form

    @property
    def fused(self) -> bool:
        """The forward form runs the kernel's stores on each tile; the gradient form writes C."""
        return not self.taps

    @property
    def split(self) -> str:
        """What the threads share (the schedule's text)."""
        return "taps" if self.taps else "images"

    def emit(self, em, red, threads: int) -> None:
        """The kernel em renders (render.py's _KernelEmitter), split over `threads`."""
        emit(em, red, self, threads)

    def __str__(self) -> str:
        if self.taps:
            return f"direct filter gradient, {self.vectors} vectors of columns, {self.taps} taps per tile written out"
        return (f"direct conv, {self.vectors} vectors of columns, {self.rows} x {self.span} positions "
                f"{self.spacing} apart per tile, taps written out, stores per tile")


def forward_form(k: Kernel) -> bool:
    """Is K (v5, v6, v7) static and at most MAX_TAPS (the forward form), rather than the rows of C?"""
    d = k.domain
    return all(d[v] is not None for v in igemm.COLS) and math.prod(d[v] for v in igemm.COLS) <= MAX_TAPS \
        and d[1] is not None and d[2] is not None


def gradient_form(k: Kernel) -> bool:
    """Are C's rows (v0, v1, v2) static and at most MAX_TAPS, and v6, v7 static (the gradient form)?"""
    d = k.domain
    return all(d[v] is not None for v in (0, 1, 2, 6, 7)) and math.prod(d[:3]) <= MAX_TAPS


def most(target: TargetInfo, vectors: int) -> int:
    """Positions (or taps) per tile: their accumulators, B's vectors and a broadcast in the registers."""
    return (target.vector_registers - vectors - 1) // vectors


def wants(k: Kernel, target: TargetInfo) -> bool:
    """An implicit-GEMM conv whose columns are 2 to MAX_VECTORS whole vectors, contiguous in B, with an
    undivided window and a short side to write out (`forward_form` or `gradient_form`), on a vector
    target holding MIN_TILE accumulator rows."""
    found = igemm.operands(k)
    if found is None or not igemm.worth_it(k) or not target.vector_bits:
        return False
    w, other = found
    lanes, columns = target.lanes(w.dtype.name), k.domain[igemm.COLUMN]
    vectors = columns // lanes
    if columns % lanes or not 2 <= vectors <= MAX_VECTORS or most(target, vectors) < MIN_TILE:
        return False
    if any(c.div != 1 for c in w.coords) or other.offset.base:
        return False
    if {v: c for v, c, _ in other.offset.terms}.get(igemm.COLUMN) != 1:
        return False
    return forward_form(k) or gradient_form(k)


def ready(k: Kernel, target: TargetInfo) -> bool:
    """`wants`, and the image unguarded (bordered if need be) or its guards read here (`reads_guards`):
    a tap conv now."""
    return wants(k, target) and (not any(guarded_axes(igemm.operands(k)[0], k.domain)) or reads_guards(k))


def reads_guards(k: Kernel) -> bool:
    """Can the tap conv read conv kernel `k`'s guarded window in place (no bordered copy)? Each guarded
    axis's coordinate holds one position var (`position_vars`) and otherwise taps; a forward's column
    (v2) axis not its looped K var (`outer_var`, whose values are not written out); and at most
    MAX_PEELED values of each position var let a tap leave the image (`interior`). Where a tap is
    outside, its element is a zero, as a bordered copy's (0 * inf is NaN, as there)."""
    w = igemm.operands(k)[0]
    if not any(guarded_axes(w, k.domain)):
        return False
    spans = interior(k)
    return spans is not None and all(k.domain[p] - (hi - lo) <= MAX_PEELED for p, (lo, hi) in spans.items()
                                     if not (forward_form(k) and p == 2))


def position_vars(k: Kernel) -> tuple:
    """The vars running over positions in a tile's loops: a forward's output row and column, a
    filter gradient's image row and column (its taps are the rows of C)."""
    return (1, 2) if forward_form(k) else (6, 7)


def tap_vars(k: Kernel) -> tuple:
    return igemm.COLS if forward_form(k) else igemm.ROWS


def guards(k: Kernel) -> list[tuple[dict, int, int]]:
    """({var: coefficient}, constant, extent) of each guarded axis of conv kernel k's window."""
    w = igemm.operands(k)[0]
    return [(dict(c.terms), c.const, dim) for c, dim, g in zip(w.coords, w.shape, guarded_axes(w, k.domain)) if g]


def interior(k: Kernel) -> dict[int, tuple[int, int]] | None:
    """{position var: [lo, hi)}, the values of each position var a guarded axis reads at which every tap
    is inside the image; None where the guards do not fit (see `reads_guards`)."""
    d, positions, taps = k.domain, position_vars(k), tap_vars(k)
    spans = {}
    for coefs, const, dim in guards(k):
        mine = [v for v in coefs if v in positions]
        if dim is None or len(mine) != 1 or any(v not in positions and v not in taps for v in coefs):
            return None
        p = mine[0]
        if forward_form(k) and p == 2 and outer_var(d) in coefs:
            return None
        low = const + sum(min(0, c * (d[v] - 1)) for v, c in coefs.items() if v != p)
        high = const + sum(max(0, c * (d[v] - 1)) for v, c in coefs.items() if v != p)
        inside = [x for x in range(d[p]) if coefs[p] * x + low >= 0 and coefs[p] * x + high < dim]
        lo, hi = spans.get(p, (0, d[p]))
        if inside:
            lo, hi = max(lo, inside[0]), min(hi, inside[-1] + 1)
        spans[p] = (lo, max(lo, hi)) if inside else (0, 0)
    return spans


def inside(axis: tuple[dict, int, int], values: dict) -> bool | None:
    """Is the element inside guarded `axis` at these static var values (None: a var is not static)?"""
    coefs, const, dim = axis
    if any(values.get(v) is None for v in coefs):
        return None
    return 0 <= const + sum(c * values[v] for v, c in coefs.items()) < dim


def marked(k: Kernel) -> bool:
    """Is `k` a conv kernel gemm_schedule.use_implicit_gemm gave to a tap conv (its loop order says so)?"""
    return len(k.domain) == 8 and k.order == ORDER and k.reduce is not None and k.reduce.contraction is not None


def plan(k: Kernel, target: TargetInfo) -> TapConv:
    """Balanced tiles of at most `most` positions or, in the gradient form, of taps. A forward tile's
    positions are `spacing` apart along the row (`spacing`), in equal segments of a row's positions
    of one phase (v2 mod spacing), or whole rows of them where several fit."""
    lanes = target.lanes(k.reduce.value.dtype.name)
    vectors = k.domain[igemm.COLUMN] // lanes
    limit = most(target, vectors)
    if not forward_form(k):
        taps = math.prod(k.domain[:3])
        return TapConv(1, 1, 1, vectors, lanes, -(-taps // -(-taps // limit)))
    width, height = k.domain[2], k.domain[1]
    apart = spacing(k, limit)
    phase = -(-width // apart)  # the most positions of one phase in a row
    span = -(-phase // -(-phase // limit))
    rows = max(1, min(height, limit // span))
    return TapConv(rows if apart == 1 else 1, span, apart, vectors, lanes)


def spacing(k: Kernel, limit: int) -> int:
    """The least v2 spacing (at most the filter's width) at which a tile of up to `limit` positions reads
    no image element twice per tap group (`_ForwardEmitter.outer`'s iteration): a shared element's
    broadcast would be kept in a register across taps, and spilled. 1 where none does."""
    a, _ = rowconv.address(k.reduce.contraction[0])
    d = k.domain
    outer = outer_var(d)
    taps = [sum(a.get(v, 0) * t for v, t in zip(inner_vars(d), values)) for values in tap_values(d)]
    for apart in range(1, max(1, d[6]) + 1):
        count = min(limit, -(-d[2] // apart))
        offsets = [a.get(2, 0) * apart * i + t for i in range(count) for t in taps]
        if len(set(offsets)) == len(offsets):
            return apart
    return 1


def outer_var(domain: tuple) -> int:
    """The K var a forward tile loops over (the first of more than one value), its taps written out."""
    return next((v for v in igemm.COLS if domain[v] > 1), igemm.COLS[0])


def inner_vars(domain: tuple) -> list[int]:
    """The K vars written out (those after `outer_var`)."""
    return [v for v in igemm.COLS if v > outer_var(domain)]


def tap_values(domain: tuple) -> list[tuple]:
    """The values of `inner_vars`, one tuple per tap written out."""
    return list(itertools.product(*(range(domain[v]) for v in inner_vars(domain))))


def emit(em, red, tc: TapConv, threads: int) -> None:
    """Tap conv kernel em.k by `tc` at em's builder: the forward form with the kernel's stores, split
    over the images (v0); the gradient form into C (red.scratch), split over its tiles of taps."""
    window, other = red.contraction
    work = kernel_flops(em)
    if tc.taps:
        fn = _GradientEmitter(em.r.module, em.k, tc).function()
        tiles = ir.Constant(I64, -(-math.prod(em.k.domain[:3]) // tc.taps))
        args = [em.N, em.ptrs[window.buffer], em.ptrs[other.buffer], em.ptrs[red.scratch]]
        call_in_parallel(em, fn, "taps", tiles, args, threads, work)
        return
    buffers = list(em.ptrs)
    fn = _ForwardEmitter(em, tc).function(buffers)
    call_in_parallel(em, fn, "images", em.extent(0), [em.N] + [em.ptrs[x] for x in buffers], threads, work)


class _Emitter(VectorEmitter):
    """What both forms share: the kernel's address coefficients and one step of FMAs."""

    def __init__(self, module: ir.Module, k: Kernel, tc: TapConv) -> None:
        super().__init__(module, k.reduce.value.dtype.name, tc.lanes)
        self.k, self.tc = k, tc
        window, other = k.reduce.contraction
        self.a_coef, self.a_const = rowconv.address(window)
        self.b_coef = {var: coef for var, coef, _ in other.offset.terms}

    def offset(self, coef: dict, values: dict) -> int:
        """The constant offset sum(coef[var] * value) of static var values."""
        return sum(coef.get(var, 0) * value for var, value in values.items())

    def step(self, acc: list, a_at: ir.Value, b_at: ir.Value, sources: list) -> list:
        """`vectors` of B at b_at, a broadcast of each source, one FMA per pair. A source is the image
        element at a_at + an offset, None for a zero (outside the image), or (offset, i1): the element
        where the i1 holds, else a zero."""
        b, nv = self.b, self.tc.vectors
        bv = [self.vector_load(self.bmat, b.add(b_at, self._i(c * self.lanes)), None) for c in range(nv)]
        out = list(acc)
        for i, source in enumerate(sources):
            splat = self.splat(self.element(a_at, source))
            for c in range(nv):
                out[i * nv + c] = self.fma(splat, bv[c], out[i * nv + c])
        return out

    def element(self, a_at: ir.Value, source) -> ir.Value:
        """A source's scalar (see `step`); a guarded one reads image[0] where it is outside."""
        b, zero = self.b, ir.Constant(self.t, 0.0)
        if source is None:
            return zero
        offset, ok = source if isinstance(source, tuple) else (source, None)
        at = b.add(a_at, self._i(offset))
        if ok is not None:
            at = b.select(ok, at, self._i(0))
        x = b.load(b.gep(self.image, [at], inbounds=True, source_etype=self.t), typ=self.t, align=self.align)
        return x if ok is None else b.select(ok, x, zero)


class _ForwardEmitter(_Emitter):
    """Writes `void <kernel>_tapconv(i64 N, i64 begin, i64 end, ptr noalias b...)` (the kernel's buffers in
    the renderer's order): images v0 in [begin, end), each tile's results through the kernel's stores."""

    def __init__(self, em, tc: TapConv) -> None:
        super().__init__(em.r.module, em.k, tc)
        self.em = em
        d = self.k.domain
        self.outer = outer_var(d)
        self.taps = [dict(zip(inner_vars(d), values)) for values in tap_values(d)]
        self.fixed = {v: 0 for v in igemm.COLS if v != self.outer and v not in inner_vars(d)}  # extent-1 K vars
        self.guards = guards(self.k)
        self.rows_inside = (interior(self.k) or {}).get(1, (0, d[1])) if self.guards else (0, d[1])

    def function(self, buffers: list) -> ir.Function:
        """Images v0 in [begin, end): the rows where a tap may leave the image written out (peeled, their
        row guards tested), the others in a loop of `rows`-row tiles."""
        fn = self.fn = self.open_function(f"{self.k.name}_tapconv", [f"b{buf}" for buf in buffers])
        self.n, begin, end = fn.args[:3]
        self.ptrs = dict(zip(buffers, fn.args[3:]))
        window, other = self.k.reduce.contraction
        self.image, self.bmat = self.ptrs[window.buffer], self.ptrs[other.buffer]
        columns, tc = self.k.domain[igemm.COLUMN], self.tc
        self.tile_buffer = self.b.alloca(ir.ArrayType(self.t, tc.rows * tc.span * columns), name="tile")
        self.tile_buffer.align, self.tile_buffer.type = 64, PTR
        height, (lo, hi) = self.k.domain[1], self.rows_inside
        full = lo + (hi - lo) // tc.rows * tc.rows
        with for_range(self.b, begin, end, 1, "v0") as v0:
            for row in range(lo):
                self.segments(v0, row, 1)
            if full > lo:
                with for_range(self.b, lo, full, tc.rows, "v1") as v1:
                    self.segments(v0, v1, tc.rows)
            if full < hi:
                with for_range(self.b, full, hi, 1, "v1r") as v1:
                    self.segments(v0, v1, 1)
            for row in range(hi, height):
                self.segments(v0, row, 1)
        self.b.ret_void()
        return fn

    def segments(self, v0: ir.Value, v1: ir.Value | int, rows: int) -> None:
        """The tiles of rows from v1 (an int: a peeled row): each phase's positions (v2 mod spacing) in
        segments of `span`."""
        width, span, apart = self.k.domain[2], self.tc.span, self.tc.spacing
        for phase in range(min(apart, width)):
            count = -(-(width - phase) // apart)
            for first in range(0, count, span):
                self.tile(v0, v1, phase + first * apart, rows, min(span, count - first))

    def tile(self, v0: ir.Value, v1: ir.Value | int, v2: int, rows: int, span: int) -> None:
        """rows x span positions from (v1, v2), `spacing` apart: every tap's FMAs, then the kernel's stores."""
        b, a, apart = self.b, self.a_coef, self.tc.spacing
        peeled = v1 if isinstance(v1, int) else None
        v1 = self._i(v1) if peeled is not None else v1
        base = b.add(b.add(b.mul(v0, self._i(a.get(0, 0))), b.mul(v1, self._i(a.get(1, 0)))),
                     self._i(v2 * a.get(2, 0) + self.a_const))
        positions = [(r, s * apart) for r in range(rows) for s in range(span)]
        zero = [ir.Constant(self.vt, None)] * (len(positions) * self.tc.vectors)

        def taps(outer: ir.Value, acc: list) -> list:
            a_at = b.add(base, b.mul(outer, self._i(a.get(self.outer, 0))))
            b_at = b.mul(outer, self._i(self.b_coef.get(self.outer, 0)))
            for tap in self.taps:
                sources = [self.source(r * a.get(1, 0) + s * a.get(2, 0) + self.offset(a, tap),
                                       {**self.fixed, **tap, 1: None if peeled is None else peeled + r, 2: v2 + s},
                                       outer) for r, s in positions]
                acc = self.step(acc, a_at, b.add(b_at, self._i(self.offset(self.b_coef, tap))), sources)
            return acc
        self.prefetch_outputs(v0, v1, v2, rows, span)
        acc = carried_loop(b, self.k.domain[self.outer], zero, taps, f"v{self.outer}")
        for i, vector in enumerate(acc):  # (position, column) order: a position's columns contiguous
            at = b.gep(self.tile_buffer, [self._i(i * self.lanes)], inbounds=True, source_etype=self.t)
            b.store(vector, at, align=self.align)
        self.epilogue(v0, v1, v2, rows, span)

    def source(self, offset: int, values: dict, outer: ir.Value):
        """`step`'s source of the element at `offset` for these static var values (v1 None: an interior
        row, inside every row guard): each guard decided here where its vars are static, else tested
        with the outer K var's value."""
        tests = []
        for axis in self.guards:
            coefs, const, dim = axis
            if values.get(1) is None and 1 in coefs:
                continue
            known = inside(axis, {**values, self.outer: values.get(self.outer)})
            if known is False:
                return None
            if known is None:  # the row guard of a peeled row, at the outer var's value
                static = const + sum(c * values[v] for v, c in coefs.items() if v != self.outer)
                at = self.b.add(self._i(static), self.b.mul(outer, self._i(coefs[self.outer])))
                tests.append(self.b.icmp_unsigned("<", at, self._i(dim)))  # unsigned: a negative one is huge
        if not tests:
            return offset
        ok = tests[0]
        for test in tests[1:]:
            ok = self.b.and_(ok, test)
        return offset, ok

    def prefetch_outputs(self, v0: ir.Value, v1: ir.Value, v2: int, rows: int, span: int) -> None:
        """Each cache line the tile's stores will write, prefetched for writing before its FMAs, which
        then hide the line's trip from memory (K is short: the stores would otherwise wait for it). The
        stores whose columns are contiguous (one prefetch per line of a position's columns); not those
        with a computed index, known only with their values."""
        b, columns = self.b, self.k.domain[igemm.COLUMN]
        with self._renderer_here() as em:
            for st in self.k.stores:
                if st.index is not None or (igemm.COLUMN, 1, 0) not in st.offset.terms:
                    continue
                for r, p in itertools.product(range(rows), range(span)):
                    for j in range(0, columns, max(1, LINE_BYTES // st.value.dtype.itemsize)):
                        em.vars = {0: v0, 1: b.add(v1, self._i(r)), 2: self._i(v2 + p * self.tc.spacing),
                                   3: self._i(0), igemm.COLUMN: self._i(j)}
                        self.prefetch_for_write(em.element(st.buffer, em.offset(st.offset), st.value.dtype))

    def epilogue(self, v0: ir.Value, v1: ir.Value, v2: int, rows: int, span: int) -> None:
        """The kernel's stores for the tile's positions, acc read from the tile (in L1; a position's
        columns contiguous: the loop over them vectorizes): the renderer's `stores`."""
        b, columns = self.b, self.k.domain[igemm.COLUMN]
        with self._renderer_here() as em:
            for r in range(rows):
                with for_range(b, 0, span, 1, "p") as p:
                    with for_range(b, 0, columns, 1, "j") as j:
                        em.vars = {0: v0, 1: b.add(v1, self._i(r)), 2: b.add(b.mul(p, self._i(self.tc.spacing)),
                                                                             self._i(v2)), 3: self._i(0), igemm.COLUMN: j}
                        at = b.add(b.mul(b.add(p, self._i(r * span)), self._i(columns)), j)
                        em.acc = b.load(b.gep(self.tile_buffer, [at], inbounds=True, source_etype=self.t), typ=self.t)
                        em.stores()

    @contextlib.contextmanager
    def _renderer_here(self):
        """The kernel's renderer with its builder, buffers and N pointed into this function (its vars
        set by the caller), restored after."""
        em = self.em
        saved = (em.b, em.fn, em.N, em.ptrs, em.vars)
        em.b, em.fn, em.N, em.ptrs = self.b, self.fn, self.n, self.ptrs
        try:
            yield em
        finally:
            em.b, em.fn, em.N, em.ptrs, em.vars = saved


class _GradientEmitter(_Emitter):
    """Writes `void <kernel>_tapconv(i64 N, i64 begin, i64 end, T* image, T* B, T* C)`: tiles of taps
    [begin, end), image by image."""

    def function(self) -> ir.Function:
        fn = self.fn = self.open_function(f"{self.k.name}_tapconv", ["image", "B", "C"])
        self.n, begin, end, self.image, self.bmat, self.c = fn.args
        b, d, size = self.b, self.k.domain, self.tc.taps
        count = math.prod(d[:3])
        width = self.tc.vectors * self.lanes
        tiles = [list(range(first, min(count, first + size))) for first in range(0, count, size)]
        self.totals = b.alloca(ir.ArrayType(ir.DoubleType(), count * width), name="totals")
        self.totals.align, self.totals.type = 64, PTR
        for cell in range(count * self.tc.vectors):
            b.store(ir.Constant(self.total_type, None), self.total(cell), align=8)
        with for_range(b, 0, self.n if d[5] is None else d[5], 1, "v5") as v5:
            for t, taps in enumerate(tiles):
                with b.if_then(b.and_(b.icmp_signed("<=", begin, self._i(t)), b.icmp_signed("<", self._i(t), end))):
                    self.image_tile(v5, taps)
        for t, taps in enumerate(tiles):
            with b.if_then(b.and_(b.icmp_signed("<=", begin, self._i(t)), b.icmp_signed("<", self._i(t), end))):
                self.write_c(taps)
        b.ret_void()
        return fn

    @property
    def total_type(self) -> ir.VectorType:
        return ir.VectorType(ir.DoubleType(), self.lanes)

    def total(self, cell: int) -> ir.Value:
        """Cell (tap, vector)'s float64 totals, one per lane."""
        return self.b.gep(self.totals, [self._i(cell * self.lanes)], inbounds=True, source_etype=ir.DoubleType())

    def tap(self, m: int) -> dict:
        """Tap m's (v0, v1, v2) values."""
        d = self.k.domain
        return {0: m // (d[1] * d[2]), 1: m // d[2] % d[1], 2: m % d[2]}

    def image_tile(self, v5: ir.Value, taps: list) -> None:
        """Image v5's sums for `taps` (rows of C), added into their float64 totals."""
        b, nv = self.b, self.tc.vectors
        a, bc = self.a_coef, self.b_coef
        offsets = [self.offset(a, self.tap(m)) for m in taps]
        base = b.add(b.mul(v5, self._i(a.get(5, 0))), self._i(self.a_const))
        b_base = b.mul(v5, self._i(bc.get(5, 0)))
        axes = guards(self.k)
        spans = (interior(self.k) or {}) if axes else {}

        def row(v6: ir.Value, row6: int | None, acc: list) -> list:
            a_row = b.add(base, b.mul(v6, self._i(a.get(6, 0))))
            b_row = b.add(b_base, b.mul(v6, self._i(bc.get(6, 0))))

            def column(v7: ir.Value, column7: int | None, acc: list) -> list:
                known = {6: row6, 7: column7}
                sources = [None if any(inside(axis, {**self.tap(m), **known}) is False for axis in axes) else offset
                           for m, offset in zip(taps, offsets)]
                return self.step(acc, b.add(a_row, b.mul(v7, self._i(a.get(7, 0)))),
                                 b.add(b_row, b.mul(v7, self._i(bc.get(7, 0)))), sources)
            return self.along(7, spans, acc, column)
        acc = self.along(6, spans, [ir.Constant(self.vt, None)] * (len(taps) * nv), row)
        for i, vector in enumerate(acc):
            cell = taps[0] * nv + i
            part = vector if self.dtype == "float64" else b.fpext(vector, self.total_type)
            b.store(b.fadd(b.load(self.total(cell), typ=self.total_type, align=8), part), self.total(cell), align=8)

    def along(self, var: int, spans: dict, acc: list, body) -> list:
        """body(value, static value or None, acc) -> acc over var's values: those where a tap may leave
        the image (outside `spans`) written out, the others in a loop (carrying acc)."""
        lo, hi = spans.get(var, (0, self.k.domain[var]))
        for x in range(lo):
            acc = body(self._i(x), x, acc)
        if hi > lo:
            acc = carried_loop(self.b, hi - lo, acc, lambda i, acc: body(self.b.add(i, self._i(lo)), None, acc),
                               f"v{var}")
        for x in range(hi, self.k.domain[var]):
            acc = body(self._i(x), x, acc)
        return acc

    def write_c(self, taps: list) -> None:
        """C's rows `taps` from their totals."""
        b, nv = self.b, self.tc.vectors
        for cell in range(taps[0] * nv, (taps[-1] + 1) * nv):
            value = b.load(self.total(cell), typ=self.total_type, align=8)
            value = value if self.dtype == "float64" else b.fptrunc(value, self.vt)
            at = b.gep(self.c, [self._i(cell * self.lanes)], inbounds=True, source_etype=self.t)
            b.store(value, at, align=self.align)
