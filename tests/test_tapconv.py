"""Tap convs (codegen/llvm/tapconv.py): which kernels take the path (cifar's first conv and its filter
gradient: K = 27 taps, 32 filters in two vectors), the tile plan, and values against numpy on odd
geometry (rows not a multiple of a tile, phases of unequal length, padding, strides, dilation, a 1 x k
filter, NCHW), partial batches, float32 and float64, one and two threads, AVX-512 and AVX2."""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphnet as gn
from codegen.llvm import direct, tapconv
from codegen.llvm.gemm_schedule import loop_passes
from codegen.llvm.jit import host_target
from codegen.llvm.target import AVX2, TargetInfo
from test_igemm import _check, _conv_step, _on_target
from test_schedules import _prepared, _scheduled_llvm

AVX512 = TargetInfo("skylake-avx512", "+avx,+avx2,+fma,+sse2,+avx512f", 512, True, 32)
AVX512_ONLY = host_target().vector_bits == 512


def _conv_kernels(fetches, target=AVX512):
    lp = _prepared(fetches, loop_passes(lambda *a, **k: 64, 1, target))
    return {k.name: k for k in lp.kernels if len(k.domain) == 8}


def test_cifars_first_conv_and_its_filter_gradient_are_tap_convs():
    """The forward (K = 3 x 3 x 3) in tiles of 11 positions 3 apart (each phase of a 32-wide row one
    tile), its stores per tile; the filter gradient in two tiles of 14 and 13 taps; its input gradient
    (3 columns) stays a row conv, the second conv (K = 288) and its input gradient implicit GEMMs."""
    x = gn.placeholder("x", (None, 32, 32, 3))
    w1 = gn.placeholder("w1", (3, 3, 3, 32))
    w2 = gn.placeholder("w2", (3, 3, 32, 32))
    h = gn.relu(gn.conv2d(x, w1, padding="same"))
    y = gn.conv2d(h, w2, padding="same")
    weights = gn.placeholder("weights", (None, 32, 32, 32))
    schedules = _scheduled_llvm([y, *gn.gradients(gn.sum(y * weights), [x, w1])], threads=2, target=AVX512)
    assert sum(s.startswith("direct conv, 2 vectors of columns, 1 x 11 positions 3 apart per tile, taps written "
                            "out, stores per tile by images") for s in schedules) == 1
    assert sum(s.startswith("direct filter gradient, 2 vectors of columns, 14 taps per tile written out by taps")
               for s in schedules) == 1
    assert sum(s.startswith("direct conv, output rows") for s in schedules) == 1
    assert sum(s.startswith("implicit gemm") for s in schedules) == 2


def test_tap_convs_read_a_padded_image_in_place_and_a_wide_border_from_a_copy():
    """cifar's conv1 and its filter gradient read x itself (guards on the 2 peeled rows, and on the
    gradient's 2 peeled rows and columns of each image): no bordered copy of x. A padding leaving
    more than MAX_PEELED rows partly outside (5 at the top, 5 at the bottom) gives both a bordered copy."""
    for pad, copied in ((1, False), (5, True)):
        with gn.Graph():
            fetches = _conv_step((2, 32, 32, 3), (3, 3, 3, 32), dict(padding=((pad, pad), (1, 1))), np.float32)
            lp = _prepared(fetches, loop_passes(lambda *a, **k: 64, 1, AVX512))
            kernels = [k for k in lp.kernels if len(k.domain) == 8 and tapconv.marked(k)]
            assert len(kernels) == 2, pad
            assert all(tapconv.reads_guards(k) != copied for k in kernels)
            assert ("border" in [k.name for k in lp.kernels]) == copied
            if not copied:  # rows and columns 1 to 30 read no padding
                assert [tapconv.interior(k) for k in kernels] == [{1: (1, 31), 2: (1, 31)}, {6: (1, 31), 7: (1, 31)}]


