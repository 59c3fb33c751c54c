"""The LLVM backend's GEMM loop pass (which matmul kernels call a GEMM routine) and its pass list.

`use_gemm_routines(workspace)` is a LoopProgram -> LoopProgram pass the LLVM backend runs before
`choose_loop_order`: a matmul kernel whose two operands are dense matrices and whose static size
is large enough is marked to compute its whole (M, N) product with a GEMM routine into a scratch
buffer (packing space from `workspace`), its stores reading that product (the epilogue). A conv
kernel (lower_conv.py) with at least igemm.IGEMM_MIN_STATIC multiply-adds per batch row is marked
the same way for an implicit GEMM (igemm.py: the packing gathers the image); a smaller one keeps
its direct loop nest. `border_conv_images(target)`, run just before, gives such a kernel whose window
reads padding a zero-bordered copy of its image (so the GEMM reads A in place, igemm.py). A narrow
conv kernel, one with exactly one vector of columns, or one with a few vectors of columns and few
taps goes to a direct conv instead (rowconv.py, kconv.py, colconv.py, tapconv.py: no routine, no
workspace), for which `planar_conv_images`, run first, makes the image row or dy contiguous by a
channel-major copy.
`loop_passes` is the LLVM backend's list: LOOP_PASSES with those passes, then `schedule_llvm` (schedule.py).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..collectives import overlap_collectives
from ..loop_passes import LOOP_PASSES, LoopPass, add_buffer, choose_loop_order, copy_assignments, rewrite_kernel
from ..loopir import Affine, Expr, Index, Kernel, Load, LoopProgram, Store, Var
from ..window import Coord, Inside, Window, border, bordered, guarded_axes, row_strides, window
from . import colconv, igemm, kconv, rowconv, tapconv
from .jit import host_target
from .parallel import load_runtime, num_threads
from .row_sums import widen_row_sums
from .schedule import gemm_layout, schedule_llvm
from .target import TargetInfo

GEMM_MIN_STATIC = 128  # below this many multiply-adds per batch row a loop nest beats packing panels
GEMM_NARROW = 32  # fewer output columns than this leave most of a GEMM's register tile (up to 64 wide) empty

Workspace = Callable[..., int]  # (dtype, trans_a, trans_b, static m or None, gather=0) -> packing bytes


def use_gemm_routines(workspace: Workspace, target: TargetInfo | None = None) -> LoopPass:
    """The pass, for a backend whose GEMM routine needs `workspace(dtype, ta, tb, m, gather)` bytes
    (an implicit GEMM's register tile is chosen for `target`, default the host)."""
    def use_gemm_routines(lp: LoopProgram) -> LoopProgram:
        for k in lp.kernels:
            red = k.reduce
            if red is not None and not k.order and use_implicit_gemm(lp, k, workspace, target or host_target()):
                continue
            if red is None or red.contraction is None or k.order:
                continue
            if math.prod(d for d in k.domain if d is not None) < GEMM_MIN_STATIC:
                continue
            if narrow_columns(k.domain):
                swap_vars(k, 0, 1)
            layout = gemm_layout(k)
            if layout is None:
                continue
            k.order = tuple(v for v in range(len(k.domain)) if v not in red.axes) + tuple(red.axes)
            red.scratch = add_buffer(lp, f"c_{k.name}", k.domain[:2], red.value.dtype)
            nbytes = workspace(red.value.dtype, *layout, k.domain[0])
            red.workspace = add_buffer(lp, f"pack_{k.name}", (nbytes,), np.uint8)
        return lp
    return use_gemm_routines


def border_conv_images(target: TargetInfo | None = None) -> LoopPass:
    """The pass giving each implicit-GEMM conv kernel whose window's guarded coordinates leave the image
    (padding, an input gradient's full border) a zero-bordered copy of the image, written by a kernel of
    its own just before it, and making its window read that copy unguarded: the GEMM then reads A in
    place instead of gathering it (igemm.py). The border's zeros take part in the sums as the padding's
    did. A strided gradient's window (divisors) keeps its guards, and so does a kernel a tap conv
    computes reading its guards (tapconv.reads_guards, on `target`, default the host). A later kernel
    needing the same border of the same image (a padded conv's filter gradient after its forward) reads
    the first copy, unless a kernel between them wrote the image."""
    def border_conv_images(lp: LoopProgram) -> LoopProgram:
        chosen = target or host_target()
        kernels, copies = [], {}  # (image, shape, shift) -> its bordered copy
        for k in lp.kernels:
            found = igemm.operands(k) if k.reduce is not None and not k.order else None
            geometry = border(found[0], k.domain) if found is not None and igemm.worth_it(k) else None
            if geometry is not None and not (tapconv.wants(k, chosen) and tapconv.reads_guards(k)):
                w, key = found[0], (found[0].buffer, *geometry)
                if key not in copies:
                    copies[key] = add_buffer(lp, f"bordered_b{w.buffer}", geometry[0], w.dtype)
                    kernels.append(border_kernel(k, w, copies[key], *geometry))
                moved = bordered(w, copies[key], geometry[1], geometry[0])
                rewrite_kernel(k, lambda e: moved if e == w else e)
            kernels.append(k)
            written = {s.buffer for s in k.stores} | set(k.call.writes() if k.call is not None else ())
            copies = {key: copy for key, copy in copies.items() if key[0] not in written}
        lp.kernels = kernels
        return lp
    return border_conv_images


def border_kernel(k: Kernel, w: Window, copy: int, shape: tuple, shift: tuple, axes: tuple | None = None,
                  name: str = "border") -> Kernel:
    """The kernel copying w's image (read by kernel k) into buffer `copy` of `shape`, zero-bordered;
    with `axes`, the copy's axes are the image's in that order (`shape` and `shift` the image's)."""
    axes = tuple(range(len(shape))) if axes is None else axes
    at = {axis: var for var, axis in enumerate(axes)}  # image axis -> the copy's loop var
    inside = window(w.buffer, w.shape, tuple(Coord(((at[axis], 1),), -s) for axis, s in enumerate(shift)), w.dtype,
                    w.fill)
    copy_shape = tuple(shape[a] for a in axes)
    offset = Affine(tuple((var, coef, nexp) for var, (coef, nexp) in enumerate(row_strides(copy_shape))))
    first = k.stores[0]
    return Kernel(name, copy_shape, [Store(copy, offset, inside, f"{name} of {first.node}", first.source)])


def planar_conv_images(target: TargetInfo | None = None) -> LoopPass:
    """The pass giving each conv kernel a row conv wants (rowconv.wants) but whose image row is not
    contiguous (more than one channel) or is guarded (padding, an input gradient's full border) a
    copy of its image with the row's axis last (channel-major: NHWC -> NCHW), zero-bordered where
    guarded, written by a kernel of its own just before it; its window then reads the copy unguarded
    with unit stride along the row (rowconv.ready). The border's zeros take part in the sums as the
    padding's did. A later kernel wanting the same copy of the same image reads the first one,
    unless a kernel between them wrote the image."""
    def planar_conv_images(lp: LoopProgram) -> LoopProgram:
        chosen = target or host_target()
        kernels, copies = [], {}
        for k in lp.kernels:
            if k.reduce is not None and not k.order and kconv.wants(k, chosen):
                kernels += planar_operand(lp, k, copies)
            if k.reduce is not None and not k.order and rowconv.wants(k, chosen) and not rowconv.ready(k, chosen):
                w = igemm.operands(k)[0]
                geometry = border(w, k.domain) or (w.shape, (0,) * len(w.shape))
                axis = rowconv.row_axis(w)
                height = [a for a, c in enumerate(w.coords) if a != axis and 1 in dict(c.terms)][:1]
                axes = tuple(a for a in range(len(w.shape)) if a != axis and a not in height) + tuple(height) + (axis,)
                if any(guarded_axes(w, k.domain)) and border(w, k.domain) is None:
                    kernels.append(k)
                    continue
                pitch = row_pitch(w, k.domain, *geometry, axes)
                key = (w.buffer, *geometry, axes, pitch)
                if key not in copies:
                    shape = tuple(geometry[0][a] for a in axes)
                    if pitch:
                        shape = shape[:-2] + ((shape[-2] + 1) * pitch,)
                    copies[key] = add_buffer(lp, f"planar_b{w.buffer}", shape, w.dtype)
                    extents = list(geometry[0])
                    if pitch:  # the copy's rows `pitch` apart: one more row, each row `pitch` long
                        extents[axes[-2]], extents[axes[-1]] = extents[axes[-2]] + 1, pitch
                    kernels.append(border_kernel(k, w, copies[key], tuple(extents), geometry[1], axes, "planar"))
                moved = relaid(w, copies[key], geometry[1], geometry[0], axes, pitch)
                rewrite_kernel(k, lambda e, w=w, moved=moved: moved if e == w else e)
            kernels.append(k)
            written = {s.buffer for s in k.stores} | set(k.call.writes() if k.call is not None else ())
            copies = {key: copy for key, copy in copies.items() if key[0] not in written}
        lp.kernels = kernels
        return lp
    return planar_conv_images


def planar_operand(lp: LoopProgram, k: Kernel, copies: dict) -> list[Kernel]:
    """For a K conv (kconv.py): make conv kernel k's dense operand (dy) contiguous along v7 by a copy
    with that axis last (channel-major), made by the kernel returned (none if an earlier one made it,
    or if the operand's offset is not one var per axis of its buffer)."""
    other = igemm.operands(k)[1]
    if {v: c for v, c, _ in other.offset.terms}.get(kconv.LANE) == 1 or other.offset.base:
        return []
    shape = lp.buffers[other.buffer].shape
    axis_of = kconv.other_axes(other, shape, k.domain)
    if axis_of is None or kconv.LANE not in axis_of:
        return []
    order = tuple(a for a in range(len(shape)) if a != axis_of[kconv.LANE]) + (axis_of[kconv.LANE],)
    key, made = (other.buffer, "dense", order), []
    copy_shape = tuple(shape[a] for a in order)
    if key not in copies:
        copies[key] = add_buffer(lp, f"planar_b{other.buffer}", copy_shape, other.dtype)
        strides = row_strides(shape)
        read = Affine(tuple(sorted((var, *strides[a]) for var, a in enumerate(order))))
        offset = Affine(tuple((var, coef, nexp) for var, (coef, nexp) in enumerate(row_strides(copy_shape))))
        first = k.stores[0]
        made.append(Kernel("planar", copy_shape, [Store(copies[key], offset, Load(other.buffer, read, other.dtype),
                                                        f"planar of {first.node}", first.source)]))
    moved_strides = row_strides(copy_shape)
    terms = tuple(sorted((var, *moved_strides[order.index(axis_of[var])]) for var, _, _ in other.offset.terms))
    moved = Load(copies[key], Affine(terms), other.dtype)
    rewrite_kernel(k, lambda e: moved if e == other else e)
    return made


def relaid(w: Window, buffer: int, shift: tuple, shape: tuple, axes: tuple, pitch: int = 0) -> Window:
    """w reading `buffer`, a copy of its image of `shape` (the image's axes) shifted by `shift` per axis,
    its axes in the order `axes`; with `pitch`, the last two as one axis, rows `pitch` apart (row_pitch).
    A bordered copy's window says where the image lies in it (`Window.inside`)."""
    coords = [Coord(c.terms, c.const + s, c.div) for c, s in zip(w.coords, shift)]
    coords, dims = [coords[a] for a in axes], [shape[a] for a in axes]
    inside = [Inside() if w.shape[a] is None else Inside(shift[a], shift[a] + w.shape[a]) for a in axes]
    if pitch:
        (h, wd), extent = coords[-2:], (dims[-2] + 1) * pitch
        terms = {}
        for var, coef in [(v, c * pitch) for v, c in h.terms] + list(wd.terms):
            terms[var] = terms.get(var, 0) + coef
        coords = coords[:-2] + [Coord(tuple((v, c) for v, c in terms.items() if c), h.const * pitch + wd.const)]
        dims = dims[:-2] + [extent]
        rows, columns = inside[-2:]
        inside = inside[:-2] + [Inside(rows.lo, rows.hi, pitch, columns.lo, columns.hi)]
    bordered_copy = any(shift) or tuple(shape) != tuple(w.shape)
    return window(buffer, tuple(dims), tuple(coords), w.dtype, w.fill, tuple(inside) if bordered_copy else ())


def row_pitch(w: Window, domain: tuple, shape: tuple, shift: tuple, axes: tuple) -> int:
    """A bordered copy's row length `pitch` (0: none) such that consecutive output rows (v1) read image
    rows `pitch` apart while the output row (v2) is `pitch` long: then a row conv runs the output's rows
    as one run (rowconv: 100% of the lanes for an input gradient's 12-wide rows). Rows `pitch` apart
    overlap where one's right border meets the next one's left border, both zeros: so the copy's
    rows must be bordered on the right up to `pitch` at least and on the left by at least the overlap."""
    row, height = axes[-1], axes[-2]
    pitch = domain[rowconv.ROW]
    coord_h, coord_w = w.coords[height], w.coords[row]
    if dict(coord_h.terms).get(1) != 1 or 1 in dict(coord_w.terms) or rowconv.ROW in dict(coord_h.terms):
        return 0
    if w.shape[row] is None or shape[height] is None or pitch >= shape[row]:
        return 0
    right = shift[row] + w.shape[row]  # the first border column on the right
    return pitch if pitch >= right and shape[row] - pitch <= shift[row] and shape[row] <= 2 * pitch else 0


def use_implicit_gemm(lp: LoopProgram, k: Kernel, workspace: Workspace, target: TargetInfo) -> bool:
    """Mark conv kernel `k` for an implicit GEMM into a scratch C over its kept vars, if it is one
    and large enough (igemm.worth_it); its contraction names the window and the dense operand. A
    narrow one whose image row is contiguous, or one with one vector of columns, or few taps and a few
    vectors of columns, gets a direct conv's loop order (rowconv.ORDER: the output row along the lanes,
    kconv.ORDER: the reduced image row, colconv.ORDER: the columns, tapconv.ORDER: the columns, the
    taps written out) and no packing workspace; the row conv and the tap conv's forward form no scratch C."""
    found = igemm.operands(k)
    if found is None or not igemm.worth_it(k):
        return False
    red = k.reduce
    red.contraction = found
    if rowconv.ready(k, target):  # its stores run on each register tile: no scratch C
        k.order = rowconv.ORDER
        return True
    if tapconv.ready(k, target) and tapconv.forward_form(k):  # the same
        k.order = tapconv.ORDER
        return True
    red.scratch = add_buffer(lp, f"c_{k.name}", k.domain[:5], red.value.dtype)
    for kind in (kconv, colconv, tapconv):
        if kind.ready(k, target):
            k.order = kind.ORDER
            return True
    k.order = igemm.ROWS + (3, igemm.COLUMN) + igemm.COLS
    nbytes = workspace(red.value.dtype, False, False, None, igemm.vectors(k, target))
    red.workspace = add_buffer(lp, f"pack_{k.name}", (nbytes,), np.uint8)
    return True


def narrow_columns(domain: tuple) -> bool:
    """Is a matmul's (M, N, K) output so narrow that computing its transpose (N, M) fills the tiles
    better? (Its N columns would leave most of each register tile empty.)"""
    m, n = domain[0], domain[1]
    return n is not None and n < GEMM_NARROW and (m is None or m >= 2 * n)


def swap_vars(k: Kernel, a: int, b: int) -> None:
    """Rename loop vars a <-> b throughout the kernel (the same loop nest, transposed)."""
    def offset(o: Affine) -> Affine:
        return Affine(tuple(sorted(({a: b, b: a}.get(v, v), coef, nexp) for v, coef, nexp in o.terms)), o.base)

    def expr(e: Expr) -> Expr:
        if isinstance(e, Load):
            return Load(e.buffer, offset(e.offset), e.dtype)
        if isinstance(e, Index):
            return Index(offset(e.offset), e.dtype)
        if isinstance(e, Var):
            return Var({a: b, b: a}.get(e.var, e.var), e.dtype)
        return e
    domain = list(k.domain)
    domain[a], domain[b] = domain[b], domain[a]
    k.domain = tuple(domain)
    rewrite_kernel(k, expr)
    for s in k.stores:
        s.offset = offset(s.offset)
    red = k.reduce
    if red is not None:
        red.axes = tuple({a: b, b: a}.get(v, v) for v in red.axes)
        if red.contraction is not None:
            red.contraction = tuple(reversed(red.contraction))


def loop_passes(workspace: Workspace, threads: int | None = None, target: TargetInfo | None = None
                ) -> list[LoopPass]:
    """The LLVM backend's loop passes: LOOP_PASSES with the collectives placed and bucketed after the
    assignments' copies (codegen/collectives.py) and GEMM routines chosen (conv images bordered first)
    before the loop order, column sums over a few cells widened after it (row_sums.py), then each kernel's schedule for `threads` on `target` (None: what LLVMBackend uses, the
    process's `num_threads()` when libgomp loads, else 1, and `host_target()`)."""
    if threads is None:
        threads = num_threads() if load_runtime() else 1
    passes = list(LOOP_PASSES)
    target = host_target() if target is None else target
    gemm = use_gemm_routines(workspace, target)
    passes.insert(passes.index(choose_loop_order), gemm)
    bordering = border_conv_images(target)
    passes.insert(passes.index(gemm), bordering)
    passes.insert(passes.index(bordering), planar_conv_images(target))
    passes.insert(passes.index(copy_assignments) + 1, overlap_collectives())  # the kernel list is final there
    passes.insert(passes.index(choose_loop_order) + 1, widen_row_sums)
    return passes + [schedule_llvm(threads, target)]
