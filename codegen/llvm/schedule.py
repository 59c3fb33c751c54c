"""The LLVM backend's schedule: every decision about how a kernel runs, written on the kernel.

`schedule_llvm(threads, target)` is the LLVM backend's last loop pass (after `use_gemm_routines`
chose the GEMM kernels and `choose_loop_order` the loop orders). It sets `Kernel.schedule` to an
`LLVMSchedule`, which render.py follows without deciding anything itself:
- unrolling: a loop of at most UNROLL_MAX iterations (static; ROW_UNROLL_MAX for a reduction's
  scratch row) is written out once per value (innermost first, while the body's copies stay within
  UNROLL_COPIES_MAX);
- threads: an elementwise kernel, a reduction into a register (its kept loops: a pooling window's
  maximum, a row's sum) or a GEMM's epilogue after a serial GEMM splits its outermost loop over the
  thread pool unless that loop is unrolled or serial (an accumulating store's index axes,
  `Kernel.serial_vars`: scatter_add splits only an output axis before them); at run time the split
  runs on the caller below `min_work` elements (of the whole domain, reduced loops included).
  Reductions into a scratch row (column sums over the batch) and scans run on one thread;
- GEMM strategy: with threads and a known target a GEMM kernel is one parallel region ("by
  columns": each thread computes a block of C's columns, all meet at a barrier, then each applies
  the epilogue to a block of C's rows), otherwise the routine runs, then the epilogue;
- direct convs (rowconv.py, kconv.py, colconv.py, tapconv.py, marked by their loop order): no routine
  (`Gemm.direct` holds the plan), split over the images or the blocks of taps with threads; a row
  conv and a tap conv's forward form run their stores per tile, the others' epilogue writes the
  columns out where they are few;
- epilogue order: C's rows outermost unless every store is contiguous along C's columns;
- scalar loops: loops whose values call libm are kept from vectorizing;
- transposes: a copy storing unit-stride along its innermost var x but loading with stride Y there,
  where another var y of static extent Y (at most TRANSPOSE_MAX) is the load's unit-stride axis (the
  planar copies of gemm_schedule.planar_conv_images: NHWC -> NCHW), runs in tiles of `lanes` x's by
  all Y: one contiguous vector load of lanes*Y elements, Y register shuffles, Y contiguous vector
  stores (LLVM's vectorizer would emit a gather per stored vector); the x's past the last whole tile
  are copied by a scalar loop;
- blocked sums: a float32 sum into a register of more than SUM_BLOCK elements (SUM_BLOCK_SCALAR in
  a scalar loop) runs in blocks of at most that many, each summed in float32 (in vector lanes once
  vectorized), adding each block's sum to a float64 total: rounding errors grow with the block
  length, not with the whole reduction's (numpy's pairwise sums are as accurate), at one float64
  addition per block. A sum into a scratch row (column sums: a bias gradient over the batch) does
  the same per cell, over more than SUM_BLOCK_SCALAR rows: each block's row of float32 sums is added
  into a row of float64 totals.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import colconv, kconv, rowconv, tapconv, vmath
from .gemm import GemmSpec, specialised_m
from .igemm import COLUMN, ROWS, vectors
from .jit import host_target
from .parallel import PARALLEL_MIN_FLOPS, column_split
from .target import TargetInfo
from ..loop_passes import LoopPass
from ..loopir import Expr, Kernel, Load, LoadAt, LoopProgram, Op, walk_unique
from ..window import Window

UNROLL_MAX = 4  # static loops this short are written out (LLVM's own unroller is off: it costs compile time)
UNROLL_COPIES_MAX = 16  # ...innermost first, while the copies of the body they make stay this few (nests of
#                         short loops, as a 3x3 window over 4x4 positions, would otherwise emit thousands)
ROW_UNROLL_MAX = 8  # a reduction's scratch row this short is written out too: a loop of 5 to 8 cells does
#                    not vectorize, its cells written out do (a bias gradient over 6 channels)
PARALLEL_MIN_FAST = 1 << 18  # elements before a loop nest is split over threads: fewer do not pay for waking them
SUM_BLOCK = 1024  # elements of a vectorized float32 sum's block: 16 per lane at 16 lanes x 4 interleaved
SUM_BLOCK_SCALAR = 128  # the same in a loop kept scalar, where a block is summed sequentially
TRANSPOSE_MAX = 16  # the widest transposed axis copied in register tiles (a tile is lanes x this many elements)
TRANSPOSE_MIN = 4  # ...and the narrowest stored row (x) worth it
ROW_TOTALS_MAX = 4096  # the widest scratch row summed in blocks: its float64 totals (32 KiB) live on the stack
PARALLEL_MIN_SLOW = 1 << 14  # the same for loops calling libm, whose elements each cost far more
LIBM = {"pow", "erf", "mod"}  # float instructions render.py emits as a libm call (or an LLVM intrinsic or
#                              instruction that becomes one: pow, frem), unless vmath has them

Routine = tuple  # (dtype name, trans_a, trans_b, static M or None, gather): one GEMM routine (render.gemm_symbol)


@dataclass(frozen=True)
class Gemm:
    """How a GEMM kernel computes C and runs its epilogue over it."""

    routine: Routine | None  # None: a direct conv computes C (no routine)
    by_columns: bool  # one parallel region: columns of C per thread, a barrier, then rows of the epilogue
    grain: int = 1  # by columns: each thread's columns are a multiple of this (the routine's NR)
    stride: int = 0  # by columns: bytes of the workspace each thread packs into
    epilogue: tuple = (0, 1)  # the epilogue's loop order over C, outermost first
    # C by a direct conv (rowconv.py, ...)
    direct: rowconv.RowConv | kconv.KConv | colconv.ColConv | tapconv.TapConv | None = None

    def __str__(self) -> str:
        if self.direct is not None:
            epilogue = "" if self.direct.fused else ", epilogue rows-outer"
            return f"{self.direct}" + (f" by {self.direct.split}" if self.by_columns else " serial") + epilogue
        dtype, ta, tb, m, gather = self.routine
        text = f"gemm {dtype} {'t' if ta else 'n'}{'t' if tb else 'n'}" + (f" m{m}" if m is not None else "")
        if gather:
            text = f"implicit gemm {dtype} (im2col in the packing, {gather}-vector tiles)"
            return text + (" by rows" if self.by_columns else " serial") + ", epilogue rows-outer"
        text += f" by columns (grain {self.grain}, {self.stride} workspace bytes per thread)" if self.by_columns \
            else " serial"
        return text + f", epilogue {'rows' if self.epilogue[0] == 0 else 'columns'}-outer"


@dataclass(frozen=True)
class LLVMSchedule:
    """One kernel's decisions (render.py follows them)."""

    threads: int  # the thread pool the kernel is emitted for
    target: TargetInfo | None  # the CPU its GEMM blocking is for (None: no GEMM by columns)
    parallel: int | None = None  # the loop var split over the threads (None: one thread)
    min_work: int = 0  # run-time work below which the split runs on the caller (elements, or flops for a GEMM)
    unroll: tuple = ()  # loop vars written out once per value
    scalar_reduce: bool = False  # the reduction's loops are kept from vectorizing (libm calls)
    scalar_stores: bool = False  # the stores' loops are kept from vectorizing (libm calls)
    gemm: Gemm | None = None
    sum_block: tuple = ()  # a blocked float32 sum: (the reduced var run in blocks, its iterations per block)
    transpose: tuple = ()  # a transposing copy in register tiles: (x, y, lanes), see `transpose_tile`
    narrow: tuple = ()  # (var, width): the innermost loop, shorter than a vector, vectorized `width` wide

    def __str__(self) -> str:
        parts = [str(self.gemm)] if self.gemm is not None else []
        if self.parallel is None:
            parts.append("one thread")
        else:
            unit = "flops" if self.gemm is not None and self.gemm.by_columns else "elements"
            parts.append(f"parallel over v{self.parallel} ({self.threads} threads, min work "
                         f"{_amount(self.min_work)} {unit})")
        if self.unroll:
            parts.append("unroll " + ",".join(f"v{v}" for v in self.unroll))
        scalar = [name for name, on in (("reduce", self.scalar_reduce), ("stores", self.scalar_stores)) if on]
        if scalar:
            parts.append("scalar loops (libm): " + ",".join(scalar))
        if self.sum_block:
            var, iterations = self.sum_block
            parts.append(f"float32 sum in blocks of {iterations} v{var} into a float64 total")
        if self.transpose:
            x, y, lanes = self.transpose
            parts.append(f"transpose v{x}<->v{y} in tiles of {lanes} v{x} (vector loads, register shuffles)")
        if self.narrow:
            var, width = self.narrow
            parts.append(f"v{var} in {width}-lane vectors")
        return ", ".join(parts)


