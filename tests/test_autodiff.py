"""gn.gradients: fan-out, un-broadcasting, unconnected and integer inputs, seeds, higher orders,
a small MLP against finite differences, and finiteness through the stabilised forms."""
import numpy as np
import pytest
from scipy import special

import graphnet as gn

from helpers import check_grad, run

F64 = np.float64


def test_fan_out_sums_every_use():
    x = gn.placeholder("x", (None, 3), F64)
    y = gn.sum(x * x + 3 * x + gn.exp(x))
    X = np.linspace(-1, 1, 6).reshape(2, 3)
    np.testing.assert_allclose(run(gn.gradients(y, x), {"x": X}), 2 * X + 3 + np.exp(X))


def test_shared_intermediate_feeds_two_branches():
    check_grad(lambda x: gn.tanh(x) * gn.sigmoid(gn.tanh(x)) + gn.tanh(x), [np.linspace(-2, 2, 6).reshape(2, 3)])


@pytest.mark.parametrize("b_shape", [(3,), (1, 3), (), (None, 1), (1, 1)])
def test_gradient_is_summed_back_to_each_input_shape(b_shape):
    x = gn.placeholder("x", (None, 3), F64)
    b = gn.placeholder("b", b_shape, F64)
    gx, gb = gn.gradients(gn.sum((x + b) * x), [x, b])
    assert gx.shape == (None, 3) and gb.shape == b_shape
    X = np.arange(12.0).reshape(4, 3)
    B = np.ones(tuple(4 if d is None else d for d in b_shape))
    got_x, got_b = run([gx, gb], {"x": X, "b": B})
    np.testing.assert_allclose(got_x, 2 * X + B)
    full = X + np.zeros_like(X + B)  # d/db sum((x + b) x) = x, summed over broadcast axes
    axes = tuple(range(full.ndim - len(got_b.shape))) + tuple(
        i + full.ndim - len(got_b.shape) for i, d in enumerate(got_b.shape) if d == 1 and full.shape[i] != 1)
    np.testing.assert_allclose(got_b, full.sum(axis=axes).reshape(got_b.shape))


def test_broadcast_over_the_batch_is_checked_numerically():
    check_grad(lambda x, w, b: gn.tanh(x @ w + b), [np.random.default_rng(0).normal(size=s) for s in
                                                     [(4, 3), (3, 2), (2,)]], shapes=[(None, 3), (3, 2), (2,)])


def test_unconnected_inputs_get_zeros_of_their_shape():
    x = gn.placeholder("x", (None, 3), F64)
    w = gn.variable("w", np.ones((3, 2)))
    unused = gn.variable("unused", np.ones((5,)))
    other = gn.placeholder("other", (None, 7), F64)
    gw, gu, go = gn.gradients(gn.sum(x @ w), [w, unused, other])
    assert (gu.shape, go.shape) == ((5,), (None, 7))
    got_w, got_u, got_o = run([gw, gu, go], {"x": np.ones((2, 3)), "other": np.ones((2, 7))})
    np.testing.assert_array_equal(got_u, np.zeros(5))
    np.testing.assert_array_equal(got_o, np.zeros((2, 7)))
    np.testing.assert_array_equal(got_w, np.full((3, 2), 2.0))


def test_zero_gradient_of_a_batched_input_takes_the_fed_batch_size():
    x = gn.placeholder("x", (None, 3), F64)
    g = gn.gradients(gn.sum(gn.stop_gradient(x)), x)
    assert run(g, {"x": np.ones((5, 3))}).shape == (5, 3)


def test_stop_gradient_blocks_the_path():
    x = gn.placeholder("x", (2,), F64)
    g = gn.gradients(gn.sum(x * gn.stop_gradient(x)), x)
    X = np.array([1.5, -2.0])
    np.testing.assert_allclose(run(g, {"x": X}), X)


def test_integer_inputs_are_refused_by_name():
    labels = gn.placeholder("labels", (None,), np.int64)
    logits = gn.placeholder("logits", (None, 4), F64)
    loss = -gn.sum(gn.one_hot(labels, 4, F64) * gn.log_softmax(logits))
    with pytest.raises(TypeError, match="labels") as info:
        gn.gradients(loss, [logits, labels])
    assert "test_autodiff.py" in str(info.value)
    assert gn.gradients(loss, logits).shape == (None, 4)  # the float input alone is fine


