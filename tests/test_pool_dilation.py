"""Dilated pooling (max_pool2d / avg_pool2d `dilation_rate`, issue #15): values and gradients against
plain loops on every backend, by finite differences, and the errors of windows that do not fit or
cover only padding (against PyTorch's max_pool2d(dilation=...): test_conv.py, over POOLS here too)."""
from __future__ import annotations

import numpy as np
import pytest

import conv_reference
import graphnet as gn
from helpers import check_grad, run
from test_reliability import BACKENDS

POOLS = [  # (x shape, keyword arguments): strides, explicit and "same" padding, both layouts
    ((2, 9, 8, 3), dict(pool_size=2, dilation_rate=2)),
    ((2, 3, 10, 9), dict(pool_size=3, strides=1, padding="same", dilation_rate=(2, 3), data_format="NCHW")),
    ((3, 11, 7, 2), dict(pool_size=(3, 2), strides=(2, 3), padding=((1, 2), (0, 1)), dilation_rate=(3, 2))),
    ((2, 2, 8, 8), dict(pool_size=3, strides=2, padding="same", dilation_rate=2, data_format="NCHW")),
]


def _nhwc(a, fmt):
    return a if fmt == "NHWC" else a.transpose(0, 2, 3, 1)


def _back(a, fmt):
    return a if fmt == "NHWC" else a.transpose(0, 3, 1, 2)


def _taps(i, k, stride, dilation, pad, size):
    return [i * stride + t * dilation - pad for t in range(k) if 0 <= i * stride + t * dilation - pad < size]


def _avg_pool_loops(x, dy, ksize, strides, padding, dilations, data_format):
    """avg_pool2d's value and input gradient (for output gradient dy) as loops over output positions
    and the real elements of each dilated window."""
    x, dy = _nhwc(x, data_format), _nhwc(dy, data_format)
    n, h, w, c = x.shape
    ho, wo = dy.shape[1:3]
    y, dx = np.zeros(dy.shape), np.zeros(x.shape)
    for i in range(ho):
        for j in range(wo):
            cells = [(a, b) for a in _taps(i, ksize[0], strides[0], dilations[0], padding[0][0], h)
                     for b in _taps(j, ksize[1], strides[1], dilations[1], padding[1][0], w)]
            for a, b in cells:
                y[:, i, j] += x[:, a, b] / len(cells)
                dx[:, a, b] += dy[:, i, j] / len(cells)
    return _back(y, data_format), _back(dx, data_format)


def _conv_of(y: gn.Node) -> gn.Node:
    """The conv2d of avg_pool2d's graph (its window sum)."""
    return next(n for n in y.inputs if n.op.name == "conv2d")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_shape,kwargs", POOLS)
