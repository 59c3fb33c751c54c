"""Optimizers: trajectories against torch.optim, first steps against the formulas of REFERENCE.md,
defaults, validation, learning-rate variables, state slots, NaN gradients and the fusion pass."""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

import graphnet as gn
from graphnet.errors import NumericsError
from graphnet.passes import DEFAULT_PASSES, fuse_optimizer
from graphnet.passes.fuse_optimizer import region_name

# (graphnet class name, hyper-parameters); the torch twin has the same hyper-parameters.
CONFIGS = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.5}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.05}),
    ("Momentum", {"lr": 0.05}),
    ("Momentum", {"lr": 0.05, "nesterov": True}),
    ("Adagrad", {"lr": 0.1}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.01, "initial_accumulator_value": 0.1, "eps": 1e-8}),
    ("Adadelta", {}),
    ("Adadelta", {"lr": 0.5, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.01}),
    ("RMSProp", {"lr": 0.01}),
    ("RMSProp", {"lr": 0.01, "centered": True}),
    ("RMSProp", {"lr": 0.01, "momentum": 0.9}),
    ("RMSProp", {"lr": 0.01, "alpha": 0.9, "centered": True, "momentum": 0.5, "weight_decay": 0.01}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.05}),
    ("Adam", {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    ("Adam", {"lr": 0.01, "clipnorm": 0.5}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "clipnorm": 0.2}),
    ("RMSProp", {"lr": 0.01, "clipnorm": 0.3}),
]
IDS = [f"{name}-" + "-".join(f"{k}={v}" for k, v in hyper.items()) for name, hyper in CONFIGS]
STEPS = 25
BATCH = 16
SIZES = (4, 8, 3)  # inputs, hidden units, classes


# ---- a small MLP, trained by graphnet and (where installed) by torch ----------------------------
def init_params(dtype) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    n_in, n_hidden, n_out = SIZES
    return {"W1": rng.normal(0, 0.5, (n_in, n_hidden)).astype(dtype),
            "b1": rng.normal(0, 0.1, n_hidden).astype(dtype),
            "W2": rng.normal(0, 0.5, (n_hidden, n_out)).astype(dtype),
            "b2": np.zeros(n_out, dtype)}


def batches(dtype) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(STEPS):
        x = rng.normal(0, 1, (BATCH, SIZES[0])).astype(dtype)
        out.append((x, (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)))
    return out


def graphnet_trajectory(name: str, hyper: dict, dtype, passes=None):
    """Per-step losses and the final parameters and optimizer state of graphnet training."""
    params = {k: gn.variable(k, v) for k, v in init_params(dtype).items()}
    x = gn.placeholder("x", (None, SIZES[0]), dtype)
    labels = gn.placeholder("labels", (None,), np.int64)
    h = gn.tanh(x @ params["W1"] + params["b1"])
    loss = gn.losses.softmax_cross_entropy(h @ params["W2"] + params["b2"], labels)
    opt = getattr(gn.optim, name)(**hyper)
    step = gn.compile(loss, updates=opt.minimize(loss), backend="numpy", passes=passes)
    losses = [float(step(x=xb, labels=yb)) for xb, yb in batches(dtype)]
    return losses, {k: p.value for k, p in params.items()}, opt


def torch_trajectory(name: str, hyper: dict, dtype):
    torch = pytest.importorskip("torch")
    tdtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    params = {k: torch.tensor(v, dtype=tdtype, requires_grad=True) for k, v in init_params(dtype).items()}
    hyper = dict(hyper)
    clipnorm = hyper.pop("clipnorm", None)
    cls = {"Momentum": torch.optim.SGD, "RMSProp": torch.optim.RMSprop}.get(name) or getattr(torch.optim, name)
    if name == "Momentum":
        hyper.setdefault("momentum", 0.9)
    opt = cls(list(params.values()), foreach=False, **hyper)
    losses = []
    for xb, yb in batches(dtype):
        opt.zero_grad()
        h = torch.tanh(torch.from_numpy(xb) @ params["W1"] + params["b1"])
        loss = torch.nn.functional.cross_entropy(h @ params["W2"] + params["b2"], torch.from_numpy(yb))
        loss.backward()
        if clipnorm is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), clipnorm)
        opt.step()
        losses.append(loss.item())
    return losses, {k: p.detach().numpy() for k, p in params.items()}, opt


