"""Each backend's schedule pass alone, on the loop program's text before and after it, and renderers
that follow the schedule and decide nothing themselves."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

import graphnet as gn
from codegen.llvm import parallel
from codegen.llvm.gemm import GemmSpec
from codegen.llvm.gemm_schedule import loop_passes as llvm_loop_passes
from codegen.llvm.render import Renderer
from codegen.llvm.schedule import (PARALLEL_MIN_FAST, PARALLEL_MIN_SLOW, SUM_BLOCK_SCALAR, UNROLL_COPIES_MAX, UNROLL_MAX,
                                   schedule_llvm)
from codegen.llvm.target import AVX2
from codegen.loop_passes import LOOP_PASSES
from codegen.loopir import LoopProgram
from codegen.lower import Lowering, lower
from codegen.opencl import render as opencl_render, schedule as opencl_schedule
from codegen.opencl.schedule import Limits, loop_passes as opencl_loop_passes, schedule_opencl
from graphnet.passes import run_pipeline
from graphnet.program import Program

WORKSPACE = lambda dtype, ta, tb, m, gather=0: 4096  # noqa: E731  (packing bytes: the schedule does not depend on them)
DEVICE = Limits(max_work_group_size=1024, local_mem_size=65536, compute_units=4)
FAST = f"2^{PARALLEL_MIN_FAST.bit_length() - 1}"  # the schedule's text for PARALLEL_MIN_FAST


def _prepared(fetches, passes) -> LoopProgram:
    """The loop program after every pass of `passes` but the last (the schedule pass)."""
    prog, _ = run_pipeline(Program(list(fetches)), training=False)
    lp = Lowering(prog).run()
    for p in passes[:-1]:
        p(lp)
    return lp


def _llvm(fetches, threads: int = 2, target=AVX2) -> LoopProgram:
    return _prepared(fetches, llvm_loop_passes(WORKSPACE, threads, target))


def _schedules(lp: LoopProgram) -> list[str]:
    lines = [line.strip() for line in lp.to_text().splitlines()]
    return [line[len("schedule: "):] for line in lines if line.startswith("schedule: ")]


def _scheduled_llvm(fetches, threads: int = 2, target=AVX2) -> list[str]:
    lp = _llvm(fetches, threads, target)
    assert not _schedules(lp)  # before the pass: no decisions in the text
    return _schedules(schedule_llvm(threads, target)(lp))


def _scheduled_opencl(fetches, limits: Limits = DEVICE) -> list[str]:
    lp = _prepared(fetches, opencl_loop_passes(limits))
    assert not _schedules(lp)
    return _schedules(schedule_opencl(limits)(lp))


# ---- LLVM: elementwise kernels -------------------------------------------------------------
def test_batch_dependent_elementwise_kernel_is_split_over_threads_above_min_work():
    x = gn.placeholder("x", (None, 5))
    assert _scheduled_llvm([gn.exp(x) + 1.0]) == [f"parallel over v0 (2 threads, min work {FAST} elements)"]
    assert PARALLEL_MIN_FAST == 2 ** 18


def test_one_thread_schedules_every_kernel_on_it():
    x = gn.placeholder("x", (None, 5))
    assert _scheduled_llvm([gn.exp(x) + 1.0], threads=1) == ["one thread"]


def test_small_static_kernel_is_unrolled_and_not_split():
    x = gn.variable("x", np.ones((UNROLL_MAX - 1, UNROLL_MAX), np.float32))
    assert _scheduled_llvm([gn.exp(x)]) == ["one thread, unroll v0,v1"]


def test_a_nest_of_short_loops_unrolls_innermost_first_up_to_a_few_copies_of_its_body():
    """Found by the fuzzer: a max-pool gradient over (4, 4, 4, 4, 3, 3) was written out 2,304 times
    (8 s of LLVM IR emission)."""
    x = gn.variable("x", np.ones((4, 4, 4, 4, 3, 3), np.float32))
    (schedule,) = _scheduled_llvm([gn.exp(x)], threads=1)
    assert schedule == "one thread, unroll v4,v5" and 3 * 3 <= UNROLL_COPIES_MAX < 4 * 3 * 3


def test_large_static_kernel_is_split_and_its_short_inner_loop_unrolled():
    x = gn.variable("x", np.ones((600, 3), np.float32))
    assert _scheduled_llvm([gn.exp(x)]) == [f"parallel over v0 (2 threads, min work {FAST} elements), unroll v1"]


def test_loops_calling_libm_stay_scalar_and_split_at_less_work():
    x = gn.placeholder("x", (None, 7), "float64")
    assert _scheduled_llvm([gn.abs(x) ** 0.7]) == [
        "parallel over v0 (2 threads, min work 2^14 elements), scalar loops (libm): stores"]
    assert PARALLEL_MIN_SLOW == 2 ** 14
    y = gn.placeholder("y", (None, 7))  # float32 pow is inline vector code (vmath): no libm call
    assert _scheduled_llvm([gn.abs(y) ** 0.7]) == [f"parallel over v0 (2 threads, min work {FAST} elements)"]


# ---- LLVM: reductions ----------------------------------------------------------------------
def test_a_reduction_into_a_register_splits_its_kept_loop_and_one_into_a_row_runs_on_one_thread():
    x = gn.placeholder("x", (None, 6))
    lp = _llvm([gn.sum(x, 0), gn.max(x, 1)])
    schedule_llvm(2, AVX2)(lp)
    rows = {"in row" in k.to_text(): k.schedule for k in lp.kernels}
    assert set(rows) == {False, True}  # one reduction over the batch into a row, one into a register
    assert str(rows[True]) == f"one thread, unroll v1, float32 sum in blocks of {SUM_BLOCK_SCALAR} v0 into a float64 " \
        "total"  # the batch's column sums
    assert str(rows[False]) == f"parallel over v0 (2 threads, min work {FAST} elements)"  # each row's max
    assert _scheduled_llvm([gn.max(x, 1)], threads=1) == ["one thread"]


def test_a_full_reduction_and_a_scan_run_on_one_thread():
    x = gn.placeholder("x", (None, 6))
    (full,) = _scheduled_llvm([gn.sum(x)])
    assert full.startswith("one thread, float32 sum in blocks")  # no kept loop to split
    assert _scheduled_llvm([gn.cumsum(x, 1)]) == ["one thread"]


@pytest.mark.parametrize("width,written_out", [(6, True), (8, True), (9, False), (32, False)])
def test_a_short_scratch_row_is_written_out(width, written_out):
    """A bias gradient's row of 6 accumulators does not vectorize as a loop; written out it does."""
    x = gn.placeholder("x", (None, 5, width))
    lp = _llvm([gn.sum(x, (0, 1))])
    schedule_llvm(1, AVX2)(lp)
    (k,) = [k for k in lp.kernels if k.reduce is not None and k.name != "row_sums"]  # (row_sums.py widens 6, 8)
    assert k.reduce.scratch is not None and (k.order[-1] in k.schedule.unroll) == written_out


