"""Defects an external suite (ONNX backend node tests) found in the op set (issue [ops]): every backend
must agree with numpy and with torch's conventions."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn

from test_reliability import BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
def test_power_gradients_follow_torch_at_zero(backend):
    x = gn.placeholder("x", (None,), np.float64)
    y = gn.placeholder("y", (None,), np.float64)
    gx, gy = gn.gradients(gn.sum(x ** y), [x, y])
    (g0,) = gn.gradients(gn.sum(x ** 0.0), [x])
    (d1,) = gn.gradients(gn.sum(x ** 1.0), [x])
    (dd1,) = gn.gradients(gn.sum(d1), [x])
    out = gn.compile([gx, gy, g0, dd1], backend=backend)(x=np.array([0.0, 0.0, 2.0]), y=np.array([2.0, 0.5, 3.0]))
    np.testing.assert_array_equal(out[0], [0.0, np.inf, 12.0])
    np.testing.assert_allclose(out[1], [0.0, 0.0, 8 * np.log(2.0)])
    np.testing.assert_array_equal(out[2], [0.0, 0.0, 0.0])  # d/dx x**0 at 0
    np.testing.assert_array_equal(out[3], [0.0, 0.0, 0.0])  # second derivative of x**1


def test_power_gradients_match_torch_autograd():
    torch = pytest.importorskip("torch")
    xs, ys = np.array([0.0, 0.0, 0.0, 2.0, 1.5]), np.array([2.0, 0.5, 0.0, 3.0, -1.0])
    tx, ty = torch.tensor(xs, requires_grad=True), torch.tensor(ys, requires_grad=True)
    (tx ** ty).sum().backward()
    x = gn.placeholder("x", (None,), np.float64)
    y = gn.placeholder("y", (None,), np.float64)
    gx, gy = gn.compile(gn.gradients(gn.sum(x ** y), [x, y]), backend="numpy")(x=xs, y=ys)
    np.testing.assert_allclose(gx, tx.grad.numpy())
    np.testing.assert_allclose(gy, ty.grad.numpy())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_numpy_bool_array_is_a_where_condition(backend):
    x = gn.placeholder("x", (None, 3))
    fn = gn.compile(gn.where(np.array([True, False, True]), x, 0.0), backend=backend)
    np.testing.assert_array_equal(fn(x=np.ones((2, 3), np.float32)), [[1, 0, 1], [1, 0, 1]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_size_tensors_and_empty_reductions_agree(backend):
    x = gn.placeholder("x", (None, 0, 4))
    fn = gn.compile([gn.max(x, 1), gn.sum(x, 1), gn.zeros_like(x) + x], backend=backend)
    biggest, total, same = fn(x=np.ones((2, 0, 4), np.float32))
    np.testing.assert_array_equal(biggest, np.full((2, 4), -np.inf, np.float32))
    np.testing.assert_array_equal(total, np.zeros((2, 4), np.float32))
    assert same.shape == (2, 0, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reshape_with_minus_one_beside_the_batch_axis(backend):
    x = gn.placeholder("x", (None, 6))
    y = gn.reshape(x, (None, -1, 2))
    assert y.shape == (None, 3, 2)
    X = np.arange(24, dtype=np.float32).reshape(4, 6)
    np.testing.assert_array_equal(gn.compile(y, backend=backend)(x=X), X.reshape(4, 3, 2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_reshape_keeps_every_batch_axis(backend):
    x = gn.placeholder("x", (None, 3))
    gram = x @ x.T  # (N, N): N**2 elements
    with pytest.raises(gn.ShapeError):
        gn.reshape(gram, (1, None))  # one batch axis cannot hold N**2 elements
    y = gn.reshape(gram, (None, 1, None))
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_allclose(gn.compile(y, backend=backend)(x=X), (X @ X.T).reshape(4, 1, 4))


def test_broadcast_to_refuses_negative_sizes():
    x = gn.placeholder("x", (None, 1))
    with pytest.raises(gn.ShapeError, match="non-negative"):
        gn.broadcast_to(x, (None, -1))


def test_the_mean_of_no_elements_is_nan_as_numpys():
    """Found by the fuzzer: a loss over a zero-size tensor raised ZeroDivisionError at build time."""
    with gn.Graph():
        x = gn.placeholder("x", (None, 0))
        m = gn.mean(x, axis=1)
        for backend in ("numpy", "llvm"):
            out = gn.compile([m], backend=backend)(x=np.ones((3, 0), np.float32))[0]
            assert out.shape == (3,) and np.isnan(out).all()
