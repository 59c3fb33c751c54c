"""Each loop pass alone, on the text form of the loop program before and after it."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from codegen.loop_passes import (LOOP_PASSES, choose_loop_order, copy_assignments, hoist_reciprocals,
                                 prune_dead_stores, verify_loops, write_updates_in_place)
from codegen.loopir import Const, Kernel, Lin, Load, LoadAt, LoopProgram, Store, Var, affine
from codegen.lower import Lowering, lower
from codegen.llvm.gemm_schedule import loop_passes as llvm_loop_passes
from graphnet.passes import run_pipeline
from graphnet.program import Program


def _fused(fetches, updates=()) -> LoopProgram:
    """The loop program straight out of fusion (no loop pass run yet)."""
    prog, _ = run_pipeline(Program(list(fetches), list(updates)), training=False)
    return Lowering(prog).run()


def _kernel_lines(lp: LoopProgram) -> list[str]:
    return [line.split("    #")[0] for line in lp.to_text().splitlines() if line.startswith(("kernel", "  "))]


def test_prune_dead_stores_drops_unread_stores_and_empty_kernels():
    x = gn.placeholder("x", (None, 3))
    h = gn.exp(x)
    lp = _fused([gn.sum(h * 2.0, 1)])
    lp.buffers.append(type(lp.buffers[0])(len(lp.buffers), "t", "temp", (4,), np.dtype(np.float32)))
    lp.kernels.append(Kernel("unused", (4,), [Store(len(lp.buffers) - 1, affine((0,), (4,)), Const(1.0, np.dtype(
        np.float32)), "unused", "")]))
    before = lp.to_text()
    after = prune_dead_stores(lp).to_text()
    assert "kernel unused" in before and "kernel unused" not in after
    assert after.count("kernel ") == before.count("kernel ") - 1


def test_write_updates_in_place_redirects_the_value_into_the_variable():
    x = gn.placeholder("x", (None, 4))
    w = gn.variable("w", np.ones(4, np.float32))
    loss = gn.sum(x * w)
    (g,) = gn.gradients(loss, [w])
    lp = _fused([loss], [(w, w - 0.1 * g)])
    prune_dead_stores(lp)
    assert lp.to_text().count("assign b") == 1
    after = write_updates_in_place(lp).to_text()
    wid = next(b.id for b in lp.buffers if b.name == "w")
    assert "assign b" not in after
    assert f"  b{wid}[v1] = sub(b{wid}[v1], mul(0.10000000149011612:float32, acc))" in after


def test_an_update_whose_old_value_is_read_later_is_copied_after_every_kernel():
    w = gn.variable("w", np.ones(3, np.float32))
    v = gn.variable("v", np.zeros(3, np.float32))
    lp = _fused([], [(w, v + 1.0), (v, w * 2.0)])  # simultaneous: v's new value reads the old w
    for p in (prune_dead_stores, write_updates_in_place):
        p(lp)
    assert len(lp.assigns) == 1
    text = copy_assignments(lp).to_text()
    assert not lp.assigns and "kernel assign_" in text
    fn = gn.compile([], updates=[(w, v + 1.0), (v, w * 2.0)], backend="llvm")
    fn()
    np.testing.assert_array_equal(w.value, [1, 1, 1])
    np.testing.assert_array_equal(v.value, [2, 2, 2])


def test_hoist_reciprocals_rewrites_division_by_a_loop_invariant():
    x = gn.placeholder("x", (None, 5))
    lp = _fused([x / gn.sum(x)])
    before = "\n".join(_kernel_lines(lp))
    after = "\n".join(_kernel_lines(hoist_reciprocals(lp)))
    assert "div(b0[v0*5 + v1], b" in before
    assert "mul(b0[v0*5 + v1], div(1.0:float32, b" in after


def test_choose_loop_order_puts_the_unit_stride_var_innermost_with_a_row_of_accumulators():
    x = gn.placeholder("x", (None, 6))
    lp = _fused([gn.sum(x, 0)])  # column sums: reduce over rows, accumulate a row of 6
    (k,) = lp.kernels
    assert k.order == ()
    choose_loop_order(lp)
    assert k.order == (0, 1) and k.reduce.scratch is not None
    assert lp.buffers[k.reduce.scratch].shape == (6,)



@pytest.mark.parametrize("channels,window,row", [(6, 2, False), (6, 5, True), (32, 2, True)])
def test_a_short_reduction_over_a_short_row_accumulates_in_registers(channels, window, row):
    """A 2x2 max pool over 6 channels: each output in a register (reduction vars innermost); a 5x5
    window (25 elements) or 32 channels (a row worth vectorizing) keep the row of accumulators."""
    x = gn.placeholder("x", (None, 10, 10, channels))
    lp = _fused([gn.max_pool2d(x, window)])
    (k,) = lp.kernels
    choose_loop_order(lp)
    assert (k.reduce.scratch is not None) == row
    assert k.order == ((0, 1, 2, 4, 5, 3) if row else (0, 1, 2, 3, 4, 5))

def test_gemm_pass_marks_dense_matmuls_and_transposes_narrow_ones():
    x = gn.placeholder("x", (None, 64))
    w = gn.variable("w", np.ones((64, 10), np.float32))
    lp = _fused([x @ w])
    passes = llvm_loop_passes(lambda dtype, ta, tb, m: 4096)
    for p in passes:
        p(lp)
    (k,) = [k for k in lp.kernels if k.reduce is not None]
    assert k.reduce.workspace is not None and k.domain[:2] == (10, None)  # computed as its transpose
    assert "by GEMM into" in lp.to_text()


def test_lower_records_the_loop_ir_after_each_pass_and_numbers_kernels():
    x = gn.placeholder("x", (None, 3))
    prog, _ = run_pipeline(Program([gn.exp(x)]), training=False)
    lp, records = lower(prog)
    assert [r.name for r in records] == ["lower"] + [p.__name__ for p in LOOP_PASSES]
    assert all(k.name.startswith(f"k{i}_") for i, k in enumerate(lp.kernels))


def test_verifier_rejects_a_kernel_reading_its_own_output_elsewhere():
    """The fusion bug a fuzzer found: a kernel read elements of its output it had not written yet."""
    x = gn.placeholder("x", (None, 8))
    lp = _fused([x + 1.0])
    (k,) = lp.kernels
    out = k.stores[0].buffer
    k.stores.append(Store(out + 0, affine((1, 0), (8, None)), Load(out, affine((0, 1), (None, 8)), np.dtype(
        np.float32)), "bad", ""))
    with pytest.raises(AssertionError, match="reads b"):
        verify_loops(lp)


def test_verifier_rejects_a_read_before_any_write():
    x = gn.placeholder("x", (None, 2))
    lp = _fused([x * 2.0])
    lp.buffers.append(type(lp.buffers[0])(len(lp.buffers), "t", "temp", (None, 2), np.dtype(np.float32)))
    lp.kernels.insert(0, Kernel("early", (None, 2), [Store(lp.kernels[0].stores[0].buffer, affine((0, 1), (None, 2)),
                                                           Load(len(lp.buffers) - 1, affine((0, 1), (None, 2)),
                                                                np.dtype(np.float32)), "early", "")]))
    with pytest.raises(AssertionError, match="before any kernel wrote it"):
        verify_loops(lp)


def test_verifier_checks_computed_index_loads():
    """A load at a computed index: its vars lie in the domain, it is int64, and it never reads the
    kernel's own output (which element it reaches is known only at run time)."""
    x = gn.placeholder("x", (None, 8))
    lp = _fused([x + 1.0])
    (k,) = lp.kernels
    out, f32 = k.stores[0].buffer, np.dtype(np.float32)
    verify_loops(lp)
    for index, message in [(Var(5), "outside its domain"), (Const(0, np.dtype(np.int32)), "not int64"),
                           (Var(1), "at a computed index while writing it")]:
        k.stores = k.stores[:1] + [Store(out, affine((0, 1), (None, 8)), LoadAt(out, index, f32), "bad", "")]
        with pytest.raises(AssertionError, match=message):
            verify_loops(lp)


def test_affine_offsets_of_slices_and_flips():
    """Lin coordinates: a scaled, shifted loop var gives negative strides and constant base terms
    (with N where an axis to the right is the batch)."""
    assert str(affine((Lin(0, 2, 1), 1), (5, 4))) == "v0*8 + v1 + 4"
    assert str(affine((Lin(0, -1, 3),), (4,))) == "v0*-1 + 3"
    assert str(affine((Lin(0, -1, -1, 1), 1), (None, 3))) == "v0*-3 + v1 + -3 + 3*N"
    assert str(affine((Lin(None, 0, 2), 0), (4, None))) == "v0 + 2*N"