def test_dilated_max_pool2d_equals_loops_with_ties_and_partial_batches(x_shape, kwargs, backend, dtype):
    rng = np.random.default_rng(2)
    x = rng.integers(-2, 3, x_shape).astype(dtype)  # small integers: many ties, shared evenly
    px = gn.placeholder("x", (None,) + x_shape[1:], dtype)
    y = gn.max_pool2d(px, **kwargs)
    weights = rng.uniform(0.5, 1.5, y.shape[1:]).astype(dtype)
    fn = gn.compile([y, gn.gradients(gn.sum(y * gn.constant(weights)), px)], backend=backend)
    geometry = {k: y.attrs[k] for k in ("ksize", "strides", "padding", "dilations", "data_format")}
    tol = 1e-6 if dtype == np.float32 else 1e-12
    for batch in (x_shape[0], 1):
        value, gx = fn(x=x[:batch])
        want = conv_reference.max_pool2d(x[:batch], **geometry)
        dy = np.broadcast_to(weights, want.shape)
        np.testing.assert_allclose(value, want, rtol=tol)
        np.testing.assert_allclose(gx, conv_reference.max_pool2d_grad(x[:batch], want, dy, **geometry), rtol=tol,
                                   atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_shape,kwargs", POOLS)
def test_dilated_avg_pool2d_counts_the_real_elements_of_each_window(x_shape, kwargs, backend, dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(size=x_shape).astype(dtype)
    px = gn.placeholder("x", (None,) + x_shape[1:], dtype)
    y = gn.avg_pool2d(px, **kwargs)
    weights = rng.uniform(0.5, 1.5, y.shape[1:]).astype(dtype)
    fn = gn.compile([y, gn.gradients(gn.sum(y * gn.constant(weights)), px)], backend=backend)
    conv = _conv_of(y)
    geometry = (conv.inputs[1].shape[:2], conv.attrs["strides"], conv.attrs["padding"], conv.attrs["dilations"],
                conv.attrs["data_format"])
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for batch in (x_shape[0], 1):
        value, gx = fn(x=x[:batch])
        want, want_dx = _avg_pool_loops(x[:batch].astype(np.float64),
                                        np.broadcast_to(weights, value.shape).astype(np.float64), *geometry)
        np.testing.assert_allclose(value, want, rtol=tol, atol=tol)
        np.testing.assert_allclose(gx, want_dx, rtol=tol, atol=tol)


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("x_shape,kwargs", POOLS[1:3])
def test_dilated_pooling_gradients_match_finite_differences(op, x_shape, kwargs):
    x = np.random.default_rng(4).normal(size=x_shape)  # distinct values: the maxima stay put within eps
    check_grad(lambda px: getattr(gn, op)(px, **kwargs), [x])


def test_same_padding_with_dilation_is_conv2d_s():
    x = gn.placeholder("x", (None, 10, 9, 2))
    y = gn.max_pool2d(x, 3, strides=2, padding="same", dilation_rate=(2, 3))
    conv = gn.conv2d(x, np.ones((3, 3, 2, 1), np.float32), strides=2, padding="same", dilation_rate=(2, 3))
    assert y.attrs["padding"] == conv.attrs["padding"] == ((1, 2), (3, 3))
    assert y.shape[1:3] == conv.shape[1:3] == (5, 5)
    assert _conv_of(gn.avg_pool2d(x, 3, 2, "same", dilation_rate=(2, 3))).attrs["padding"] == ((1, 2), (3, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dilation_along_a_window_of_one_keeps_the_tiled_gradient(backend):
    """Dilation is no dilation along an axis where the window has one element: windows of (2, 1)
    with stride (2, 1) still tile the image, and the gradient takes the form without a reduction."""
    rng = np.random.default_rng(5)
    x = rng.integers(-2, 3, (2, 8, 6, 3)).astype(np.float32)
    px = gn.placeholder("x", (None, 8, 6, 3), np.float32)
    y = gn.max_pool2d(px, (2, 1), dilation_rate=(1, 3))
    fetches = [y, gn.gradients(gn.sum(y * gn.constant(rng.uniform(0.5, 1.5, y.shape[1:]).astype(np.float32))), px)]
    fn = gn.compile(fetches, backend=backend)
    if backend == "llvm":
        grads = [k for k in fn.executable.lp.kernels if "max_pool2d_grad" in k.name and "maxima" not in k.name]
        assert len(grads) == 1 and grads[0].reduce is None
    for got, want in zip(fn(x=x), gn.compile(fetches, backend="numpy")(x=x)):
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("kwargs,message", [
    (dict(pool_size=3, dilation_rate=4), "window 3x3 (dilation (4, 4)) is larger than the padded input 8x8"),
    (dict(pool_size=2, dilation_rate=0), "dilation_rate must be a positive integer or a pair of them, got 0"),
    (dict(pool_size=2, dilation_rate=(2, 1.5)), "dilation_rate must be a positive integer"),
    (dict(pool_size=2, padding=((1, 2), (0, 0)), dilation_rate=(10, 1)), "at output row 0 covers only padding"),
])
def test_bad_dilation_is_a_shape_error_naming_op_shapes_and_line(op, kwargs, message):
    x = gn.placeholder("x", (None, 8, 8, 3))
    with pytest.raises(gn.ShapeError) as info:
        getattr(gn, op)(x, **kwargs)
    text = str(info.value)
    assert text.startswith(f"{op}: ") and message in text and "test_pool_dilation.py:" in text
    if "padding" in message:
        assert "(N, 8, 8, 3)" in text


def test_max_pool_padding_must_be_smaller_than_the_dilated_span():
    x = gn.placeholder("x", (None, 8, 8, 3))
    assert gn.max_pool2d(x, 2, padding=2, dilation_rate=2).shape == (None, 5, 5, 3)  # span 3 > padding 2
    with pytest.raises(gn.ShapeError, match=r"must be smaller than the window \(2, 2\) \(dilation \(2, 2\)\)"):
        gn.max_pool2d(x, 2, padding=3, dilation_rate=2)