def test_a_reduction_of_libm_values_keeps_its_reduction_loops_scalar():
    x = gn.placeholder("x", (None, 6), "float64")
    assert _scheduled_llvm([gn.sum(gn.abs(x) ** 1.5, 1)]) == [
        "parallel over v0 (2 threads, min work 2^14 elements), scalar loops (libm): reduce"]


# ---- LLVM: GEMM kernels --------------------------------------------------------------------
def test_gemm_by_columns_with_threads_and_a_target():
    x = gn.placeholder("x", (None, 64))
    w = gn.variable("w", np.ones((64, 128), np.float32))
    grain, stride = parallel.column_split(GemmSpec("float32", False, False), AVX2)
    assert _scheduled_llvm([x @ w]) == [
        f"gemm float32 nn by columns (grain {grain}, {stride} workspace bytes per thread), epilogue rows-outer, "
        "parallel over v1 (2 threads, min work 10^7 flops)"]


def test_gemm_on_one_thread_runs_the_routine_then_its_epilogue():
    x = gn.placeholder("x", (None, 64))
    w = gn.variable("w", np.ones((64, 128), np.float32))
    assert _scheduled_llvm([gn.relu(x @ w)], threads=1) == ["gemm float32 nn serial, epilogue rows-outer, one thread"]


def test_gemm_without_a_target_is_serial_with_a_split_epilogue():
    x = gn.placeholder("x", (None, 64))
    w = gn.variable("w", np.ones((64, 128), np.float32))
    assert _scheduled_llvm([x @ w], target=None) == [
        f"gemm float32 nn serial, epilogue rows-outer, parallel over v0 (2 threads, min work {FAST} elements)"]


def test_narrow_gemm_is_transposed_with_its_epilogue_columns_outer():
    x = gn.placeholder("x", (None, 600))
    w = gn.variable("w", np.ones((600, 10), np.float32))
    (s,) = _scheduled_llvm([x @ w], threads=1)
    assert s == "gemm float32 tt m10 serial, epilogue columns-outer, one thread"


