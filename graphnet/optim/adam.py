"""Adam, AMSGrad and AdamW (decoupled weight decay), with PyTorch's bias correction."""
from __future__ import annotations

import math
from typing import Sequence

from .. import ops
from ..graph import Node
from .base import Optimizer, check_number, keras_name, lerp


def bias_correction(beta: float, t: Node) -> Node:
    """1 - beta**t in float64 (PyTorch's), with t capped at the step from which beta**t is below 2**-56:
    from there on 1 - beta**t is exactly 1.0 (for x below 2**-54, 1 - x rounds to 1), capped or not,
    so every step's value is the uncapped one, and pow never reaches its underflow path and libm's
    error handling there (beta 0.9's powers underflow from t = 6,724)."""
    if beta == 0:
        return 1 - beta ** t
    return 1 - beta ** ops.minimum(t, float(math.ceil(56 / -math.log2(beta))))


class Adam(Optimizer):
    """m = lerp(m, g, 1-b1); v = b2*v + (1-b2)*g*g; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
    (amsgrad: vmax = max(vmax, v) in place of v)."""

    decoupled = False

    def __init__(self, lr: float | Node = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, clipnorm: float | None = None, *,
                 learning_rate: float | Node | None = None, beta_1: float | None = None, beta_2: float | None = None,
                 epsilon: float | None = None, global_clipnorm: float | None = None):
        lr = keras_name("lr", lr, 1e-3, "learning_rate", learning_rate)
        eps = keras_name("eps", eps, 1e-8, "epsilon", epsilon)
        clipnorm = keras_name("clipnorm", clipnorm, None, "global_clipnorm", global_clipnorm)
        if beta_1 is not None or beta_2 is not None:
            if tuple(betas) != (0.9, 0.999):
                raise TypeError(f"betas={betas!r} and beta_1/beta_2 name the same hyper-parameters; give one")
            betas = (0.9 if beta_1 is None else beta_1, 0.999 if beta_2 is None else beta_2)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"invalid betas: {betas!r} (must be a pair (beta1, beta2))")
        self.betas = (check_number("betas[0]", betas[0], 0, 1, high_open=True),
                      check_number("betas[1]", betas[1], 0, 1, high_open=True))
        self.eps = check_number("eps", eps, 0, low_open=True)
        self.weight_decay = check_number("weight_decay", weight_decay, 0)
        self.amsgrad = bool(amsgrad)
        super().__init__(lr, clipnorm)

    def slots(self) -> dict[str, float]:
        return dict.fromkeys(["m", "v"] + (["vmax"] if self.amsgrad else []), 0.0)

    def _step(self, p, g, state, t, lr):
        b1, b2 = self.betas
        if self.weight_decay and self.decoupled:
            p = p * self.cast(1 - lr * self.weight_decay, p)
        elif self.weight_decay:
            g = g + self.weight_decay * p
        new = {"m": lerp(state["m"], g, 1 - b1), "v": state["v"] * b2 + (1 - b2) * g * g}
        second = new["v"]
        if self.amsgrad:
            second = new["vmax"] = ops.maximum(state["vmax"], new["v"])
        step_size = self.cast(lr / bias_correction(b1, t), p)
        bias2_sqrt = self.cast(ops.sqrt(bias_correction(b2, t)), p)
        denom = ops.sqrt(second) / bias2_sqrt + self.eps
        return p - step_size * (new["m"] / denom), new


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= (1 - lr*weight_decay) before the Adam step."""

    decoupled = True

    def __init__(self, lr: float | Node = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, clipnorm: float | None = None, *,
                 learning_rate: float | Node | None = None, beta_1: float | None = None, beta_2: float | None = None,
                 epsilon: float | None = None, global_clipnorm: float | None = None):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, clipnorm, learning_rate=learning_rate, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, global_clipnorm=global_clipnorm)