def assert_close_to_scale(got, expected, rtol: float, what: str) -> None:
    """max |got - expected| <= rtol * max |expected|: relative to the tensor's scale, since float32
    rounding (different summation orders in matmul) makes near-zero entries differ relatively more."""
    got, expected = np.asarray(got), np.asarray(expected)
    error = np.max(np.abs(got - expected)) / np.max(np.abs(expected))
    assert error <= rtol, f"{what}: relative error {error:.2e} > {rtol:.0e}"


# Measured worst cases over CONFIGS: 1.0e-6 (float32), 1.4e-15 (float64).
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("name,hyper", CONFIGS, ids=IDS)
def test_matches_torch_over_many_steps(name, hyper, dtype, rtol):
    expected_losses, expected, _ = torch_trajectory(name, hyper, dtype)
    losses, got, _ = graphnet_trajectory(name, hyper, dtype)
    assert losses[-1] < losses[0]  # the configurations above all make progress
    for step, (a, b) in enumerate(zip(losses, expected_losses)):
        assert_close_to_scale(a, b, rtol, f"loss at step {step}")
    for k in got:
        assert got[k].dtype == dtype
        assert_close_to_scale(got[k], expected[k], rtol, k)


def test_adam_state_slots_match_torch_state():
    _, _, torch_opt = torch_trajectory("Adam", {"lr": 0.01, "amsgrad": True}, np.float64)
    _, _, opt = graphnet_trajectory("Adam", {"lr": 0.01, "amsgrad": True}, np.float64)
    state = list(torch_opt.state.values())[0]  # W1's
    slots = {v.name: v.value for v in opt.variables()}
    assert slots["adam/step"] == STEPS == int(state["step"])
    np.testing.assert_allclose(slots["W1/adam_m"], state["exp_avg"].numpy(), rtol=1e-12)
    np.testing.assert_allclose(slots["W1/adam_v"], state["exp_avg_sq"].numpy(), rtol=1e-12)
    np.testing.assert_allclose(slots["W1/adam_vmax"], state["max_exp_avg_sq"].numpy(), rtol=1e-12)


# ---- the first two steps against REFERENCE.md's formulas, without torch ------------------------
def reference_updates(name: str, hyper: dict, p: np.ndarray, grads: list) -> list[np.ndarray]:
    """The parameter after each step, written straight from REFERENCE.md (float64, no torch)."""
    h = dict(hyper)
    clipnorm = h.pop("clipnorm", None)
    if name == "Momentum":
        name, h = "SGD", {"momentum": 0.9, **h}
    defaults = {"SGD": dict(lr=1e-3, momentum=0, dampening=0, nesterov=False, weight_decay=0),
                "Adagrad": dict(lr=0.01, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10),
                "Adadelta": dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0),
                "RMSProp": dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False),
                "Adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False),
                "AdamW": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False)}
    h = {**defaults[name], **h}
    zero = np.zeros_like(p)
    b, s, v, u, a, m, vmax = zero, zero + h.get("initial_accumulator_value", 0), zero, zero, zero, zero, zero
    out = []
    for t, grad in enumerate(grads, start=1):
        g = grad(p)
        if clipnorm is not None:
            g = g * min(1.0, clipnorm / (np.sqrt(np.sum(g * g)) + 1e-6))
        if name != "AdamW":
            g = g + h["weight_decay"] * p
        if name == "SGD":
            if h["momentum"]:
                b = g if t == 1 else h["momentum"] * b + (1 - h["dampening"]) * g
                d = g + h["momentum"] * b if h["nesterov"] else b
            else:
                d = g
            p = p - h["lr"] * d
        elif name == "Adagrad":
            s = s + g * g
            p = p - h["lr"] / (1 + (t - 1) * h["lr_decay"]) * g / (np.sqrt(s) + h["eps"])
        elif name == "Adadelta":
            v = h["rho"] * v + (1 - h["rho"]) * g * g
            d = np.sqrt(u + h["eps"]) / np.sqrt(v + h["eps"]) * g
            u = h["rho"] * u + (1 - h["rho"]) * d * d
            p = p - h["lr"] * d
        elif name == "RMSProp":
            v = h["alpha"] * v + (1 - h["alpha"]) * g * g
            vt = v
            if h["centered"]:
                a = h["alpha"] * a + (1 - h["alpha"]) * g
                vt = v - a * a
            q = np.sqrt(vt) + h["eps"]
            if h["momentum"]:
                b = h["momentum"] * b + g / q
                p = p - h["lr"] * b
            else:
                p = p - h["lr"] * g / q
        else:
            b1, b2 = h["betas"]
            if name == "AdamW":
                p = p * (1 - h["lr"] * h["weight_decay"])
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            vmax = np.maximum(vmax, v)
            second = vmax if h["amsgrad"] else v
            p = p - (h["lr"] / (1 - b1 ** t)) * m / (np.sqrt(second) / np.sqrt(1 - b2 ** t) + h["eps"])
        out.append(p)
    return out


