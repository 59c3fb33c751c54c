"""Direct convolutions (codegen/llvm/rowconv.py, kconv.py, colconv.py): which kernels take each path,
the channel-major copies their operands get, and their values against numpy on odd geometry (row
tails shorter than a vector, heights not a multiple of the tile, padding, strides, dilation, NCHW,
flipped filters, NaN/Inf, partial batches, float32 and float64, one and two threads, AVX-512 and AVX2)."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from codegen.llvm import colconv, direct, rowconv
from codegen.llvm.gemm_schedule import loop_passes
from codegen.llvm.jit import host_target
from codegen.llvm.target import AVX2, TargetInfo
from test_igemm import _check, _conv_step, _on_target
from test_schedules import _prepared, _scheduled_llvm

AVX512 = TargetInfo("skylake-avx512", "+avx,+avx2,+fma,+sse2,+avx512f", 512, True, 32)

CASES = [  # (x shape, filter shape, keyword arguments): each has a row conv in float32 and float64
    ((2, 28, 28, 1), (5, 5, 1, 4), dict()),  # lenet's conv1 (4 filters: also narrow in float64)
    ((3, 19, 21, 1), (3, 3, 1, 3), dict()),  # rows of 19: a masked tail; 17 rows: a remainder tile
    ((2, 11, 13, 4), (5, 5, 4, 9), dict()),  # input gradient of 4 channels: bordered channel-major dy
    ((2, 3, 12, 15), (3, 3, 3, 4), dict(data_format="NCHW", padding="same", dilation_rate=(2, 1))),
    ((2, 10, 17, 2), (3, 4, 2, 3), dict(padding=((1, 2), (2, 0)))),  # uneven padding, 2 input channels
    ((3, 3, 16, 19), (3, 1, 3, 4), dict(data_format="NCHW")),  # a 1-wide filter: rows one run, no copy
    ((3, 12, 12, 1), (5, 5, 1, 4), dict()),  # 8-wide rows (float32): no whole vector, two rows per vector
]


def _lenet_conv2_input_gradient():
    """lenet's conv2 (12 x 12 x 6 -> 8 x 8 x 16, 5 x 5) input gradient, prepared for AVX-512 at one
    thread: the loop program and the gradient's kernel."""
    x = gn.placeholder("x", (None, 12, 12, 6))
    w = gn.placeholder("w", (5, 5, 6, 16))
    y = gn.conv2d(x, w)
    weights = gn.placeholder("weights", (None, 8, 8, 16))
    lp = _prepared([y, *gn.gradients(gn.sum(y * weights), [x])], loop_passes(lambda *a, **k: 64, 1, AVX512))
    return lp, next(k for k in lp.kernels if "input_grad" in k.name)


def test_an_input_gradient_reads_rows_as_one_run_from_a_copy_with_overlapping_borders():
    """conv2's input gradient (dy 8 x 8 x 16 -> 12 x 12 x 6, 5 x 5): its channel-major copy of dy has rows
    12 apart (the output row's width) with their 4-wide zero borders overlapping, so the row conv runs
    the 144 positions as one run (9 vectors) instead of 12 rows of 16 lanes with 4 idle."""
    lp, grad = _lenet_conv2_input_gradient()
    image = grad.reduce.contraction[0]
    assert rowconv.marked(grad) and lp.buffers[image.buffer].shape == (None, 16, 17 * 12)
    assert str(image.coords[2]) == "12*v1 + -12*v5 + v2 + -1*v6 + 52"  # (v1 - v5 + 4) * 12 + v2 - v6 + 4
    copy = next(k for k in lp.kernels if k.name == "planar")
    assert copy.domain == (None, 16, 17, 12)  # one more row: the last row's right border