def test_non_nodes_are_refused():
    x = gn.placeholder("x", (2,), F64)
    with pytest.raises(TypeError, match="float"):
        gn.gradients(gn.sum(x), [x, 1.0])


def test_grad_ys_seeds_the_output_gradient():
    x = gn.placeholder("x", (None, 2), F64)
    seed = gn.placeholder("seed", (None, 2), F64)
    X, S = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.5, -1.0], [2.0, 0.0]])
    got = run(gn.gradients(x * x, x, grad_ys=seed), {"x": X, "seed": S})
    np.testing.assert_allclose(got, 2 * X * S)
    scalar_seed = run(gn.gradients(x * x, x, grad_ys=3.0), {"x": X})
    np.testing.assert_allclose(scalar_seed, 6 * X)


def test_grad_ys_must_match_ys():
    x = gn.placeholder("x", (2,), F64)
    with pytest.raises(ValueError, match="grad_ys"):
        gn.gradients([x * 2, x * 3], x, grad_ys=[np.ones(2)])


def test_several_ys_add_their_gradients():
    x = gn.placeholder("x", (3,), F64)
    gx = gn.gradients([gn.sum(x * x), gn.sum(3 * x)], x)
    X = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(run(gx, {"x": X}), 2 * X + 3)


def test_second_and_third_derivatives():
    x = gn.placeholder("x", (4,), F64)
    y = gn.sum(x ** 3 + gn.tanh(x))
    d1 = gn.gradients(y, x)
    d2 = gn.gradients(gn.sum(d1), x)
    d3 = gn.gradients(gn.sum(d2), x)
    X = np.array([-1.5, -0.2, 0.3, 2.0])
    t = np.tanh(X)
    got1, got2, got3 = run([d1, d2, d3], {"x": X})
    np.testing.assert_allclose(got1, 3 * X ** 2 + 1 - t ** 2)
    np.testing.assert_allclose(got2, 6 * X - 2 * t * (1 - t ** 2))
    np.testing.assert_allclose(got3, 6 - 2 * (1 - t ** 2) ** 2 + 4 * t ** 2 * (1 - t ** 2))


def test_mixed_second_derivative_of_a_product():
    """d/db of d(sum(a^2 b))/da = 2ab: the gradient of a gradient reaches the other input."""
    check_grad(lambda a, b: gn.gradients(gn.sum(a * a * b), [a]), [np.array([0.5, -1.0]), np.array([2.0, 3.0])])


def test_small_mlp_gradients_match_finite_differences():
    rng = np.random.default_rng(0)

    def loss(x, y, w1, b1, w2, b2):
        h = gn.tanh(x @ w1 + b1)
        logits = h @ w2 + b2
        return gn.mean(gn.softplus(logits) - y * logits) + 0.1 * gn.sum(gn.relu(x @ w1))

    arrays = [rng.normal(size=(5, 3)), rng.integers(0, 2, (5, 1)).astype(F64), rng.normal(size=(3, 4)),
              rng.normal(size=4) * 0.1, rng.normal(size=(4, 1)), np.zeros(1)]
    check_grad(loss, arrays, wrt=[0, 2, 3, 4, 5], shapes=[(None, 3), (None, 1), (3, 4), (4,), (4, 1), (1,)])