C = np.array([0.3, -1.2, 2.0, 0.0])
P0 = np.array([0.5, -0.25, 1.5, -2.0])


def quadratic_steps(name: str, hyper: dict, steps: int = 2) -> list[np.ndarray]:
    """Parameters after each step on loss = sum(c*w) + 0.5*sum(w*w*w*w)/4 (gradient c + w**3 / 2)."""
    w = gn.variable("w", P0)
    loss = gn.sum(C * w) + 0.125 * gn.sum(w * w * w * w)
    step = gn.compile([], updates=getattr(gn.optim, name)(**hyper).minimize(loss), backend="numpy")
    out = []
    for _ in range(steps):
        step()
        out.append(w.value)
    return out


@pytest.mark.parametrize("name,hyper", CONFIGS + [("Adam", {}), ("SGD", {}), ("AdamW", {"lr": 0.1})],
                         ids=IDS + ["Adam-defaults", "SGD-defaults", "AdamW-lr=0.1"])
def test_first_two_steps_follow_the_reference_formulas(name, hyper):
    got = quadratic_steps(name, hyper)
    expected = reference_updates(name, hyper, P0, [lambda p: C + 0.5 * p ** 3] * 2)
    for k, (a, b) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15, err_msg=f"step {k + 1}")
    assert not np.allclose(got[0], P0) and not np.allclose(got[1], got[0])


def test_first_steps_computed_by_hand():
    # Adam's first step is lr * g / (|g| + eps) whatever the scale of g; the second with g2:
    # m = 0.1 g2 + 0.09 g1 over 0.19, v = (0.001 g2^2 + 0.000999 g1^2) over 0.001999.
    g1 = C + 0.5 * P0 ** 3
    (p1, p2) = quadratic_steps("Adam", {"lr": 0.1})
    np.testing.assert_allclose(p1, P0 - 0.1 * g1 / (np.abs(g1) + 1e-8), rtol=1e-12)
    g2 = C + 0.5 * p1 ** 3
    m_hat = (0.1 * g2 + 0.09 * g1) / 0.19
    v_hat = (0.001 * g2 ** 2 + 0.000999 * g1 ** 2) / 0.001999
    np.testing.assert_allclose(p2, p1 - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8), rtol=1e-10)
    # SGD with dampened momentum: b1 = g1 (undampened at t=1), b2 = 0.9 b1 + 0.5 g2.
    gn.reset_default_graph()
    (q1, q2) = quadratic_steps("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.5})
    np.testing.assert_allclose(q1, P0 - 0.1 * g1, rtol=1e-14)
    np.testing.assert_allclose(q2, q1 - 0.1 * (0.9 * g1 + 0.5 * (C + 0.5 * q1 ** 3)), rtol=1e-14)


# ---- defaults and validation -------------------------------------------------------------------
EXPECTED_DEFAULTS = {
    "SGD": dict(lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
    "Momentum": dict(lr=1e-3, momentum=0.9, nesterov=False),
    "Adagrad": dict(lr=0.01, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10),
    "Adadelta": dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0),
    "RMSProp": dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False),
    "Adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False),
    "AdamW": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False),
}


def _defaults(cls) -> dict:
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("name", sorted(EXPECTED_DEFAULTS))
def test_defaults_are_pytorchs(name):
    defaults = _defaults(getattr(gn.optim, name))
    assert {k: defaults[k] for k in EXPECTED_DEFAULTS[name]} == EXPECTED_DEFAULTS[name]
    assert defaults["clipnorm"] is None
    opt = getattr(gn.optim, name)()
    assert float(opt.lr.value) == EXPECTED_DEFAULTS[name]["lr"]


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "Adadelta", "RMSProp", "Adam", "AdamW"])
def test_defaults_match_torch_signatures(name):
    torch = pytest.importorskip("torch")
    theirs = _defaults({"RMSProp": torch.optim.RMSprop}.get(name) or getattr(torch.optim, name))
    ours = _defaults(getattr(gn.optim, name))
    shared = set(ours) & set(theirs)
    assert shared >= set(EXPECTED_DEFAULTS[name])
    for k in shared:
        assert ours[k] == (tuple(theirs[k]) if isinstance(theirs[k], tuple) else theirs[k]), k