def test_a_narrow_conv_and_input_gradient_run_along_rows_and_a_wide_one_packs():
    """lenet's conv1 (6 filters) and conv2's input gradient (6 channels) are row convs, the input
    gradient reading a bordered channel-major copy of dy; conv2 (16 filters: one vector) and its filter
    gradient (K = the batch's pixels, 150 taps in 6 tiles of 25) are column convs (colconv.py)."""
    x = gn.placeholder("x", (None, 12, 12, 6))
    w = gn.placeholder("w", (5, 5, 6, 16))
    y = gn.conv2d(x, w)
    fetches = [y, *gn.gradients(gn.sum(y * y), [x, w])]
    schedules = _scheduled_llvm(fetches, threads=2, target=AVX512)
    rows = [s for s in schedules if s.startswith("direct conv, output rows")]
    assert len(rows) == 1 and "along 16 lanes in 3-row tiles, stores per tile" in rows[0] and "by images" in rows[0]
    assert "3 tiles written out, 33 live (vector, v5) pairs of 9 vectors" in rows[0]  # of 45: rows of zeros skipped
    assert not any(s.startswith("implicit gemm") for s in schedules)
    assert sum(s.startswith("direct conv, one vector of columns, 3 x 8 positions per tile by images")
               for s in schedules) == 1
    assert sum(s.startswith("direct filter gradient, one vector of columns, 25 taps per tile by taps")
               for s in schedules) == 1
    with gn.Graph():
        x = gn.placeholder("x", (None, 28, 28, 1))
        w = gn.placeholder("w", (5, 5, 1, 6))
        schedules = _scheduled_llvm([gn.relu(gn.conv2d(x, w))], threads=1, target=AVX512)
    assert any(s.startswith("direct conv, output rows along 16 lanes in 3-row tiles, stores per tile, two rows' "
                            "tails per vector serial") for s in schedules)  # 24-wide rows: 1.5 vectors each


def test_the_rule_needs_narrow_columns_and_full_enough_rows():
    for image, filters, expected in [((28, 28, 1), 6, True), ((28, 28, 1), 9, False), ((12, 12, 1), 6, True),
                                     ((11, 11, 1), 6, False)]:
        with gn.Graph():
            x = gn.placeholder("x", (None, *image))
            w = gn.placeholder("w", (5, 5, image[2], filters))
            lp = _prepared([gn.conv2d(x, w)], loop_passes(lambda *a, **k: 64, 1, AVX512))
            conv = next(k for k in lp.kernels if len(k.domain) == 8)
            # 9 filters > half of 16 lanes; rows of 8 (12 - 4) fill half a vector, of 7 less
            assert rowconv.marked(conv) == expected, (image, filters)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape,w_shape,kwargs", CASES)
@pytest.mark.parametrize("threads", ["1", "2"])
def test_row_convs_equal_numpy(x_shape, w_shape, kwargs, dtype, threads, monkeypatch):
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", threads)
    fetches = _conv_step(x_shape, w_shape, kwargs, dtype)
    fn = gn.compile(fetches, backend="llvm")
    if host_target().vector_bits == 512:  # (every case has a row conv on AVX-512; fewer on narrower vectors)
        assert "direct conv" in fn.executable.lp.to_text()
    _check(fetches, fn, x_shape, w_shape, dtype, 1e-4 if dtype == np.float32 else 1e-11)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_convs_on_avx2(dtype, monkeypatch):
    """8 (float32) or 4 (float64) lanes: other tails and tile heights (16 vector registers)."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "1")
    _on_target(monkeypatch, AVX2)
    lanes = AVX2.lanes(np.dtype(dtype).name)
    # the first's input gradient (1 channel) is a row conv in both dtypes, the second's (3) in float32
    for x_shape, w_shape, rows in [((2, 17, 21, 1), (5, 5, 1, 3), 1), ((2, 9, 11, 3), (3, 3, 3, 8), lanes == 8)]:
        with gn.Graph():
            fetches = _conv_step(x_shape, w_shape, {}, dtype)
            fn = gn.compile(fetches, backend="llvm")
            assert fn.executable.lp.to_text().count(f"direct conv, output rows along {lanes} lanes") >= rows
            _check(fetches, fn, x_shape, w_shape, dtype, 1e-4 if dtype == np.float32 else 1e-11)


def test_a_flipped_filter_and_nan_and_inf_in_a_row_conv():
    """The filter read through flip (negative strides, a constant offset) and the reference's NaN where
    the border's zeros meet an infinite tap (0 * inf) or a NaN pixel's windows."""
    x_shape, w_shape = (2, 12, 14, 3), (3, 3, 3, 5)
    px = gn.placeholder("x", (None, 12, 14, 3))
    pw = gn.placeholder("w", w_shape)
    y = gn.conv2d(px, gn.flip(pw, (0, 1)), padding="same")
    weights = gn.placeholder("weights", (None, 12, 14, 5))
    fetches = [y, *gn.gradients(gn.sum(y * weights), [px])]
    fn = gn.compile(fetches, backend="llvm")
    if host_target().vector_bits == 512:
        assert fn.executable.lp.to_text().count("direct conv") == 2  # forward, input gradient
    rng = np.random.default_rng(3)
    feeds = {"x": rng.normal(size=x_shape).astype(np.float32), "w": rng.normal(size=w_shape).astype(np.float32),
             "weights": rng.uniform(0.5, 1.5, (2, 12, 14, 5)).astype(np.float32)}
    feeds["x"][0, 3, 2, 0] = np.nan
    feeds["w"][0, 2, 1, 4] = np.inf
    _check(fetches, fn, x_shape, w_shape, np.float32, 1e-4, feeds)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_convs_split_over_two_threads(dtype, monkeypatch, tmp_path):
    """Below PARALLEL_MIN_FLOPS a direct conv runs on the caller: patched to 0 (in an empty cache), every
    row conv splits its images over the two threads (an odd batch unevenly), every K conv its blocks of taps."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "2")
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(direct, "PARALLEL_MIN_FLOPS", 0)  # every direct conv's parallel loop
    for x_shape, w_shape, kwargs in CASES[1:3]:
        with gn.Graph():
            fetches = _conv_step(x_shape, w_shape, kwargs, dtype)
            fn = gn.compile(fetches, backend="llvm")
            assert not fn.from_cache
            if host_target().vector_bits == 512:
                assert " by images" in fn.executable.lp.to_text()
            _check(fetches, fn, x_shape, w_shape, dtype, 1e-4 if dtype == np.float32 else 1e-11)


