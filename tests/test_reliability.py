"""Regression tests for the defects a differential fuzzing run found (issue [reliability]): each
graph is run on every backend and compared with numpy's own computation of the same formula."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn


def _backends() -> list[str]:
    try:
        import pyopencl as cl
        has_opencl = any(p.get_devices() for p in cl.get_platforms())
    except Exception:
        has_opencl = False
    return ["numpy", "llvm"] + (["opencl"] if has_opencl else [])


BACKENDS = _backends()
X = np.arange(40, dtype=np.float32).reshape(5, 8) / 7.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_through_reshape_of_transpose(backend):
    x = gn.placeholder("x", (None, 8))
    y = gn.reshape(gn.transpose(x), (None, 8))
    (dx,) = gn.gradients(gn.sum(y * y), [x])
    value, grad = gn.compile([y, dx], backend=backend)(x=X)
    np.testing.assert_allclose(value, X.T.reshape(-1, 8), rtol=1e-6)
    np.testing.assert_allclose(grad, 2 * X, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_transpose_of_reshape_reads_only_written_elements(backend):
    x = gn.placeholder("x", (None, 8))
    z = gn.transpose(gn.reshape(x + 1, (8, None)))
    (value,) = gn.compile([z], backend=backend)(x=X)
    np.testing.assert_array_equal(value, (X + 1).reshape(8, -1).T)


def test_reshape_that_reads_its_kernel_elsewhere_is_not_fused():
    """The kernel that computes x + 1 must not also read it back at other elements."""
    x = gn.placeholder("x", (None, 8))
    z = gn.transpose(gn.reshape(x + 1, (8, None)))
    lp = gn.compile([z], backend="llvm").executable.lp
    for k in lp.kernels:
        written = {s.buffer for s in k.stores}
        reads = [ld for ld in k.loads() if ld.buffer in written]
        assert all(any(ld.offset == s.offset for s in k.stores if s.buffer == ld.buffer) for ld in reads), k


@pytest.mark.parametrize("backend", BACKENDS)
def test_mean_over_two_batch_axes_divides_by_n_squared(backend):
    x = gn.placeholder("x", (None, 3))
    gram = x @ x.T
    m, loss = gn.mean(gram), gn.losses.mse(gram, 0.5 * gram)
    (dx,) = gn.gradients(m, [x])
    mean, mse, grad = gn.compile([m, loss, dx], backend=backend)(x=X[:, :3])
    g = X[:, :3] @ X[:, :3].T
    np.testing.assert_allclose(mean, g.mean(), rtol=1e-5)
    np.testing.assert_allclose(mse, ((0.5 * g) ** 2).mean(), rtol=1e-5)
    n = len(X)
    np.testing.assert_allclose(grad, 2 * np.ones((n, n)) @ X[:, :3] / n ** 2, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reductions_of_a_rank0_tensor(backend):
    w = gn.variable("w", np.float32(0.3))
    v = gn.variable("v", np.array([0.1, -0.2, 0.5], np.float32))
    terms = [gn.sum(w * w), gn.mean(w), gn.max(w), gn.losses.mse(w, 1.0),
             gn.losses.softmax_cross_entropy(v, np.array([0, 1, 0], np.float32))]
    loss = terms[0] + terms[1] + terms[2] + terms[3] + terms[4]
    gw, gv = gn.gradients(loss, [w, v])
    out = gn.compile(terms + [gw, gv], backend=backend)()
    p = np.exp([0.1, -0.2, 0.5]) / np.exp([0.1, -0.2, 0.5]).sum()
    np.testing.assert_allclose(out[:5], [0.09, 0.3, 0.3, 0.49, -np.log(p[1])], rtol=1e-5)
    np.testing.assert_allclose(out[5], 0.6 + 1 + 1 - 1.4, rtol=1e-5)
    np.testing.assert_allclose(out[6], p - [0, 1, 0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clipnorm_with_a_scalar_parameter(backend):
    w = gn.variable("w", np.float32(3.0))
    loss = gn.sum(w * w)
    step = gn.compile([loss], updates=gn.optim.SGD(lr=0.5, clipnorm=1.0).minimize(loss), backend=backend)
    step()
    np.testing.assert_allclose(w.value, 3.0 - 0.5 * 1.0, rtol=1e-5)  # grad 6 clipped to norm 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_over_an_empty_axis_is_empty(backend):
    """Fuzz finding 0:28196: softmax and log_softmax of a constant with an empty axis failed to compile
    (constant folding took numpy's max of no elements); they are empty, as torch's, also on a fed batch."""
    c = gn.constant(np.zeros((1, 0, 1)))
    x = gn.placeholder("x", (None, 0))
    fn = gn.compile([gn.log_softmax(c, axis=1), gn.softmax(c, axis=1), gn.softmax(x), gn.log_softmax(x)],
                    backend=backend)
    outs = fn(x=np.zeros((3, 0), np.float32))
    assert [o.shape for o in outs] == [(1, 0, 1), (1, 0, 1), (3, 0), (3, 0)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_python_sum_of_hundreds_of_terms_compiles(backend):
    """A sum of 400 terms built with Python's sum() is a chain of 400 adds, all inlined into one
    expression; building and rendering it recursed past Python's limit (RecursionError) on LLVM and
    OpenCL. Every MAX_INLINE_DEPTH inlined elementwise nodes one is materialized."""
    x = gn.placeholder("x", (None, 4))
    y = sum(gn.exp(x * float(i) * 1e-3) for i in range(400))
    fn = gn.compile([y, gn.gradients(gn.sum(y), [x])[0]], backend=backend)
    a = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    scales = np.arange(400) * 1e-3
    want = np.exp(a[..., None] * scales).sum(-1)
    got, grad = fn(x=a)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(grad, (np.exp(a[..., None] * scales) * scales).sum(-1), rtol=1e-4)


def test_a_batch_fixed_to_zero_is_a_shape_error_at_the_op():
    """Fuzz finding 0:42313: comparing a (2, 0, 2) tensor with a (None, 2) placeholder fixed the batch
    N to 0 (TF1's rule: N meeting a static extent takes it), and every call then failed at the feed
    check, which refuses an empty batch. A batch holds at least one sample: the op that would fix it
    to 0 is a ShapeError naming it and the user's line; an empty axis beside the batch stays legal."""
    empty = gn.placeholder("empty", (2, 0, 2))
    x = gn.placeholder("x", (None, 2))
    with pytest.raises(gn.ShapeError) as info:
        gn.not_equal(gn.relu(empty), x)
    message = str(info.value)
    assert message.startswith("not_equal: ") and "batch N would be 0" in message and "test_reliability.py" in message
    with pytest.raises(gn.ShapeError, match="batch N would be 0"):
        gn.concat([gn.placeholder("rows", (None, 3)), gn.placeholder("none", (0, 3))], axis=1)
    y = gn.placeholder("y", (None, 1)) + gn.placeholder("e", (1, 0))  # an empty axis beside the batch
    assert y.shape == (None, 0) and y.fixes_batch is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_concat_with_a_one_row_tensor_differentiates_on_every_backend(backend):
    """Fuzz finding 0:30089: concatenating batch placeholders with a (1, 1) tensor fixes the batch to 1,
    and the gradient reshaped a one-element constant to the batch's shape, which the LLVM and OpenCL
    lowerings could not read (an inlined constant has no buffer: it is its value at every index)."""
    x0 = gn.placeholder("x0", (None, 1), np.float32)
    x1 = gn.placeholder("x1", (1, 1), np.float32)
    x2 = gn.placeholder("x2", (None, 1), np.float32)
    y = gn.concat([x2, x0, x1], axis=1)
    loss = gn.cast(gn.sum(y), np.float64)
    fn = gn.compile([y, loss, *gn.gradients(loss, [x0, x1, x2])], backend=backend)
    got = fn(x0=np.array([[1.0]], np.float32), x1=np.array([[2.0]], np.float32), x2=np.array([[3.0]], np.float32))
    np.testing.assert_array_equal(got[0], [[3.0, 1.0, 2.0]])
    assert got[1] == 6.0
    for g in got[2:]:
        np.testing.assert_array_equal(g, [[1.0]])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_silu_and_gelu_keep_their_tiny_values_below_the_overflow_of_exp(backend, dtype):
    """Fuzz graph 0:69541: sign(sigmoid(x)) was 0 for x below about -88 in float32, where the
    lowering's 1 / (1 + exp(-x)) divides by infinity while the sigmoid is exp(x), a subnormal number.
    The lowering now computes numpy's reference formula (exp(-|x|) on both sides of 0)."""
    edge = 88.0 if dtype == np.float32 else 709.0
    values = np.array([-edge + 1, -edge - 1, -edge - 8, -edge - 14, -edge - 40, -3.0, 0.0, 2.5, edge + 5,
                       -np.inf, np.inf, np.nan], dtype)
    x = gn.placeholder("x", (None,), dtype)
    fetches = [gn.sigmoid(x), gn.sign(gn.sigmoid(x)), gn.silu(x), gn.sign(gn.silu(x)),
               gn.gelu(x, approximate="tanh")]
    got = gn.compile(fetches, backend=backend)(x=values)
    with np.errstate(all="ignore"):
        e = np.exp(-np.abs(values))
        sigmoid = np.where(values >= 0, 1 / (1 + e), e / (1 + e))
        u2 = 2 * np.sqrt(2 / np.pi) * (values + 0.044715 * values ** 3)
        e2 = np.exp(-np.abs(u2))
        gelu = values * np.where(u2 >= 0, 1 / (1 + e2), e2 / (1 + e2))
        want = [sigmoid, np.sign(sigmoid), values * sigmoid, np.sign(values * sigmoid), gelu]
    tiny = np.finfo(dtype).smallest_subnormal
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=4 * tiny)
    assert got[1][2] == 1 and got[0][2] > 0  # exp(-edge - 8) is a subnormal number, not 0
