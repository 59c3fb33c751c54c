"""Public op functions. Each builds one graph node through the op registry (see base.py)."""
from __future__ import annotations

import builtins
import math
from typing import Any, Sequence

import numpy as np

from ..errors import ShapeError
from ..graph import Node, shape_str
from ..source import user_location
from .base import REGISTRY, Example, Op, apply, constant, graph_of, normalize_axes, promote  # noqa: F401
from .sources import batch_size, placeholder, variable  # noqa: F401
from . import elementwise, linalg, movement, nn, reduce  # noqa: F401,E402  (registers the ops)


def _u(name: str):
    def fn(x: Any) -> Node:
        return apply(name, [x])
    fn.__name__ = name
    fn.__doc__ = f"Elementwise {name}."
    return fn


def _b(name: str):
    def fn(a: Any, b: Any) -> Node:
        return apply(name, [a, b])
    fn.__name__ = name
    fn.__doc__ = f"Elementwise {name} with numpy broadcasting."
    return fn


negative, exp, log, sqrt, abs, sign, tanh, sigmoid, relu, softplus, stop_gradient = (
    _u(n) for n in ("negative", "exp", "log", "sqrt", "abs", "sign", "tanh", "sigmoid", "relu", "softplus",
                    "stop_gradient"))
add, subtract, multiply, divide, power, maximum, minimum = (
    _b(n) for n in ("add", "subtract", "multiply", "divide", "power", "maximum", "minimum"))
less, less_equal, greater, greater_equal, equal, not_equal = (
    _b(n) for n in ("less", "less_equal", "greater", "greater_equal", "equal", "not_equal"))


def leaky_relu(x: Any, alpha: float = 0.01) -> Node:
    return apply("leaky_relu", [x], alpha=float(alpha))


def clip(x: Any, lo: float, hi: float) -> Node:
    """Clamp into [lo, hi] (gradient 1 inside, 0 outside, as torch.clamp)."""
    if lo > hi:
        raise ValueError(f"clip: lo={lo} > hi={hi}")
    return apply("clip", [x], lo=float(lo), hi=float(hi))


def cast(x: Any, dtype: Any) -> Node:
    (x,) = promote([x])
    return x if x.dtype == np.dtype(dtype) else apply("cast", [x], dtype=np.dtype(dtype))


def where(cond: Any, a: Any, b: Any) -> Node:
    return apply("where", [cond, a, b])


def matmul(a: Any, b: Any) -> Node:
    return apply("matmul", [a, b])


def transpose(x: Any, perm: Sequence[int] | None = None) -> Node:
    (x,) = promote([x])
    perm = tuple(reversed(range(x.ndim))) if perm is None else tuple(int(p) for p in perm)
    return apply("transpose", [x], perm=perm)


def reshape(x: Any, shape: Sequence[int | None]) -> Node:
    (x,) = promote([x])
    return apply("reshape", [x], shape=tuple(shape))


def broadcast_to(x: Any, shape: Sequence[int | None]) -> Node:
    (x,) = promote([x])
    shape = tuple(shape)
    return x if x.shape == shape else apply("broadcast_to", [x], shape=shape)


def _axes(name: str, axis: Any, x: Node) -> tuple[int, ...]:
    try:
        return normalize_axes(axis, x.ndim)
    except ShapeError as e:
        raise ShapeError(f"{name}: {e} of {shape_str(x.shape)} (at {user_location()})") from None


def _reduce(name: str, x: Any, axis: Any, keepdims: bool) -> Node:
    (x,) = promote([x])
    return apply(name, [x], axes=_axes(name, axis, x), keepdims=bool(keepdims))


def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Node:
    return _reduce("sum", x, axis, keepdims)


def max(x: Any, axis: Any = None, keepdims: bool = False) -> Node:
    return _reduce("max", x, axis, keepdims)


def mean(x: Any, axis: Any = None, keepdims: bool = False) -> Node:
    """Sum divided by the element count (the runtime batch size N once for each reduced batch axis)."""
    (x,) = promote([x])
    axes = _axes("mean", axis, x)
    count = math.prod(x.shape[a] for a in axes if x.shape[a] is not None)
    total = sum(x, axes, keepdims) * (1.0 / count)
    for _ in range(builtins.sum(x.shape[a] is None for a in axes)):  # N once per reduced batch axis
        total = total / batch_size(x)
    return total


def sum_to(x: Node, shape: tuple) -> Node:
    """Sum a broadcast result back down to `shape` (the gradient of broadcasting)."""
    shape = tuple(shape)
    if x.shape == shape:
        return x
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape) if d == 1 and x.shape[lead + i] != 1)
    out = sum(x, axes, keepdims=True)
    return reshape(out, shape)


def softmax(x: Any, axis: int = -1) -> Node:
    (x,) = promote([x])
    return apply("softmax", [x], axis=_axes("softmax", axis, x)[0])


def log_softmax(x: Any, axis: int = -1) -> Node:
    (x,) = promote([x])
    return apply("log_softmax", [x], axis=_axes("log_softmax", axis, x)[0])


def one_hot(labels: Any, depth: int, dtype: Any = np.float32) -> Node:
    return apply("one_hot", [labels], depth=int(depth), dtype=np.dtype(dtype))


def zeros_like(x: Node) -> Node:
    return broadcast_to(constant(0, x.dtype, graph=x.graph), x.shape)


def ones_like(x: Node) -> Node:
    return broadcast_to(constant(1, x.dtype, graph=x.graph), x.shape)


RNG_STEP = "rng/step"


def rng_step(graph) -> Node:
    """The graph's dropout step counter (a non-trainable int32 variable advanced by training calls)."""
    if RNG_STEP not in graph.variables:
        variable(RNG_STEP, np.int32(0), trainable=False, graph=graph)
    return graph.variables[RNG_STEP]


def dropout(x: Any, rate: float, seed: int | None = None) -> Node:
    """Inverted dropout, active only in functions compiled with training=True."""
    from ..random import next_dropout_seed
    if not 0 <= rate < 1:
        raise ValueError(f"dropout: rate must be in [0, 1), got {rate}")
    (x,) = promote([x])
    if rate == 0:
        return x
    key = next_dropout_seed() if seed is None else int(seed) & 0xFFFFFFFF
    return graph_dropout(x, rng_step(x.graph), rate=float(rate), seed=key)


def graph_dropout(x: Node, step: Node, rate: float, seed: int) -> Node:
    return apply("dropout", [x, step], rate=rate, seed=seed)