def test_a_narrow_filter_gradient_runs_along_image_rows_with_a_channel_major_dy():
    """lenet's conv1 filter gradient (25 taps x 6 channels, K = the batch's pixels) is a K conv
    (kconv.py): 3 taps per register tile on AVX-512, dy copied channel-major (NHWC: its rows are strided
    by the 6 channels); NCHW's dy rows are contiguous already: no copy."""
    from codegen.llvm.schedule import schedule_llvm
    for fmt, shape in (("NHWC", (2, 28, 28, 1)), ("NCHW", (2, 1, 28, 28))):
        with gn.Graph():
            fetches = _conv_step(shape, (5, 5, 1, 6), dict(data_format=fmt), np.float32)
            lp = _prepared(fetches, loop_passes(lambda *a, **k: 64, 2, AVX512))
            schedules = [str(k.schedule) for k in schedule_llvm(2, AVX512)(lp).kernels]
            assert any(s.startswith("direct filter gradient, image rows along 16 lanes, two rows' tails per vector, "
                                    "3 taps per tile, images outside the tiles by taps")  # 24-wide rows
                       for s in schedules), schedules
            grad = next(k for k in lp.kernels if "filter_grad" in k.name)
            copies = {k.stores[0].buffer for k in lp.kernels if k.name == "planar"}
            assert (grad.reduce.contraction[1].buffer in copies) == (fmt == "NHWC")