def test_small_matmul_is_a_loop_nest_not_a_gemm():
    a = gn.variable("a", np.ones((3, 5), np.float32))
    b = gn.variable("b", np.ones((5, 2), np.float32))
    lp = _llvm([a @ b])
    assert "by GEMM" not in lp.to_text() and "matmul sum" in lp.to_text()
    assert _schedules(schedule_llvm(2, AVX2)(lp)) == ["one thread, unroll v0,v1"]


def test_llvm_pass_list_ends_with_the_schedule_and_lower_records_it():
    x = gn.placeholder("x", (None, 3))
    prog, _ = run_pipeline(Program([gn.exp(x)]), training=False)
    lp, records = lower(prog, loop_passes=llvm_loop_passes(WORKSPACE, 2, AVX2))
    assert [r.name for r in records][-3:] == ["choose_loop_order", "widen_row_sums", "schedule_llvm"]
    assert "schedule:" not in records[-2].text and "schedule: parallel over v0" in records[-1].text


# ---- the LLVM renderer follows the schedule ------------------------------------------------
def _rendered(lp: LoopProgram, threads: int = 2) -> str:
    return Renderer(lp, threads=threads, target=AVX2).render()


def test_llvm_renderer_refuses_a_kernel_without_schedule():
    x = gn.placeholder("x", (None, 3))
    with pytest.raises(ValueError, match="has no LLVM schedule"):
        _rendered(_llvm([gn.exp(x)]))


def test_llvm_renderer_refuses_a_schedule_for_other_threads():
    x = gn.placeholder("x", (None, 3))
    lp = schedule_llvm(2, AVX2)(_llvm([gn.exp(x)]))
    with pytest.raises(ValueError, match="scheduled for 2 threads"):
        _rendered(lp, threads=1)


@pytest.mark.skipif(not parallel.load_runtime(), reason=str(parallel.runtime_failure()))
def test_llvm_renderer_splits_and_unrolls_exactly_where_the_schedule_says():
    x = gn.variable("x", np.ones((600, 3), np.float32))
    lp = schedule_llvm(2, AVX2)(_llvm([gn.exp(x)]))
    (k,) = lp.kernels
    v1_loop = re.compile(r'%"v1(\.\d+)?" = phi')
    as_scheduled = _rendered(lp)
    assert "GOMP_parallel" in as_scheduled and not v1_loop.search(as_scheduled)  # v0 split, v1 written out
    k.schedule = dataclasses.replace(k.schedule, parallel=None, min_work=0, unroll=())
    changed = _rendered(lp)
    assert "GOMP_parallel" not in changed and v1_loop.search(changed)  # one thread, v1 a loop


# ---- OpenCL --------------------------------------------------------------------------------
def test_opencl_elementwise_kernels_are_flat_with_the_largest_power_of_two_group():
    x = gn.placeholder("x", (None, 5))
    assert _scheduled_opencl([gn.exp(x)]) == ["opencl flat: a work-item per kept element, work-groups of 256"]
    small = Limits(max_work_group_size=100, local_mem_size=65536, compute_units=4)
    assert _scheduled_opencl([gn.exp(x)], small) == ["opencl flat: a work-item per kept element, work-groups of 64"]


def test_opencl_long_reductions_over_few_elements_use_a_work_group_each():
    x = gn.placeholder("x", (None, 6))
    c = gn.variable("c", np.ones((8, 4096), np.float32))
    short = gn.variable("short", np.ones((8, 16), np.float32))
    group = "opencl group: a work-group of 256 per kept element"
    flat = "opencl flat: a work-item per kept element, work-groups of 256"
    assert _scheduled_opencl([gn.sum(x, 0)]) == [group]  # over the batch, 6 kept elements
    assert _scheduled_opencl([gn.sum(c, 1)]) == [group]  # 4096 long, 8 kept elements
    assert _scheduled_opencl([gn.sum(x, 1)]) == [flat]  # one per batch row: enough work-items
    assert _scheduled_opencl([gn.sum(short, 1)]) == [flat]  # short: a loop in the work-item
    busy = Limits(max_work_group_size=1024, local_mem_size=65536, compute_units=0)
    assert _scheduled_opencl([gn.sum(c, 1)], busy) == [flat]  # 8 kept elements keep no compute unit idle