def schedule_llvm(threads: int, target: TargetInfo | None) -> LoopPass:
    """The pass writing each kernel's `LLVMSchedule` for a pool of `threads` on `target`."""
    def schedule_llvm(lp: LoopProgram) -> LoopProgram:
        for k in lp.kernels:
            k.schedule = schedule_kernel(k, threads, target)
        return lp
    return schedule_llvm


def schedule_kernel(k: Kernel, threads: int, target: TargetInfo | None) -> LLVMSchedule:
    tile = transpose_tile(k, target)
    if tile:
        outer = [v for v in k.order if v not in tile[:2]]
        parallel = outer[0] if threads > 1 and outer else None
        return LLVMSchedule(threads, target, parallel, PARALLEL_MIN_FAST if parallel is not None else 0,
                            transpose=tile)
    red = k.reduce
    scalar_reduce = red is not None and calls_libm(red.value)
    scalar_stores = any(calls_libm(s.value) for s in k.stores)
    if red is not None and (red.workspace is not None or direct(k)):
        gemm = _gemm(k, threads, target)
        looped = gemm.epilogue
    else:
        gemm, looped = None, tuple(k.order)
    row = (k.order[-1],) if red is not None and red.scratch is not None and gemm is None else ()
    if gemm is not None and gemm.direct is not None:
        row = (COLUMN,)  # a direct conv's few columns written out: its epilogue vectorizes along the row
    unroll = _unrolled(looped, k.domain, row)
    common = dict(threads=threads, target=target, unroll=unroll, scalar_reduce=scalar_reduce,
                  scalar_stores=scalar_stores, gemm=gemm, sum_block=_sum_block(k, scalar_reduce))
    if gemm is None and not (red is not None and (red.scratch is not None or red.scan)):
        common["narrow"] = _narrow(k, unroll, target, scalar_reduce or scalar_stores)
    if gemm is not None and gemm.by_columns and gemm.routine is not None and not gemm.routine[4]:
        return LLVMSchedule(parallel=1, min_work=PARALLEL_MIN_FLOPS, **common)
    if gemm is not None and gemm.direct is not None and gemm.direct.fused:
        return LLVMSchedule(**common)  # split by their conv
    if red is not None and gemm is None:
        if red.scratch is not None or red.scan:  # into a scratch row (its loop is outermost), scans: one thread
            return LLVMSchedule(**common)
        looped = tuple(v for v in looped if v not in red.axes)  # into a register: the kept loops, outside
    if threads <= 1 or not looped or looped[0] in unroll or looped[0] in k.serial_vars():
        return LLVMSchedule(**common)
    slow = scalar_stores or scalar_reduce
    return LLVMSchedule(parallel=looped[0], min_work=PARALLEL_MIN_SLOW if slow else PARALLEL_MIN_FAST, **common)