def test_a_k_conv_sums_each_image_in_float32_and_the_images_in_float64(monkeypatch):
    """36864 positive products per filter tap: one float32 chain would drift by ~1e-4; per-lane chains
    over one image, their lanes summed pairwise, then a float64 total, stay within a few ulps."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "1")
    fetches = _conv_step((64, 28, 28, 1), (5, 5, 1, 6), {}, np.float32)
    fn = gn.compile(fetches, backend="llvm")
    if host_target().vector_bits == 512:
        assert "direct filter gradient" in fn.executable.lp.to_text()
    rng = np.random.default_rng(0)
    feeds = {"x": rng.uniform(0, 1, (64, 28, 28, 1)).astype(np.float32), "w": np.zeros((5, 5, 1, 6), np.float32),
             "weights": rng.uniform(0, 1, (64, 24, 24, 6)).astype(np.float32)}
    x64, dy64 = feeds["x"][..., 0].astype(np.float64), feeds["weights"].astype(np.float64)
    want = np.zeros((5, 5, 1, 6))
    for kh in range(5):
        for kw in range(5):
            want[kh, kw, 0] = np.einsum("nij,nijc->c", x64[:, kh:kh + 24, kw:kw + 24], dy64)
    np.testing.assert_allclose(fn(**feeds)[2], want, rtol=2e-7)


COLUMN_CASES = [  # (x shape, filter shape without the filter count, keyword arguments): one vector of filters
    ((2, 12, 12, 6), (5, 5, 6), dict()),  # lenet's conv2: 3 x 8 positions per tile
    ((3, 9, 31, 2), (3, 3, 2), dict(padding="same")),  # rows of 31 (two segments), a bordered copy
    ((2, 11, 10, 3), (3, 2, 3), dict(strides=(2, 1), dilation_rate=(1, 2), padding=((1, 1), (0, 2)))),
    ((2, 3, 10, 9), (3, 3, 3), dict(data_format="NCHW")),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape,w_shape,kwargs", COLUMN_CASES)
@pytest.mark.parametrize("threads", ["1", "2"])
def test_column_convs_equal_numpy(x_shape, w_shape, kwargs, dtype, threads, monkeypatch, tmp_path):
    """A forward conv whose filters fill one vector (16 float32 or 8 float64 on AVX-512), and its filter
    gradient, run as column convs (colconv.py); at two threads with PARALLEL_MIN_FLOPS patched to 0 (an
    empty cache) the images, or the tiles of taps, split over the threads."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", threads)
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(direct, "PARALLEL_MIN_FLOPS", 0)
    lanes = host_target().lanes(np.dtype(dtype).name)
    fetches = _conv_step(x_shape, (*w_shape, lanes), kwargs, dtype)
    fn = gn.compile(fetches, backend="llvm")
    text = fn.executable.lp.to_text()
    assert "direct conv, one vector of columns" in text  # and the filter gradient where dy's channels are contiguous
    assert ("direct filter gradient, one vector of columns" in text) == (kwargs.get("data_format") != "NCHW")
    _check(fetches, fn, x_shape, (*w_shape, lanes), dtype, 1e-4 if dtype == np.float32 else 1e-11)


