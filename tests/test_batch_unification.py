"""A static extent meeting the batch dimension N (TF1's and Theano's rule): the static extent wins at
build time, the program then requires N == that extent, and the call-time feed checks enforce it on
every backend and call path (general, the LLVM fast paths, run_steps, Model.fit), before anything
runs. A static extent of 1 still broadcasts against N; incompatible static extents are ShapeErrors."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
import codegen.llvm.call as call_path
from codegen.opencl import runtime

try:
    runtime.list_devices()
    BACKENDS = ["numpy", "llvm", "opencl"]
except RuntimeError:  # no OpenCL platform: the other backends still run
    BACKENDS = ["numpy", "llvm"]

pytestmark = pytest.mark.usefixtures("private_cache")  # compile cold, in a cache of its own

RNG = np.random.default_rng(0)
V = RNG.uniform(-1, 1, (16, 10))
X = RNG.uniform(-1, 1, (16, 10))


TOLERANCE = dict(rtol=1e-10, atol=1e-12)  # float64 throughout


def _difference():
    """`variable (16, 10) - placeholder (None, 10)`, its squared sum and both gradients."""
    v = gn.variable("v", V.copy())
    x = gn.placeholder("x", (None, 10), np.float64)
    d = v - x
    loss = gn.sum(d * d)
    gv, gx = gn.gradients(loss, [v, x])
    return v, x, d, loss, gv, gx


def test_static_extent_meets_batch_at_build_time():
    v, x, d, loss, gv, gx = _difference()
    assert d.shape == (16, 10)
    assert gv.shape == (16, 10)
    assert gx.shape == (None, 10)  # the placeholder side's gradient has the placeholder's shape again
    assert (x - v).shape == (16, 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_minus_placeholder_values_and_gradients(backend):
    v, x, d, loss, gv, gx = _difference()
    fn = gn.compile([d, loss, gv, gx], backend=backend)
    got = fn(x=X)
    tol = TOLERANCE
    np.testing.assert_allclose(got[0], V - X, **tol)
    np.testing.assert_allclose(got[1], np.sum((V - X) ** 2), **tol)
    np.testing.assert_allclose(got[2], 2 * (V - X), **tol)
    np.testing.assert_allclose(got[3], -2 * (V - X), **tol)
    assert got[3].shape == (16, 10)


def _labels_loss():
    """Integer labels given as a (6,) constant to a loss whose logits are (N, 5)."""
    w = gn.variable("w", RNG.uniform(-1, 1, (3, 5)))
    x = gn.placeholder("x", (None, 3), np.float64)
    labels = np.array([0, 4, 2, 1, 3, 2])
    logits = x @ w
    loss = gn.losses.softmax_cross_entropy(logits, labels)
    return w, x, logits, labels, loss


def _reference_cross_entropy(xv, wv, labels):
    z = xv @ wv
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(len(labels)), labels]))
    dz = (p - np.eye(5)[labels]) / len(labels)
    return loss, xv.T @ dz, dz @ wv.T


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_label_constant_against_batched_logits(backend):
    w, x, logits, labels, loss = _labels_loss()
    assert loss.shape == ()
    gw, gx = gn.gradients(loss, [w, x])
    assert gx.shape == (None, 3)
    xv = RNG.uniform(-1, 1, (6, 3))
    got = gn.compile([loss, gw, gx], backend=backend)(x=xv)
    want = _reference_cross_entropy(xv, w.value, labels)
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, **TOLERANCE)


def test_per_sample_weights_and_targets_of_a_static_length_fix_the_batch():
    p = gn.placeholder("p", (None, 3), np.float64)
    weighted = gn.losses.huber(p, gn.zeros_like(p), sample_weight=np.arange(4.0), reduction="none")
    assert weighted.shape == (4, 3)
    assert gn.losses.mse(p, np.ones((4, 3)), reduction="none").shape == (4, 3)
    with pytest.raises(gn.ShapeError, match=r"mse: prediction \(N, 3\) and target \(4, 2\) differ"):
        gn.losses.mse(p, np.ones((4, 2)))
    got = gn.compile(weighted, backend="numpy")(p=np.ones((4, 3)))
    np.testing.assert_allclose(got, 0.5 * np.arange(4.0)[:, None] * np.ones((4, 3)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_batch_raises_naming_placeholder_batches_op_and_line(backend):
    v, x, d, loss, gv, gx = _difference()
    step = gn.compile(loss, updates=[(v, v - 0.1 * gv)], backend=backend)
    with pytest.raises(ValueError) as e:
        step(x=X[:8])
    message = str(e.value)
    for part in ("feed 'x'", "batch size 8", "16", "subtract", "test_batch_unification.py"):
        assert part in message, message
    np.testing.assert_array_equal(v.value, V)  # nothing ran
    step(x=X)  # the right batch still runs
    np.testing.assert_allclose(v.value, V - 0.2 * (V - X))


@pytest.mark.parametrize("implementation", ["native", "python"])
def test_wrong_batch_raises_after_the_fast_path_is_warm(implementation, monkeypatch):
    if implementation == "native" and call_path.native is None:
        pytest.skip("the C call path was not built (no C compiler at install time)")
    monkeypatch.setattr(call_path, "native", call_path.native if implementation == "native" else None)
    v, x, d, loss, gv, gx = _difference()
    step = gn.compile(loss, updates=[(v, v - 0.1 * gv)], backend="llvm")
    fast = call_path.native.FastCall if implementation == "native" else type(call_path.generated_call)
    assert isinstance(step._call, fast)
    for _ in range(3):  # the last fully checked shapes are cached: these calls take the fast path
        step(x=X)
    before = v.value
    for bad in (X[:8], np.concatenate([X, X])):
        with pytest.raises(ValueError, match=r"feed 'x': batch size (8|32).*16"):
            step(x=bad)
    np.testing.assert_array_equal(v.value, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_steps_checks_every_batch_before_the_first_step(backend):
    v, x, d, loss, gv, gx = _difference()
    step = gn.compile(loss, updates=[(v, v - 0.01 * gv)], backend=backend)
    data = np.concatenate([X, X, X[:8]])  # 40 samples: two batches of 16, then a short one of 8
    with pytest.raises(ValueError, match=r"run_steps: feed 'x': batch size 8.*16.*subtract"):
        step.run_steps({"x": data}, batch_size=8)
    with pytest.raises(ValueError, match=r"run_steps: feed 'x': batch size 8.*16"):
        step.run_steps({"x": data}, batch_size=16)  # the short last batch
    np.testing.assert_array_equal(v.value, V)
    losses = step.run_steps({"x": data}, batch_size=16, steps=2)
    assert losses.shape == (2,)
    np.testing.assert_allclose(losses[0], np.sum((V - X) ** 2), rtol=1e-10)


def test_model_fit_with_a_fixed_batch_refuses_another_batch_size():
    weights = np.linspace(0.5, 1.5, 60).reshape(6, 10)  # one row per sample of a batch of 6
    center = gn.layers.Lambda(lambda t: t - gn.mean(t * weights, axis=0))  # (N, 10) * (6, 10): N = 6
    inputs = gn.Input((10,))
    model = gn.Model(inputs, gn.layers.Dense(1)(center(inputs)))
    model.compile("sgd", "mse", backend="llvm")
    xs, ys = RNG.uniform(-1, 1, (12, 10)), RNG.uniform(-1, 1, (12, 1))
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"batch size 4.*6.*multiply"):
        model.fit(xs, ys, batch_size=4, epochs=1, verbose=0)
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    history = model.fit(xs, ys, batch_size=6, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_extent_one_still_broadcasts_against_the_batch(backend):
    b = gn.variable("b", RNG.uniform(-1, 1, (1, 10)))
    x = gn.placeholder("x", (None, 10), np.float64)
    y = x - b
    assert y.shape == (None, 10)
    fn = gn.compile([y, gn.gradients(gn.sum(y * y), b)], backend=backend)
    for n in (3, 7):
        xv = RNG.uniform(-1, 1, (n, 10))
        got = fn(x=xv)
        np.testing.assert_allclose(got[0], xv - b.value, rtol=1e-12)
        np.testing.assert_allclose(got[1], -2 * np.sum(xv - b.value, axis=0, keepdims=True), rtol=1e-10)


def test_incompatible_static_extents_raise_shape_error_naming_op_and_line():
    v16 = gn.variable("v16", np.zeros((16, 10)))
    v8 = gn.variable("v8", np.zeros((8, 10)))
    x = gn.placeholder("x", (None, 10), np.float64)
    with pytest.raises(gn.ShapeError, match=r"subtract: .*\(16, 10\).*\(8, 10\).*test_batch_unification.py"):
        v16 - v8
    with pytest.raises(gn.ShapeError, match=r"add: .*\(16, 10\).*\(8, 10\).*test_batch_unification.py"):
        gn.add(gn.add(v16, x), v8)


def test_one_op_fixing_the_batch_twice_is_a_shape_error():
    a = gn.placeholder("a", (None, 16), np.float64)
    b = gn.variable("b", np.zeros((8, 1)))
    c = gn.placeholder("c", (8, None), np.float64)
    with pytest.raises(gn.ShapeError, match=r"multiply: the batch N would be 8 and 16 at once .*test_batch_unif"):
        a * c  # (N, 16) * (8, N): N would be 8 on the first axis and 16 on the second
    assert (a * b).shape == (8, 16)  # (N, 16) * (8, 1): N = 8


def test_a_program_fixing_the_batch_to_two_sizes_does_not_compile():
    x = gn.placeholder("x", (None, 10), np.float64)
    first = x - gn.variable("v16", np.zeros((16, 10)))
    second = x - gn.variable("v8", np.zeros((8, 10)))
    with pytest.raises(gn.ShapeError, match=r"batch.*16.*subtract at .*test_batch_unification.py.*8.*subtract"):
        gn.compile([first, second], backend="numpy")


@pytest.mark.parametrize("backend", BACKENDS)
def test_matmul_inner_dimension_concat_and_reshape_unify(backend):
    x = gn.placeholder("x", (None, 4), np.float64)
    a = gn.variable("a", RNG.uniform(-1, 1, (3, 6)))
    c = gn.variable("c", RNG.uniform(-1, 1, (6, 2)))
    inner = a @ x  # (3, 6) @ (N, 4): K = N = 6
    joined = gn.concat([x, c], axis=1)  # (N, 4) and (6, 2) along axis 1: (6, 6)
    flat = gn.reshape(x, (24,))  # N * 4 == 24
    assert inner.shape == (3, 4) and joined.shape == (6, 6) and flat.shape == (24,)
    assert gn.stack([x, gn.variable("s", np.zeros((6, 4)))]).shape == (2, 6, 4)
    total = gn.sum(inner * inner) + gn.sum(joined * joined) + gn.sum(flat)
    gx = gn.gradients(total, x)
    assert gx.shape == (None, 4)
    xv = RNG.uniform(-1, 1, (6, 4))
    got = gn.compile([inner, joined, flat, gx], backend=backend)(x=xv)
    av, cv = a.value, c.value
    np.testing.assert_allclose(got[0], av @ xv, rtol=1e-10)
    np.testing.assert_allclose(got[1], np.concatenate([xv, cv], axis=1), rtol=1e-12)
    np.testing.assert_allclose(got[2], xv.reshape(24), rtol=1e-12)
    np.testing.assert_allclose(got[3], 2 * av.T @ (av @ xv) + 2 * xv + 1, rtol=1e-10)
    with pytest.raises(ValueError, match=r"feed 'x': batch size 5.*6"):
        gn.compile(inner, backend=backend)(x=xv[:5])


def test_a_composite_that_fixes_the_batch_keeps_its_shape_when_expanded():
    """Fuzz finding 0:1473: concat of (N, 1) and (1, 1) fixes N = 1, but its expansion (a sum of pads)
    broadcast back to (N, 3) and the pipeline's verifier refused the changed output."""
    with gn.Graph():
        x = gn.placeholder("x", (None, 1))
        out = gn.concat([x, gn.constant(np.ones((1, 1), np.float32)), gn.constant(np.zeros((1, 1), np.float32))], 1)
        for backend in ("numpy", "llvm"):
            got = gn.compile([out], backend=backend)(x=np.full((1, 1), 2.0, np.float32))[0]
            np.testing.assert_array_equal(got, [[2.0, 1.0, 0.0]])


def test_a_composite_that_fixes_the_batch_on_an_axis_of_n_created_inside_the_graph():
    """Fuzz finding 0:65085: scatter_add with size=None gives (N, N, 1), and its concat with (N, 1, 1)
    along the last axis fixes N = 1: (N, 1, 3). The expansion (N, N, 3) could not be reshaped to that
    (no reshape turns N x N into N x 1); the axis of N the composite made static is taken at 0 .. k-1."""
    with gn.Graph():
        index = gn.placeholder("i", (), np.int64)
        x1, x2 = gn.placeholder("x1", (None, 1, 1)), gn.placeholder("x2", (None, 1))
        spread = gn.ops.apply("scatter_add", [x2, index], axis=1, size=None)
        out = gn.ops.apply("concat", [spread, spread, x1], axis=2)
        assert out.shape == (None, 1, 3)
        feeds = {"i": np.array(2, np.int64), "x1": np.full((1, 1, 1), 1.5, np.float32),
                 "x2": np.full((1, 1), 0.25, np.float32)}
        for backend in ("numpy", "llvm"):
            got = gn.compile([out], backend=backend)(**feeds)[0]
            np.testing.assert_array_equal(got, [[[0.25, 0.25, 1.5]]])  # index 2 clamped into the one column