def _narrow(k: Kernel, unroll: tuple, target: TargetInfo | None, scalar: bool) -> tuple:
    """(var, width) where the innermost loop of the kernel's nest is a kept var (a register reduction's
    reduced loops all written out), static, of 3 elements to less than half a vector of the kernel's
    widest element, and every store is contiguous along it: that loop is vectorized at the narrowest
    power of two (at least 4) lanes covering it. LLVM would take a whole vector with most lanes masked
    off, each operation costing a whole vector's (znver4 splits a 512-bit one into two halves). Two
    elements are left to LLVM: they gain little in 4 lanes, and LLVM could not vectorize every such
    loop (a depthwise conv's multiplier of 2), printing a warning where it was asked to. Else ()."""
    if scalar or target is None or not target.vector_bits or not k.stores:
        return ()
    red = k.reduce
    looped = [v for v in k.order if v not in unroll]
    if not looped or (red is not None and looped[-1] in red.axes):
        return ()
    var, extent = looped[-1], k.domain[looped[-1]]
    if extent is None or any(st.index is not None or st.offset.stride(var) != (1, 0) for st in k.stores):
        return ()
    values = ([red.value] if red is not None else []) + [st.value for st in k.stores]
    lanes = target.vector_bits // (8 * max(np.dtype(e.dtype).itemsize for e in values))
    width = max(4, 1 << (extent - 1).bit_length())
    return (var, width) if 2 < extent and 2 * width <= lanes else ()