def test_a_column_conv_writes_out_at_most_max_tiles():
    """A filter gradient with 3 x 3 x 64 taps would write out 21 tiles of 28: it stays an implicit GEMM."""
    for cin, expected in ((32, True), (64, False)):
        with gn.Graph():
            fetches = _conv_step((2, 10, 10, cin), (3, 3, cin, 16), {}, np.float32)
            lp = _prepared(fetches, loop_passes(lambda *a, **k: 64, 1, AVX512))
            grad = next(k for k in lp.kernels if "filter_grad" in k.name)
            assert colconv.marked(grad) == expected, cin


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_filter_gradient_as_a_row_conv_sums_over_the_whole_batch(dtype, threads, monkeypatch):
    """Fuzz finding 0:16076: a padded filter gradient with few output channels (4) and its input channels
    (13) along the lanes is a row conv whose sum runs over the batch (v5 = N): it looped over no image
    and returned zeros. Against the numpy reference at several batch sizes."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", threads)
    attrs = dict(kernel_size=(3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), dilations=(1, 1), groups=1,
                 data_format="NHWC")
    with gn.Graph():
        x = gn.placeholder("x", (None, 3, 3, 13), dtype)
        dy = gn.placeholder("dy", (None, 3, 3, 4), dtype)
        grad = gn.ops.apply("conv2d_filter_grad", [x, dy], **attrs)
        fn, reference = gn.compile([grad], backend="llvm"), gn.compile([grad], backend="numpy")
    if host_target().vector_bits == 512:
        assert "direct conv, output rows" in fn.executable.lp.to_text()
    rng = np.random.default_rng(0)
    for batch in (1, 2, 5):
        feeds = {"x": rng.normal(size=(batch, 3, 3, 13)).astype(dtype),
                 "dy": rng.normal(size=(batch, 3, 3, 4)).astype(dtype)}
        np.testing.assert_allclose(fn(**feeds)[0], reference(**feeds)[0], rtol=1e-4 if dtype == np.float32 else 1e-11,
                                   atol=1e-5 if dtype == np.float32 else 1e-12)


def test_inside_meets_the_image_rows_and_columns_of_a_pitched_copy():
    """Rows 4..12 of 12-long rows hold the image in columns 4..12: indices 52..59 of row 4, not 48..51."""
    from codegen.window import Inside
    rows = Inside(4, 12, 12, 4, 12)
    assert not rows.meets(0, 47) and not rows.meets(48, 51) and rows.meets(48, 52) and rows.meets(59, 60)
    assert not rows.meets(60, 63) and rows.meets(139, 143) and not rows.meets(144, 203)
    assert Inside(2, 5).meets(4, 9) and not Inside(2, 5).meets(5, 9) and Inside().meets(7, 7)
    to_end = Inside(4, None, 12, 4, 12)  # rows from 4 to the axis's end
    assert to_end.meets(1000 * 12 + 4, 1000 * 12 + 4) and not to_end.meets(48, 51)


def test_an_input_gradient_skips_the_filter_rows_that_read_only_the_border():
    """conv2's input gradient: its 9 vectors of 16 positions (12-wide rows as one run) read dy's rows
    only for the filter rows v5 that reach dy's 8 rows from theirs: the first vector (rows 0 and 1)
    at v5 <= 1, the middle ones at every v5, the last (rows 10, 11) at v5 >= 3: 33 of 45."""
    _, grad = _lenet_conv2_input_gradient()
    assert "image at 0.., 0..16, rows 4..12 x 4..12 of 12" in str(grad.reduce.value)
    plan = rowconv.plan(grad, AVX512)
    vectors = [v for tile, count in plan.tiles for v in tile]
    assert [v.start for v in vectors] == list(range(0, 144, 16)) and [c for _, c in plan.tiles] == [16] * 3
    assert [v.live for v in vectors] == [(0, 1), (0, 1, 2), (0, 1, 2, 3), (0, 1, 2, 3, 4), (0, 1, 2, 3, 4),
                                         (0, 1, 2, 3, 4), (1, 2, 3, 4), (2, 3, 4), (3, 4)]


def test_an_unbordered_image_or_too_many_tiles_loop_over_the_tiles(monkeypatch):
    """lenet's conv1 reads its image in place (no border: nothing to skip); with at most one tile
    written out, the input gradient above loops over its tiles as before."""
    with gn.Graph():
        x = gn.placeholder("x", (None, 28, 28, 1))
        w = gn.placeholder("w", (5, 5, 1, 6))
        lp = _prepared([gn.conv2d(x, w)], loop_passes(lambda *a, **k: 64, 1, AVX512))
        conv = next(k for k in lp.kernels if len(k.domain) == 8)
        assert rowconv.marked(conv) and rowconv.plan(conv, AVX512).tiles == ()
    monkeypatch.setattr(rowconv, "MAX_STATIC_TILES", 1)
    with gn.Graph():
        fetches = _conv_step((2, 11, 13, 4), (5, 5, 4, 9), {}, np.float32)
        schedules = _scheduled_llvm(fetches, threads=1, target=AVX512)
        rows = [s for s in schedules if s.startswith("direct conv, output rows")]
        assert rows and not any("written out" in s for s in rows)


def test_a_tall_padded_narrow_conv_loops_over_its_tiles():
    """Fuzz finding 0:3596: a padded 3x3 conv of 32-row images into 4 filters had 32 tiles (376 live
    (vector, v5) pairs) written out, each with its own (v6, v7) loops: past the fuzzer's compile budget. Past
    MAX_LIVE_PAIRS the kernel loops over its tiles instead (skipping nothing); lenet's conv2 input
    gradient (33 pairs, test above) still skips."""
    fetches = _conv_step((2, 32, 32, 3), (3, 3, 3, 4), dict(padding="same"), np.float32)
    rows = [s for s in _scheduled_llvm(fetches, threads=2, target=AVX512) if s.startswith("direct conv, output rows")]
    assert rows and not any("written out" in s for s in rows)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_skipped_border_taps_still_make_nan_from_an_infinite_or_nan_filter(dtype, threads, monkeypatch):
    """The products the skipping leaves out are the border's zeros times the filter: 0 * inf and
    0 * NaN are NaN in the reference, so a vector skipping a filter row with an infinite or NaN tap
    is NaN too (an input gradient's flat run, and a padded forward conv's rows)."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", threads)
    for x_shape, w_shape, kwargs, bad in [((2, 11, 13, 4), (5, 5, 4, 9), {}, [(0, 2, 1, 4), (4, 0, 3, 8)]),
                                          ((2, 10, 17, 2), (3, 4, 2, 3), dict(padding=((1, 2), (2, 0))),
                                           [(2, 3, 1, 0)])]:
        with gn.Graph():
            fetches = _conv_step(x_shape, w_shape, kwargs, dtype)
            fn = gn.compile(fetches, backend="llvm")
            if host_target().vector_bits == 512:
                assert "written out" in fn.executable.lp.to_text()
            rng = np.random.default_rng(5)
            feeds = {"x": rng.normal(size=x_shape).astype(dtype), "w": rng.normal(size=w_shape).astype(dtype),
                     "weights": rng.uniform(0.5, 1.5, (x_shape[0],) + fetches[0].shape[1:]).astype(dtype)}
            feeds["w"][bad[0]] = np.inf
            if len(bad) > 1:
                feeds["w"][bad[1]] = np.nan
            _check(fetches, fn, x_shape, w_shape, dtype, 1e-4 if dtype == np.float32 else 1e-11, feeds)