@pytest.mark.parametrize("name,hyper,message", [
    ("SGD", {"lr": -0.1}, "lr"),
    ("Adam", {"lr": float("nan")}, "lr"),
    ("Adam", {"betas": (1.0, 0.999)}, "betas"),
    ("Adam", {"betas": (0.9, -0.1)}, "betas"),
    ("AdamW", {"betas": (0.9,)}, "betas"),
    ("Adam", {"eps": 0.0}, "eps"),
    ("Adagrad", {"eps": -1e-10}, "eps"),
    ("RMSProp", {"eps": 0}, "eps"),
    ("SGD", {"momentum": -0.5}, "momentum"),
    ("RMSProp", {"momentum": -1}, "momentum"),
    ("SGD", {"nesterov": True}, "nesterov"),
    ("SGD", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "nesterov"),
    ("Adam", {"weight_decay": -1e-4}, "weight_decay"),
    ("Adadelta", {"rho": 1.5}, "rho"),
    ("Adagrad", {"lr_decay": -1}, "lr_decay"),
    ("Adam", {"clipnorm": 0}, "clipnorm"),
])
def test_invalid_hyper_parameters_name_the_argument(name, hyper, message):
    with pytest.raises(ValueError, match=message):
        getattr(gn.optim, name)(**hyper)


@pytest.mark.parametrize("name", sorted(EXPECTED_DEFAULTS))
def test_unknown_hyper_parameter_names_the_argument(name):
    with pytest.raises(TypeError, match="learning_rat"):
        getattr(gn.optim, name)(learning_rat=0.1)


def test_non_numeric_hyper_parameter_is_a_type_error():
    with pytest.raises(TypeError, match="lr"):
        gn.optim.Adam(lr="0.1")


def test_minimize_rejects_non_scalar_loss_and_unconnected_variables():
    w = gn.variable("w", np.ones(3, np.float32))
    x = gn.placeholder("x", (None, 3))
    with pytest.raises(ValueError, match="scalar"):
        gn.optim.SGD(0.1).minimize(x * w)
    with pytest.raises(ValueError, match="no trainable variable"):
        gn.optim.SGD(0.1).minimize(gn.sum(x))
    frozen = gn.variable("frozen", np.ones(3, np.float32), trainable=False)
    with pytest.raises(ValueError, match="no trainable variable"):
        gn.optim.SGD(0.1).minimize(gn.sum(x * frozen))
    with pytest.raises(ValueError, match="not trainable"):
        gn.optim.SGD(0.1).minimize(gn.sum(x * w), var_list=[frozen])
    with pytest.raises(TypeError, match="not a variable"):
        gn.optim.SGD(0.1).minimize(gn.sum(x * w), var_list=[x])


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_a_variable_only_functions_without_updates_use_is_not_trained(backend):
    """in_training(a, b) is `a` in the training step: a variable reaching the loss only through `b`
    (fuzz finding 0:54380) gets no update, no state and no weight decay, as torch.optim skips a
    parameter its forward pass did not use; a variable on both sides trains on its training path."""
    x = gn.placeholder("x", (None, 2))
    used = gn.variable("used", np.full(2, 2.0, np.float32))
    inference_only = gn.variable("inference_only", np.full(2, 3.0, np.float32))
    both = gn.variable("both", np.full(2, 4.0, np.float32))
    loss = gn.sum(gn.ops.apply("in_training", [x * used * both, x * inference_only * both]))
    updates = gn.optim.RMSProp(0.1, weight_decay=0.1).minimize(loss)
    assert set(updates.gradients) == {used, both}
    step = gn.compile([loss], updates=updates, backend=backend)
    step(x=np.ones((3, 2), np.float32))
    np.testing.assert_array_equal(inference_only.value, [3.0, 3.0])
    assert not np.allclose(used.value, 2.0) and not np.allclose(both.value, 4.0)
    with pytest.raises(ValueError, match="no trainable variable"):
        gn.optim.SGD(0.1).minimize(gn.sum(gn.ops.apply("in_training", [x, x * inference_only])))