def transpose_tile(k: Kernel, target: TargetInfo | None) -> tuple:
    """(x, y, lanes) where kernel `k` is a transposing copy (see the module's docstring), else (). A
    windowed load (a zero-bordered copy) qualifies where each axis's coordinate is one var or a
    constant, y's axis is y itself (never outside), and x's axis x plus a shift (outside it, the fill)."""
    if k.reduce is not None or len(k.stores) != 1 or not k.order:
        return ()
    st = k.stores[0]
    load = st.value
    if not isinstance(load, Load) or isinstance(load, LoadAt) or st.accumulate or st.index is not None \
            or load.buffer == st.buffer or load.dtype.kind not in "fiu":
        return ()
    lanes = (target or host_target()).vector_bits // (8 * load.dtype.itemsize)
    x = k.order[-1]
    if lanes < 2 or st.offset.stride(x) != (1, 0) or k.domain[x] is None or k.domain[x] < TRANSPOSE_MIN:
        return ()
    for y in k.order[:-1]:
        extent = k.domain[y]
        if extent is not None and 1 < extent <= TRANSPOSE_MAX and load.offset.stride(y) == (1, 0) \
                and load.offset.stride(x) == (extent, 0) and _plain_window(load, x, y, extent):
            return x, y, lanes
    return ()


def _plain_window(load: Load, x: int, y: int, extent: int) -> bool:
    """Is `load` a plain load, or a window whose coordinates are single vars or constants, with y's
    axis exactly y (of the axis's `extent`) and x's axis x plus a constant on a static axis?"""
    if not isinstance(load, Window):
        return True
    for coord, dim in zip(load.coords, load.shape):
        if coord.div != 1 or len(coord.terms) > 1 or any(coef != 1 for _, coef in coord.terms):
            return False
        var = coord.terms[0][0] if coord.terms else None
        if var == y and (coord.const != 0 or dim != extent) or var == x and dim is None:
            return False
    used = [coord.terms[0][0] for coord in load.coords if coord.terms]
    return used.count(x) == 1 and used.count(y) == 1


def _unrolled(looped: tuple, domain: tuple, row: tuple = ()) -> tuple:
    """The loops written out: static ones of at most UNROLL_MAX iterations (ROW_UNROLL_MAX for a
    reduction's scratch row, `row`), innermost first, while the product of their extents (the copies of
    the loop body) stays within UNROLL_COPIES_MAX."""
    chosen, copies = [], 1
    for v in reversed(looped):
        n = domain[v]
        limit = ROW_UNROLL_MAX if v in row else UNROLL_MAX
        if n is not None and n <= limit and copies * max(n, 1) <= UNROLL_COPIES_MAX:
            chosen.append(v)
            copies *= max(n, 1)
    return tuple(sorted(chosen))