def test_rows_of_tiles_pair_two_rows_tails_in_one_vector_where_a_tail_fills_at_most_half():
    """lenet's conv1 (24-wide rows: a whole vector and 8 of 16 lanes) puts rows 2u and 2u + 1's last 8
    positions in one vector; 26-wide rows' tails (10) would not fit a half, 16-wide rows have none,
    and a one-row output has no second row; a flat run (rows one run) never pairs."""
    for image, expected in [((28, 28, 1), True), ((28, 30, 1), False), ((28, 20, 1), False), ((5, 28, 1), False),
                            ((21, 23, 1), True)]:
        with gn.Graph():
            x = gn.placeholder("x", (None, *image))
            w = gn.placeholder("w", (5, 5, 1, 6))
            lp = _prepared([gn.conv2d(x, w)], loop_passes(lambda *a, **k: 64, 1, AVX512))
            conv = next(k for k in lp.kernels if len(k.domain) == 8)
            if rowconv.marked(conv):
                assert rowconv.plan(conv, AVX512).paired == expected, image
            else:
                assert not expected, image
    _, grad = _lenet_conv2_input_gradient()
    assert not rowconv.pairs_tails(grad, 16)  # 12-wide rows, but one run of 144 positions


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_k_convs_with_paired_tails_equal_numpy(dtype, threads, monkeypatch):
    """K convs whose rows' tails share vectors: 24-wide rows (a half exactly), 19-wide rows of 17 (3 of
    a half, the odd last row's tail alone), NCHW's 17-wide rows (1 of a half), against numpy."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", threads)
    for x_shape, w_shape, kwargs in [((3, 28, 28, 1), (5, 5, 1, 6), {}), ((2, 19, 21, 1), (3, 3, 1, 3), {}),
                                     ((3, 3, 16, 19), (3, 1, 3, 4), dict(data_format="NCHW"))]:
        with gn.Graph():
            fetches = _conv_step(x_shape, w_shape, kwargs, dtype)
            fn = gn.compile(fetches, backend="llvm")
            text = fn.executable.lp.to_text()
            if host_target().vector_bits == 512 and (dtype == np.float32 or x_shape[2] != 28):
                assert "image rows along" in text and "two rows' tails per vector" in text, x_shape
            _check(fetches, fn, x_shape, w_shape, dtype, 1e-4 if dtype == np.float32 else 1e-11)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_k_conv_runs_the_images_outside_its_tap_blocks_where_their_totals_fit(threads, monkeypatch):
    """lenet's conv1 filter gradient: the totals of its 9 blocks of 3 taps (9 x 3 x 6 cells of 16
    float64 lanes, 20 KiB) fit IMAGES_OUTER_BYTES, so each image is read by every block in turn; with
    no room, each block runs over all the images. Both equal numpy (2 threads: each its own blocks)."""
    from codegen.llvm import kconv
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", threads)
    for room, outer in [(kconv.IMAGES_OUTER_BYTES, True), (0, False)]:
        monkeypatch.setattr(kconv, "IMAGES_OUTER_BYTES", room)
        with gn.Graph():
            fetches = _conv_step((3, 28, 28, 1), (5, 5, 1, 6), {}, np.float32)
            fn = gn.compile(fetches, backend="llvm")
            if host_target().vector_bits == 512:
                grad = next(k for k in fn.executable.lp.kernels if "filter_grad" in k.name)
                assert kconv.marked(grad) and ("images outside the tiles" in str(grad.schedule)) == outer
            _check(fetches, fn, (3, 28, 28, 1), (5, 5, 1, 6), np.float32, 1e-4)