def test_var_list_limits_what_is_trained():
    a = gn.variable("a", np.ones(2))
    b = gn.variable("b", np.ones(2))
    unused = gn.variable("unused", np.ones(2))
    step = gn.compile([], updates=gn.optim.SGD(0.5).minimize(gn.sum(a * b), var_list=[a, unused]), backend="numpy")
    step()
    np.testing.assert_array_equal(a.value, [0.5, 0.5])
    np.testing.assert_array_equal(b.value, [1, 1])
    np.testing.assert_array_equal(unused.value, [1, 1])  # no gradient: left alone, as torch does


# ---- learning rate, state variables ------------------------------------------------------------
def test_learning_rate_schedule_without_recompiling():
    w = gn.variable("w", np.array([1.0, -2.0]))
    opt = gn.optim.SGD(lr=0.1)
    step = gn.compile([], updates=opt.minimize(gn.sum(3.0 * w)), backend="numpy")
    step()
    np.testing.assert_allclose(w.value, [0.7, -2.3])
    opt.lr.assign(0.01)
    step()
    np.testing.assert_allclose(w.value, [0.67, -2.33])
    assert opt.lr.dtype == np.float64 and not opt.lr.trainable and opt.lr in opt.variables()


def test_learning_rate_may_be_a_user_variable():
    lr = gn.variable("my_lr", np.float32(0.5), trainable=False)
    w = gn.variable("w", np.array([1.0, 2.0], np.float32))
    opt = gn.optim.Adam(lr=lr)
    assert opt.lr is lr and lr not in opt.variables()
    step = gn.compile([], updates=opt.minimize(gn.sum(w)), backend="numpy")
    step()
    np.testing.assert_allclose(w.value, [0.5, 1.5], rtol=1e-6)
    lr.assign(0.25)
    step()
    np.testing.assert_allclose(w.value, [0.25, 1.25], rtol=1e-6)
    with pytest.raises(TypeError, match="lr"):
        gn.optim.SGD(lr=gn.placeholder("p", ()))


def test_state_slots_are_named_non_trainable_variables():
    w = gn.variable("W1", np.ones((2, 2), np.float32))
    opt = gn.optim.Adam(amsgrad=True)
    opt.minimize(gn.sum(w * w))
    names = [v.name for v in opt.variables()]
    assert names == ["adam/lr", "adam/step", "W1/adam_m", "W1/adam_v", "W1/adam_vmax"]
    graph = gn.get_default_graph()
    assert all(graph.variables[n] is v and not v.trainable for n, v in zip(names, opt.variables()))
    assert opt.variables()[1].dtype == np.int32
    second = gn.optim.Adam()  # a second optimizer in the same graph gets its own names
    second.minimize(gn.sum(w * w))
    assert [v.name for v in second.variables()][1:3] == ["adam_1/step", "W1/adam_1_m"]


def test_optimizer_built_before_its_graph_binds_to_the_losss_graph():
    opt = gn.optim.RMSProp(0.05)
    opt.lr.assign(0.02)
    with gn.Graph() as graph:
        w = gn.variable("w", np.array([1.0]))
        updates = opt.minimize(gn.sum(w * w))
        assert opt.lr.graph is graph and float(opt.lr.value) == 0.02
        gn.compile([], updates=updates, backend="numpy")()
    np.testing.assert_allclose(w.value, reference_updates("RMSProp", {"lr": 0.02}, np.array([1.0]),
                                                          [lambda p: 2 * p])[0], rtol=1e-12)


def test_updates_keep_their_gradients_when_concatenated():
    w = gn.variable("w", np.ones(2))
    counter = gn.variable("counter", np.int32(0), trainable=False)
    updates = gn.optim.SGD(0.1).minimize(gn.sum(w * w))
    for combined in (updates + [(counter, counter + np.int32(1))], [(counter, counter + np.int32(1))] + updates):
        assert isinstance(combined, gn.optim.Updates) and set(combined.gradients) == {w}
        assert len(combined) == len(updates) + 1


def test_optimizer_by_name():
    assert isinstance(gn.optim.get("adam"), gn.optim.Adam)
    assert isinstance(gn.optim.get("RMSProp", lr=0.1), gn.optim.RMSProp)
    opt = gn.optim.SGD()
    assert gn.optim.get(opt) is opt
    with pytest.raises(ValueError, match="unknown optimizer"):
        gn.optim.get("adamax")


