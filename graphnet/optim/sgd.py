"""Stochastic gradient descent with optional momentum, dampening, Nesterov momentum and weight decay."""
from __future__ import annotations

from .. import ops
from ..graph import Node
from .base import Optimizer, check_number, keras_name


class SGD(Optimizer):
    """torch.optim.SGD: b = g at t=1, else b = momentum*b + (1-dampening)*g; the step is b (or
    g + momentum*b with Nesterov), or g itself without momentum; p -= lr*step."""

    def __init__(self, lr: float | Node = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, clipnorm: float | None = None, *,
                 learning_rate: float | Node | None = None, global_clipnorm: float | None = None):
        lr = keras_name("lr", lr, 1e-3, "learning_rate", learning_rate)
        clipnorm = keras_name("clipnorm", clipnorm, None, "global_clipnorm", global_clipnorm)
        self.momentum = check_number("momentum", momentum, 0)
        self.dampening = check_number("dampening", dampening, 0, 1)
        self.weight_decay = check_number("weight_decay", weight_decay, 0)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")
        super().__init__(lr, clipnorm)

    def slots(self) -> dict[str, float]:
        return {"momentum": 0.0} if self.momentum else {}

    def _step(self, p, g, state, t, lr):
        if self.weight_decay:
            g = g + self.weight_decay * p
        d = g
        if self.momentum:
            b = state["momentum"]
            first = ops.equal(t, 1.0)
            b_new = ops.where(first, g, b * self.momentum + (1 - self.dampening) * g)
            d = g + self.momentum * b_new if self.nesterov else b_new
            state = {"momentum": b_new}
        return p - self.cast(lr, p) * d, state


class Momentum(SGD):
    """SGD with momentum 0.9 by default (classical or Nesterov)."""

    def __init__(self, lr: float | Node = 1e-3, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 0.0, clipnorm: float | None = None, *, learning_rate: float | Node | None = None,
                 global_clipnorm: float | None = None):
        super().__init__(lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, clipnorm=clipnorm,
                         learning_rate=learning_rate, global_clipnorm=global_clipnorm)