def test_a_guarded_tap_conv_propagates_nan_and_inf_as_the_reference(monkeypatch, tmp_path):
    """The padding's zeros meet an infinite tap (0 * inf: NaN in the reference, as in a bordered copy)
    and a NaN pixel's windows, on peeled rows and columns and inside."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "1")
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    x_shape, w_shape = (2, 12, 14, 3), (3, 3, 3, 32)
    fetches = _conv_step(x_shape, w_shape, dict(padding="same"), np.float32)
    fn = gn.compile(fetches, backend="llvm")
    if AVX512_ONLY:
        assert not any(k.name.endswith("_border") for k in fn.executable.lp.kernels)
    rng = np.random.default_rng(3)
    for inf_tap, nan_pixel in (((0, 2, 1, 4), (0, 3, 2, 0)), ((2, 0, 0, 31), (1, 0, 13, 2))):
        feeds = {"x": rng.normal(size=x_shape).astype(np.float32), "w": rng.normal(size=w_shape).astype(np.float32),
                 "weights": rng.uniform(0.5, 1.5, (2, 12, 14, 32)).astype(np.float32)}
        feeds["x"][nan_pixel] = np.nan
        feeds["w"][inf_tap] = np.inf
        _check(fetches, fn, x_shape, w_shape, np.float32, 1e-4, feeds)


@pytest.mark.parametrize("image,filters,kernel,target,expected", [
    ((32, 32, 3), 32, 3, AVX512, True),
    ((32, 32, 3), 64, 3, AVX512, True),  # 4 vectors: 6 positions per tile
    ((32, 32, 3), 80, 3, AVX512, False),  # 5 vectors
    ((32, 32, 3), 24, 3, AVX512, False),  # not whole vectors
    ((32, 32, 3), 16, 3, AVX512, False),  # one vector: a column conv's
    ((32, 32, 4), 32, 3, AVX512, False),  # 36 taps > MAX_TAPS
    ((28, 28, 1), 32, 5, AVX512, True),  # 25 taps
    ((32, 32, 3), 32, 3, AVX2, False),  # 4 vectors of 8 lanes in 16 registers: 2 positions per tile
])
def test_the_rule_needs_whole_vectors_of_columns_few_taps_and_registers(image, filters, kernel, target, expected):
    fetches = _conv_step((2, *image), (kernel, kernel, image[2], filters), dict(padding="same"), np.float32)
    kernels = _conv_kernels(fetches, target)
    forward = next(k for name, k in kernels.items() if "filter_grad" not in name)
    grad = next(k for name, k in kernels.items() if "filter_grad" in name)
    assert tapconv.marked(forward) == expected and tapconv.marked(grad) == expected


def test_a_forward_tile_spaces_its_positions_so_no_element_is_read_twice_per_tap_group():
    """Per iteration of the outer K var (a filter row), a tile's taps read (kw, c) at 3 * kw + c from each
    position: positions 3 apart (a 3-wide filter) read distinct elements, 1 apart they would share them.
    A 1 x 1 filter's positions never share: no spacing; nor a 1 x 3 filter's, which loops over its width
    (v6), each iteration reading one element per channel."""
    for w_shape, spacing, outer in (((3, 3, 3, 32), 3, 5), ((1, 1, 16, 32), 1, 7), ((1, 3, 3, 32), 1, 6),
                                    ((3, 2, 2, 32), 2, 5)):
        with gn.Graph():
            x = gn.placeholder("x", (None, 16, 16, w_shape[2]))
            kernels = _conv_kernels([gn.conv2d(x, gn.placeholder("w", w_shape))])
            (k,) = kernels.values()
            assert tapconv.marked(k), w_shape
            assert tapconv.plan(k, AVX512).spacing == spacing and tapconv.outer_var(k.domain) == outer, w_shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_a_forward_tile_prefetches_each_line_of_its_outputs_once(dtype, data_format, monkeypatch, tmp_path):
    """Before its FMAs a forward tile prefetches, for writing, each cache line its stores will write:
    with 32 filters a position's columns are as many lines as vectors (float32: 2 of 16 lanes, float64:
    4 of 8), one prefetch per vector the tile keeps. NCHW's columns are an image apart: none."""
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    if not AVX512_ONLY:
        _on_target(monkeypatch, AVX512)
    x_shape = (2, 32, 32, 3) if data_format == "NHWC" else (2, 3, 32, 32)
    fetches = _conv_step(x_shape, (3, 3, 3, 32), dict(padding="same", data_format=data_format), dtype)
    ir_text = gn.compile(fetches, backend="llvm").executable.ir_text
    start = ir_text.index('_tapconv"(i64 %"N", i64 %"begin"')
    body = ir_text[start:ir_text.index("\n}\n", start)]
    tile_vectors = len(re.findall(r"store <\d+ x (?:float|double)>", body))
    assert tile_vectors > 0
    assert body.count('call void @"llvm.prefetch.p0"(') == (tile_vectors if data_format == "NHWC" else 0)


