"""Per-coordinate adaptive step sizes: Adagrad, Adadelta and RMSProp (PyTorch's formulas)."""
from __future__ import annotations

from .. import ops
from ..graph import Node
from .base import Optimizer, check_number, keras_name, lerp


class Adagrad(Optimizer):
    """s += g*g; p -= lr/(1 + (t-1)*lr_decay) * g / (sqrt(s) + eps)."""

    def __init__(self, lr: float | Node = 0.01, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, clipnorm: float | None = None, *,
                 learning_rate: float | Node | None = None, epsilon: float | None = None,
                 global_clipnorm: float | None = None):
        lr = keras_name("lr", lr, 0.01, "learning_rate", learning_rate)
        eps = keras_name("eps", eps, 1e-10, "epsilon", epsilon)
        clipnorm = keras_name("clipnorm", clipnorm, None, "global_clipnorm", global_clipnorm)
        self.lr_decay = check_number("lr_decay", lr_decay, 0)
        self.weight_decay = check_number("weight_decay", weight_decay, 0)
        self.initial_accumulator_value = check_number("initial_accumulator_value", initial_accumulator_value, 0)
        self.eps = check_number("eps", eps, 0, low_open=True)
        super().__init__(lr, clipnorm)

    def slots(self) -> dict[str, float]:
        return {"sum": self.initial_accumulator_value}

    def _step(self, p, g, state, t, lr):
        if self.weight_decay:
            g = g + self.weight_decay * p
        clr = self.cast(lr / (1 + (t - 1) * self.lr_decay), p)
        s_new = state["sum"] + g * g
        return p - clr * (g / (ops.sqrt(s_new) + self.eps)), {"sum": s_new}


class Adadelta(Optimizer):
    """v = rho*v + (1-rho)*g*g; d = sqrt(u + eps)/sqrt(v + eps) * g; u = rho*u + (1-rho)*d*d; p -= lr*d."""

    def __init__(self, lr: float | Node = 1.0, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0,
                 clipnorm: float | None = None, *, learning_rate: float | Node | None = None,
                 epsilon: float | None = None, global_clipnorm: float | None = None):
        lr = keras_name("lr", lr, 1.0, "learning_rate", learning_rate)
        eps = keras_name("eps", eps, 1e-6, "epsilon", epsilon)
        clipnorm = keras_name("clipnorm", clipnorm, None, "global_clipnorm", global_clipnorm)
        self.rho = check_number("rho", rho, 0, 1)
        self.eps = check_number("eps", eps, 0, low_open=True)
        self.weight_decay = check_number("weight_decay", weight_decay, 0)
        super().__init__(lr, clipnorm)

    def slots(self) -> dict[str, float]:
        return {"square_avg": 0.0, "acc_delta": 0.0}

    def _step(self, p, g, state, t, lr):
        if self.weight_decay:
            g = g + self.weight_decay * p
        v_new = state["square_avg"] * self.rho + (1 - self.rho) * g * g
        delta = ops.sqrt(state["acc_delta"] + self.eps) / ops.sqrt(v_new + self.eps) * g
        u_new = state["acc_delta"] * self.rho + (1 - self.rho) * delta * delta
        return p - self.cast(lr, p) * delta, {"square_avg": v_new, "acc_delta": u_new}


class RMSProp(Optimizer):
    """v = alpha*v + (1-alpha)*g*g; centered: a = lerp(a, g, 1-alpha), v~ = v - a*a; q = sqrt(v~) + eps;
    momentum: b = momentum*b + g/q, p -= lr*b; else p -= lr*g/q."""

    def __init__(self, lr: float | Node = 0.01, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, clipnorm: float | None = None, *,
                 learning_rate: float | Node | None = None, rho: float | None = None, epsilon: float | None = None,
                 global_clipnorm: float | None = None):
        lr = keras_name("lr", lr, 0.01, "learning_rate", learning_rate)
        alpha = keras_name("alpha", alpha, 0.99, "rho", rho)
        eps = keras_name("eps", eps, 1e-8, "epsilon", epsilon)
        clipnorm = keras_name("clipnorm", clipnorm, None, "global_clipnorm", global_clipnorm)
        self.alpha = check_number("alpha", alpha, 0, 1)
        self.eps = check_number("eps", eps, 0, low_open=True)
        self.weight_decay = check_number("weight_decay", weight_decay, 0)
        self.momentum = check_number("momentum", momentum, 0)
        self.centered = bool(centered)
        super().__init__(lr, clipnorm)

    def slots(self) -> dict[str, float]:
        names = ["square_avg"] + (["grad_avg"] if self.centered else []) + (["momentum"] if self.momentum else [])
        return dict.fromkeys(names, 0.0)

    def _step(self, p, g, state, t, lr):
        if self.weight_decay:
            g = g + self.weight_decay * p
        new = {"square_avg": state["square_avg"] * self.alpha + (1 - self.alpha) * g * g}
        if self.centered:
            new["grad_avg"] = lerp(state["grad_avg"], g, 1 - self.alpha)
            avg = ops.sqrt(new["square_avg"] - new["grad_avg"] * new["grad_avg"])
        else:
            avg = ops.sqrt(new["square_avg"])
        avg = avg + self.eps
        if self.momentum:
            new["momentum"] = state["momentum"] * self.momentum + g / avg
            return p - self.cast(lr, p) * new["momentum"], new
        return p - self.cast(lr, p) * (g / avg), new
