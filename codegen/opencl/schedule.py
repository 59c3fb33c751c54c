"""The OpenCL backend's schedule: each kernel's form and work-group sizes, written on the kernel.

`schedule_opencl(limits)` is the OpenCL backend's last loop pass (`loop_passes(limits)`). It sets
`Kernel.schedule` to an `OpenCLSchedule`, which render.py follows without deciding anything itself.
A kernel has one of three forms:
- "flat": one work-item per element of the (kept) domain; a reduction loops over its reduced vars
  inside the work-item (softmax's row max and sum, small reductions; every scan); an accumulating
  store's index vars (`Kernel.serial_vars`, scatter_add) are loops inside the work-item too, in
  ascending order, so each work-item alone adds into its slice of the output (no atomics);
- "group": one work-group per kept element when one work-item per kept element would leave most
  of the device idle (fewer than BUSY_PER_UNIT per compute unit: a GPU's bias gradients, the loss)
  and the reduction is long or runs over the batch: work-items stride over the reduced elements,
  then combine their partial results in local memory;
- "tiled": a GEMM in blocks of the result, slices of both operands staged in local memory, each
  work-item holding a W x W block of sums in registers. The schedule names the GEMM's roles of the
  loop vars (`gemm`: rows, columns, depth): a matmul (`reduce.contraction`) is rows v0 x columns v1
  over v2 (`matmul_tile`); a one-group convolution (codegen/implicit_gemm.py) is the implicit GEMM
  rows (v0, v1, v2) x columns v4 over (v5, v6, v7), A's tile gathered through its window (zeros
  outside the image), its tile no wider than its columns need (`conv_tile`). A kernel whose stores
  write a buffer its sum reads stays flat (work-groups would read what others already rewrote).
Flat and group kernels use work-groups of `group_size(limits)` work-items.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..implicit_gemm import COLS, COLUMN, ROWS, operands
from ..loop_passes import LOOP_PASSES, LoopPass
from ..loopir import Kernel, LoopProgram

GROUP_REDUCE_MIN = 1024  # a static reduction at least this long may use a work-group per kept element
BUSY_PER_UNIT = 32  # work-items per compute unit below which a flat kernel leaves the device idle
GROUP_SIZE_MAX = 256  # the largest work-group of flat and group kernels (a power of two: the tree reduction halves it)
TILE_SHAPES = ((8, 8), (8, 4), (8, 2), (4, 2), (2, 2), (1, 1))  # matmul (R, W), largest register block first:
#   each value a work-item reads from local memory feeds W multiply-adds
TILE_DEPTH_MAX = 16  # the deepest K slice staged in local memory (TSK = min(this, R * W))
CONV_TILE_MIN = 8  # the narrowest conv tile (R * W): a conv's tile is as wide as its columns need, at least this
MATMUL_ROLES = ((0,), (1,), (2,))  # a matmul kernel's GEMM roles (rows, columns, depth)
CONV_ROLES = (ROWS, (COLUMN,), COLS)  # a one-group conv kernel's (codegen/implicit_gemm.py)


@dataclass(frozen=True)
class Limits:
    """The device limits the kernels are shaped by."""

    max_work_group_size: int
    local_mem_size: int
    compute_units: int


@dataclass(frozen=True)
class OpenCLSchedule:
    """One kernel's form and sizes (render.py follows them)."""

    form: str  # flat | group | tiled
    local: int  # work-items per work-group (tiled: R * R)
    tile: tuple | None = None  # tiled: (R, W, TSK): R x R work-items of W x W results, TSK-deep slices of K
    serial: tuple = ()  # flat: vars each work-item loops over in ascending order (an accumulating store's)
    gemm: tuple | None = None  # tiled: the loop vars of the GEMM's (rows, columns, depth), each row-major

    def __str__(self) -> str:
        if self.form == "tiled":
            r, w, tsk = self.tile
            rows, cols, depth = (",".join(f"v{v}" for v in role) for role in self.gemm)
            return (f"opencl tiled {r * w}x{r * w} of rows {rows} x columns {cols} over {depth}: "
                    f"{r}x{r} work-items of {w}x{w} results, K slices of {tsk}")
        if self.form == "group":
            return f"opencl group: a work-group of {self.local} per kept element"
        loops = f", each serial over {','.join(f'v{v}' for v in self.serial)}" if self.serial else ""
        return f"opencl flat: a work-item per kept element{loops}, work-groups of {self.local}"