def test_opencl_matmuls_are_tiled_to_the_device():
    x = gn.placeholder("x", (None, 64))
    w = gn.variable("w", np.ones((64, 32), np.float32))
    assert _scheduled_opencl([x @ w]) == [
        "opencl tiled 64x64 of rows v0 x columns v1 over v2: 8x8 work-items of 8x8 results, K slices of 16"]
    little_local = Limits(max_work_group_size=1024, local_mem_size=4096, compute_units=4)
    assert _scheduled_opencl([x @ w], little_local) == [
        "opencl tiled 32x32 of rows v0 x columns v1 over v2: 8x8 work-items of 4x4 results, K slices of 16"]
    little_group = Limits(max_work_group_size=16, local_mem_size=65536, compute_units=4)
    assert _scheduled_opencl([x @ w], little_group) == [
        "opencl tiled 8x8 of rows v0 x columns v1 over v2: 4x4 work-items of 2x2 results, K slices of 8"]


def test_opencl_renderer_follows_the_schedule_and_refuses_none_or_one_too_large():
    x = gn.placeholder("x", (None, 64))
    w = gn.variable("w", np.ones((64, 32), np.float32))
    lp = _prepared([x @ w], opencl_loop_passes(DEVICE))
    with pytest.raises(ValueError, match="has no OpenCL schedule"):
        opencl_render.render(lp, DEVICE)
    schedule_opencl(DEVICE)(lp)
    source, (launch,), _ = opencl_render.render(lp, DEVICE)
    assert launch.shape == "tiled" and launch.local_size == (8, 8) and "__local float As[16][64];" in source
    little = Limits(max_work_group_size=16, local_mem_size=65536, compute_units=4)
    with pytest.raises(ValueError, match="does not fit the device"):
        opencl_render.render(lp, little)


def _conv_tiled(tile: str, items: str, results: str = "8x8") -> str:
    return (f"opencl tiled {tile} of rows v0,v1,v2 x columns v4 over v5,v6,v7: {items} work-items of {results} "
            "results, K slices of 16")


def _conv_training(cin: int, cout: int, **conv):
    """The forward conv, its input gradient and its filter gradient, each its own kernel."""
    x = gn.placeholder("x", (None, 9, 9, cin))
    w = gn.variable("w", np.ones((3, 3, cin, cout), np.float32))
    y = gn.conv2d(x, w, **conv)
    return [y, *gn.gradients(gn.sum(y * y), [x, w])]


FLAT = "opencl flat: a work-item per kept element, work-groups of 256"


@pytest.mark.parametrize("cout, forward, filter_grad", [
    (6, ("512x8", "64x1"), FLAT),  # 6 columns; the filter gradient's 144 rows fill no 512-row tile
    (16, ("256x16", "32x2"), FLAT),
    (32, ("128x32", "16x4"), ("128x32", "16x4")),
    (70, ("64x64", "8x8"), ("64x64", "8x8")),  # at most the square matmul tile
])
def test_opencl_convs_are_tiled_implicit_gemms_as_wide_as_their_columns(cout, forward, filter_grad):
    """Forward conv (columns: Cout), input gradient (columns: Cin = 16; strided: four stride-1
    phases, split_strided_input_grads) and filter gradient (columns: Cout, rows: 3 x 3 x 16), each
    kernel's schedule in that order."""
    lp = schedule_opencl(DEVICE)(_prepared(_conv_training(16, cout, padding="same", strides=2),
                                           opencl_loop_passes(DEVICE)))
    convs = [str(k.schedule) for k in lp.kernels if "conv2d" in k.name]
    assert convs == [_conv_tiled(*forward)] + [_conv_tiled("256x16", "32x2")] * 4 + [
        filter_grad if filter_grad == FLAT else _conv_tiled(*filter_grad)]


def test_opencl_conv_tile_fits_the_device():
    little_group = Limits(max_work_group_size=16, local_mem_size=65536, compute_units=4)
    x = gn.placeholder("x", (None, 9, 9, 3))
    y = gn.conv2d(x, gn.variable("w", np.ones((3, 3, 3, 64), np.float32)), dilation_rate=2)
    assert _scheduled_opencl([y], little_group) == [_conv_tiled("8x8", "4x4", "2x2")]


def test_opencl_grouped_convs_and_pooling_stay_flat():
    x = gn.placeholder("x", (None, 9, 9, 6))
    grouped = gn.conv2d(x, gn.variable("w", np.ones((3, 3, 2, 6), np.float32)), groups=3)
    texts = _scheduled_opencl([grouped, gn.max_pool2d(x, 2)])
    assert texts == ["opencl flat: a work-item per kept element, work-groups of 256"] * 2


