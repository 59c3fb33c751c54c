"""Convolutions as implicit GEMMs (codegen/llvm/igemm.py): which conv kernels the LLVM pass gives a
gathering GEMM routine, and their values against the direct loop nest and numpy on odd geometry
(padding, strides, dilation, NCHW, partial batches, one and two threads)."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from codegen.llvm import colconv, igemm, rowconv, tapconv
from codegen.llvm.target import AVX2
from graphnet.passes import pipeline
from codegen.llvm.gemm_schedule import border_conv_images, loop_passes
from test_schedules import _prepared, _scheduled_llvm

CASES = [  # (x shape, filter shape, keyword arguments)
    ((3, 12, 11, 5), (3, 3, 5, 7), dict(padding="same")),
    ((2, 13, 12, 4), (3, 2, 4, 9), dict(strides=2, padding=((1, 2), (0, 1)), dilation_rate=(2, 1))),
    ((2, 4, 12, 11), (5, 5, 4, 6), dict(data_format="NCHW", padding=2)),
    ((2, 28, 28, 1), (5, 5, 1, 6), dict()),
    ((2, 9, 9, 4), (3, 3, 2, 40), dict(groups=2, padding="same")),  # grouped: the direct loop
]


def _conv_step(x_shape, w_shape, kwargs, dtype):
    """relu(conv), and the gradients of a weighted sum of the conv wrt image and filter."""
    px = gn.placeholder("x", (None,) + x_shape[1:], dtype)
    pw = gn.placeholder("w", w_shape, dtype)
    y = gn.conv2d(px, pw, **kwargs)
    weights = gn.placeholder("weights", (None,) + y.shape[1:], dtype)
    return [gn.relu(y), *gn.gradients(gn.sum(y * weights), [px, pw])]


def _feeds(x_shape, w_shape, fetches, batch, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(batch,) + x_shape[1:]).astype(dtype),
            "w": rng.normal(size=w_shape).astype(dtype),
            "weights": rng.uniform(0.5, 1.5, (batch,) + fetches[0].shape[1:]).astype(dtype)}


def test_conv_kernels_above_the_threshold_are_implicit_gemms_and_small_ones_direct_loops():
    fetches = _conv_step((2, 28, 28, 3), (3, 3, 3, 32), dict(padding="same"), np.float32)
    schedules = _scheduled_llvm(fetches, threads=2, target=AVX2)
    gemms = [s for s in schedules if s.startswith("implicit gemm")]
    assert len(gemms) == 2  # forward, filter gradient
    assert all(") by rows" in s for s in gemms)
    # columns: 32 output channels (forward, filter gradient) in 8-lane AVX2 vectors
    assert sorted(s.split("packing, ")[1][0] for s in gemms) == ["2", "2"]
    # the input gradient's 3 columns (input channels) would fill 3 of 8 lanes: its 28-wide rows fill 7
    rows = [s for s in schedules if s.startswith("direct conv")]
    assert len(rows) == 1 and "along 8 lanes" in rows[0] and " by images" in rows[0]
    assert sum("parallel over v0" in s for s in gemms) == 2  # epilogues over (n, ...) and (kh, ...)
    with gn.Graph():
        small = _scheduled_llvm(_conv_step((2, 6, 6, 1), (2, 2, 1, 2), {}, np.float32), threads=1, target=AVX2)
    assert not any("gemm" in s for s in small)  # 2*2*1*2 multiply-adds per position: the direct loop


def test_a_grouped_conv_keeps_the_direct_loop():
    fetches = _conv_step(*CASES[-1][:3], np.float32)
    assert not any("gemm" in s for s in _scheduled_llvm(fetches, threads=1, target=AVX2))


def test_the_descriptor_folds_unguarded_axes_into_the_linear_offset():
    fetches = _conv_step((2, 10, 10, 3), (3, 3, 3, 8), dict(strides=2, padding="same"), np.float32)
    passes = [p for p in loop_passes(lambda *a, **k: 64, 1, AVX2) if p.__name__ != "border_conv_images"]
    lp = _prepared(fetches, passes)  # the guarded form, as without a border
    forward = next(k for k in lp.kernels if k.reduce is not None and k.reduce.workspace is not None)
    d = igemm.descriptor(forward)
    assert (d[igemm.R1], d[igemm.R2], d[igemm.K1], d[igemm.K2]) == (5, 5, 3, 3)  # (n, i, j) x (kh, kw, c)
    assert d[igemm.ROW_FIELDS:igemm.ROW_FIELDS + 3] == [10 * 10 * 3, 0, 0]  # n: linear, batch stride
    assert d[igemm.ROW_FIELDS + 4:igemm.ROW_FIELDS + 7] == [0, 2, 0]  # i: stride 2 on the height guard
    assert (d[igemm.E1], d[igemm.S1], d[igemm.D1], d[igemm.GUARDED]) == (10, 30, 1, 2)
    assert d[igemm.COL_FIELDS + 8:igemm.COL_FIELDS + 12] == [1, 0, 0, 8]  # c: image stride 1, filter row 8
    assert d[igemm.BJ] == 1


def test_padded_windows_read_a_bordered_copy_and_strided_gradients_keep_their_guards(monkeypatch):
    """(The strided input gradient is split into stride-1 phases by the graph pass
    split_strided_input_grads unless dilated; without that pass, as a dilated one, it keeps its guards.)"""
    monkeypatch.setattr(colconv, "VECTORS", 0)  # the forward's 8 columns: an implicit GEMM's here, not colconv's
    monkeypatch.setattr(pipeline, "DEFAULT_PASSES",
                        [p for p in pipeline.DEFAULT_PASSES if p is not pipeline.split_strided_input_grads])
    fetches = _conv_step((2, 10, 10, 3), (3, 3, 3, 8), dict(strides=2, padding="same"), np.float32)
    lp = _prepared(fetches, loop_passes(lambda *a, **k: 64, 1, AVX2))
    names = [k.name for k in lp.kernels]
    gemms = [k for k in lp.kernels if k.reduce is not None and k.reduce.workspace is not None]
    assert len(gemms) == 3
    input_grad, filter_grad = (next(k for k in gemms if op in k.name) for op in ("input_grad", "filter_grad"))
    forward = next(k for k in gemms if k not in (input_grad, filter_grad))
    for k in (forward, filter_grad):  # both read x through padding (0, 1): one 11 x 11 copy, no guards
        w = k.reduce.contraction[0]
        assert w.shape == (None, 11, 11, 3) and lp.buffers[w.buffer].name.startswith("bordered")
        d = igemm.descriptor(k)
        assert (d[igemm.E1], d[igemm.S1], d[igemm.E2], d[igemm.S2], d[igemm.GUARDED]) == (1, 0, 1, 0, 0)
    assert forward.reduce.contraction[0].buffer == filter_grad.reduce.contraction[0].buffer
    borders = [k for k in lp.kernels if k.name == "border"]
    assert len(borders) == 1 and names.index("border") == names.index(forward.name) - 1
    assert borders[0].stores[0].buffer == forward.reduce.contraction[0].buffer
    assert igemm.descriptor(forward)[igemm.ROW_FIELDS:igemm.ROW_FIELDS + 12:4] == [363, 66, 6]  # n, i, j
    d = igemm.descriptor(input_grad)  # dy read at (h - kh) / 2: guarded, with divisors
    assert (d[igemm.E1], d[igemm.D1], d[igemm.E2], d[igemm.D2], d[igemm.GUARDED]) == (5, 2, 5, 2, 2)
    assert input_grad.reduce.contraction[0].shape == (None, 5, 5, 8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape,w_shape,kwargs", CASES)
@pytest.mark.parametrize("threads", ["1", "2"])
def test_implicit_gemm_equals_the_direct_loop_and_numpy(x_shape, w_shape, kwargs, dtype, threads, monkeypatch,
                                                        tmp_path):
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", threads)
    fetches = _conv_step(x_shape, w_shape, kwargs, dtype)
    ref = gn.compile(fetches, backend="numpy")
    text = lambda fn: fn.executable.lp.to_text()  # noqa: E731
    fast = gn.compile(fetches, backend="llvm")
    assert ("implicit gemm" in text(fast) or "direct" in text(fast)) == ("groups" not in kwargs)  # (or rowconv.py)
    # a compiler constant patched at run time is not in the compiled-function cache's key: an empty cache
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(igemm, "IGEMM_MIN_STATIC", 1 << 60)
    direct = gn.compile(fetches, backend="llvm")
    assert not direct.from_cache and "implicit gemm" not in text(direct)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for batch in (x_shape[0], 1, 7):  # partial and growing batches
        feeds = _feeds(x_shape, w_shape, fetches, batch, dtype, seed=batch)
        want = ref(**feeds)
        for name, fn in (("implicit gemm", fast), ("direct loop", direct)):
            for got, expected in zip(fn(**feeds), want):
                scale = np.abs(expected).max()
                np.testing.assert_allclose(got / scale, expected / scale, rtol=0, atol=tol, err_msg=name)



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape,w_shape,kwargs", CASES[:3])
def test_implicit_gemm_rows_in_chunks_the_threads_claim_equal_numpy(x_shape, w_shape, kwargs, dtype, monkeypatch,
                                                                    tmp_path):
    """At two threads with PARALLEL_MIN_FLOPS and MIN_CHUNK_ROWS patched (in an empty cache), every conv
    kernel is an implicit GEMM whose C rows split into chunks of one or two MR blocks (the last one
    partial) that the threads claim in turn, each chunk packing its own B; partial batches."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "2")
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(igemm, "PARALLEL_MIN_FLOPS", 0)
    monkeypatch.setattr(igemm, "MIN_CHUNK_ROWS", 1)
    monkeypatch.setattr(rowconv, "MIN_ROW_SHARE", 2.0)  # no direct convs: every conv kernel packs
    monkeypatch.setattr(colconv, "VECTORS", 0)
    monkeypatch.setattr(tapconv, "MAX_TAPS", 0)
    fetches = _conv_step(x_shape, w_shape, kwargs, dtype)
    fn = gn.compile(fetches, backend="llvm")
    assert fn.executable.lp.to_text().count("implicit gemm") == 3
    _check(fetches, fn, x_shape, w_shape, dtype, 1e-4 if dtype == np.float32 else 1e-11)


