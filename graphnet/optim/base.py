"""The optimizer protocol: parameters, gradients and state as graph variables, updates as graph nodes.

An optimizer does not run anything. `minimize` differentiates the loss and returns, for every
parameter, the new value of the parameter and of each of its state slots written as expressions of
the *old* values (a compiled function computes every update from the old values, then writes them
all), plus the step counter's increment. The state lives in non-trainable variables named
"<param>/<optimizer>_<slot>", so it is visible, checkpointable and shared by every compiled
function. Scalar coefficients (bias corrections, decayed learning rates) are computed in float64
from the float64 `lr` variable and the step count, then cast to the parameter's dtype once, as
PyTorch computes them in Python doubles.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .. import ops
from ..autodiff import gradients
from ..graph import Graph, Node, get_default_graph

Pair = tuple[Node, Node]
# Set by graphnet.distributed.init: applied to every optimizer's (gradient, parameter) pairs before the
# update, so that the gradients are reduced over the ranks of a data-parallel job.
GRADIENT_REDUCTION: Callable[[list[Pair]], list[Pair]] | None = None


class Updates(list):
    """(variable, new value) pairs for `gn.compile(updates=...)`, plus `gradients`: each parameter's
    gradient node, the input of its fused update region (see passes/fuse_optimizer.py)."""

    def __init__(self, pairs: Iterable[Pair] = (), gradients: dict[Node, Node] | None = None):
        super().__init__(pairs)
        self.gradients = dict(gradients or {})

    def __add__(self, other: Iterable[Pair]) -> "Updates":
        return Updates(list(self) + list(other), {**self.gradients, **getattr(other, "gradients", {})})

    def __radd__(self, other: Iterable[Pair]) -> "Updates":
        return Updates(list(other) + list(self), {**getattr(other, "gradients", {}), **self.gradients})


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a float, or a ValueError/TypeError naming the hyper-parameter."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if math.isnan(value) or too_low or too_high:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = ("(" if low_open else "[") + f"{lo}, {hi}" + (")" if high_open or high is None else "]")
        raise ValueError(f"invalid {name}: {value!r} (must be in {interval})")
    return value


def keras_name(name: str, value: Any, default: Any, keras: str, keras_value: Any) -> Any:
    """A hyper-parameter given by its PyTorch name or by its Keras name (`learning_rate`, `epsilon`,
    `rho`, ...): the Keras spelling wins when given; both given with different values is an error."""
    if keras_value is None:
        return value
    if value is not default and value != default and value != keras_value:
        raise TypeError(f"{name}={value!r} and {keras}={keras_value!r} name the same hyper-parameter; give one")
    return keras_value


def lerp(a: Node, b: Node, weight: float) -> Node:
    """a + weight*(b - a), rounded as torch.lerp computes it (the other end for weights >= 0.5)."""
    if abs(weight) < 0.5:
        return a + weight * (b - a)
    return b - (b - a) * (1.0 - weight)


class Optimizer:
    """Base class: subclasses declare their state `slots` and write one parameter's `_step`."""

    def __init__(self, lr: float | Node, clipnorm: float | None = None):
        self.clipnorm = None if clipnorm is None else check_number("clipnorm", clipnorm, 0, low_open=True)
        self._graph = lr.graph if isinstance(lr, Node) else get_default_graph()
        self.name = _unique_name(self._graph, type(self).__name__.lower())
        self._owns_lr = not isinstance(lr, Node)
        if self._owns_lr:
            self.lr = ops.variable(f"{self.name}/lr", check_number("lr", lr, 0), trainable=False, dtype=np.float64,
                                   graph=self._graph)
        else:
            if lr.op.name != "variable" or lr.shape != () or lr.dtype.kind != "f":
                raise TypeError(f"lr must be a float or a scalar float variable, got {lr!r}")
            check_number("lr", float(lr.value), 0)
            self.lr = lr
        self._step_var: Node | None = None
        self._slots: dict[tuple[Node, str], Node] = {}

    # ---- what subclasses provide ------------------------------------------------------------
    def slots(self) -> dict[str, float]:
        """The state slots each parameter gets, with their initial fill value."""
        return {}

    def _step(self, p: Node, g: Node, state: dict[str, Node], t: Node, lr: Node) -> tuple[Node, dict[str, Node]]:
        """New values of `p` and of its `state` slots from old values; `t` (the step number,
        starting at 1) and `lr` are float64 scalars."""
        raise NotImplementedError

    # ---- public API -------------------------------------------------------------------------
    def minimize(self, loss: Node, var_list: Sequence[Node] | None = None) -> Updates:
        """Differentiate `loss` with respect to `var_list` (default: every trainable variable it
        depends on) and return the parameter, state and step updates. A variable with no
        differentiable path to the loss in the training step (`in_training(a, b)` is `a` there) gets
        no update and no state (a warning if var_list names it)."""
        if not isinstance(loss, Node):
            raise TypeError(f"minimize: loss must be a graph node, got {type(loss).__name__}")
        if loss.shape != ():
            raise ValueError(f"minimize: the loss must be a scalar, but {loss.name} (created at {loss.source}) "
                             f"has shape {loss.shape}; reduce it first (e.g. gn.mean)")
        if loss.dtype.kind != "f":
            raise TypeError(f"minimize: the loss must be a float scalar, got {loss.dtype}")
        params = self._connected_params(loss, var_list)
        grads = gradients(loss, params, unconnected="none")
        # as torch.optim skips a parameter whose grad is None: a variable without a differentiable
        # path to the loss gets no update at all (no weight decay, no momentum or moment change)
        pairs = [(g, p) for g, p in zip(grads, params) if g is not None]
        if var_list is not None:
            _warn_skipped([p for g, p in zip(grads, params) if g is None], loss)
        if not pairs:
            raise ValueError(f"minimize: no trainable variable is connected to the loss {loss.name} "
                             f"(created at {loss.source}) by a differentiable path")
        return self.apply_gradients(pairs)

    def apply_gradients(self, grads_and_vars: Sequence[tuple[Node, Node]]) -> Updates:
        """The updates for given (gradient, parameter) pairs (what `minimize` returns)."""
        pairs = list(grads_and_vars)
        if not pairs:
            raise ValueError("apply_gradients: no (gradient, variable) pairs")
        for g, p in pairs:
            _check_param(p, "apply_gradients")
            if not isinstance(g, Node) or g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"apply_gradients: gradient of {p.name} must be a {p.dtype} node of shape {p.shape}")
        if GRADIENT_REDUCTION is not None:
            pairs = GRADIENT_REDUCTION(pairs)
        self._bind(pairs[0][1].graph)
        step = self._step_variable()
        t_new = step + np.int32(1)
        t = ops.cast(t_new, np.float64)
        lr = ops.cast(self.lr, np.float64)
        clipped = self._clip([g for g, _ in pairs])
        updates = Updates(gradients={p: g for g, p in pairs})
        for (g, p), gc in zip(pairs, clipped):
            state = {name: self._slot(p, name, fill) for name, fill in self.slots().items()}
            p_new, state_new = self._step(p, gc, state, t, lr)
            updates.append((p, p_new))
            updates.extend((state[name], state_new[name]) for name in state)
        updates.append((step, t_new))
        return updates

    @property
    def learning_rate(self) -> Node:
        """Keras's name for `lr`: the float64 learning-rate variable (`.assign(x)` changes it, no recompile)."""
        return self.lr

    def variables(self) -> list[Node]:
        """The optimizer's own variables (learning rate if it created it, step counter, state slots)."""
        own = [self.lr] if self._owns_lr else []
        own += [self._step_var] if self._step_var is not None else []
        return own + list(self._slots.values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, lr={float(self.lr.value):g})"

    # ---- helpers ------------------------------------------------------------------------------
    @staticmethod
    def cast(x: Node, p: Node) -> Node:
        """A float64 scalar coefficient in the parameter's dtype."""
        return ops.cast(x, p.dtype)

    def _connected_params(self, loss: Node, var_list: Sequence[Node] | None) -> list[Node]:
        reachable = _used_in_training(loss)
        if var_list is None:
            params = [n for n in reachable if n.op.name == "variable" and n.trainable and n.dtype.kind == "f"]
            params.sort(key=lambda n: n.id)
        else:
            var_list = [var_list] if isinstance(var_list, Node) else list(var_list)
            for p in var_list:
                _check_param(p, "minimize")
                if p.graph is not loss.graph:
                    raise ValueError(f"minimize: variable {p.name} belongs to another graph than the loss")
            if len(set(var_list)) != len(var_list):
                raise ValueError("minimize: var_list names a variable twice")
            params = [p for p in var_list if p in reachable]  # as torch, parameters without a gradient stay put
        if not params:
            raise ValueError(f"minimize: no trainable variable is connected to the loss {loss.name} "
                             f"(created at {loss.source})")
        return params

    def _bind(self, graph: Graph) -> None:
        """Move to the graph of the first parameters updated (an optimizer is often built first)."""
        if graph is self._graph:
            return
        if self._step_var is not None or not self._owns_lr:
            raise ValueError(f"optimizer {self.name} already works on another graph")
        value = self.lr.value
        self._graph = graph
        self.name = _unique_name(graph, type(self).__name__.lower())
        self.lr = ops.variable(f"{self.name}/lr", value, trainable=False, dtype=np.float64, graph=graph)

    def _step_variable(self) -> Node:
        if self._step_var is None:
            if f"{self.name}/step" in self._graph.variables:  # another optimizer on the same lr variable
                self.name = _unique_name(self._graph, type(self).__name__.lower())
            self._step_var = ops.variable(f"{self.name}/step", np.int32(0), trainable=False, graph=self._graph)
        return self._step_var

    def _slot(self, p: Node, name: str, fill: float) -> Node:
        key = (p, name)
        if key not in self._slots:
            self._slots[key] = ops.variable(f"{p.attrs['name']}/{self.name}_{name}", np.full(p.shape, fill, p.dtype),
                                            trainable=False, graph=p.graph)
        return self._slots[key]

    def _clip(self, grads: list[Node]) -> list[Node]:
        """Global gradient-norm clipping as torch.nn.utils.clip_grad_norm_: g * min(1, c/(norm + 1e-6))."""
        if self.clipnorm is None:
            return grads
        total = ops.cast(ops.sum(grads[0] * grads[0]), np.float64)
        for g in grads[1:]:
            total = total + ops.cast(ops.sum(g * g), np.float64)
        coef = ops.minimum(self.clipnorm / (ops.sqrt(total) + 1e-6), 1.0)
        return [g * ops.cast(coef, g.dtype) for g in grads]