def loop_passes(limits: Limits) -> list[LoopPass]:
    """The OpenCL backend's loop passes: LOOP_PASSES, then each kernel's schedule for the device."""
    return list(LOOP_PASSES) + [schedule_opencl(limits)]


def schedule_opencl(limits: Limits) -> LoopPass:
    """The pass writing each kernel's `OpenCLSchedule` for a device with `limits`."""
    def schedule_opencl(lp: LoopProgram) -> LoopProgram:
        for k in lp.kernels:
            k.schedule = schedule_kernel(k, limits)
        return lp
    return schedule_opencl


def schedule_kernel(k: Kernel, limits: Limits) -> OpenCLSchedule:
    red = k.reduce
    roles = gemm_roles(k)
    if roles is not None:
        itemsize = red.value.dtype.itemsize
        columns = k.domain[COLUMN] if roles == CONV_ROLES else None
        r, w, tsk = matmul_tile(limits, itemsize) if columns is None else conv_tile(limits, itemsize, columns)
        return OpenCLSchedule("tiled", r * r, (r, w, tsk), gemm=roles)
    form = "group" if red is not None and not red.scan and _group_reduce(k, limits) else "flat"
    return OpenCLSchedule(form, group_size(limits), serial=k.serial_vars())


def gemm_roles(k: Kernel) -> tuple | None:
    """The GEMM roles of `k`'s loop vars (rows, columns, depth) when it renders tiled: a matmul, or a
    conv kernel an implicit GEMM computes (`implicit_gemm.operands`), neither storing into a buffer
    its sum reads; else None."""
    red = k.reduce
    if red is None:
        return None
    if red.contraction is not None and len(k.domain) == 3 and red.axes == (2,):
        roles = MATMUL_ROLES
    elif operands(k) is not None:
        roles = CONV_ROLES
    else:
        return None
    read = {e.buffer for e in red.value.args}
    return None if any(s.buffer in read for s in k.stores) else roles


def _group_reduce(k: Kernel, limits: Limits) -> bool:
    """A work-group per kept element: the reduction is long (or over the batch) and a work-item per
    kept element would leave the device idle."""
    kept = [k.domain[v] for v in range(len(k.domain)) if v not in k.reduce.axes]
    reduced = [k.domain[v] for v in k.reduce.axes]
    long_reduce = None in reduced or math.prod(reduced) >= GROUP_REDUCE_MIN
    if None in kept or not long_reduce:
        return False
    return math.prod(kept) < BUSY_PER_UNIT * limits.compute_units


def group_size(limits: Limits) -> int:
    """Work-items per group of flat and group kernels: the largest power of two the device allows,
    at most GROUP_SIZE_MAX."""
    return min(GROUP_SIZE_MAX, 1 << (limits.max_work_group_size.bit_length() - 1))


def matmul_tile(limits: Limits, itemsize: int) -> tuple[int, int, int]:
    """Matmul blocking (R, W, TSK): the first of TILE_SHAPES whose R x R work-group fits the device
    and whose two (R*W) x TSK tiles fit local memory."""
    return _first_fitting(limits, itemsize, TILE_SHAPES)


def _first_fitting(limits: Limits, itemsize: int, shapes: tuple) -> tuple[int, int, int]:
    """The first (R, W) of `shapes` whose R x R work-group and two (R*W) x TSK tiles fit the device, with TSK."""
    for r, w in shapes:
        tsk = min(TILE_DEPTH_MAX, r * w)
        if r * r <= limits.max_work_group_size and 2 * tsk * r * w * itemsize <= limits.local_mem_size:
            return r, w, tsk
    raise RuntimeError("the OpenCL device has no room for a GEMM tile")


def conv_tile(limits: Limits, itemsize: int, columns: int) -> tuple[int, int, int]:
    """Conv blocking (R, W, TSK): `matmul_tile`'s rule among the tiles no wider (R * W) than `columns`
    rounded up to a power of two, and at least CONV_TILE_MIN (a 6-channel conv's 64-wide tile would
    compute 58 columns for nothing)."""
    width = max(CONV_TILE_MIN, 1 << max(0, columns - 1).bit_length())
    shapes = tuple((r, w) for r, w in TILE_SHAPES if r * w <= width)
    return _first_fitting(limits, itemsize, shapes)
