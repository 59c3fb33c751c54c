"""widen_row_sums (codegen/llvm/row_sums.py): a column sum over a few cells (a bias gradient over an
NHWC image's channels) split into a sum into a wide row of whole rows of cells, then the kernel adding
each cell's groups; which kernels it splits, and their values against numpy (float32 and float64, odd
sizes, NaN and Inf, partial batches, one and two threads)."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from codegen.llvm.gemm_schedule import loop_passes
from codegen.llvm.row_sums import widened_var
from codegen.llvm.target import TargetInfo
from test_schedules import _prepared

AVX512 = TargetInfo("skylake-avx512", "+avx,+avx2,+fma,+sse2,+avx512f", 512, True, 32)


def _kernels(fetches) -> list:
    return _prepared(fetches, loop_passes(lambda *a, **k: 64, 1, AVX512) + [None]).kernels


def test_a_bias_gradient_over_six_channels_sums_whole_rows_of_cells_first():
    """lenet's conv1 bias gradient: the sum over (n, h, w) of 6 channels reads rows of 24 x 6 = 144
    contiguous cells: a row sum over 144 cells, then 24 groups of 6 per channel."""
    x = gn.placeholder("x", (None, 24, 24, 6))
    kernels = _kernels([gn.sum(x, axis=(0, 1, 2))])
    assert [k.name for k in kernels] == ["row_sums", "sum"]
    rows, sums = kernels
    assert rows.domain == (None, 24, 1, 144) and rows.reduce.scratch is not None
    assert str(rows.reduce.value) == "b0[v0*3456 + v1*144 + v3]"
    assert sums.domain == (1, 1, 24, 6) and str(sums.reduce.value) == f"b{rows.stores[0].buffer}[v2*6 + v3]"


def test_wide_cells_strided_rows_and_sums_into_a_register_are_left_alone():
    for shape, axis in [((None, 24, 24, 16), (0, 1, 2)),  # 16 float32 cells: a whole vector already
                        ((None, 24, 24, 6), (0, 1)),  # the w's kept: its rows of cells are not reduced
                        ((None, 6, 24), (0, 2))]:  # channel-major: one cell per row, summed in a register
        with gn.Graph():
            x = gn.placeholder("x", shape)
            kernels = _kernels([gn.sum(x, axis=axis)])
            assert not any(k.name == "row_sums" for k in kernels) and all(widened_var(k) is None for k in kernels)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_widened_sums_equal_numpy(dtype, threads, monkeypatch):
    """Bias gradients (with relu's, as in lenet) over 3, 6 and 7 channels of odd images, against
    numpy; a NaN and an Inf reach their channels' sums."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", threads)
    for shape in [(5, 9, 11, 3), (4, 24, 24, 6), (3, 7, 5, 7)]:
        with gn.Graph():
            x = gn.placeholder("x", (None,) + shape[1:], dtype)
            b = gn.variable("b", np.zeros(shape[3], dtype))
            y = gn.relu(x + b)
            fetches = [gn.sum(y, axis=(0, 1, 2)), *gn.gradients(gn.sum(y * y), [b])]
            fn = gn.compile(fetches, backend="llvm")
            assert sum(k.name.endswith("row_sums") for k in fn.executable.lp.kernels) >= 1
            ref = gn.compile(fetches, backend="numpy")
            rng = np.random.default_rng(shape[3])
            for batch in (shape[0], 2):
                feed = rng.normal(size=(batch,) + shape[1:]).astype(dtype)
                if shape[3] == 6:
                    feed[1, 2, 3, 1], feed[0, 5, 6, 4] = np.nan, np.inf
                for got, want in zip(fn(x=feed), ref(x=feed)):
                    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_sum_keeping_an_outer_axis_is_left_alone_and_equals_numpy(dtype):
    """Fuzz 0:20939: the sum over axes (0, 2) of a (6, 3, 3, 2) tensor keeps axis 1 beside the cells;
    a wide row indexed by the cells alone would mix its rows, so such a sum is not widened."""
    x = np.random.default_rng(0).normal(size=(6, 3, 3, 2)).astype(dtype)
    with gn.Graph():
        x0 = gn.placeholder("x0", (6, 3, 3, 2), dtype)
        fetch = gn.sum(x0, axis=(0, 2), keepdims=True)
        assert all(widened_var(k) is None for k in _kernels([fetch]))
        fn = gn.compile([fetch], backend="llvm")
        np.testing.assert_allclose(fn(x0=x)[0], x.sum(axis=(0, 2), keepdims=True),
                                   rtol=1e-5 if dtype == np.float32 else 1e-12)