def _check_param(p: Any, where: str) -> None:
    if not isinstance(p, Node) or p.op.name != "variable":
        raise TypeError(f"{where}: {p!r} is not a variable")
    if not p.trainable:
        raise ValueError(f"{where}: variable {p.name} is not trainable")
    if p.dtype.kind != "f":
        raise TypeError(f"{where}: variable {p.name} has dtype {p.dtype}; only float variables are trained")


def _warn_skipped(skipped: list[Node], loss: Node) -> None:
    """Say which variables of an explicit var_list the loss depends on without a gradient: they
    look trained but are not (one the loss does not depend on at all is skipped silently, as a
    shared parameter list often holds some)."""
    if skipped:
        names = ", ".join(repr(p.attrs["name"]) for p in skipped)
        warnings.warn(f"minimize: var_list variable(s) {names} reach the loss {loss.name} only through "
                      f"non-differentiable ops (comparisons, integer casts, stop_gradient): no gradient, so they "
                      f"are not updated", stacklevel=3)


def _unique_name(graph: Graph, base: str) -> str:
    name, k = base, 0
    while f"{name}/lr" in graph.variables or f"{name}/step" in graph.variables:
        k += 1
        name = f"{base}_{k}"
    return name


def _used_in_training(loss: Node) -> set[Node]:
    """The nodes a training step computes `loss` from: its ancestors, an `in_training` node taking its
    first input only (a function compiled with updates trains), so that a variable only the other
    functions use gets no update, as torch.optim skips a parameter the forward pass did not use."""
    seen: set[Node] = set()
    stack = [loss]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(node.inputs[:1] if node.op.name == "in_training" else node.inputs)
    return seen