def test_a_border_copy_is_not_shared_across_a_kernel_writing_its_image():
    from codegen.loopir import Affine, Const, Kernel, Store
    fetches = _conv_step((2, 10, 10, 3), (3, 3, 3, 8), dict(padding="same"), np.float32)
    passes = loop_passes(lambda *a, **k: 64, 1, AVX2)
    lp = _prepared(fetches, passes[:[p.__name__ for p in passes].index("border_conv_images")] + [None])
    image = next(k.reduce.value.args[0].buffer for k in lp.kernels if k.reduce is not None and "filter" in k.name)
    at = next(i for i, k in enumerate(lp.kernels) if k.reduce is not None and "filter" in k.name)
    lp.kernels.insert(at, Kernel("overwrite", (1,), [Store(image, Affine(), Const(1.0, np.dtype(np.float32)), "x", "")]))
    border_conv_images(AVX2)(lp)
    names = [k.name for k in lp.kernels]
    assert names.count("border") == 2  # x for the forward, x again
    assert names.count("planar") == 1  # dy, channel-major and bordered, for the input gradient's row conv
    forward, filter_grad = (next(k for k in lp.kernels if k.name.startswith(op)) for op in ("conv2d_relu", "conv2d_filter"))
    assert forward.reduce.value.args[0].buffer != filter_grad.reduce.value.args[0].buffer
    assert names[names.index(filter_grad.name) - 1] == "border"

