"""The LLVM loop pass widening column sums over a few cells (`widen_row_sums`).

A sum into a scratch row over a short innermost var c (a bias gradient over an NHWC image's 6
channels: for each of the C cells, the sum over (n, h, w) of x[n, h, w, c]) reads the C cells of
each w contiguously and the w's one after another. Vectorised along w, each vector's lanes belong to
different cells (LLVM's interleaved loads: a shuffle per cell per vector). When the var r reduced
innermost runs over whole rows of cells (its stride is C, its extent W static, W * C at most
ROW_TOTALS_MAX), the pass splits the kernel in two:

    row_sums: over (.., r = 1, f < W * C)   wide[f] = sum over the other reduced vars of x[.., f]
    the kernel itself, its other reduced vars of extent 1:   acc[c] = sum over r of wide[r * C + c]

The first is a sum into a scratch row of W * C contiguous cells (whole vectors, no shuffles; blocked
float32 sums into float64 totals, as schedule.py's rules say); the second adds W values per cell
and runs the kernel's stores (an optimizer's update) as before. Applied where a row of C cells fills
less than one 64-byte vector (C * itemsize < 64), W > 1, and the cells are the only kept var.
"""
from __future__ import annotations

from ..loop_passes import add_buffer
from ..loopir import Acc, Affine, Kernel, Load, LoopProgram, Reduce, Store
from ..window import Window
from .schedule import ROW_TOTALS_MAX

VECTOR_BYTES = 64  # a row of cells narrower than this is widened


def widen_row_sums(lp: LoopProgram) -> LoopProgram:
    """Split each column sum over a few cells (see the module docstring) into a wide row sum and the
    kernel summing its groups of cells."""
    kernels = []
    for k in lp.kernels:
        across = widened_var(k)
        kernels += [*_split(lp, k, across)] if across is not None else [k]
    lp.kernels = kernels
    return lp


def widened_var(k: Kernel) -> int | None:
    """The reduced var r whose rows of cells a column sum of kernel `k` can read as one wide row, or None."""
    red = k.reduce
    if red is None or red.op != "sum" or red.scratch is None or red.scan or red.contraction is not None \
            or red.workspace is not None or not k.order or any(s.index is not None for s in k.stores):
        return None
    value = red.value
    if not isinstance(value, Load) or isinstance(value, Window):
        return None
    inner = k.order[-1]
    if any(v != inner and v not in red.axes and extent != 1 for v, extent in enumerate(k.domain)):
        return None  # a kept var beside the cells: the wide row, indexed by the cells alone, would mix its rows
    reduced = [v for v in k.order if v in red.axes]
    cells = k.domain[inner]
    if not reduced or cells is None or cells * value.dtype.itemsize >= VECTOR_BYTES:
        return None
    across, width = reduced[-1], k.domain[reduced[-1]]
    if width is None or width < 2 or width * cells > ROW_TOTALS_MAX:
        return None
    if value.offset.stride(inner) != (1, 0) or value.offset.stride(across) != (cells, 0):
        return None
    return across


def _split(lp: LoopProgram, k: Kernel, across: int) -> tuple[Kernel, Kernel]:
    """The wide row sum, then `k` summing its groups of cells (k is rewritten in place)."""
    red, inner = k.reduce, k.order[-1]
    cells, width, dtype = k.domain[inner], k.domain[across], red.value.dtype
    wide = add_buffer(lp, f"wide_{k.name}", (width * cells,), dtype)
    domain = tuple(1 if v == across else width * cells if v == inner else d for v, d in enumerate(k.domain))
    terms = tuple(t for t in red.value.offset.terms if t[0] != across)
    first = k.stores[0]
    rows = Kernel("row_sums", domain,
                  [Store(wide, Affine(((inner, 1, 0),)), Acc(dtype), f"row sums of {first.node}", first.source)],
                  Reduce("sum", red.axes, Load(red.value.buffer, Affine(terms, red.value.offset.base), dtype),
                         scratch=add_buffer(lp, f"row_row_sums_{k.name}", (width * cells,), dtype)),
                  order=k.order)
    k.domain = tuple(1 if v in red.axes and v != across else d for v, d in enumerate(k.domain))
    red.value = Load(wide, Affine(((across, cells, 0), (inner, 1, 0))), dtype)
    return rows, k