def test_softmax_cross_entropy_gradient_is_softmax_minus_onehot():
    logits = gn.placeholder("logits", (None, 3), F64)
    labels = gn.placeholder("labels", (None,), np.int32)
    loss = -gn.mean(gn.sum(gn.one_hot(labels, 3, F64) * gn.log(gn.softmax(logits)), axis=1))
    Z, L = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]), np.array([1, 2], np.int32)
    e = np.exp(Z - Z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(run(gn.gradients(loss, logits), {"logits": Z, "labels": L}),
                               (p - np.eye(3)[L]) / 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_through_stabilised_forms_stay_finite(dtype):
    z = gn.placeholder("z", (None,), dtype)
    Z = np.array([-1e4, -50.0, 0.0, 50.0, 1e4], dtype)
    sig = special.expit(Z.astype(F64))
    eps = 1e-7
    cases = {
        "log(sigmoid)": (gn.log(gn.sigmoid(z)), 1 - sig),
        "log(1-sigmoid)": (gn.log(1 - gn.sigmoid(z)), -sig),
        "log(clip(sigmoid))": (gn.log(gn.clip(gn.sigmoid(z), eps, 1 - eps)), 1 - sig),
    }
    for name, (y, want) in cases.items():
        value, grad = run([y, gn.gradients(gn.sum(y), z)], {"z": Z})
        assert np.all(np.isfinite(value)), name
        assert np.all(np.isfinite(grad)), name
        np.testing.assert_allclose(grad, want, atol=1e-6, err_msg=name)


def test_log_softmax_of_huge_logits_has_finite_gradient():
    z = gn.placeholder("z", (None, 3), F64)
    y = gn.sum(gn.log(gn.softmax(z)) * np.array([1.0, 0.0, 0.0]))
    Z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
    value, grad = run([y, gn.gradients(y, z)], {"z": Z})
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, [[0.0, 0.0, 0.0], [1.0, -1.0, 0.0]], atol=1e-12)


def test_user_nodes_are_left_as_written():
    z = gn.placeholder("z", (2,), F64)
    y = gn.log(gn.sigmoid(z))
    gn.gradients(gn.sum(y), z)
    assert y.op.name == "log" and y.inputs[0].op.name == "sigmoid"


def test_gradient_with_respect_to_an_intermediate_the_stable_form_bypasses():
    z = gn.placeholder("z", (3,), F64)
    s = gn.sigmoid(z)
    Z = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_allclose(run(gn.gradients(gn.sum(gn.log(s)), s), {"z": Z}), 1 + np.exp(-Z))


def test_relu_gradient_reads_the_output_so_the_pre_activation_is_not_kept():
    """relu(a) > 0 exactly where a > 0 (NaN and -0.0 included), so the gradient tests the output the
    forward keeps anyway: a hidden layer's step stores relu(x @ w + b), not x @ w + b as well."""
    x = gn.placeholder("x", (None, 4))
    w = gn.variable("w", np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3))
    b = gn.variable("b", np.array([0.0, -1.0, 1.0], np.float32))
    v = gn.variable("v", np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2))
    pre = x @ w + b
    h = gn.relu(pre)
    out = h @ v
    loss = gn.sum(out * out)
    grads = gn.gradients(loss, [w, b, v])
    fn = gn.compile([loss, *grads], backend="llvm")
    stored = {s.node for k in fn.executable.lp.kernels for s in k.stores}
    assert h.name in stored and pre.name not in stored
    xs = np.array([[1.0, -2.0, 0.0, np.nan], [-0.0, 0.0, 0.0, 0.0], [2.0, 2.0, -1.0, 0.0]], np.float32)
    for got, want in zip(fn(x=xs), gn.compile([loss, *grads], backend="numpy")(x=xs)):
        np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)


def test_the_nodes_between_xs_and_ys_are_networkxs_descendants_among_the_ancestors():
    """autodiff._between walks the ys' ancestors once; it keeps exactly what networkx's descendants of
    each x within those ancestors gave (a graph with fan-out, a dead branch and an x no y reads)."""
    import networkx as nx

    from graphnet.autodiff import _between
    with gn.Graph():
        a, b, c = gn.placeholder("a", (None, 3)), gn.placeholder("b", (None, 3)), gn.placeholder("c", (None, 3))
        h = gn.tanh(a) * b
        dead = gn.exp(h) + c  # no y reads it
        ys = [gn.sum(h * h + gn.relu(b)), gn.mean(gn.sigmoid(h) - a)]
        g = a.graph.to_networkx(ys)
        for xs in ([a], [b], [a, b], [c], [h], [a, dead]):
            want = set().union(*(nx.descendants(g, x) | {x} for x in xs if x in g)) & set(g.nodes)
            assert _between(xs, ys) == want
            assert dead not in _between(xs, ys)


def test_importing_graphnet_imports_no_networkx():
    """networkx (slow to import) is imported where `Graph.to_networkx` is called, not by `import
    graphnet`: a training script never needs it."""
    import subprocess
    import sys
    code = ("import sys, numpy as np, graphnet as gn\n"
            "x = gn.placeholder('x', (None, 2)); w = gn.variable('w', np.ones((2, 1), np.float32))\n"
            "gn.gradients(gn.mean(x @ w), [w])\n"
            "assert 'networkx' not in sys.modules, 'networkx imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
