"""Transposing copies on the LLVM backend (schedule.transpose_tile, render's `transpose`): which kernels
take register tiles (plain transposes, the direct convs' channel-major copies, zero-bordered ones), and
their values against numpy: bit-identical copies over row tails (whole tiles, halving widths, a single
last element), float32, float64 and int32, partial batches, one and two threads."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from codegen.llvm import schedule
from codegen.llvm.gemm_schedule import loop_passes
from codegen.llvm.jit import host_target
from test_igemm import _conv_step
from test_rowconv import AVX512
from test_schedules import _prepared, _scheduled_llvm

SHAPES = [  # (image shape without the batch, permutation): x's extent and the transposed axis
    ((24, 24, 6), (0, 3, 1, 2)),  # lenet's conv1 dy: tiles of 16 and 8 along rows of 24
    ((7, 37, 5), (0, 3, 1, 2)),  # rows of 37 (float32: 16 + 16 + 4 + 1), 5 channels
    ((3, 5, 16), (0, 3, 1, 2)),  # rows of 5 (4 + 1), 16 channels: a power-of-two tile, deinterleaved
    ((2, 40, 8), (0, 3, 1, 2)),  # rows of 40, 8 channels: power-of-two tiles of 16 and 8 x's
    ((9, 23), (0, 2, 1)),  # a matrix per row: 23 columns
]


@pytest.mark.parametrize("shape,perm", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_transposes_equal_numpy(shape, perm, dtype, threads, monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", threads)
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(schedule, "PARALLEL_MIN_FAST", 0)  # two threads split even these few images
    rng = np.random.default_rng(3)
    with gn.Graph():
        x = gn.placeholder("x", (None, *shape), dtype)
        f = gn.compile([gn.transpose(x, perm)], backend="llvm")
    for n in (5, 3, 1):  # the first batch, then partial ones
        a = (rng.standard_normal((n, *shape)) * 100).astype(dtype)
        (out,) = f(x=a)
        assert out.dtype == dtype and np.array_equal(out, a.transpose(perm)), (n, shape, dtype)


def test_the_schedule_tiles_a_transpose_and_not_a_plain_copy():
    x = gn.placeholder("x", (None, 7, 37, 5))
    (schedule,) = _scheduled_llvm([gn.transpose(x, (0, 3, 1, 2))], threads=1, target=AVX512)
    assert schedule == "one thread, transpose v3<->v1 in tiles of 16 v3 (vector loads, register shuffles)", schedule
    (schedule,) = _scheduled_llvm([gn.transpose(x, (0, 3, 1, 2))], threads=2, target=AVX512)
    assert schedule.startswith("parallel over v0") and "transpose v3<->" in schedule
    assert "transpose" not in _scheduled_llvm([x * 2.0], threads=1, target=AVX512)[0]
    wide = gn.placeholder("wide", (None, 7, 37, 17))  # 17 channels: more than TRANSPOSE_MAX
    assert "transpose" not in _scheduled_llvm([gn.transpose(wide, (0, 3, 1, 2))], threads=1, target=AVX512)[0]


def test_the_direct_convs_planar_copies_take_register_tiles():
    """lenet's conv2 input gradient (a zero-bordered channel-major copy of dy, rows 12 apart) and conv1's
    filter gradient (a channel-major copy of dy) copy in register tiles."""
    copies = {}
    for shape, filters in (((2, 12, 12, 6), (5, 5, 6, 16)), ((2, 28, 28, 1), (5, 5, 1, 6))):
        with gn.Graph():
            passes = loop_passes(lambda *a, **k: 64, 1, AVX512)
            lp = passes[-1](_prepared(_conv_step(shape, filters, {}, np.float32), passes))
            copies.update({k.domain: str(k.schedule) for k in lp.kernels if k.name == "planar"})
    assert copies[(None, 16, 17, 12)] == "one thread, transpose v3<->v1 in tiles of 16 v3 (vector loads, " \
                                         "register shuffles)"
    assert copies[(None, 24, 6, 24)] == "one thread, transpose v3<->v2 in tiles of 16 v3 (vector loads, " \
                                        "register shuffles)"


@pytest.mark.parametrize("padding", ["valid", ((1, 1), (2, 3))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_bordered_transposes_equal_numpy(padding, dtype, threads, monkeypatch, tmp_path):
    """A conv input gradient reading a zero-bordered channel-major copy of dy (9 channels; rows of 13
    or 17: a tile and halving widths; uneven padding), against the numpy backend, partial batches."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", threads)
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(schedule, "PARALLEL_MIN_FAST", 0)
    rng = np.random.default_rng(5)
    with gn.Graph():
        x = gn.placeholder("x", (None, 11, 13, 4), dtype)
        w = gn.placeholder("w", (5, 5, 4, 9), dtype)
        y = gn.conv2d(x, w, padding=padding)
        dy = gn.placeholder("dy", (None, *y.shape[1:]), dtype)
        fetches = gn.gradients(gn.sum(y * dy), [x])
        native = gn.compile(fetches, backend="llvm")
        reference = gn.compile(fetches, backend="numpy")
    if host_target().vector_bits == 512:
        copy = next(k for k in native.executable.lp.kernels if k.name.endswith("planar"))
        assert "transpose v3<->v1" in str(copy.schedule)
    for n in (4, 3):
        feeds = dict(x=rng.standard_normal((n, 11, 13, 4)).astype(dtype), w=rng.standard_normal((5, 5, 4, 9)).astype(dtype),
                     dy=rng.standard_normal((n, *y.shape[1:])).astype(dtype))
        (got,), (want,) = native(**feeds), reference(**feeds)
        np.testing.assert_allclose(got, want, rtol=1e-4 if dtype == np.float32 else 1e-12,
                                   atol=1e-4 if dtype == np.float32 else 1e-10)
