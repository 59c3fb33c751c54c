"""Convolution, pooling and batch normalization: values and gradients against PyTorch, the bad-input
errors, the windowed loads of the loop IR, and batch_norm's training / inference values and updates.
(The registry tests in test_ops.py, test_llvm_backend.py and test_opencl.py run every op's examples.)"""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from codegen.loop_passes import verify_loops
from codegen.lower import lower
from codegen.window import Coord, window
from graphnet.program import Program
from codegen.opencl import runtime
from helpers import check_grad, run
from test_pool_dilation import POOLS as DILATED_POOLS

BACKENDS = ["numpy", "llvm"]


def _torch_nchw(torch, x, data_format):
    t = torch.tensor(x, requires_grad=True)
    return t, (t if data_format == "NCHW" else t.permute(0, 3, 1, 2))


def _from_nchw(t, data_format):
    return t if data_format == "NCHW" else t.permute(0, 2, 3, 1)


CONVS = [  # (x shape, filter shape, keyword arguments)
    ((2, 7, 6, 3), (3, 3, 3, 4), dict(padding="same")),
    ((2, 8, 9, 2), (3, 2, 2, 3), dict(strides=(2, 3), padding=((1, 2), (0, 1)), dilation_rate=(2, 1))),
    ((3, 6, 6, 4), (3, 3, 2, 6), dict(groups=2, strides=2, padding="same")),
    ((2, 3, 7, 7), (5, 5, 3, 4), dict(data_format="NCHW", padding=2)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_shape,w_shape,kwargs", CONVS)
def test_conv2d_value_and_gradients_match_torch(x_shape, w_shape, kwargs, backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=x_shape), rng.normal(size=w_shape)
    fmt = kwargs.get("data_format", "NHWC")
    px, pw = gn.placeholder("x", x_shape, np.float64), gn.placeholder("w", w_shape, np.float64)
    y = gn.conv2d(px, pw, **kwargs)
    weights = rng.uniform(0.5, 1.5, y.shape)
    value, gx, gw = run([y, *gn.gradients(gn.sum(y * weights), [px, pw])], {"x": x, "w": w}, backend)

    tx, tx_nchw = _torch_nchw(torch, x, fmt)
    tw = torch.tensor(w, requires_grad=True)
    (pt, pb), (pl, pr) = y.attrs["padding"]
    padded = torch.nn.functional.pad(tx_nchw, (pl, pr, pt, pb))
    out = torch.nn.functional.conv2d(padded, tw.permute(3, 2, 0, 1), stride=y.attrs["strides"],
                                     dilation=y.attrs["dilations"], groups=y.attrs["groups"])
    out = _from_nchw(out, fmt)
    (out * torch.tensor(weights)).sum().backward()
    np.testing.assert_allclose(value, out.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gw, tw.grad.numpy(), rtol=1e-10, atol=1e-10)


POOLS = [((2, 6, 6, 3), dict(pool_size=2)),
         ((2, 7, 5, 2), dict(pool_size=3, strides=2, padding="same")),
         ((2, 3, 5, 6), dict(pool_size=(2, 3), strides=(1, 2), padding=1, data_format="NCHW"))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_shape,kwargs", POOLS + DILATED_POOLS)
def test_max_pool2d_value_and_gradient_match_torch(x_shape, kwargs, backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.normal(size=x_shape)  # no ties: torch gives a tie's gradient to one element, graphnet shares it
    fmt = kwargs.get("data_format", "NHWC")
    px = gn.placeholder("x", x_shape, np.float64)
    y = gn.max_pool2d(px, **kwargs)
    weights = rng.uniform(0.5, 1.5, y.shape)
    value, gx = run([y, gn.gradients(gn.sum(y * weights), px)], {"x": x}, backend)

    tx, tx_nchw = _torch_nchw(torch, x, fmt)
    (pt, pb), (pl, pr) = y.attrs["padding"]
    padded = torch.nn.functional.pad(tx_nchw, (pl, pr, pt, pb), value=-np.inf)
    out = _from_nchw(torch.nn.functional.max_pool2d(padded, y.attrs["ksize"], y.attrs["strides"],
                                                    dilation=y.attrs["dilations"]), fmt)
    (out * torch.tensor(weights)).sum().backward()
    np.testing.assert_allclose(value, out.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool2d_shares_a_tie_evenly(backend):
    x = np.array([[1.0, 3.0], [3.0, 0.0]]).reshape(1, 2, 2, 1)
    px = gn.placeholder("x", (1, 2, 2, 1), np.float64)
    g = run(gn.gradients(gn.sum(gn.max_pool2d(px, 2)), px), {"x": x}, backend)
    np.testing.assert_allclose(g.reshape(2, 2), [[0.0, 0.5], [0.5, 0.0]])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_shape,kwargs", POOLS)
def test_avg_pool2d_counts_only_real_elements_like_torch(x_shape, kwargs, backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.normal(size=x_shape)
    fmt = kwargs.get("data_format", "NHWC")
    px = gn.placeholder("x", x_shape, np.float64)
    y = gn.avg_pool2d(px, **kwargs)
    weights = rng.uniform(0.5, 1.5, y.shape)
    value, gx = run([y, gn.gradients(gn.sum(y * weights), px)], {"x": x}, backend)
    conv = y.inputs[0] if y.inputs[0].op.name == "conv2d" else y.inputs[1]
    (pt, pb), (pl, pr) = conv.attrs["padding"]
    tx, tx_nchw = _torch_nchw(torch, x, fmt)
    ones = torch.ones_like(tx_nchw)
    window, stride = conv.inputs[1].shape[:2], conv.attrs["strides"]
    total = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(tx_nchw, (pl, pr, pt, pb)), window, stride)
    count = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(ones, (pl, pr, pt, pb)), window, stride)
    out = _from_nchw(total / count, fmt)
    (out * torch.tensor(weights)).sum().backward()
    np.testing.assert_allclose(value, out.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-12)


def test_depthwise_conv2d_is_keras_channel_order():
    rng = np.random.default_rng(3)
    x, k = rng.normal(size=(2, 5, 5, 3)), rng.normal(size=(3, 3, 3, 2))
    px = gn.placeholder("x", x.shape, np.float64)
    got = run(gn.depthwise_conv2d(px, k, padding="same"), {"x": x})
    for c in range(3):
        channel = gn.conv2d(px, np.eye(3)[c].reshape(1, 1, 3, 1))  # a 1x1 convolution picks channel c
        for m in range(2):
            single = run(gn.conv2d(channel, k[:, :, c:c + 1, m:m + 1], padding="same"), {"x": x})
            np.testing.assert_allclose(got[..., c * 2 + m], single[..., 0], rtol=1e-12)


def test_global_avg_pool_is_the_spatial_mean():
    x = np.random.default_rng(4).normal(size=(2, 3, 4, 5))
    px = gn.placeholder("x", (None, 3, 4, 5), np.float64)
    np.testing.assert_allclose(run(gn.global_avg_pool(px), {"x": x}), x.mean(axis=(1, 2)))
    np.testing.assert_allclose(run(gn.global_avg_pool(px, "NCHW", keepdims=True), {"x": x}),
                               x.mean(axis=(2, 3), keepdims=True))


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("build,message", [
    (lambda x: gn.conv2d(x, np.zeros((9, 3, 3, 4), np.float32)), "larger than the padded input"),
    (lambda x: gn.conv2d(x, np.zeros((3, 3, 3, 4), np.float32), strides=0), "strides must be a positive"),
    (lambda x: gn.conv2d(x, np.zeros((3, 3, 3, 4), np.float32), strides=(1, -2)), "strides must be a positive"),
    (lambda x: gn.conv2d(x, np.zeros((3, 3, 2, 4), np.float32)), "channel mismatch: the image (N, 8, 8, 3) has 3"),
    (lambda x: gn.conv2d(x, np.zeros((3, 3, 3, 4), np.float32), data_format="NCHW"), "has 8 channels"),
    (lambda x: gn.conv2d(x, np.zeros((3, 3, 1, 4), np.float32), groups=2), "channel mismatch"),
    (lambda x: gn.max_pool2d(x, 9), "larger than the padded input"),
    (lambda x: gn.max_pool2d(x, 2, padding=2), "must be smaller than the window"),
    (lambda x: gn.conv2d(gn.reshape(x, (None, 192)), np.zeros((3, 3, 3, 4), np.float32)), "4-D NHWC"),
])
def test_bad_input_is_a_shape_error_naming_op_shapes_and_line(build, message):
    x = gn.placeholder("x", (None, 8, 8, 3))
    with pytest.raises(gn.ShapeError) as info:
        build(x)
    text = str(info.value)
    assert message in text and "test_conv.py:" in text
    assert any(name in text for name in ("conv2d", "max_pool2d"))


def test_nchw_data_in_an_nhwc_graph_names_the_channel_mismatch():
    x = gn.placeholder("x", (None, 3, 32, 32))  # NCHW data, the layer expects NHWC with 3 channels
    with pytest.raises(gn.ShapeError, match=r"conv2d: channel mismatch: the image \(N, 3, 32, 32\) has 32 "
                                            r"channels, the filter \(3, 3, 3, 8\)"):
        gn.conv2d(x, np.zeros((3, 3, 3, 8), np.float32))


# ---- the loop IR --------------------------------------------------------------------------------
def _loop_program(fetches):
    program = Program(list(fetches), [])
    return lower(program)[0]


def test_only_coordinates_that_can_leave_the_image_are_guarded():
    x = gn.placeholder("x", (None, 6, 6, 2))
    y = gn.conv2d(x, np.ones((3, 3, 2, 4), np.float32), padding="same")
    text = _loop_program([gn.relu(y)]).to_text()
    assert "b0<v0, v1 + v5 + -1, v2 + v6 + -1, 2*v3 + v7; else 0.0>" in text.replace("v3*2", "2*v3")
    assert "select(lt(acc" in text  # the relu joined the convolution's kernel


def test_verify_loops_rejects_a_window_with_the_wrong_rank():
    x = gn.placeholder("x", (None, 6, 6, 2))
    lp = _loop_program([gn.max_pool2d(x, 2)])
    k = lp.kernels[0]
    bad = window(0, (None, 6, 6), (Coord(((0, 1),)),) * 3, np.dtype(np.float32))
    k.reduce.value = bad
    with pytest.raises(AssertionError, match="window on b0"):
        verify_loops(lp)


@pytest.mark.parametrize("backend", ["llvm", "opencl"])
def test_strided_padded_conv_partial_and_growing_batches(backend):
    if backend == "opencl":
        pytest.importorskip("pyopencl")
    rng = np.random.default_rng(5)
    w = rng.normal(size=(3, 3, 2, 3)).astype(np.float32)
    x = gn.placeholder("x", (None, 7, 7, 2))
    y = gn.max_pool2d(gn.relu(gn.conv2d(x, w, strides=2, padding="same")), 2, padding="same")
    ref, fn = gn.compile(y, backend="numpy"), gn.compile(y, backend=backend)
    for batch in (5, 1, 9):
        feeds = {"x": rng.normal(size=(batch, 7, 7, 2)).astype(np.float32)}
        np.testing.assert_allclose(fn(**feeds), ref(**feeds), rtol=1e-5, atol=1e-5)


# ---- batch normalization ------------------------------------------------------------------------
def test_batch_norm_uses_batch_statistics_in_training_and_moving_ones_outside():
    rng = np.random.default_rng(6)
    x = rng.normal(2.0, 3.0, size=(8, 4, 4, 3))
    px = gn.placeholder("x", (None, 4, 4, 3), np.float64)
    scale, offset = rng.uniform(0.5, 2, 3), rng.normal(size=3)
    mean = gn.variable("mean", np.zeros(3), trainable=False)
    var = gn.variable("var", np.ones(3), trainable=False)
    y, updates = gn.batch_norm(px, scale, offset, mean, var, momentum=0.9, epsilon=1e-3)
    train = gn.compile(y, updates=updates, backend="llvm")
    infer = gn.compile(y, backend="llvm")
    mu, sigma2 = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(train(x=x), (x - mu) / np.sqrt(sigma2 + 1e-3) * scale + offset, rtol=1e-10)
    np.testing.assert_allclose(mean.value, 0.1 * mu, rtol=1e-12)
    np.testing.assert_allclose(var.value, 0.9 + 0.1 * sigma2, rtol=1e-12)
    np.testing.assert_allclose(infer(x=x), (x - mean.value) / np.sqrt(var.value + 1e-3) * scale + offset,
                               rtol=1e-10)


def test_batch_norm_gradient_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(6, 3, 3, 2))
    px = gn.placeholder("x", x.shape, np.float64)
    scale = gn.placeholder("scale", (2,), np.float64)
    y, _ = gn.batch_norm(px, scale, np.zeros(2), gn.variable("m", np.zeros(2)), gn.variable("v", np.ones(2)))
    weights = rng.uniform(0.5, 1.5, x.shape)
    gx, gs = run(gn.gradients(gn.sum(y * weights), [px, scale]), {"x": x, "scale": np.array([1.5, 0.5])},
                 training=True)
    tx, ts = torch.tensor(x, requires_grad=True), torch.tensor([1.5, 0.5], dtype=torch.float64, requires_grad=True)
    out = torch.nn.functional.batch_norm(tx.permute(0, 3, 1, 2), None, None, ts, None, training=True, eps=1e-3)
    (out.permute(0, 2, 3, 1) * torch.tensor(weights)).sum().backward()
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gs, ts.grad.numpy(), rtol=1e-9)


@pytest.mark.parametrize("op,inputs,attrs", [
    ("conv2d", [(None, 6, 6, 3), (3, 3)], {}),
    ("conv2d", [(None, 6, 6, 3), (3,)], {}),
    ("conv2d_input_grad", [(None, 4, 4, 8), (3, 3)], {"input_size": (6, 6)}),
    ("conv2d_input_grad", [(None, 4, 4, 8), (3, 3, 3, 8, 1)], {"input_size": (6, 6)}),
])
def test_a_filter_that_is_not_4d_is_a_shape_error(op, inputs, attrs):
    """Found by the fuzzer: a filter of another rank raised IndexError from the geometry checks."""
    from graphnet.ops import REGISTRY
    defaults = {k: v for k, v in REGISTRY[op].examples[0].attrs.items()} if REGISTRY[op].examples else {}
    with gn.Graph():
        nodes = [gn.placeholder(f"x{i}", s) for i, s in enumerate(inputs)]
        with pytest.raises(gn.ShapeError, match="filter"):
            gn.ops.apply(op, nodes, **{**defaults, **attrs})


def test_a_second_derivative_through_max_pooling_is_a_clear_error():
    """Found by the fuzzer: it was a NotImplementedError, which callers probing differentiability (a
    ValueError, as argmax's) did not expect."""
    with gn.Graph():
        x = gn.placeholder("x", (None, 4, 4, 1))
        g = gn.gradients(gn.sum(gn.max_pool2d(x) ** 2), [x])[0]
        with pytest.raises(gn.NotDifferentiableError, match="max_pool2d"):
            gn.gradients(gn.sum(g), [x])


# ---- upsampling ------------------------------------------------------------------------------
def _with_opencl() -> list[str]:
    try:
        runtime.list_devices()
        return BACKENDS + ["opencl"]
    except RuntimeError:  # no OpenCL platform here: the other backends still run
        return BACKENDS


@pytest.mark.parametrize("backend", _with_opencl())
@pytest.mark.parametrize("fmt", ["NHWC", "NCHW"])
def test_upsample2d_repeats_each_pixel(backend, fmt):
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    p = gn.placeholder("x", (None, 3, 4, 5))
    (got,) = run([gn.upsample2d(p, (2, 3), fmt)], {"x": x}, backend)
    h, w = (1, 2) if fmt == "NHWC" else (2, 3)
    np.testing.assert_array_equal(got, np.repeat(np.repeat(x, 2, axis=h), 3, axis=w))


@pytest.mark.parametrize("backend", BACKENDS)
def test_upsample2d_gradient_sums_the_copies(backend):
    x = np.random.default_rng(1).normal(size=(2, 3, 2, 4))
    check_grad(lambda p: gn.upsample2d(p, 2), [x], shapes=[(None, 3, 2, 4)], backend=backend)
    c = gn.variable("c", x)
    (grad,) = gn.gradients(gn.sum(gn.upsample2d(c, (3, 2))), [c])
    np.testing.assert_array_equal(run([grad], backend=backend)[0], np.full_like(x, 6.0))


def test_upsample2d_refuses_other_ranks_and_sizes():
    with pytest.raises(gn.ShapeError, match="upsample2d: input must be a 4-D NHWC image batch"):
        gn.upsample2d(gn.placeholder("flat", (None, 4, 4)))
    with pytest.raises(gn.ShapeError, match="upsample2d: size must be a positive integer"):
        gn.upsample2d(gn.placeholder("image", (None, 4, 4, 1)), 0)


TILINGS = [((2, 6, 8, 3), dict(pool_size=2), True), ((2, 3, 6, 4), dict(pool_size=(3, 2), data_format="NCHW"), True),
           ((2, 10, 8, 3), dict(pool_size=(5, 4)), True),  # 20 elements: its maxima counted by a kernel of their own
           ((2, 7, 8, 3), dict(pool_size=2), False),  # a row left over: the general form
           ((2, 6, 8, 3), dict(pool_size=2, strides=1), False)]  # overlapping windows


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape,kwargs,tiled", TILINGS)
def test_max_pool2d_grad_of_tiling_windows_is_elementwise_and_equals_numpy(x_shape, kwargs, tiled, dtype):
    """Windows that tile the image give each element its window's share without a reduction over
    the windows that might cover it, counting a small window's maxima in the same kernel (one pass
    over x); ties share evenly, NaN and Inf as in the reference, on LLVM and OpenCL."""
    from codegen.lower_conv import TILE_COUNT_MAX
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, x_shape).astype(dtype)  # small integers: many ties
    x[0, 1, 1, 0], x[1, 2, 3, 1], x[1, 0, 0, 2] = np.nan, np.inf, -np.inf
    px = gn.placeholder("x", (None,) + x_shape[1:], dtype)
    y = gn.max_pool2d(px, **kwargs)
    fetches = [y, gn.gradients(gn.sum(y * gn.constant(rng.uniform(0.5, 1.5, y.shape[1:]).astype(dtype))), px)]
    fn = gn.compile(fetches, backend="llvm")
    grads = [k for k in fn.executable.lp.kernels if "max_pool2d_grad" in k.name and "maxima" not in k.name]
    assert len(grads) == 1 and (grads[0].reduce is None) == tiled
    maxima = [k for k in fn.executable.lp.kernels if "maxima" in k.name]
    assert len(maxima) == (0 if tiled and np.prod(y.attrs["ksize"]) <= TILE_COUNT_MAX else 1)
    functions = [fn] + ([gn.compile(fetches, backend="opencl")] if "opencl" in _with_opencl() else [])
    for batch in (2, 1):
        want = gn.compile(fetches, backend="numpy")(x=x[:batch])
        for f in functions:
            for got, expected in zip(f(x=x[:batch]), want):
                np.testing.assert_allclose(got, expected, rtol=1e-6 if dtype == np.float32 else 1e-12, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [5, 6, 7])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_pools_over_a_few_channels_in_narrow_vectors_equal_numpy(channels, dtype, threads, monkeypatch):
    """A max pool and its gradient (times relu's, as in lenet) over 5 to 7 NHWC channels: the channel
    loop in 8-lane vectors (schedule._narrow, on AVX-512 in float32), ties, NaN and Inf, odd batches."""
    from codegen.llvm.jit import host_target
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", threads)
    monkeypatch.setattr("codegen.llvm.schedule.PARALLEL_MIN_FAST", 0)  # two threads split even these few images
    rng = np.random.default_rng(channels)
    x = rng.integers(-2, 3, (5, 10, 12, channels)).astype(dtype)
    x[0, 1, 1, 0], x[1, 2, 3, 1], x[4, 9, 11, channels - 1] = np.nan, np.inf, -np.inf
    px = gn.placeholder("x", (None, 10, 12, channels), dtype)
    h = gn.relu(px)
    y = gn.max_pool2d(h, 2)
    weights = gn.constant(rng.uniform(0.5, 1.5, y.shape[1:]).astype(dtype))
    fetches = [y, gn.gradients(gn.sum(y * weights), px)]
    fn = gn.compile(fetches, backend="llvm")
    if host_target().vector_bits == 512 and dtype == np.float32:
        pools = [k for k in fn.executable.lp.kernels if "max_pool2d" in k.name]
        assert len(pools) == 2 and all("v3 in 8-lane vectors" in str(k.schedule) for k in pools)
    for batch in (5, 2):
        want = gn.compile(fetches, backend="numpy")(x=x[:batch])
        for got, expected in zip(fn(x=x[:batch]), want):
            np.testing.assert_allclose(got, expected, rtol=1e-6 if dtype == np.float32 else 1e-12, equal_nan=True)


def test_a_depthwise_multiplier_of_two_compiles_without_llvm_warnings(capfd, monkeypatch, tmp_path):
    """The multiplier loop (2 elements) is not forced into 4-lane vectors, which LLVM could not do and
    said so on stderr (its remark and warning) at every compile."""
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))  # a compile, not a cache hit
    x = gn.placeholder("x", (None, 10, 9, 3))
    y = gn.depthwise_conv2d(x, np.arange(54, dtype=np.float32).reshape(3, 3, 3, 2))
    fn = gn.compile(y, backend="llvm")
    assert "lane vectors" not in fn.executable.lp.to_text()
    assert "not vectorized" not in capfd.readouterr().err
    a = np.random.default_rng(0).normal(size=(2, 10, 9, 3)).astype(np.float32)
    np.testing.assert_allclose(fn(x=a), gn.compile(y, backend="numpy")(x=a), rtol=1e-5, atol=1e-4)
