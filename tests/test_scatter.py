"""scatter_add's accumulate-store lowering: a zero fill, then one pass over the updates adding each at
its clamped index (`Store.index`, `Store.accumulate`), serial over the index axes on every backend.
Results equal numpy's `np.add.at` (ascending order over the updates, duplicates summed); the loop IR
form, the verifier's rules and each backend's schedule of it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import graphnet as gn
from codegen.llvm.schedule import schedule_llvm
from codegen.llvm.target import AVX2
from codegen.loop_passes import verify_loops
from codegen.loopir import Affine, Buffer, Const, Kernel, Load, LoadAt, LoopProgram, Store, Var
from codegen.lower import lower
from codegen.opencl.render import render as opencl_render
from codegen.opencl.schedule import Limits, schedule_opencl
from graphnet.ops.indexing import clamp_numpy
from graphnet.program import Program
from helpers import run
from test_indexing import BACKENDS

pytestmark = pytest.mark.usefixtures("private_cache")
RNG = np.random.default_rng(11)
DEVICE = Limits(max_work_group_size=1024, local_mem_size=65536, compute_units=4)


def _add_at(updates: np.ndarray, ids: np.ndarray, axis: int, size: int) -> np.ndarray:
    """numpy's np.add.at with take's clamping: the reference order (ascending over the updates)."""
    lead, trail = updates.shape[:axis], updates.shape[axis + ids.ndim:]
    out = np.zeros(lead + (size,) + trail, updates.dtype)
    np.add.at(out, (slice(None),) * axis + (clamp_numpy(ids.reshape(-1), size),),
              updates.reshape(lead + (ids.size,) + trail))
    return out


CASES = [  # (updates shape, ids shape, axis, size): embedding rows, a middle axis, 1-D, 2-D ids mid-axis
    ((12, 5), (12,), 0, 4), ((3, 9, 7), (9,), 1, 5), ((10,), (10,), 0, 3), ((2, 3, 4, 6), (3, 4), 1, 6)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("shape,ids_shape,axis,size", CASES)
def test_scatter_add_equals_numpys_add_at(backend, dtype, shape, ids_shape, axis, size):
    updates = (RNG.normal(size=shape) * 10).astype(dtype)
    ids = RNG.integers(-size - 2, size + 2, size=ids_shape)  # negatives, out of range, duplicates
    u, i = gn.placeholder("u", shape, dtype), gn.placeholder("i", ids_shape, np.int64)
    (got,) = run([gn.scatter_add(u, i, axis, size)], {"u": updates, "i": ids}, backend=backend)
    want = _add_at(updates, ids, axis, size)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicates_add_in_ascending_order_of_the_updates(backend):
    """float32 1e8 + 1 rounds to 1e8: summed in ascending order the three updates give 0, in any other
    order 1 survives. Each column is summed in this order whatever the vector width."""
    updates = np.tile(np.array([[1e8], [1.0], [-1e8]], np.float32), (1, 19))
    u, i = gn.placeholder("u", (None, 19)), gn.placeholder("i", (None,), np.int64)
    (got,) = run([gn.scatter_add(u, i, 0, 2)], {"u": updates, "i": np.array([1, 1, 1])}, backend=backend)
    np.testing.assert_array_equal(got, np.zeros((2, 19), np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_embedding_gradient_on_the_batch_axis_and_a_fused_update(backend):
    """An Embedding's SGD step: the scatter over a batch of ids, its result read by the update (which
    cannot join the accumulating kernel)."""
    table = RNG.normal(size=(7, 4)).astype(np.float32)
    ids = RNG.integers(0, 7, size=(5, 3))
    w = gn.variable(f"scatter_table_{backend}", table.copy())
    i = gn.placeholder("i", (None, 3), np.int64)
    loss = gn.sum(gn.square(gn.take(w, i, 0)))
    fn = gn.compile([loss], updates=gn.optim.SGD(lr=0.5).minimize(loss), backend=backend)
    fn(i=ids)
    want = table - 0.5 * _add_at(2 * table[ids], ids, 0, 7)
    np.testing.assert_allclose(w.value, want, rtol=1e-6)


def _lowered(shape=(None, 3, 16), ids_shape=(None,), axis=0, size=9) -> LoopProgram:
    with gn.Graph():
        u, i = gn.placeholder("u", shape), gn.placeholder("i", ids_shape, np.int64)
        lp, _ = lower(Program([gn.scatter_add(u, i, axis, size)]))
    return lp


def test_scatter_add_is_a_zero_fill_then_an_accumulating_store():
    lp = _lowered()
    fill, scatter = lp.kernels
    assert fill.reduce is None and scatter.reduce is None
    (zero,) = fill.stores
    assert isinstance(zero.value, Const) and zero.value.value == 0 and not zero.accumulate
    (acc,) = scatter.stores
    assert acc.accumulate and acc.index is not None and acc.buffer == zero.buffer
    assert scatter.domain == (None, 3, 16)  # the updates' elements, not table rows x updates
    assert f"b{acc.buffer}[@" in scatter.to_text() and "+=" in scatter.to_text()
    assert scatter.serial_vars() == (0,)


def test_serial_vars_are_the_index_axes_only():
    lp = _lowered((4, 6, 5), (6,), 1, 3)
    (scatter,) = [k for k in lp.kernels if k.stores[0].accumulate]
    assert scatter.serial_vars() == (1,)


def test_llvm_never_splits_the_index_axis_over_threads():
    lp = schedule_llvm(4, AVX2)(_lowered((None, 64), (None,), 0, 10 ** 6))
    scatter = lp.kernels[-1]
    assert scatter.schedule.parallel is None
    lead = schedule_llvm(4, AVX2)(_lowered((4096, 200, 64), (200,), 1, 50))
    assert lead.kernels[-1].schedule.parallel == 0  # rows of the leading axis: distinct output elements


def test_opencl_gives_each_work_item_a_row_slice_looping_over_the_updates():
    lp = schedule_opencl(DEVICE)(_lowered())
    scatter = lp.kernels[-1]
    assert scatter.schedule.form == "flat" and scatter.schedule.serial == (0,)
    assert "serial over v0" in str(scatter.schedule)
    source, launches, _ = opencl_render(lp, DEVICE)
    assert launches[-1].dims[0][0] == (48, 0)  # one work-item per (v1, v2), none per update row
    assert "for (long v0 = 0; v0 < N; ++v0)" in source and "+=" in source


def _program(kernels, buffers) -> LoopProgram:
    return LoopProgram(buffers, kernels)


def _buffers():
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    return [Buffer(0, "u", "input", (3,), f32), Buffer(1, "i", "input", (3,), i64), Buffer(2, "out", "temp", (4,), f32)]


def _accumulate(index=None, value=None) -> Store:
    at = index if index is not None else LoadAt(1, Var(0), np.dtype(np.int64))
    return Store(2, Affine(), value or Load(0, Affine(((0, 1, 0),)), np.dtype(np.float32)), "s", "", index=at,
                 accumulate=True)


def _fill() -> Kernel:
    return Kernel("fill", (4,), [Store(2, Affine(((0, 1, 0),)), Const(0.0, np.dtype(np.float32)), "z", "")], order=(0,))


def test_verifier_accepts_an_accumulating_store_after_a_fill():
    verify_loops(_program([_fill(), Kernel("add", (3,), [_accumulate()], order=(0,))], _buffers()))


@pytest.mark.parametrize("kernels,message", [
    (lambda: [Kernel("add", (3,), [_accumulate()])], "accumulates into b2 before any kernel wrote it"),
    (lambda: [_fill(), Kernel("add", (3,), [_accumulate(Const(1.0, np.dtype(np.float32)))])], "not int64"),
    (lambda: [_fill(), Kernel("add", (3,), [_accumulate(Var(5))])], "outside its domain"),
    (lambda: [_fill(), Kernel("add", (3,), [_accumulate(value=Load(2, Affine(), np.dtype(np.float32)))])],
     "reads b2 while accumulating into it"),
    (lambda: [_fill(), Kernel("add", (3,), [dataclasses.replace(_accumulate(), accumulate=False)])],
     "a store at a computed index must accumulate"),
])
def test_verifier_rejects_bad_accumulating_stores(kernels, message):
    with pytest.raises(AssertionError, match=message):
        verify_loops(_program(kernels(), _buffers()))
