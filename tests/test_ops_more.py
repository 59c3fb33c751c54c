"""The issue [ops] additions beyond the registry tests (test_ops.py, test_llvm_backend.py and
test_opencl.py check every registered op's examples): the new ops at their edges on every backend,
the api-level compositions (logsumexp, var, std), the losses and sample weights, the initializers
and the Reshape and Lambda layers."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import special

import graphnet as gn
from graphnet.layers import Dense, Input, Lambda, Reshape
from graphnet.ops import REGISTRY

from helpers import check_grad
from test_reliability import BACKENDS

pytestmark = pytest.mark.usefixtures("private_cache")  # compile cold, in a cache of its own

EXTREMES = np.array([-1e4, -100.0, -20.0, -1.0, -1e-8, -1e-30, 0.0, 1e-30, 1e-8, 1.0, 20.0, 100.0, 1e4])


def _fn(fetches, backend):
    return gn.compile(fetches, backend=backend)


# ---- elementwise ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_new_unary_ops_agree_with_numpy_at_extremes(backend, dtype):
    """Each backend's lowering of the new ops against the op's numpy reference where exp overflows,
    tanh saturates and expm1 would cancel."""
    names = ["elu", "selu", "gelu", "silu", "hard_sigmoid", "square", "log1p", "rsqrt"]
    domains = {"log1p": np.clip(EXTREMES, -0.999, None), "rsqrt": np.abs(EXTREMES) + 1e-30}
    feeds = {name: domains.get(name, EXTREMES).astype(dtype) for name in names}
    xs = {name: gn.placeholder(name, (None,), dtype) for name in names}
    attrs = {"elu": {"alpha": 1.0}, "gelu": {"approximate": "tanh"}}
    outs = _fn([gn.ops.apply(n, [xs[n]], **attrs.get(n, {})) for n in names], backend)(**feeds)
    for name, got in zip(names, outs):
        want = REGISTRY[name].numpy(feeds[name], **attrs.get(name, {}))
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want), err_msg=name)
        np.testing.assert_allclose(got, want, rtol=4e-6 if dtype == np.float32 else 1e-13, atol=1e-37,
                                   err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_elu_and_selu_keep_their_relative_precision_near_zero(backend):
    """exp(x) - 1 is 0 in float32 for |x| < 3e-8; the lowering must not cancel there."""
    x = gn.placeholder("x", (None,))
    X = np.array([-1e-8, -3e-6, -1e-3], np.float32)
    elu, selu = _fn([gn.elu(x, 0.5), gn.selu(x)], backend)(x=X)
    np.testing.assert_allclose(elu, 0.5 * np.expm1(X.astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(selu, 1.0507009873554805 * 1.6732632423543772 * np.expm1(X.astype(np.float64)),
                               rtol=1e-6)


def test_api_functions_build_the_registry_ops():
    x = gn.placeholder("x", (None, 3))
    assert gn.swish(x) is gn.silu(x)  # one op, two names (interned)
    assert gn.gelu(x, approximate=True) is gn.gelu(x, approximate="tanh")
    assert gn.gelu(x, approximate=False) is gn.gelu(x)  # exact by default, as torch and Keras
    assert gn.elu(x).attrs == {"alpha": 1.0}
    for name in ("selu", "silu", "hard_sigmoid", "log1p", "square", "rsqrt"):
        assert getattr(gn, name)(x).op is REGISTRY[name]


@pytest.mark.parametrize("approximate", ["exact", None, 1])
def test_gelu_refuses_an_unknown_approximation_naming_it(approximate):
    with pytest.raises(ValueError, match="gelu: approximate must be"):
        gn.gelu(gn.placeholder("x", (None, 3)), approximate=approximate)


def test_hard_sigmoid_is_keras_3s_definition():
    x = gn.placeholder("x", (None,))
    X = np.array([-4.0, -3.0, -1.5, 0.0, 1.5, 3.0, 4.0], np.float32)
    got = _fn(gn.hard_sigmoid(x), "numpy")(x=X)
    np.testing.assert_allclose(got, [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


def test_gelu_and_elu_match_torch_with_attributes():
    torch = pytest.importorskip("torch")
    X = np.linspace(-5, 5, 41)
    x = gn.placeholder("x", (None,), np.float64)
    outs = [gn.gelu(x, approximate="tanh"), gn.gelu(x), gn.elu(x, 0.3)]
    grads = [gn.gradients(gn.sum(o), x) for o in outs]
    values = _fn(outs + grads, "numpy")(x=X)
    t = torch.tensor(X, requires_grad=True)
    F = torch.nn.functional
    for k, ref in enumerate([F.gelu(t, approximate="tanh"), F.gelu(t), F.elu(t, 0.3)]):
        (g,) = torch.autograd.grad(ref.sum(), t)
        np.testing.assert_allclose(values[k], ref.detach().numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(values[k + 3], g.numpy(), rtol=1e-12, atol=1e-15)


# ---- reductions -------------------------------------------------------------------------------
def _product_of_others(x: np.ndarray, axis: int) -> np.ndarray:
    """For each element, the product of the other elements of its slice along `axis` (brute force)."""
    moved = np.moveaxis(x, axis, -1)
    out = np.empty_like(moved)
    for k in range(moved.shape[-1]):
        out[..., k] = np.prod(np.delete(moved, k, axis=-1), axis=-1)
    return np.moveaxis(out, -1, axis)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prod_gradient_is_exact_at_zeros(backend):
    X = np.array([[2.0, 3.0, 0.5, 4.0],     # no zero: prod / x
                  [2.0, 0.0, 3.0, 5.0],     # one zero: the product of the others there, 0 elsewhere
                  [0.0, 7.0, 0.0, 2.0],     # two zeros: all 0
                  [0.0, 0.0, 0.0, 0.0]])
    x = gn.placeholder("x", (None, 4), np.float64)
    value, grad = _fn([gn.prod(x, 1), gn.gradients(gn.sum(gn.prod(x, 1)), x)], backend)(x=X)
    np.testing.assert_allclose(value, [12.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(grad, _product_of_others(X, 1))
    np.testing.assert_array_equal(grad[1], [0.0, 30.0, 0.0, 0.0])


def test_prod_gradient_at_zeros_matches_torch():
    torch = pytest.importorskip("torch")
    X = np.array([[2.0, 0.0, 3.0], [0.0, 0.0, 1.5], [1.0, 2.0, 3.0]])
    t = torch.tensor(X, requires_grad=True)
    t.prod(dim=0).sum().backward()
    x = gn.placeholder("x", (3, 3), np.float64)
    ours = _fn(gn.gradients(gn.sum(gn.prod(x, 0)), x), "numpy")(x=X)
    np.testing.assert_allclose(ours, t.grad.numpy())


def test_prod_gradients_match_central_differences_across_axes():
    X = np.random.default_rng(4).uniform(0.5, 1.5, (3, 2, 4))
    check_grad(lambda x: gn.prod(x, (0, 2), keepdims=True), [X])
    check_grad(lambda x: gn.gradients(gn.sum(gn.prod(x, 1)), x), [X], rtol=1e-5, atol=1e-6)  # second derivative


@pytest.mark.parametrize("backend", BACKENDS)
def test_min_ties_share_the_gradient(backend):
    X = np.array([[1.0, -2.0, -2.0], [3.0, 3.0, 3.0]])
    x = gn.placeholder("x", (None, 3), np.float64)
    value, grad = _fn([gn.min(x, 1), gn.gradients(gn.sum(gn.min(x, 1)), x)], backend)(x=X)
    np.testing.assert_array_equal(value, [-2.0, 3.0])
    np.testing.assert_allclose(grad, [[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])


def test_min_tie_gradient_matches_torch_amin():
    torch = pytest.importorskip("torch")
    X = np.array([[1.0, -2.0, -2.0], [3.0, 3.0, 3.0]])
    t = torch.tensor(X, requires_grad=True)
    t.amin(dim=1).sum().backward()
    x = gn.placeholder("x", (None, 3), np.float64)
    np.testing.assert_allclose(_fn(gn.gradients(gn.sum(gn.min(x, 1)), x), "numpy")(x=X), t.grad.numpy())


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_min_and_prod_give_their_identities(backend):
    x = gn.placeholder("x", (None, 0, 4))
    i = gn.placeholder("i", (None, 0), np.int32)
    low, product, ilow, iproduct = _fn([gn.min(x, 1), gn.prod(x, 1), gn.min(i, 1), gn.prod(i, 1)], backend)(
        x=np.ones((2, 0, 4), np.float32), i=np.ones((2, 0), np.int32))
    np.testing.assert_array_equal(low, np.full((2, 4), np.inf, np.float32))
    np.testing.assert_array_equal(product, np.ones((2, 4), np.float32))
    np.testing.assert_array_equal(ilow, np.full(2, np.iinfo(np.int32).max, np.int32))
    np.testing.assert_array_equal(iproduct, np.ones(2, np.int32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_min_and_prod_render_on_every_backend(backend):
    X = np.array([[3, -1, 4, 2], [5, 9, -2, 6], [1, 1, 1, 1]], np.int64)
    x = gn.placeholder("x", (None, 4), np.int64)
    got = _fn([gn.min(x, 1), gn.prod(x, 1), gn.min(x), gn.prod(x, 0, keepdims=True)], backend)(x=X)
    for g, w in zip(got, [X.min(1), X.prod(1), X.min(), X.prod(0, keepdims=True)]):
        assert g.dtype == np.int64
        np.testing.assert_array_equal(g, w)


# ---- logsumexp, var, std ----------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_logsumexp_is_stable_and_matches_scipy(backend):
    X = np.array([[1e4, 1e4 - 1.0, 0.0], [-1e4, -1e4, -1e4 + 2.0], [-np.inf, -np.inf, -np.inf],
                  [np.inf, 1.0, 2.0], [0.5, -0.25, 2.0]])
    x = gn.placeholder("x", (None, 3), np.float64)
    rows, keep, total = _fn([gn.logsumexp(x, 1), gn.logsumexp(x, -1, keepdims=True), gn.logsumexp(x)], backend)(x=X)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(rows, special.logsumexp(X, 1), rtol=1e-13)
        np.testing.assert_allclose(keep, special.logsumexp(X, -1, keepdims=True), rtol=1e-13)
    assert total == np.inf


def test_logsumexp_gradient_is_softmax():
    X = np.random.default_rng(1).normal(size=(4, 5)) * 3
    (g,) = check_grad(lambda x: gn.logsumexp(x, 1), [X], shapes=[(None, 5)])
    check_grad(lambda x: gn.gradients(gn.sum(gn.logsumexp(x, (0, 1))), x), [X], rtol=1e-5, atol=1e-6)
    x = gn.placeholder("x", (None, 5), np.float64)
    np.testing.assert_allclose(_fn(gn.gradients(gn.sum(gn.logsumexp(x, 1)), x), "numpy")(x=X),
                               special.softmax(X, 1), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_var_and_std_match_numpy_over_batch_and_static_axes(backend):
    x = gn.placeholder("x", (None, 4), np.float64)
    fetches = [gn.var(x), gn.var(x, 0, ddof=1), gn.std(x, 1, keepdims=True), gn.std(x, (0, 1), ddof=1)]
    fn = _fn(fetches, backend)
    for batch in (3, 6):  # the count of a batch axis is the runtime N
        X = np.random.default_rng(batch).normal(2.0, 3.0, (batch, 4))
        got = fn(x=X)
        want = [X.var(), X.var(0, ddof=1), X.std(1, keepdims=True), X.std(ddof=1)]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-12)


def test_var_and_std_gradients_match_torch():
    torch = pytest.importorskip("torch")
    X = np.random.default_rng(2).normal(size=(5, 3))
    check_grad(lambda x: gn.std(x, 0, ddof=1), [X], shapes=[(None, 3)])
    x = gn.placeholder("x", (None, 3), np.float64)
    w = np.random.default_rng(3).uniform(0.5, 1.5, 3)
    ours = _fn(gn.gradients(gn.sum(gn.var(x, 0, ddof=1) * w), x), "numpy")(x=X)
    t = torch.tensor(X, requires_grad=True)
    (t.var(dim=0, unbiased=True) * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(ours, t.grad.numpy(), rtol=1e-12)


def test_compositions_refuse_integer_tensors():
    i = gn.placeholder("i", (None, 3), np.int32)
    for fn in (gn.var, gn.std, gn.logsumexp):
        with pytest.raises(gn.ShapeError, match="float"):
            fn(i)


# ---- losses -----------------------------------------------------------------------------------
def _loss_case(rng, n=6, d=3):
    return rng.normal(size=(n, d)), rng.normal(size=(n, d))


def _eval(node, **feeds):
    return _fn(node, "numpy")(**feeds)


def _huber_np(d, delta):
    a = np.abs(d)
    return np.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mae_and_huber_match_torch(reduction):
    torch = pytest.importorskip("torch")
    P, T = _loss_case(np.random.default_rng(0))
    p, t = gn.placeholder("p", (None, 3), np.float64), gn.placeholder("t", (None, 3), np.float64)
    F = torch.nn.functional
    tp, tt = torch.tensor(P, requires_grad=True), torch.tensor(T)
    for ours, theirs in [(gn.losses.mae(p, t, reduction), F.l1_loss(tp, tt, reduction=reduction)),
                         (gn.losses.huber(p, t, 0.7, reduction), F.huber_loss(tp, tt, reduction=reduction, delta=0.7))]:
        value, grad = _eval([ours, gn.gradients(gn.sum(ours), p)], p=P, t=T)
        (tgrad,) = torch.autograd.grad(theirs.sum(), tp)
        np.testing.assert_allclose(value, theirs.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(grad, tgrad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(_eval(gn.losses.huber(p, t, 0.7, "none"), p=P, t=T), _huber_np(P - T, 0.7))


def test_kl_divergence_matches_torch_batchmean_and_keras_clipping():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    Q, Y = special.softmax(rng.normal(size=(5, 4)), 1), special.softmax(rng.normal(size=(5, 4)), 1)
    q, y = gn.placeholder("q", (None, 4), np.float64), gn.placeholder("y", (None, 4), np.float64)
    mean, rows = _eval([gn.losses.kl_divergence(q, y), gn.losses.kl_divergence(q, y, "none")], q=Q, y=Y)
    theirs = torch.nn.functional.kl_div(torch.log(torch.tensor(Q)), torch.tensor(Y), reduction="batchmean")
    np.testing.assert_allclose(mean, theirs.item(), rtol=1e-12)
    np.testing.assert_allclose(rows, np.sum(Y * np.log(Y / Q), 1), rtol=1e-12)
    Y0 = Y.copy()
    Y0[0] = [1.0, 0.0, 0.0, 0.0]  # a zero target: Keras clips it to eps, torch's xlogy gives exactly 0
    eps = 1e-7
    keras = np.sum(np.clip(Y0, eps, 1) * np.log(np.clip(Y0, eps, 1) / np.clip(Q, eps, 1)), 1)
    np.testing.assert_allclose(_eval(gn.losses.kl_divergence(q, y, "none"), q=Q, y=Y0), keras, rtol=1e-12)
    check_grad(lambda q_: gn.losses.kl_divergence(q_, Y0), [Q])


def test_hinge_reads_binary_labels_as_keras_does():
    rng = np.random.default_rng(2)
    P = rng.normal(size=(6, 2))
    signed = rng.choice([-1.0, 1.0], size=(6, 2))
    p, y = gn.placeholder("p", (None, 2), np.float64), gn.placeholder("y", (None, 2), np.float64)
    loss = gn.losses.hinge(p, y, "none")
    fn = _fn(loss, "numpy")
    want = np.maximum(1 - signed * P, 0)
    np.testing.assert_allclose(fn(p=P, y=signed), want)
    np.testing.assert_allclose(fn(p=P, y=(signed + 1) / 2), want)  # {0, 1}: mapped to 2 y - 1
    mixed = np.array([[0.0, 1.0]] * 5 + [[-1.0, 0.5]])  # not all binary: used as they are
    np.testing.assert_allclose(fn(p=P, y=mixed), np.maximum(1 - mixed * P, 0))
    check_grad(lambda p_: gn.losses.hinge(p_, signed), [P])


def test_hinge_and_kl_refuse_a_keras_order_call():
    w = gn.variable("w", np.ones((3, 2)))
    x, y = gn.placeholder("x", (None, 3), np.float64), gn.placeholder("y", (None, 2), np.float64)
    with pytest.raises(ValueError, match="Hinge"):
        gn.losses.hinge(y, x @ w)
    with pytest.raises(ValueError, match="KLDivergence"):
        gn.losses.kl_divergence(y, gn.softmax(x @ w))


@pytest.mark.parametrize("backend", BACKENDS)
def test_losses_agree_on_every_backend(backend):
    rng = np.random.default_rng(3)
    P, T = _loss_case(rng)
    W = rng.uniform(0, 2, 6)
    p, t = gn.placeholder("p", (None, 3), np.float64), gn.placeholder("t", (None, 3), np.float64)
    w = gn.placeholder("w", (None,), np.float64)
    losses = [gn.losses.mae(p, t, sample_weight=w), gn.losses.huber(p, t, 0.5, "sum", w),
              gn.losses.hinge(p, gn.sign(t), sample_weight=w), gn.losses.kl_divergence(gn.softmax(p), gn.softmax(t))]
    fetches = losses + gn.gradients(sum(losses[1:], losses[0]), [p])
    ref = _fn(fetches, "numpy")(p=P, t=T, w=W)
    got = _fn(fetches, backend)(p=P, t=T, w=W)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-11, atol=1e-13)


def test_sample_weight_mean_is_keras_sum_over_batch_size():
    rng = np.random.default_rng(4)
    P, T = _loss_case(rng)
    W = rng.uniform(0, 2, 6)
    p, t = gn.placeholder("p", (None, 3), np.float64), gn.placeholder("t", (None, 3), np.float64)
    w = gn.placeholder("w", (None,), np.float64)
    sq = (P - T) ** 2
    mean, total, none = _eval([gn.losses.mse(p, t, sample_weight=w), gn.losses.mse(p, t, "sum", w),
                               gn.losses.mse(p, t, "none", w)], p=P, t=T, w=W)
    np.testing.assert_allclose(mean, np.sum(W[:, None] * sq) / sq.size)
    np.testing.assert_allclose(total, np.sum(W[:, None] * sq))
    np.testing.assert_allclose(none, W[:, None] * sq)
    per_sample = gn.losses.MeanSquaredError()(t, p, sample_weight=w)  # Keras: mean over the last axis first
    np.testing.assert_allclose(_eval(per_sample, p=P, t=T, w=W), np.sum(W * sq.mean(1)) / 6)
    ones = _eval(gn.losses.mse(p, t, sample_weight=np.ones((1, 3))), p=P, t=T)  # a broadcastable weight
    np.testing.assert_allclose(ones, sq.mean())


def test_sample_weight_on_cross_entropies_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    Z, Y, W = rng.normal(size=(6, 3)), rng.uniform(size=(6, 3)), rng.uniform(0, 2, (6, 3))
    z, y = gn.placeholder("z", (None, 3), np.float64), gn.placeholder("y", (None, 3), np.float64)
    w = gn.placeholder("w", (None, 3), np.float64)
    ours = _eval(gn.losses.binary_cross_entropy(z, y, from_logits=True, sample_weight=w), z=Z, y=Y, w=W)
    theirs = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(Z), torch.tensor(Y),
                                                                  weight=torch.tensor(W))
    np.testing.assert_allclose(ours, theirs.item(), rtol=1e-12)
    labels, ids = rng.integers(0, 3, 6), gn.placeholder("ids", (None,), np.int64)
    row_w = gn.placeholder("row_w", (None,), np.float64)
    rows, weighted = _eval([gn.losses.softmax_cross_entropy(z, ids, "none"),
                            gn.losses.softmax_cross_entropy(z, ids, sample_weight=row_w)],
                           z=Z, ids=labels, row_w=W[:, 0])
    np.testing.assert_allclose(rows, -special.log_softmax(Z, 1)[np.arange(6), labels], rtol=1e-12)
    np.testing.assert_allclose(weighted, np.mean(W[:, 0] * rows), rtol=1e-12)


def test_a_sample_weight_that_does_not_fit_names_the_loss():
    p = gn.placeholder("p", (None, 3))
    with pytest.raises(gn.ShapeError, match=r"huber: sample_weight \(4, 2\) does not broadcast"):
        gn.losses.huber(p, gn.zeros_like(p), sample_weight=np.ones((4, 2)))  # ((4,) fixes N = 4: TF1's rule)
    with pytest.raises(gn.ShapeError, match="sample_weight"):  # a weight must not enlarge the loss
        gn.losses.mae(p, gn.zeros_like(p), sample_weight=gn.placeholder("w", (2, None, 3)))


@pytest.mark.parametrize("loss, per_sample", [
    ("mae", lambda p, y: np.abs(p - y).mean(1)),
    ("huber", lambda p, y: _huber_np(p - y, 1.0).mean(1)),
    (gn.losses.Huber(delta=0.3), lambda p, y: _huber_np(p - y, 0.3).mean(1)),
    ("hinge", lambda p, y: np.maximum(1 - (2 * y - 1) * p, 0).mean(1)),
    ("kld", lambda p, y: np.sum(y * np.log(y / p), 1)),
    ("kl_divergence", lambda p, y: np.sum(y * np.log(y / p), 1)),
])
def test_compile_takes_the_keras_loss_names(loss, per_sample, tmp_path):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(8, 4)).astype(np.float32)
    kl = loss in ("kld", "kl_divergence")
    Y = special.softmax(rng.normal(size=(8, 3)), 1) if kl else rng.integers(0, 2, (8, 3)).astype(np.float64)
    inputs = Input((4,))
    model = gn.Model(inputs, Dense(3, activation="softmax" if kl else None)(inputs))
    model.compile("sgd", loss=loss)
    P = model.predict(X).astype(np.float64)
    np.testing.assert_allclose(model.evaluate(X, Y.astype(np.float32), verbose=0), per_sample(P, Y).mean(), rtol=1e-5)
    W = rng.uniform(0, 2, 8)
    weighted = model.evaluate(X, Y.astype(np.float32), sample_weight=W, verbose=0)
    np.testing.assert_allclose(weighted, np.mean(W * per_sample(P, Y)), rtol=1e-5)
    model.save(tmp_path / "m.npz")
    again = gn.load_model(tmp_path / "m.npz")
    np.testing.assert_allclose(again.evaluate(X, Y.astype(np.float32), verbose=0), per_sample(P, Y).mean(), rtol=1e-5)


def test_huber_loss_object_keeps_its_delta_through_save(tmp_path):
    inputs = Input((2,))
    model = gn.Model(inputs, Dense(1)(inputs))
    model.compile("sgd", loss=gn.losses.Huber(delta=0.25))
    model.save(tmp_path / "h.npz")
    loss = gn.load_model(tmp_path / "h.npz")._config.losses[0].source
    assert isinstance(loss, gn.losses.Huber) and loss.delta == 0.25


def test_loss_arguments_are_checked():
    p = gn.placeholder("p", (None, 3))
    with pytest.raises(ValueError, match="delta"):
        gn.losses.huber(p, p, delta=0.0)
    with pytest.raises(ValueError, match="reduction"):
        gn.losses.mae(p, p, reduction="batch")
    with pytest.raises(ValueError, match="probabilities"):
        gn.losses.kl_divergence(gn.placeholder("q", (4, 3)), np.full((4, 3), 2.0))


# ---- initializers -----------------------------------------------------------------------------
def test_normal_and_uniform_have_keras_defaults_and_seeds():
    a = gn.init.normal((400, 300), seed=3)
    np.testing.assert_array_equal(a, gn.init.normal((400, 300), seed=3))
    assert a.dtype == np.float32 and abs(a.std() - 0.05) < 1e-3 and abs(a.mean()) < 1e-3
    b = gn.init.normal((1000,), seed=1, mean=2.0, stddev=0.5, dtype=np.float64)
    assert b.dtype == np.float64 and abs(b.mean() - 2.0) < 0.05
    u = gn.init.uniform((400, 300), seed=3)
    assert -0.05 <= u.min() and u.max() < 0.05 and abs(u.std() - 0.1 / np.sqrt(12)) < 1e-3
    gn.set_seed(7)
    first = gn.init.uniform((5,))
    gn.set_seed(7)
    np.testing.assert_array_equal(first, gn.init.uniform((5,)))


def test_truncated_and_lecun_initializers():
    t = gn.init.truncated_normal((200, 500), stddev=0.5, seed=0)
    assert np.abs(t).max() <= 1.0  # redrawn beyond two standard deviations
    fan_in = 200
    ln = gn.init.lecun_normal((fan_in, 500), seed=0)
    assert abs(ln.std() - np.sqrt(1 / fan_in)) < 0.02 * np.sqrt(1 / fan_in)
    assert np.abs(ln).max() <= 2 * np.sqrt(1 / fan_in) / 0.87962566103423978
    lu = gn.init.lecun_uniform((fan_in, 500), seed=0)
    assert np.abs(lu).max() < np.sqrt(3 / fan_in) and abs(lu.std() - np.sqrt(1 / fan_in)) < 0.02 * np.sqrt(1 / fan_in)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5), (3, 3, 2, 8)])
def test_orthogonal_is_orthonormal_sign_fixed_and_seeded(shape):
    q = gn.init.orthogonal(shape, seed=2, dtype=np.float64, gain=1.5)
    assert q.shape == shape
    flat = q.reshape(-1, shape[-1]) / 1.5
    small = flat.T @ flat if flat.shape[0] >= flat.shape[1] else flat @ flat.T
    np.testing.assert_allclose(small, np.eye(len(small)), atol=1e-12)
    np.testing.assert_array_equal(q, gn.init.orthogonal(shape, seed=2, dtype=np.float64, gain=1.5))
    rows, cols = flat.shape
    a = np.random.default_rng(2).normal(size=(max(rows, cols), min(rows, cols)))
    tall = flat if rows >= cols else flat.T
    np.testing.assert_array_less(0, np.diag(tall.T @ a))  # Q's columns point along a's: R's diagonal positive
    with pytest.raises(ValueError, match="rank 2"):
        gn.init.orthogonal((4,))


@pytest.mark.parametrize("name", ["orthogonal", "normal", "uniform", "lecun_normal", "truncated_normal"])
def test_dense_takes_the_keras_initializer_names(name):
    inputs = Input((6,))
    layer = Dense(4, kernel_initializer=name)
    gn.Model(inputs, layer(inputs))
    kernel = layer.get_weights()[0]
    assert kernel.shape == (6, 4) and kernel.dtype == np.float32 and np.any(kernel != 0)
    if name == "orthogonal":
        np.testing.assert_allclose(kernel.T @ kernel, np.eye(4), atol=1e-6)


# ---- layers -----------------------------------------------------------------------------------
def test_reshape_layer(tmp_path):
    inputs = Input((12,))
    r = Reshape((3, -1))(inputs)
    assert r.shape == (None, 3, 4)
    model = gn.Model(inputs, Dense(2)(Reshape((12,))(r)))
    probe = gn.Model(inputs, r)
    X = np.arange(24, dtype=np.float32).reshape(2, 12)
    np.testing.assert_array_equal(probe.predict(X), X.reshape(2, 3, 4))
    model.save(tmp_path / "r.npz")
    np.testing.assert_allclose(gn.load_model(tmp_path / "r.npz").predict(X), model.predict(X))
    with pytest.raises(ValueError, match="cannot reshape"):
        Reshape((5, -1))(inputs)
    with pytest.raises(ValueError, match="cannot reshape"):
        Reshape((2, 5))(inputs)
    for bad in [(0, 3), (-1, -1), (2.5,)]:
        with pytest.raises(ValueError, match="target_shape"):
            Reshape(bad)


def test_lambda_layer_traces_its_function_and_refuses_to_save(tmp_path):
    a, b = Input((3,)), Input((3,))
    scaled = Lambda(lambda x: 2.0 * gn.square(x), name="double_square")(a)
    joined = Lambda(lambda xs: gn.sum(xs[0] * xs[1], axis=-1, keepdims=True))([scaled, b])
    assert scaled.shape == (None, 3) and joined.shape == (None, 1)
    model = gn.Model([a, b], joined)
    A, B = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((2, 3), np.float32)
    np.testing.assert_allclose(model.predict([A, B]), np.sum(2 * A * A * B, 1, keepdims=True))
    with pytest.raises(ValueError, match="Lambda layer 'double_square'"):
        model.save(tmp_path / "l.npz")
    assert not (tmp_path / "l.npz").exists()
    model.save_weights(tmp_path / "w.npz")
    with pytest.raises(ValueError, match="declared output_shape"):
        Lambda(lambda x: gn.sum(x, -1), output_shape=(3,))(a)
    with pytest.raises(TypeError, match="graph node"):
        Lambda(lambda x: 3.0)(a)


def test_keras_activation_names_use_the_ops():
    inputs = Input((3,))
    outs = [Dense(3, activation=name, name=name)(inputs) for name in ("elu", "selu", "swish", "hard_sigmoid")]
    model = gn.Model(inputs, outs)
    built = {n.op.name for n in model.graph.nodes}
    assert {"elu", "selu", "silu", "hard_sigmoid"} <= built
    X = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    for layer, out in zip(("elu", "selu", "swish", "hard_sigmoid"), model.predict(X)):
        z = X @ model.get_layer(layer).get_weights()[0]
        want = {"elu": np.where(z > 0, z, np.expm1(z)), "swish": z * special.expit(z),
                "selu": 1.0507009873554805 * np.where(z > 0, z, 1.6732632423543772 * np.expm1(z)),
                "hard_sigmoid": np.clip(z / 6 + 0.5, 0, 1)}[layer]
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_tensor_methods_and_tf1_aliases_for_min_and_prod():
    x = gn.placeholder("x_methods", (None, 3))
    X = np.array([[1.0, -2.0, 3.0], [4.0, 0.5, -1.0]], np.float32)
    lo, pr, rmin, rprod = gn.compile([x.min(1), x.prod(0), gn.reduce_min(x), gn.reduce_prod(x, 1)],
                                     backend="llvm")(x_methods=X)
    np.testing.assert_allclose(lo, X.min(1))
    np.testing.assert_allclose(pr, X.prod(0))
    np.testing.assert_allclose(rmin, X.min())
    np.testing.assert_allclose(rprod, X.prod(1))