def _sum_block(k: Kernel, scalar: bool) -> tuple:
    """(var, iterations): the reduced loop of a float32 sum into a register or a scratch row that runs
    in blocks, and how many of its iterations make one block (see the module's docstring); () for
    other kernels and for sums of at most one block's elements. The blocked loop is the innermost one
    whose loops (itself and the reduced ones inside it) exceed a block. A row's cells each sum their
    block sequentially (the row's loop is the vectorized one), so their blocks are a scalar loop's;
    its float64 totals are a second row on the stack, so only a static row of at most ROW_TOTALS_MAX."""
    red = k.reduce
    if red is None or red.op != "sum" or red.value.dtype != np.float32 or red.scan or red.workspace is not None \
            or direct(k):
        return ()
    row = red.scratch is not None
    if row and (k.domain[k.order[-1]] is None or k.domain[k.order[-1]] > ROW_TOTALS_MAX):
        return ()
    size, inside = SUM_BLOCK_SCALAR if scalar or row else SUM_BLOCK, 1
    for var in reversed(red.axes):
        extent = k.domain[var]
        if extent is None or inside * extent > size:
            return var, max(1, size // inside)
        inside *= extent
    return ()


def _gemm(k: Kernel, threads: int, target: TargetInfo | None) -> Gemm:
    """By columns with threads and a target: a GEMM region followed by its own epilogue region would
    wake the pool twice, and an epilogue below the elementwise threshold would run on one thread
    while the others idle. The epilogue is split by rows: column blocks would share cache lines of
    the updated arrays between threads at every row."""
    if len(k.domain) == 8:  # a conv kernel (gemm_schedule.use_implicit_gemm)
        return _implicit_gemm(k, threads, target)
    routine = (k.reduce.value.dtype.name, *gemm_layout(k), specialised_m(k.domain[0]), 0)
    epilogue = tuple(epilogue_order(k))
    if threads <= 1 or target is None:
        return Gemm(routine, False, epilogue=epilogue)
    grain, stride = column_split(GemmSpec(*routine), target)
    return Gemm(routine, True, grain, stride, epilogue)


def _implicit_gemm(k: Kernel, threads: int, target: TargetInfo | None) -> Gemm:
    """An implicit GEMM splits C's rows over the threads inside its routine (its N, a channel
    count, is too narrow to split); the epilogue is then an elementwise nest over the kept vars. A row
    conv (rowconv.marked) splits the images (v0), a K conv (kconv.marked) its blocks of taps."""
    for kind in (rowconv, kconv, colconv, tapconv):
        if kind.marked(k):
            return Gemm(None, threads > 1, epilogue=ROWS + (3, COLUMN), direct=kind.plan(k, target or host_target()))
    routine = (k.reduce.value.dtype.name, False, False, None, vectors(k, target or host_target()))
    return Gemm(routine, threads > 1 and target is not None, epilogue=ROWS + (3, COLUMN))


def direct(k: Kernel) -> bool:
    """Did gemm_schedule.use_implicit_gemm give conv kernel `k` to a direct conv (rowconv.py, kconv.py, colconv.py,
    tapconv.py)?"""
    return rowconv.marked(k) or kconv.marked(k) or colconv.marked(k) or tapconv.marked(k)


def epilogue_order(k: Kernel) -> list[int]:
    """The loop order of a GEMM kernel's epilogue over C: C's rows outermost, unless every store is
    contiguous along C's columns instead (a narrow product computed transposed), whose stores would
    otherwise be strided gathers and scatters."""
    if k.stores and all(s.offset.stride(0) == (1, 0) and s.offset.stride(1) != (1, 0) for s in k.stores):
        return [1, 0]
    return [0, 1]


def calls_libm(e: Expr) -> bool:
    """Whether `e` calls libm (a float instruction of LIBM that vmath lacks for its dtype)."""
    return any(isinstance(x, Op) and x.name in LIBM and x.args[0].dtype.kind == "f"
               and not vmath.provides(x.name, x.args[0].dtype) for x in walk_unique(e))


# ---- GEMM operand layout ------------------------------------------------------------------
def _stride_of(extent) -> tuple:
    return (1, 1) if extent is None else (extent, 0)


def _row_major(load: Load, rows: int, cols: int, domain: tuple) -> bool:
    """Does `load` read a dense row-major matrix indexed (var rows, var cols)?"""
    terms = {v for v, _, _ in load.offset.terms}
    if not terms <= {rows, cols}:
        return False
    ok_cols = load.offset.stride(cols) == (1, 0) or domain[cols] == 1
    ok_rows = load.offset.stride(rows) == _stride_of(domain[cols]) or domain[rows] == 1
    return ok_cols and ok_rows


def gemm_layout(k: Kernel):
    """(trans_a, trans_b) when both operands of a matmul kernel are dense matrices, else None."""
    a, b = k.reduce.contraction
    if a.dtype.kind != "f" or len(k.domain) != 3:
        return None
    ta = None if not _row_major(a, 2, 0, k.domain) else True
    ta = False if _row_major(a, 0, 2, k.domain) else ta
    tb = None if not _row_major(b, 1, 2, k.domain) else True
    tb = False if _row_major(b, 2, 1, k.domain) else tb
    return None if ta is None or tb is None else (ta, tb)


def _amount(n: int) -> str:
    """2^18, 10^7 or the plain number."""
    if n > 1 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    exponent = len(str(n)) - 1
    return f"10^{exponent}" if n > 1 and n == 10 ** exponent else str(n)