def test_opencl_tiled_gemm_never_stores_what_its_sum_reads():
    """Work-groups of a tiled kernel read operand tiles that other work-groups may already have
    stored over: a kernel writing a buffer its sum reads stays flat."""
    x = gn.placeholder("x", (None, 9, 9, 3))
    lp = _prepared([gn.conv2d(x, gn.variable("w", np.ones((3, 3, 3, 8), np.float32)))], opencl_loop_passes(DEVICE))
    (k,) = lp.kernels
    image = k.reduce.value.args[0].buffer
    assert opencl_schedule.gemm_roles(k) == opencl_schedule.CONV_ROLES
    k.stores[0] = dataclasses.replace(k.stores[0], buffer=image)
    assert opencl_schedule.gemm_roles(k) is None
    assert str(opencl_schedule.schedule_kernel(k, DEVICE)).startswith("opencl flat")


def test_opencl_tiled_conv_source_stages_the_window_and_the_filter():
    x = gn.placeholder("x", (None, 9, 9, 3))
    y = gn.relu(gn.conv2d(x, gn.variable("w", np.ones((3, 3, 3, 8), np.float32)), padding="same"))
    lp = _prepared([y], opencl_loop_passes(DEVICE))
    schedule_opencl(DEVICE)(lp)
    source, (launch,), _ = opencl_render.render(lp, DEVICE)
    assert launch.shape == "tiled" and launch.local_size == (1, 64)
    assert launch.dims == (((8, 0), 8, 1), ((81, 1), 512, 64))  # columns: Cout; rows: N x 9 x 9
    assert "__local float As[16][512];" in source and "__local float Bs[16][8];" in source
    assert ">= 0" in source  # the window's guarded load (padding reads zeros)


def test_opencl_pass_list_ends_with_the_schedule():
    assert opencl_loop_passes(DEVICE)[:-1] == LOOP_PASSES
    assert opencl_loop_passes(DEVICE)[-1].__name__ == "schedule_opencl"


@pytest.mark.parametrize("threads", [1, 2])
def test_llvm_register_reductions_keep_their_stack_slots_in_the_entry_block(threads):
    """A blocked row sum's float64 total was an alloca in the row loop's body: the stack grew by a slot
    per row (never freed before the kernel returned) and the total stayed in memory. Every slot is now
    a static alloca of the function its loop runs in (the kernel, or its range function)."""
    x = gn.placeholder("x", (None, 3000))
    lp = schedule_llvm(threads, AVX2)(_llvm([gn.sum(x, 1), gn.max(x, 1)], threads))
    assert any(k.schedule.sum_block for k in lp.kernels)
    text = _rendered(lp, threads)
    functions = [part.split("\n}\n")[0] for part in text.split("\ndefine ")[1:]]
    assert sum("alloca" in f for f in functions) >= 2  # the sum's and the max's slots
    for function in functions:
        blocks = re.split(r"\n(?=[\w.\"-]+:)", function)  # the signature, the entry block, the others
        assert not any("alloca" in block for block in blocks[2:]), function.splitlines()[0]


def test_a_short_contiguous_innermost_loop_is_vectorized_at_the_narrowest_width_covering_it():
    """lenet's pools over 6 channels (NHWC): v3, innermost once the window is written out, is 6 long
    and stored contiguously: 8-lane vectors on AVX-512 (float32), not 16 lanes with 10 masked off.
    16 channels fill a vector, float64's 8 lanes and AVX2's 8 float32 lanes are not twice 8, 3 channels
    are written out; a strided innermost loop keeps LLVM's choice."""
    from codegen.llvm.target import TargetInfo
    avx512 = TargetInfo("skylake-avx512", "+avx,+avx2,+fma,+sse2,+avx512f", 512, True, 32)

    def pools(channels: int, dtype="float32", target=avx512) -> list[str]:
        with gn.Graph():
            x = gn.placeholder("x", (None, 24, 24, channels), dtype)
            y = gn.max_pool2d(x, 2)
            return _scheduled_llvm([y, *gn.gradients(gn.sum(y * y), [x])], threads=1, target=target)
    assert pools(6) == ["one thread, unroll v4,v5, v3 in 8-lane vectors"] * 2  # the pool, its gradient
    assert pools(5)[0].endswith("v3 in 8-lane vectors") and pools(3)[0] == "one thread, unroll v3,v4,v5"
    assert not any("lane vectors" in s for s in pools(16) + pools(6, "float64") + pools(6, target=AVX2))
    x = gn.variable("x", np.ones((4, 4, 4, 4, 3, 3), np.float32))
    assert _scheduled_llvm([gn.exp(x)], threads=1, target=avx512) == ["one thread, unroll v4,v5"]  # v3: stride 9
