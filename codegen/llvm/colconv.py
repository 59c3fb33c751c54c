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

Chosen by `wants`: N one vector, rows and k static, the image unguarded (gemm_schedule's bordered
copies make padded ones so) and B's columns contiguous. The sums run in the float type over k, as a
GEMM's do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from llvmlite import ir

from ..loopir import Kernel
from ..window import guarded_axes
from . import igemm, rowconv
from .gemm import _SUFFIX, _intrinsic
from .loops import carried_loop, for_range
from .parallel import PARALLEL_MIN_FLOPS, emit_parallel_for
from .target import TargetInfo

ORDER = (0, 1, 2, 3, 5, 6, 7, 4)  # a column conv kernel's loop order: v4, the columns, along the lanes
VECTORS = 1  # the column count, in vectors, of the convs this path computes

I64, I32 = ir.IntType(64), ir.IntType(32)
PTR = ir.PointerType()


@dataclass(frozen=True)
class ColConv:
    """How a column conv kernel runs (the LLVM schedule's decision, see the module docstring)."""

    rows: int  # output rows (v1) per tile
    span: int  # positions along the row (v2) per tile
    lanes: int
    fused = False  # C is written whole, then the epilogue runs

    def emit(self, em, red, threads: int) -> None:
        """C of the kernel em renders (render.py's _KernelEmitter), split over `threads`."""
        emit(em, red, self, threads)

    def __str__(self) -> str:
        return f"direct conv, one vector of columns, {self.rows} x {self.span} positions per tile"


def wants(k: Kernel, target: TargetInfo) -> bool:
    """An implicit-GEMM conv with exactly one vector of columns, static rows (v1, v2) and k, an undivided
    window and B's columns contiguous, on a vector target (and not a narrow one's: rowconv, kconv)."""
    found = igemm.operands(k)
    if found is None or not igemm.worth_it(k) or not target.vector_bits:
        return False
    w, other = found
    d = k.domain
    if d[igemm.COLUMN] != VECTORS * target.lanes(w.dtype.name) or any(d[v] is None for v in (1, 2, 5, 6, 7)):
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
    width, height = k.domain[2], k.domain[1]
    span = min(width, most)
    return ColConv(max(1, min(height, most // span)), span, target.lanes(k.reduce.value.dtype.name))


def emit(em, red, cc: ColConv, threads: int) -> None:
    """C (red.scratch) of column conv kernel em.k by `cc`, at em's builder."""
    window, other = red.contraction
    fn = _Emitter(em.r.module, em.k, cc, red.value.dtype.name).function()
    args = [em.N, em.ptrs[window.buffer], em.ptrs[other.buffer], em.ptrs[red.scratch]]
    outer = em.extent(0)
    per_row = math.prod(d for d in em.k.domain[1:] if d is not None) * 2

    def body(b: ir.IRBuilder, slice_: ir.Value, begin: ir.Value, end: ir.Value, captured: list) -> None:
        b.call(fn, [captured[0], begin, end] + captured[1:])
    emit_parallel_for(em.r.module, em.b, f"{em.k.name}.cols", outer, body, args, threads,
                      work=em.b.mul(outer, ir.Constant(I64, per_row)), min_work=PARALLEL_MIN_FLOPS)


class _Emitter:
    """Writes `void <kernel>_colconv(i64 N, i64 begin, i64 end, T* image, T* B, T* C)`: v0 in [begin, end)."""

    def __init__(self, module: ir.Module, k: Kernel, cc: ColConv, dtype: str) -> None:
        self.module, self.k, self.cc, self.dtype = module, k, cc, dtype
        self.t = ir.FloatType() if dtype == "float32" else ir.DoubleType()
        self.vt = ir.VectorType(self.t, cc.lanes)
        self.align = 4 if dtype == "float32" else 8
        window, other = k.reduce.contraction
        self.a_coef, self.a_const = rowconv.address(window)
        self.b_coef = {var: coef for var, coef, _ in other.offset.terms}

    def function(self) -> ir.Function:
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [I64] * 3 + [PTR] * 3), f"{self.k.name}_colconv")
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        fn.attributes.add("nounwind")
        for arg, name in zip(fn.args, ("N", "begin", "end", "image", "B", "C")):
            arg.name = name
            if isinstance(arg.type, ir.PointerType):
                arg.add_attribute("noalias")
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
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

    def _i(self, value: int) -> ir.Value:
        return ir.Constant(I64, value)

    def splat(self, scalar: ir.Value) -> ir.Value:
        one = self.b.insert_element(ir.Constant(self.vt, ir.Undefined), scalar, ir.Constant(I32, 0))
        return self.b.shuffle_vector(one, ir.Constant(self.vt, ir.Undefined),
                                     ir.Constant(ir.VectorType(I32, self.cc.lanes), [0] * self.cc.lanes))

    def fma(self, x: ir.Value, y: ir.Value, acc: ir.Value) -> ir.Value:
        return self.b.call(_intrinsic(self.module, f"llvm.fma.v{self.cc.lanes}{_SUFFIX[self.dtype]}", self.vt, 3),
                           [x, y, acc])
