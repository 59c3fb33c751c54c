"""Narrow filter gradients with the reduced image row along the vector lanes ("K conv").

A filter gradient over (kh, kw, cin, group, cout, n, i, j) sums x(window) * dy over (n, i, j): as an
implicit GEMM (igemm.py) its few output channels sit along the lanes and its long K (the batch's
pixels) is packed. When its columns are narrow (at most rowconv.MAX_COLUMN_SHARE of a vector) and
both operands are contiguous along j (v7) (a one-channel NHWC image or NCHW; dy made so by
gemm_schedule.planar_conv_images's channel-major copy), this path vectorises along j instead:

    for blocks of `rows` taps m = (v0, v1, v2) (split over threads):
        total[r][c] = 0                                               (float64, per lane)
        for v5 (n):   acc[r][c] = 0                                   one vector each
            for v6, v7 in vectors (the last one masked):
                b[c] = dy[.., c, v6, v7..]  a[r] = x[window(m_r, v5, v6, v7..)]
                acc[r][c] += a[r] * b[c]
            total[r][c] += acc[r][c]                                  (per lane, float64)
        C[m_r, c] = sum of total[r][c]'s lanes

Where a row's tail (width % lanes positions) fills at most half a vector, the tails of rows v6 and
v6 + 1 are one vector's halves (`KConv.paired`: two half-vector loads of each operand), after the
rows' whole vectors; the lanes' sums are the same products, grouped otherwise.

Where every tap block's float64 totals fit IMAGES_OUTER_BYTES, the images are the outer loop
(`KConv.images_outer`): each image's x and dy are read by all of a thread's tap blocks while they are
in cache, rather than the whole batch's once per block.

Each lane sums one image's products in the float type, added to the lane's float64 total (as
schedule.py's blocked sums); the lanes' totals are summed pairwise at the end. C is the scratch the
kernel's epilogue (an optimizer's update) reads, as after an implicit GEMM.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from llvmlite import ir

from ..loopir import Kernel, Load
from ..window import guarded_axes, row_strides
from . import igemm, rowconv
from .direct import I32, I64, PTR, VectorEmitter, call_in_parallel
from .loops import for_range
from .target import TargetInfo

ORDER = (3, 0, 1, 2, 5, 6, 7, 4)  # a K conv kernel's loop order: tap blocks outer, v7 along the lanes, v4 registers
LANE = 7  # the var along the lanes
IMAGES_OUTER_BYTES = 64 * 1024  # the most stack the float64 totals of every tap block may take



@dataclass(frozen=True)
class KConv:
    """How a K conv kernel runs (the LLVM schedule's decision, see the module docstring)."""

    rows: int  # taps (rows of C) per register tile
    lanes: int  # vector width along v7
    paired: bool = False  # two rows' tails (their last width % lanes positions) per vector
    images_outer: bool = False  # the images outside the tap blocks (totals for every block on the stack)
    fused = False  # C is written whole, then the epilogue runs
    split = "taps"  # what the threads share (the schedule's text)

    def emit(self, em, red, threads: int) -> None:
        """C of the kernel em renders (render.py's _KernelEmitter), split over `threads`."""
        emit(em, red, self, threads)

    def __str__(self) -> str:
        paired = ", two rows' tails per vector" if self.paired else ""
        outer = ", images outside the tiles" if self.images_outer else ""
        return f"direct filter gradient, image rows along {self.lanes} lanes{paired}, {self.rows} taps per tile{outer}"


def wants(k: Kernel, target: TargetInfo) -> bool:
    """Would a K conv compute conv kernel `k` (given a contiguous dy)? An implicit-GEMM conv, not a
    row conv, with static taps and rows, narrow columns, a row (v7) filling at least MIN_ROW_SHARE of
    its vectors, and an image read undivided with unit stride along v7 (bordered copies keep it)."""
    found = igemm.operands(k)
    if found is None or not igemm.worth_it(k) or not target.vector_bits or rowconv.wants(k, target):
        return False
    w, _ = found
    d = k.domain
    if any(d[v] is None for v in (0, 1, 2, 6, LANE)) or any(c.div != 1 for c in w.coords):
        return False
    axes = [a for a, c in enumerate(w.coords) if any(v == LANE for v, _ in c.terms)]
    if len(axes) != 1 or dict(w.coords[axes[0]].terms)[LANE] != 1 or w.shape[axes[0]] is None:
        return False
    if rowconv.address(w)[0].get(LANE) != 1:
        return False
    lanes = target.lanes(w.dtype.name)
    return d[igemm.COLUMN] <= rowconv.MAX_COLUMN_SHARE * lanes and \
        d[LANE] >= rowconv.MIN_ROW_SHARE * lanes * -(-d[LANE] // lanes)


def other_axes(load: Load, shape: tuple, domain: tuple) -> dict | None:
    """{var: axis} of a dense operand reading each axis of its buffer (of `shape`) through one var
    with that axis's stride, or None."""
    strides = row_strides(shape)
    out = {}
    for var, coef, nexp in load.offset.terms:
        hits = [a for a, s in enumerate(strides) if s == (coef, nexp) and a not in out.values()
                and shape[a] == domain[var]]
        if not hits:
            return None
        out[var] = hits[0]
    return out


def ready(k: Kernel, target: TargetInfo) -> bool:
    """`wants`, the image unguarded and dy contiguous along v7: a K conv now."""
    if not wants(k, target):
        return False
    w, other = igemm.operands(k)
    return not any(guarded_axes(w, k.domain)) and {v: c for v, c, _ in other.offset.terms}.get(LANE) == 1


def marked(k: Kernel) -> bool:
    """Is `k` a conv kernel gemm_schedule.use_implicit_gemm gave to a K conv (its loop order says so)?"""
    return len(k.domain) == 8 and k.order == ORDER and k.reduce is not None and k.reduce.contraction is not None


def plan(k: Kernel, target: TargetInfo) -> KConv:
    """rows x N accumulators plus N vectors of dy and one of x per row in the vector registers."""
    columns, taps = k.domain[igemm.COLUMN], math.prod(k.domain[:3])
    rows = max(1, min(taps, (target.vector_registers - 1 - columns) // (columns + 1)))
    lanes = target.lanes(k.reduce.value.dtype.name)
    tail = k.domain[LANE] % lanes
    totals = -(-taps // rows) * rows * columns * lanes * 8
    return KConv(rows, lanes, k.domain[6] >= 2 and 0 < tail <= lanes // 2, totals <= IMAGES_OUTER_BYTES)


def emit(em, red, kc: KConv, threads: int) -> None:
    """C (red.scratch) of K conv kernel em.k by `kc`, at em's builder (render.py's _KernelEmitter)."""
    window, other = red.contraction
    fn = _Emitter(em.r.module, em.k, kc, red.value.dtype.name).function()
    args = [em.N, em.ptrs[window.buffer], em.ptrs[other.buffer], em.ptrs[red.scratch]]
    blocks = ir.Constant(I64, -(-math.prod(em.k.domain[:3]) // kc.rows))
    work = em.b.mul(em.extent(5), ir.Constant(I64, 2 * math.prod(d for d in em.k.domain if d is not None)))
    call_in_parallel(em, fn, "taps", blocks, args, threads, work)


class _Emitter(VectorEmitter):
    """Writes `void <kernel>_kconv(i64 N, i64 begin, i64 end, T* image, T* B, T* C)`: tap blocks [begin, end)."""

    def __init__(self, module: ir.Module, k: Kernel, kc: KConv, dtype: str) -> None:
        super().__init__(module, dtype, kc.lanes)
        self.k, self.kc = k, kc
        window, other = k.reduce.contraction
        self.a_coef, self.a_const = rowconv.address(window)
        self.b_coef = {var: coef for var, coef, _ in other.offset.terms}
        self.b_const = sum(coef for coef, _ in other.offset.base)
        self.columns = k.domain[igemm.COLUMN]
        self.taps = math.prod(k.domain[:3])

    def function(self) -> ir.Function:
        fn = self.fn = self.open_function(f"{self.k.name}_kconv", ["image", "B", "C"])
        self.n, begin, end, self.image, self.bmat, self.c = fn.args
        rows, cell = self.kc.rows, self.columns * self.kc.lanes
        blocks = -(-self.taps // rows) if self.kc.images_outer else 1
        self.totals = self.b.alloca(ir.ArrayType(ir.DoubleType(), blocks * rows * cell), name="totals")
        self.totals.align, self.totals.type = 64, PTR
        images = self.n if self.k.domain[5] is None else self.k.domain[5]
        if self.kc.images_outer:
            self.blocks(begin, end, self.zero)
            with for_range(self.b, 0, images, 1, "v5") as v5:
                self.blocks(begin, end, lambda block, taps: self.image_into(v5, block, taps))
            self.blocks(begin, end, self.write)
        else:
            def block(index: ir.Value, taps: int) -> None:
                self.zero(self._i(0), taps)
                with for_range(self.b, 0, images, 1, "v5") as v5:
                    self.image_into(v5, index, taps, self._i(0))
                self.write(index, taps, self._i(0))
            self.blocks(begin, end, block)
        self.b.ret_void()
        return fn

    def blocks(self, begin: ir.Value, end: ir.Value, body) -> None:
        """body(block, taps in it) for each tap block in [begin, end) (the last one may hold fewer)."""
        full, rest = divmod(self.taps, self.kc.rows)
        with for_range(self.b, begin, end, 1, "block") as block:
            if not rest:
                body(block, self.kc.rows)
            else:
                with self.b.if_else(self.b.icmp_signed("<", block, self._i(full))) as (whole, last):
                    with whole:
                        body(block, self.kc.rows)
                    with last:
                        body(block, rest)

    def totals_of(self, slot: ir.Value) -> ir.Value:
        """The first of tap block slot's float64 totals (rows x N cells of `lanes` each)."""
        return self.b.mul(slot, self._i(self.kc.rows * self.columns * self.kc.lanes))

    def zero(self, slot: ir.Value, rows: int) -> None:
        dv = ir.VectorType(ir.DoubleType(), self.kc.lanes)
        for i in range(rows * self.columns):
            self.b.store(ir.Constant(dv, None), self.total(i, self.totals_of(slot)), align=8)

    def image_into(self, v5: ir.Value, block: ir.Value, rows: int, slot: ir.Value | None = None) -> None:
        """Image v5's products for the taps of `block`, each lane's float32 sum added to its float64
        total in `slot` (the block's own where None)."""
        b, d, f64 = self.b, self.k.domain, ir.DoubleType()
        cells, lanes = rows * self.columns, self.kc.lanes
        dv = ir.VectorType(f64, lanes)
        first = self.totals_of(block if slot is None else slot)
        m0 = b.mul(block, self._i(self.kc.rows))
        tap_at = []
        for r in range(rows):
            m = b.add(m0, self._i(r))
            v2 = b.urem(m, self._i(d[2]))
            v1 = b.urem(b.udiv(m, self._i(d[2])), self._i(d[1]))
            v0 = b.udiv(m, self._i(d[1] * d[2]))
            a = [self._i(self.a_coef.get(var, 0)) for var in (0, 1, 2)]
            tap_at.append(b.add(b.add(b.mul(v0, a[0]), b.mul(v1, a[1])), b.add(b.mul(v2, a[2]), self._i(self.a_const))))
        a_at = [b.add(t, b.mul(v5, self._i(self.a_coef.get(5, 0)))) for t in tap_at]
        b_at = b.add(b.mul(v5, self._i(self.b_coef.get(5, 0))), self._i(self.b_const))
        zero = ir.Constant(self.vt, None)
        acc = self.carried(d[6], [zero] * cells, lambda v6, acc: self.row(v6, acc, a_at, b_at, rows), "v6")
        if self.kc.paired:
            acc = self.carried(d[6] // 2, acc, lambda q, acc: self.tails(b.mul(q, self._i(2)), acc, a_at, b_at, rows),
                               "v6p")
            if d[6] % 2:
                acc = self.row(self._i(d[6] - 1), acc, a_at, b_at, rows, whole=False, tail=True)
        for i, vector in enumerate(acc):  # each lane's float32 sum over the image into its float64 total
            part = vector if self.dtype == "float64" else b.fpext(vector, dv)
            b.store(b.fadd(b.load(self.total(i, first), typ=dv, align=8), part), self.total(i, first), align=8)

    def write(self, block: ir.Value, rows: int, slot: ir.Value | None = None) -> None:
        """C's rows of the taps of `block`: each cell's lanes summed pairwise (totals in `slot`, the
        block's own where None)."""
        b, dv = self.b, ir.VectorType(ir.DoubleType(), self.kc.lanes)
        first, m0 = self.totals_of(block if slot is None else slot), b.mul(block, self._i(self.kc.rows))
        for r in range(rows):
            for j in range(self.columns):
                value = self.lane_sum(b.load(self.total(r * self.columns + j, first), typ=dv, align=8))
                value = value if self.dtype == "float64" else b.fptrunc(value, self.t)
                at = b.add(b.mul(b.add(m0, self._i(r)), self._i(self.columns)), self._i(j))
                b.store(value, b.gep(self.c, [at], inbounds=True, source_etype=self.t), align=self.align)

    def row(self, v6: ir.Value, acc: list, a_at: list, b_at: ir.Value, rows: int, whole: bool = True,
            tail: bool | None = None) -> list:
        """One row v6: its whole vectors along v7, then (unless its tail is paired) a masked last one."""
        b, lanes, width = self.b, self.kc.lanes, self.k.domain[LANE]
        a_row, b_row = self.at_row(v6, a_at, b_at)
        vectors = width // lanes
        if vectors and whole:
            acc = self.carried(vectors, acc, lambda t, acc: self.step(acc, a_row, b_row, b.mul(t, self._i(lanes)), rows,
                                                                      None), "v7")
        if vectors * lanes < width and (not self.kc.paired if tail is None else tail):
            mask = ir.Constant(ir.VectorType(ir.IntType(1), lanes), [i < width - vectors * lanes for i in range(lanes)])
            acc = self.step(acc, a_row, b_row, self._i(vectors * lanes), rows, mask)
        return acc

    def at_row(self, v6: ir.Value, a_at: list, b_at: ir.Value) -> tuple[list, ir.Value]:
        """Row v6's addresses: each tap's in the image, and dy's."""
        b = self.b
        return ([b.add(a, b.mul(v6, self._i(self.a_coef.get(6, 0)))) for a in a_at],
                b.add(b_at, b.mul(v6, self._i(self.b_coef.get(6, 0)))))

    def tails(self, v6: ir.Value, acc: list, a_at: list, b_at: ir.Value, rows: int) -> list:
        """The tails of rows v6 and v6 + 1 as one vector's halves: rows x N FMAs."""
        b, lanes, width = self.b, self.kc.lanes, self.k.domain[LANE]
        first = width // lanes * lanes
        (a_low, b_low), (a_high, b_high) = self.at_row(v6, a_at, b_at), self.at_row(b.add(v6, self._i(1)), a_at, b_at)
        mask = self.half_mask(width - first)
        at = self._i(first)
        bv = [self.pair_load(self.bmat, *(b.add(b.add(x, at), self._i(self.b_coef.get(igemm.COLUMN, 0) * j))
                                          for x in (b_low, b_high)), mask) for j in range(self.columns)]
        out = list(acc)
        for r in range(rows):
            a = self.pair_load(self.image, b.add(a_low[r], at), b.add(a_high[r], at), mask)
            for j in range(self.columns):
                out[r * self.columns + j] = self.fma(a, bv[j], out[r * self.columns + j])
        return out

    def step(self, acc: list, a_row: list, b_row: ir.Value, v7: ir.Value, rows: int, mask) -> list:
        """Vectors of dy (one per column) and x (one per tap) at v7..: rows x N FMAs."""
        b = self.b
        bv = [self.vector_load(self.bmat, b.add(b.add(b_row, v7), self._i(self.b_coef.get(igemm.COLUMN, 0) * j)), mask)
              for j in range(self.columns)]
        out = list(acc)
        for r in range(rows):
            a = self.vector_load(self.image, b.add(a_row[r], v7), mask)
            for j in range(self.columns):
                out[r * self.columns + j] = self.fma(a, bv[j], out[r * self.columns + j])
        return out

    # -- IR helpers ----------------------------------------------------------------------------
    def total(self, i: int, first: ir.Value) -> ir.Value:
        """Cell i's float64 totals, one per lane, in a block's totals from element `first`."""
        at = self.b.add(first, self._i(i * self.kc.lanes))
        return self.b.gep(self.totals, [at], inbounds=True, source_etype=ir.DoubleType())

    def lane_sum(self, v: ir.Value) -> ir.Value:
        """The sum of v's lanes, pairwise (halves added until one lane is left)."""
        b, n = self.b, v.type.count
        while n > 1:
            half = n // 2
            lo = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, half), list(range(half))))
            hi = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, half), list(range(half, n))))
            v, n = b.fadd(lo, hi), half
        return b.extract_element(v, ir.Constant(I32, 0))

