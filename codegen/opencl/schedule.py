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
  outside the image), its tile no wider than its columns need and as tall as that leaves work-items
  (`conv_tile`); a conv with fewer rows than one tile (a filter gradient's KH x KW x Cin) is flat or
  group. A kernel whose stores write a buffer its sum reads is never tiled (work-groups would read
  what others already rewrote).
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
TILE_DEPTH_MAX = 16  # the deepest K slice staged in local memory (matmuls: TSK = min(this, R * W); convs: this)
TILE_CONVS = True  # one-group convs render tiled; False keeps them flat (bench/micro/oclconv.py compares the two)
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
    local: int  # work-items per work-group (tiled: RM * RN)
    tile: tuple | None = None  # tiled: (RM, RN, W, TSK): RM x RN work-items of W x W results, TSK-deep slices of K
    serial: tuple = ()  # flat: vars each work-item loops over in ascending order (an accumulating store's)
    gemm: tuple | None = None  # tiled: the loop vars of the GEMM's (rows, columns, depth), each row-major

    def __str__(self) -> str:
        if self.form == "tiled":
            rm, rn, w, tsk = self.tile
            rows, cols, depth = (",".join(f"v{v}" for v in role) for role in self.gemm)
            return (f"opencl tiled {rm * w}x{rn * w} of rows {rows} x columns {cols} over {depth}: "
                    f"{rm}x{rn} work-items of {w}x{w} results, K slices of {tsk}")
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
    if roles == MATMUL_ROLES:
        tile = matmul_tile(limits, red.value.dtype.itemsize)
        return OpenCLSchedule("tiled", tile[0] * tile[1], tile, gemm=roles)
    if roles == CONV_ROLES:
        tile = conv_tile(limits, red.value.dtype.itemsize, k.domain[COLUMN])
        if _fills_a_tile(k, tile):
            return OpenCLSchedule("tiled", tile[0] * tile[1], tile, gemm=roles)
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
    elif TILE_CONVS and operands(k) is not None:
        roles = CONV_ROLES
    else:
        return None
    read = {e.buffer for e in red.value.args}
    return None if any(s.buffer in read for s in k.stores) else roles


def _fills_a_tile(k: Kernel, tile: tuple) -> bool:
    """A conv kernel has rows (v0, v1, v2) for at least one tile's TM = RM * W (rows over the batch
    do): a filter gradient's few rows (KH x KW x Cin) and long sum over the batch stay flat or group."""
    rows = [k.domain[v] for v in ROWS]
    return None in rows or math.prod(rows) >= tile[0] * tile[2]


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


def matmul_tile(limits: Limits, itemsize: int) -> tuple[int, int, int, int]:
    """Matmul blocking (R, R, W, TSK): the first of TILE_SHAPES whose R x R work-group fits the device
    and whose two (R*W) x TSK tiles fit local memory."""
    for r, w in TILE_SHAPES:
        tsk = min(TILE_DEPTH_MAX, r * w)
        if _fits(limits, itemsize, r, r, w, tsk):
            return r, r, w, tsk
    raise RuntimeError("the OpenCL device has no room for a matmul tile")


def _fits(limits: Limits, itemsize: int, rm: int, rn: int, w: int, tsk: int) -> bool:
    """An RM x RN work-group fits the device, and its (RM*W) x TSK and (RN*W) x TSK tiles its local memory."""
    return rm * rn <= limits.max_work_group_size and tsk * (rm + rn) * w * itemsize <= limits.local_mem_size


def conv_tile(limits: Limits, itemsize: int, columns: int) -> tuple[int, int, int, int]:
    """Conv blocking (RM, RN, W, TSK): per shape (R, W) of TILE_SHAPES, R * R work-items of W x W
    results arranged RM x RN so that the tile's TN = RN * W columns are no more than `columns`
    rounded up to a power of two (at least one work-item wide): a conv has few columns (its output
    or input channels) and many rows, so a 6-channel conv gets a 512 x 8 tile (64 x 1 work-items of
    8 x 8 results), not a 64-wide one computing 58 columns for nothing; the first that fits the
    device, TSK = TILE_DEPTH_MAX."""
    width = 1 << max(0, columns - 1).bit_length()
    for r, w in TILE_SHAPES:
        rn = max(1, min(r, width // w))
        rm = r * r // rn
        if _fits(limits, itemsize, rm, rn, w, TILE_DEPTH_MAX):
            return rm, rn, w, TILE_DEPTH_MAX
    raise RuntimeError("the OpenCL device has no room for a conv tile")