# ---- NaN gradients and check_numerics ------------------------------------------------------------
@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSProp", "Adagrad", "Adadelta"])
def test_nan_gradient_does_not_crash(name):
    x = gn.placeholder("x", (None, 2), np.float64)
    w = gn.variable("w", np.ones(2))
    loss = gn.mean(gn.sqrt(x) @ gn.reshape(w, (2, 1)))
    step = gn.compile(loss, updates=getattr(gn.optim, name)(0.1, clipnorm=1.0).minimize(loss), backend="numpy")
    assert math.isnan(float(step(x=np.array([[1.0, -1.0]]))))  # sqrt(-1): NaN loss and gradient
    assert np.isnan(w.value).any()  # the NaN flows into the parameter, as in PyTorch; nothing raised


def test_check_numerics_names_the_node_and_source_line():
    x = gn.placeholder("x", (None, 2))
    y = gn.log(x) * 2.0  # the line reported below
    line = inspect.currentframe().f_lineno - 1
    f = gn.compile(y, backend="numpy", check_numerics=True)
    np.testing.assert_allclose(f(x=np.array([[1.0, 2.0]], np.float32)), [[0.0, 2 * np.log(2.0)]], rtol=1e-6)
    with pytest.raises(NumericsError, match=rf"log .*test_optim.py:{line}"):
        f(x=np.array([[1.0, -2.0]], np.float32))


def test_check_numerics_reports_the_gradient_node_that_overflows():
    w = gn.variable("w", np.array([0.0, 0.5], np.float32))
    loss = gn.sum(gn.sqrt(w))  # d/dw sqrt(w) = 1/(2 sqrt(w)) is infinite at 0
    line = inspect.currentframe().f_lineno - 1
    step = gn.compile(loss, updates=gn.optim.SGD(0.1).minimize(loss), backend="numpy", check_numerics=True)
    with pytest.raises(NumericsError, match=rf"test_optim.py:{line}"):
        step()
    np.testing.assert_array_equal(w.value, [0.0, 0.5])  # an error leaves every variable as it was


# ---- the optimizer-fusion pass ---------------------------------------------------------------------
def _mlp_step(passes=None, name="Adam", hyper=None):
    params = {k: gn.variable(k, v) for k, v in init_params(np.float32).items()}
    x = gn.placeholder("x", (None, SIZES[0]))
    labels = gn.placeholder("labels", (None,), np.int64)
    logits = gn.tanh(x @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]
    loss = gn.losses.softmax_cross_entropy(logits, labels)
    updates = getattr(gn.optim, name)(**(hyper or {"lr": 0.01})).minimize(loss)
    return gn.compile(loss, updates=updates, backend="numpy", passes=passes), params


@pytest.mark.parametrize("name,hyper", [("Adam", {"lr": 0.01, "amsgrad": True}), ("SGD", {"momentum": 0.9}),
                                        ("RMSProp", {"centered": True, "momentum": 0.5, "clipnorm": 0.5}),
                                        ("AdamW", {}), ("Adadelta", {}), ("Adagrad", {"lr_decay": 0.1})])
def test_fusion_marks_one_region_per_parameter(name, hyper):
    step, params = _mlp_step(name=name, hyper=hyper)
    prog = step.program
    assert set(prog.regions.values()) == {region_name(p) for p in prog.gradients}
    assert {p.name for p in prog.gradients} == set(params)
    consumers = {}
    for n in prog.nodes():
        for x in n.inputs:
            consumers.setdefault(x, set()).add(n)
    values = dict(prog.updates)
    for param, grad in prog.gradients.items():
        region = {n for n, r in prog.regions.items() if r == region_name(param)}
        assert grad not in region and grad.op.name in ("matmul", "reshape")  # the backward pass's result
        assert values[param] in region  # the parameter write ...
        written = {var.name for var, value in prog.updates if value in region}
        state = {v for v in written if v != param.name}
        assert state and all(v.startswith(param.name + "/") for v in state)  # ... and its state writes
        for n in region:
            assert n.op.kind == "elementwise" and n.shape == param.shape
            assert consumers.get(n, set()) <= region  # nothing outside reads into the region
        assert any(grad in n.inputs for n in region)  # it consumes the gradient directly