CASES = [  # (x shape, filter shape, keyword arguments): a tap conv forward and filter gradient on AVX-512
    ((3, 32, 32, 3), (3, 3, 3, 32), dict(padding="same")),  # cifar's conv1
    ((2, 9, 13, 3), (3, 3, 3, 48), dict(padding="same")),  # 3 vectors; phases of 5, 4 and 4 positions
    ((2, 10, 11, 2), (3, 2, 2, 64), dict(strides=(2, 1))),  # 4 vectors, strided rows
    ((2, 12, 17, 3), (2, 3, 3, 32), dict(dilation_rate=(2, 2), padding=((1, 0), (2, 1)))),
    ((2, 7, 30, 1), (1, 5, 1, 32), dict(padding="same")),  # a 1 x 5 filter: the loop over its width
    ((2, 3, 11, 10), (3, 3, 3, 32), dict(data_format="NCHW", padding="same")),  # the filter gradient packs
    ((2, 7, 5, 16), (1, 1, 16, 32), dict()),  # 1 x 1: positions 1 apart, tiles of 2 rows, a remainder row
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape,w_shape,kwargs", CASES)
@pytest.mark.parametrize("threads", ["1", "2"])
def test_tap_convs_equal_numpy(x_shape, w_shape, kwargs, dtype, threads, monkeypatch, tmp_path):
    """At two threads with PARALLEL_MIN_FLOPS patched to 0 (in an empty cache) the images, or the
    tiles of taps, split over the threads (an odd batch unevenly); a batch of 5 after the first."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", threads)
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(direct, "PARALLEL_MIN_FLOPS", 0)
    fetches = _conv_step(x_shape, w_shape, kwargs, dtype)
    fn = gn.compile(fetches, backend="llvm")
    text = fn.executable.lp.to_text()
    if AVX512_ONLY and (dtype == np.float32 or w_shape[3] <= 32):  # float64: 8 lanes, at most 4 vectors
        assert "positions" in text and "apart per tile, taps written out" in text
        nchw = kwargs.get("data_format") == "NCHW"
        assert ("taps per tile written out" in text) == (not nchw)  # NCHW's dy has no contiguous channels
    _check(fetches, fn, x_shape, w_shape, dtype, 1e-4 if dtype == np.float32 else 1e-11)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tap_convs_on_avx2(dtype, monkeypatch, tmp_path):
    """16 vector registers: float64's 8 filters are 2 vectors of 4 lanes (6 positions per tile);
    float32's 16 filters too (2 of 8)."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "1")
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    _on_target(monkeypatch, AVX2)
    filters = 2 * AVX2.lanes(np.dtype(dtype).name)
    x_shape, w_shape = (2, 11, 14, 3), (3, 3, 3, filters)
    fetches = _conv_step(x_shape, w_shape, dict(padding="same"), dtype)
    fn = gn.compile(fetches, backend="llvm")
    text = fn.executable.lp.to_text()
    assert "direct conv, 2 vectors of columns, 1 x 5 positions 3 apart per tile" in text
    assert "direct filter gradient, 2 vectors of columns, 6 taps per tile" in text
    _check(fetches, fn, x_shape, w_shape, dtype, 1e-4 if dtype == np.float32 else 1e-11)


def test_a_tap_conv_filter_gradient_sums_each_image_in_float32_and_the_images_in_float64(monkeypatch):
    """65536 positive products per tap and filter (cifar's batch): one float32 chain would drift by
    ~1e-4 (the implicit GEMM's float32 C over blocks of 256: 1.5e-7 median, 6e-7 at most); each
    filter's chain over one image (1024 products), then a float64 total per lane: a few ulps at most."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "1")
    attrs = dict(kernel_size=(3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), dilations=(1, 1), groups=1,
                 data_format="NHWC")
    x = gn.placeholder("x", (None, 32, 32, 3))
    dy = gn.placeholder("dy", (None, 32, 32, 32))
    fn = gn.compile([gn.ops.apply("conv2d_filter_grad", [x, dy], **attrs)], backend="llvm")
    if AVX512_ONLY:
        assert "direct filter gradient, 2 vectors of columns" in fn.executable.lp.to_text()
    rng = np.random.default_rng(0)
    feeds = {"x": rng.uniform(0, 1, (64, 32, 32, 3)).astype(np.float32),
             "dy": rng.uniform(0, 1, (64, 32, 32, 32)).astype(np.float32)}
    padded = np.pad(feeds["x"].astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((3, 3, 3, 32))
    for kh in range(3):
        for kw in range(3):
            want[kh, kw] = np.einsum("nijc,nijf->cf", padded[:, kh:kh + 32, kw:kw + 32], feeds["dy"].astype(np.float64))
    error = np.abs(fn(**feeds)[0] - want) / want
    assert error.max() < 4e-7 and np.median(error) < 6e-8, (error.max(), np.median(error))


def test_a_tap_conv_with_a_static_batch(monkeypatch, tmp_path):
    """A batch fixed by the graph (no N in the loop nests): the forward's images and the gradient's K
    (v5) are static loops."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "1")
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    attrs = dict(kernel_size=(3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), dilations=(1, 1), groups=1,
                 data_format="NHWC")
    x = gn.placeholder("x", (3, 10, 12, 3))
    w = gn.placeholder("w", (3, 3, 3, 32))
    dy = gn.placeholder("dy", (3, 10, 12, 32))
    fetches = [gn.relu(gn.conv2d(x, w, padding="same")), gn.ops.apply("conv2d_filter_grad", [x, dy], **attrs)]
    fn = gn.compile(fetches, backend="llvm")
    if AVX512_ONLY:
        text = fn.executable.lp.to_text()
        assert "1 x 4 positions 3 apart per tile, taps written out" in text and "14 taps per tile written out" in text
    rng = np.random.default_rng(1)
    feeds = {"x": rng.normal(size=(3, 10, 12, 3)).astype(np.float32),
             "w": rng.normal(size=(3, 3, 3, 32)).astype(np.float32),
             "dy": rng.normal(size=(3, 10, 12, 32)).astype(np.float32)}
    reference = gn.compile(fetches, backend="numpy")
    for got, want in zip(fn(**feeds), reference(**feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