PACKING_CASES = [  # geometries for the packing paths: (x shape, filter shape, keyword arguments)
    ((2, 14, 14, 1), (5, 5, 1, 6), dict()),  # lenet's conv1: one input channel, valid
    ((3, 8, 9, 6), (5, 5, 6, 16), dict()),  # conv2: its input gradient reads zero taps (full padding)
    ((2, 9, 8, 5), (3, 3, 5, 7), dict(padding="same")),  # "same" padding: panels inside and at borders
    ((2, 15, 14, 3), (3, 3, 3, 8), dict(strides=2, padding="same")),  # strided: the divisor (scalar) path
    ((2, 3, 9, 10), (4, 3, 3, 5), dict(data_format="NCHW", padding=((2, 1), (0, 2)), dilation_rate=(1, 2))),
]


def _on_target(monkeypatch, target):
    """Compile LLVM functions (step and GEMM library) for `target` instead of the host."""
    from codegen.llvm import backend
    monkeypatch.setattr(backend, "host_target", lambda: target)


def _check(fetches, fn, x_shape, w_shape, dtype, tol, feeds=None):
    ref = gn.compile(fetches, backend="numpy")
    for batch in (x_shape[0], 5):
        f = feeds or _feeds(x_shape, w_shape, fetches, batch, dtype, seed=batch)
        for got, expected in zip(fn(**f), ref(**f)):
            finite = np.isfinite(expected)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
            np.testing.assert_array_equal(got[~finite], expected[~finite])
            scale = np.abs(expected[finite]).max(initial=1.0)
            np.testing.assert_allclose(got[finite] / scale, expected[finite] / scale, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_implicit_gemm_over_several_k_blocks_of_balanced_depth_equals_numpy(dtype, monkeypatch, tmp_path):
    """KC_MAX patched to 8 (in an empty cache): each conv's K (45, 63, ... and the filter gradients'
    batch x positions) runs in blocks of an even depth computed at run time, the last one shorter; C
    accumulates over them, the first block storing; partial batches, two threads. The last case is
    narrow, its k in adjacent pairs (igemm's paired blocks): K = 10 as 6 + 4, not 5 + 5."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "2")
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(igemm.KC_MAX, np.dtype(dtype).name, 8)
    monkeypatch.setattr(rowconv, "MIN_ROW_SHARE", 2.0)  # no direct convs: every conv kernel packs
    monkeypatch.setattr(colconv, "VECTORS", 0)
    monkeypatch.setattr(tapconv, "MAX_TAPS", 0)
    for x_shape, w_shape, kwargs in CASES[:4] + [((2, 12, 12, 2), (1, 5, 2, 4), dict(padding="same"))]:
        with gn.Graph():
            fetches = _conv_step(x_shape, w_shape, kwargs, dtype)
            fn = gn.compile(fetches, backend="llvm")
            assert fn.executable.lp.to_text().count("implicit gemm") == 3
            _check(fetches, fn, x_shape, w_shape, dtype, 1e-4 if dtype == np.float32 else 1e-11)


@pytest.mark.parametrize("target_name", ["avx2", "scalar"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_implicit_gemm_packing_on_avx2_and_scalar_targets(target_name, dtype, monkeypatch, tmp_path):
    from codegen.llvm.target import SCALAR
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "1")
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))  # a patched constant: an empty cache
    monkeypatch.setattr(rowconv, "MIN_ROW_SHARE", 2.0)  # no direct convs (test_rowconv.py): every conv packs
    monkeypatch.setattr(colconv, "VECTORS", 0)
    monkeypatch.setattr(tapconv, "MAX_TAPS", 0)
    _on_target(monkeypatch, {"avx2": AVX2, "scalar": SCALAR}[target_name])
    for x_shape, w_shape, kwargs in PACKING_CASES:
        with gn.Graph():
            fetches = _conv_step(x_shape, w_shape, kwargs, dtype)
            fn = gn.compile(fetches, backend="llvm")
            assert fn.executable.lp.to_text().count("implicit gemm") == 3
            _check(fetches, fn, x_shape, w_shape, dtype, 1e-4 if dtype == np.float32 else 1e-11)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape,w_shape,kwargs", PACKING_CASES[:3])
def test_implicit_gemm_propagates_nan_and_inf_as_the_reference(x_shape, w_shape, kwargs, dtype, monkeypatch):
    """An Inf filter tap makes NaN wherever the input gradient's zero (padding) terms meet it (0 * inf),
    a NaN pixel reaches every output its windows cover: the packing's zeros take part like the
    reference's."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "1")
    fetches = _conv_step(x_shape, w_shape, kwargs, dtype)
    fn = gn.compile(fetches, backend="llvm")
    text = fn.executable.lp.to_text()
    assert text.count("implicit gemm") + text.count("direct") == 3  # narrow ones direct (rowconv.py, kconv.py)
    feeds = _feeds(x_shape, w_shape, fetches, x_shape[0], dtype)
    feeds["x"][0, 3, 2, 0] = np.nan
    feeds["x"][-1, 1, 4, -1] = np.inf
    feeds["w"][1, 2, 0, -1] = np.inf
    feeds["weights"][0, 1, 1, 0] = -np.inf
    _check(fetches, fn, x_shape, w_shape, dtype, 1e-4 if dtype == np.float32 else 1e-11, feeds)


def test_a_flipped_filter_is_an_implicit_gemm_operand_with_a_constant_offset():
    """Fuzz finding 0:12962: a conv operand read through flip has a constant part in its offset, which
    `operands` unpacked as (var, coef, nexp) triples: ValueError at compile time."""
    x = gn.placeholder("x", (None, 10, 10, 4))
    w = gn.variable("w", np.random.default_rng(1).normal(size=(3, 3, 4, 8)).astype(np.float32))
    y = gn.conv2d(x, gn.flip(w, (0, 1)), padding="same")
    fast, ref = gn.compile(y, backend="llvm"), gn.compile(y, backend="numpy")
    text = fast.executable.lp.to_text()
    assert "implicit gemm" in text or "direct conv" in text  # both read their operands by `operands`
    feed = np.random.default_rng(2).normal(size=(3, 10, 10, 4)).astype(np.float32)
    np.testing.assert_allclose(fast(x=feed), ref(x=feed), rtol=1e-5, atol=1e-5)