def test_fused_and_unfused_pipelines_give_identical_numbers():
    unfused = [p for p in DEFAULT_PASSES if p is not fuse_optimizer]
    results = []
    for passes in (None, unfused):
        gn.reset_default_graph()
        step, params = _mlp_step(passes, "Adam", {"lr": 0.01, "clipnorm": 1.0})
        assert bool(step.program.regions) == (passes is None)
        losses = [step(x=xb, labels=yb) for xb, yb in batches(np.float32)]
        results.append((losses, {k: p.value for k, p in params.items()}))
    (fused_losses, fused), (plain_losses, plain) = results
    np.testing.assert_array_equal(fused_losses, plain_losses)
    for k in fused:
        np.testing.assert_array_equal(fused[k], plain[k])


def test_fusion_is_visible_in_the_graph_dump():
    step, _ = _mlp_step()
    record = step.records[-1]
    assert record.name == "fuse_optimizer"
    assert "[update:W1]" in record.text and "[update:b2]" in record.text
    assert "[update:" not in step.records[-2].text
    assert "gradient %" in record.text


def test_clipping_scale_stays_outside_the_regions():
    step, _ = _mlp_step(name="SGD", hyper={"lr": 0.1, "clipnorm": 0.5})
    prog = step.program
    scalars = [n for n in prog.nodes() if n.op.name == "minimum"]
    assert scalars and not any(n in prog.regions for n in scalars)
    assert len(set(prog.regions.values())) == 4


def test_no_regions_without_an_optimizer():
    w = gn.variable("w", np.ones(3, np.float32))
    f = gn.compile(gn.sum(w), updates=[(w, w * 0.5)], backend="numpy")
    assert f.program.regions == {} and f.program.gradients == {}


def test_fusion_pass_text_before_and_after():
    x = gn.placeholder("x", (None, 3))
    w = gn.variable("w", np.zeros((3, 1), np.float32))
    loss = gn.mean(x @ w)
    step = gn.compile(loss, updates=gn.optim.SGD(0.1).minimize(loss), backend="numpy")
    before, after = step.records[-2].text.splitlines(), step.records[-1].text.splitlines()
    assert len(before) == len(after)
    changed = [(b, a) for b, a in zip(before, after) if b != a]
    # exactly the two nodes of p - lr*g: the scaled gradient and the parameter write
    assert [a.split(" = ")[1].split("(")[0] for _, a in changed] == ["multiply", "subtract"]
    assert all(a == b + " [update:w]" for b, a in changed)


@pytest.mark.parametrize("name", sorted(EXPECTED_DEFAULTS))
def test_constructor_arguments_read_back_as_attributes(name):
    """Model.save stores an optimizer as its class and constructor arguments read from attributes."""
    cls = getattr(gn.optim, name)
    hyper = {"lr": 0.5, "clipnorm": 2.0, "weight_decay": 0.25}
    opt = cls(**hyper)
    arguments = [p.name for p in inspect.signature(cls.__init__).parameters.values()  # not the keyword-only
                 if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD]          # Keras aliases
    config = {p: (float(getattr(opt, p).value) if p == "lr" else getattr(opt, p)) for p in arguments}
    assert {k: config[k] for k in hyper} == hyper
    again = cls(**config)
    assert {p: getattr(again, p) for p in arguments if p != "lr"} == {p: config[p] for p in arguments if p != "lr"}


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99, 0.999, 0.8])
def test_capped_bias_correction_equals_the_formula_at_every_step(backend, beta):
    """Adam's 1 - beta**t with t capped where it becomes exactly 1.0: the same float64 values as the
    uncapped formula below, at and far beyond the cap; and Python's (PyTorch's) values, exactly where
    the backend calls libm's pow (numpy's vectorised power may differ in the last bit)."""
    from graphnet.optim.adam import bias_correction
    cap = math.ceil(56 / -math.log2(beta)) if beta else 1
    steps = sorted({1, 2, 3, 100, cap - 2, cap - 1, cap, cap + 1, 2 * cap, 7_000, 7_100, 10_000, 800_000,
                    2 ** 31 - 1} - {0, -1})
    t = gn.placeholder("t", (None,), np.float64)
    capped = gn.compile(bias_correction(beta, t), backend=backend)(t=np.array(steps, np.float64))
    plain = gn.compile(1 - beta ** t, backend=backend)(t=np.array(steps, np.float64))
    np.testing.assert_array_equal(capped, plain)
    python = [1 - math.pow(beta, s) for s in steps]
    if backend == "llvm":
        np.testing.assert_array_equal(capped, python)
    else:
        np.testing.assert_allclose(capped, python, rtol=1e-14, atol=0)
