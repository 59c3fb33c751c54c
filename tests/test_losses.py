"""Losses: values and gradients against closed forms and torch, stability at logits of +-1e4,
reductions and shape errors."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from helpers import check_grad

EXTREME = np.array([[-1e4], [-30.0], [-1.0], [0.0], [0.5], [30.0], [1e4]], np.float32)
TARGETS = np.array([[1.0], [0.0], [1.0], [1.0], [0.0], [1.0], [0.0]], np.float32)


def loss_and_grad(build, z: np.ndarray, y: np.ndarray):
    """Compile loss(z, y) and d loss / d z with the numpy backend and evaluate them once."""
    with gn.Graph():
        zp = gn.placeholder("z", (None,) + z.shape[1:], z.dtype)
        yp = gn.placeholder("y", (None,) + y.shape[1:], y.dtype)
        loss = build(zp, yp)
        return gn.compile([loss, gn.gradients(loss, zp)], backend="numpy")(z=z, y=y)


def torch_loss_and_grad(fn, z: np.ndarray, y: np.ndarray):
    torch = pytest.importorskip("torch")
    zt = torch.tensor(z, requires_grad=True)
    loss = fn(torch, zt, torch.from_numpy(y))
    loss.backward()
    return loss.detach().numpy(), zt.grad.numpy()


# ---- mean squared error ---------------------------------------------------------------------------
def test_mse_value_gradient_and_reductions():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    value, grad = loss_and_grad(gn.losses.mse, pred, target)
    np.testing.assert_allclose(value, np.mean((pred - target) ** 2), rtol=1e-12)
    np.testing.assert_allclose(grad, 2 * (pred - target) / pred.size, rtol=1e-12)
    for reduction, expected in [("sum", np.sum((pred - target) ** 2)), ("none", (pred - target) ** 2)]:
        got, _ = loss_and_grad(lambda p, t: gn.losses.mse(p, t, reduction=reduction), pred, target)
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_mse_matches_torch():
    rng = np.random.default_rng(1)
    pred, target = rng.normal(size=(6, 2)).astype(np.float32), rng.normal(size=(6, 2)).astype(np.float32)
    expected = torch_loss_and_grad(lambda torch, z, y: torch.nn.functional.mse_loss(z, y), pred, target)
    for got, want in zip(loss_and_grad(gn.losses.mse, pred, target), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)


# ---- binary cross-entropy -------------------------------------------------------------------------
def bce_from_logits(z, y):
    return gn.losses.binary_cross_entropy(z, y, from_logits=True)


def sigmoid_then_bce(z, y):
    return gn.losses.binary_cross_entropy(gn.sigmoid(z), y)


def closed_form_bce(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z64, y64 = z.astype(np.float64), y.astype(np.float64)
    per = np.maximum(z64, 0) - z64 * y64 + np.log1p(np.exp(-np.abs(z64)))
    e = np.exp(-np.abs(z64))
    sigmoid = np.where(z64 >= 0, 1 / (1 + e), e / (1 + e))
    return per.mean(), (sigmoid - y64) / z.size


@pytest.mark.parametrize("build", [bce_from_logits, sigmoid_then_bce], ids=["from_logits", "sigmoid+probabilities"])
def test_bce_is_finite_and_exact_at_extreme_logits(build):
    value, grad = loss_and_grad(build, EXTREME, TARGETS)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    want_value, want_grad = closed_form_bce(EXTREME, TARGETS)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("build", [bce_from_logits, sigmoid_then_bce], ids=["from_logits", "sigmoid+probabilities"])
def test_bce_matches_torch_bce_with_logits_at_extreme_logits(build):
    expected = torch_loss_and_grad(lambda torch, z, y: torch.nn.functional.binary_cross_entropy_with_logits(z, y),
                                   EXTREME, TARGETS)
    for got, want in zip(loss_and_grad(build, EXTREME, TARGETS), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_sigmoid_bce_is_rewritten_to_the_logits_form():
    z = gn.placeholder("z", (None, 1))
    y = gn.placeholder("y", (None, 1))
    f = gn.compile(gn.losses.binary_cross_entropy(gn.sigmoid(z), y), backend="numpy")
    ops = [n.op.name for n in f.program.nodes()]
    assert "softplus" in ops and "log" not in ops and "sigmoid" not in ops


def test_bce_gradient_at_zero_logit_is_sigmoid_minus_target():
    z, y = np.zeros((2, 1), np.float64), np.array([[0.0], [1.0]])
    _, grad = loss_and_grad(bce_from_logits, z, y)
    np.testing.assert_allclose(grad, [[0.25], [-0.25]], rtol=1e-15)  # (0.5 - y) / 2


def test_bce_from_probabilities_clips():
    p = np.array([[0.01], [0.3], [0.5], [0.99], [0.0], [1.0]], np.float32)
    y = np.array([[0.0], [1.0], [1.0], [0.0], [1.0], [0.0]], np.float32)
    value, grad = loss_and_grad(gn.losses.binary_cross_entropy, p, y)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    eps = gn.losses.EPSILON
    pc = np.clip(p, np.float32(eps), np.float32(1 - eps)).astype(np.float64)  # the bounds as float32 holds them
    np.testing.assert_allclose(value, -np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc)), rtol=1e-5)
    np.testing.assert_allclose(grad[4:], 0.0)  # clipped: no gradient, as for a clamp


def test_bce_from_probabilities_matches_torch():
    p = np.array([[0.01], [0.3], [0.5], [0.99]], np.float32)
    y = np.array([[0.0], [1.0], [1.0], [0.0]], np.float32)
    want, want_grad = torch_loss_and_grad(lambda torch, z, t: torch.nn.functional.binary_cross_entropy(z, t),
                                          p, y)
    got, got_grad = loss_and_grad(gn.losses.binary_cross_entropy, p, y)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5)


def test_bce_integer_targets_are_cast():
    z = np.array([[2.0], [-1.0]], np.float32)
    value, _ = loss_and_grad(bce_from_logits, z, np.array([[1], [0]], np.int64))
    np.testing.assert_allclose(value, closed_form_bce(z, np.array([[1.0], [0.0]]))[0], rtol=1e-6)


# ---- softmax cross-entropy ------------------------------------------------------------------------
LOGITS = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 2.0], [0.5, -0.5, 3.0], [-1e4, -1e4, -1e4]], np.float32)
IDS = np.array([1, 1, 2, 0], np.int64)


def closed_form_softmax_ce(z: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z64 = z.astype(np.float64)
    shifted = z64 - z64.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    onehot = np.eye(z.shape[1])[ids]
    return -np.mean(np.sum(onehot * log_p, axis=1)), (np.exp(log_p) - onehot) / len(z)


@pytest.mark.parametrize("labels", ["ids", "one_hot"])
def test_softmax_cross_entropy_at_extreme_logits(labels):
    y = IDS if labels == "ids" else np.eye(3, dtype=np.float32)[IDS]
    value, grad = loss_and_grad(gn.losses.softmax_cross_entropy, LOGITS, y)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    want_value, want_grad = closed_form_softmax_ce(LOGITS, IDS)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("labels", ["ids", "one_hot"])
def test_softmax_cross_entropy_matches_torch_at_extreme_logits(labels):
    y = IDS if labels == "ids" else np.eye(3, dtype=np.float32)[IDS]
    expected = torch_loss_and_grad(lambda torch, z, t: torch.nn.functional.cross_entropy(z, t), LOGITS, y)
    value, grad = loss_and_grad(gn.losses.softmax_cross_entropy, LOGITS, y)
    np.testing.assert_allclose(value, expected[0], rtol=1e-6)
    np.testing.assert_allclose(grad, expected[1], rtol=1e-6, atol=1e-12)


def test_softmax_cross_entropy_reductions():
    rows, _ = loss_and_grad(lambda z, y: gn.losses.softmax_cross_entropy(z, y, reduction="none"), LOGITS, IDS)
    total, _ = loss_and_grad(lambda z, y: gn.losses.softmax_cross_entropy(z, y, reduction="sum"), LOGITS, IDS)
    assert rows.shape == (4,)
    np.testing.assert_allclose(total, rows.sum(), rtol=1e-6)
    np.testing.assert_allclose(rows[0], 1e4 * 2, rtol=1e-6)  # -log_softmax of -1e4 against 1e4


@pytest.mark.parametrize("loss", ["mse", "bce_logits", "bce_probabilities", "softmax_ce"])
def test_loss_gradients_match_central_differences(loss):
    rng = np.random.default_rng(3)
    z = rng.uniform(-2, 2, (4, 3))
    if loss == "softmax_ce":
        y = np.eye(3)[rng.integers(0, 3, 4)]
        check_grad(lambda a, b: gn.losses.softmax_cross_entropy(a, b), [z, y], wrt=[0])
    elif loss == "mse":
        check_grad(gn.losses.mse, [z, rng.normal(size=(4, 3))])
    elif loss == "bce_logits":
        check_grad(lambda a, b: bce_from_logits(a, b), [z, rng.uniform(0, 1, (4, 3))])
    else:
        check_grad(lambda a, b: gn.losses.binary_cross_entropy(a, b), [rng.uniform(0.1, 0.9, (4, 3)),
                                                                       rng.uniform(0, 1, (4, 3))])


# ---- errors ---------------------------------------------------------------------------------------------
def test_loss_shape_errors_name_the_loss_and_line():
    z = gn.placeholder("z", (None, 3))
    with pytest.raises(gn.ShapeError, match=r"mse: .*\(N, 3\).*\(N, 1\).*test_losses.py"):
        gn.losses.mse(z, gn.placeholder("t", (None, 1)))
    with pytest.raises(gn.ShapeError, match="softmax_cross_entropy.*labels"):
        gn.losses.softmax_cross_entropy(z, gn.placeholder("ids", (None, 3), np.int32))
    with pytest.raises(ValueError, match="reduction"):
        gn.losses.mse(z, z, reduction="avg")
