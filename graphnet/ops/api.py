"""The public op functions: each builds one graph node through the op registry (see base.py).

Elementwise ops with the plain signatures `f(x)` and `f(a, b)` (`Op.signature` "unary" or "binary")
get their function from the registry (`function`), so adding such an op is one registry entry; the
others are written here. The op families' gradient rules call these functions as `ops.<name>`:
this module imports no family, so the registry can import it.
"""
from __future__ import annotations

import builtins
import inspect
import math
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ShapeError
from ..graph import Node, shape_str
from ..source import user_location
from .base import REGISTRY, apply, constant, graph_of, normalize_axes, promote
from .sources import batch_size, placeholder, variable


def function(name: str) -> Callable[..., Node]:
    """The public function of a registered op whose `signature` is "unary" (f(x)) or "binary" (f(a, b))."""
    op = REGISTRY[name]
    if op.signature == "unary":
        def fn(x: Any) -> Node:
            return apply(name, [x])
        fn.__doc__ = f"Elementwise {name}."
    elif op.signature == "binary":
        def fn(a: Any, b: Any) -> Node:
            return apply(name, [a, b])
        fn.__doc__ = f"Elementwise {name} with numpy broadcasting."
    else:
        raise ValueError(f"op {name} has no generated function (signature {op.signature!r})")
    fn.__name__ = fn.__qualname__ = name
    return fn


def __getattr__(name: str) -> Callable[..., Node]:
    """`ops.exp` and the like, generated from the registry on first use."""
    op = REGISTRY.get(name)
    if op is None or op.signature not in ("unary", "binary"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    fn = globals()[name] = function(name)
    return fn


def leaky_relu(x: Any, alpha: float = 0.01) -> Node:
    return apply("leaky_relu", [x], alpha=float(alpha))


def clip(x: Any, lo: float, hi: float) -> Node:
    """Clamp into [lo, hi] (gradient 1 inside, 0 outside, as torch.clamp)."""
    if lo > hi:
        raise ValueError(f"clip: lo={lo} > hi={hi}")
    return apply("clip", [x], lo=float(lo), hi=float(hi))


def elu(x: Any, alpha: float = 1.0) -> Node:
    """x where x > 0, else alpha * (exp(x) - 1) (Keras's and torch's elu)."""
    return apply("elu", [x], alpha=float(alpha))


def gelu(x: Any, approximate: str | bool = "none") -> Node:
    """x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), the default of torch (approximate="none") and Keras
    (approximate=False); approximate="tanh" (Keras: True) is 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    forms = {"none": "none", False: "none", "tanh": "tanh", True: "tanh"}
    if not isinstance(approximate, (str, bool)) or approximate not in forms:
        raise ValueError(f"gelu: approximate must be 'none', 'tanh', False or True, got {approximate!r} "
                         f"(at {user_location()})")
    return apply("gelu", [x], approximate=forms[approximate])


def swish(x: Any) -> Node:
    """x * sigmoid(x): another name of `silu`."""
    return apply("silu", [x])


def cast(x: Any, dtype: Any) -> Node:
    (x,) = promote([x])
    return x if x.dtype == np.dtype(dtype) else apply("cast", [x], dtype=np.dtype(dtype))


def where(cond: Any, a: Any, b: Any) -> Node:
    """`a` where `cond` else `b`; a numpy bool array or Python bool condition stays bool."""
    if not isinstance(cond, Node) and np.asarray(cond).dtype == np.bool_:
        cond = constant(np.asarray(cond), graph=graph_of([a, b]))
    return apply("where", [cond, a, b])


def matmul(a: Any, b: Any) -> Node:
    """numpy's matmul: 2-D operands are one GEMM; N-D operands multiply their last two dimensions,
    broadcasting the others; a 1-D operand is a row (a) or column (b) vector, dropped from the result."""
    a, b = promote([a, b])
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul: operands must not be scalars, got {shape_str(a.shape)} @ {shape_str(b.shape)} "
                         f"(at {user_location()})")
    if a.ndim == 2 and b.ndim == 2:
        return apply("matmul", [a, b])
    rows, columns = a.ndim == 1, b.ndim == 1
    a = reshape(a, (1,) + a.shape) if rows else a
    b = reshape(b, b.shape + (1,)) if columns else b
    out = apply("matmul" if a.ndim == b.ndim == 2 else "batch_matmul", [a, b])
    drop = ([out.ndim - 2] if rows else []) + ([out.ndim - 1] if columns else [])
    return reshape(out, tuple(d for i, d in enumerate(out.shape) if i not in drop)) if drop else out


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


def min(x: Any, axis: Any = None, keepdims: bool = False) -> Node:
    return _reduce("min", x, axis, keepdims)


def prod(x: Any, axis: Any = None, keepdims: bool = False) -> Node:
    """The product over `axis`; its gradient is the product of the other elements, exact at zeros."""
    return _reduce("prod", x, axis, keepdims)


def argmax(x: Any, axis: int = -1) -> Node:
    """The int64 index of the first maximum along `axis` (the first NaN where a slice holds one), as
    numpy's; there is no flattening default: the last axis. It has no gradient (differentiating
    through it is an error)."""
    return _arg_reduce("argmax", x, axis)


def argmin(x: Any, axis: int = -1) -> Node:
    """The int64 index of the first minimum along `axis` (the first NaN where a slice holds one)."""
    return _arg_reduce("argmin", x, axis)


def _arg_reduce(name: str, x: Any, axis: int) -> Node:
    (x,) = promote([x])
    return apply(name, [x], axis=_axes(name, int(axis), x)[0])


def cumsum(x: Any, axis: int = -1, reverse: bool = False) -> Node:
    """The running sum along `axis` (numpy's cumsum; with `reverse`, from the end: tf.cumsum's
    reverse=True). Its gradient is the cumsum of the incoming gradient in the other direction."""
    (x,) = promote([x])
    return apply("cumsum", [x], axis=_axes("cumsum", int(axis), x)[0], reverse=bool(reverse))


def mean(x: Any, axis: Any = None, keepdims: bool = False) -> Node:
    """Sum divided by the element count (the runtime batch size N once for each reduced batch axis)."""
    (x,) = promote([x])
    axes = _axes("mean", axis, x)
    count = math.prod(x.shape[a] for a in axes if x.shape[a] is not None)
    total = sum(x, axes, keepdims) * (1.0 / count)
    for _ in range(builtins.sum(x.shape[a] is None for a in axes)):  # N once per reduced batch axis
        total = total / batch_size(x)
    return total


def logsumexp(x: Any, axis: Any = None, keepdims: bool = False) -> Node:
    """log(sum(exp(x))) over `axis`, shifted by the maximum so no exp overflows; a slice of all -inf
    gives -inf and one holding +inf gives +inf (as scipy.special.logsumexp)."""
    x = _float_input("logsumexp", x)
    axes = _axes("logsumexp", axis, x)
    top = max(x, axes, keepdims=True)
    finite_top = where(apply("equal", [apply("abs", [top]), np.inf]), 0, top)
    # The value does not depend on the shift, so a constant shift gives the exact gradient (softmax).
    shift = apply("stop_gradient", [finite_top])
    out = apply("log", [sum(apply("exp", [x - shift]), axes, keepdims=True)]) + shift
    return out if keepdims else reshape(out, tuple(d for i, d in enumerate(x.shape) if i not in axes))


def var(x: Any, axis: Any = None, keepdims: bool = False, ddof: int = 0) -> Node:
    """The variance over `axis`: sum((x - mean)^2) / (count - ddof) (numpy's two-pass definition;
    ddof=1 is the unbiased estimate, torch's default)."""
    x = _float_input("var", x)
    axes = _axes("var", axis, x)
    d = x - mean(x, axes, keepdims=True)
    return sum(d * d, axes, keepdims) / (_count(x, axes) - ddof)


def std(x: Any, axis: Any = None, keepdims: bool = False, ddof: int = 0) -> Node:
    """The standard deviation over `axis`: sqrt(var(x, axis, keepdims, ddof))."""
    return apply("sqrt", [var(x, axis, keepdims, ddof)])


def _float_input(name: str, x: Any) -> Node:
    (x,) = promote([x])
    if x.dtype.kind != "f":
        raise ShapeError(f"{name}: needs a float tensor, got {x.dtype} (use gn.cast) (at {user_location()})")
    return x


def _count(x: Node, axes: tuple[int, ...]) -> Any:
    """How many elements a reduction over `axes` combines: a number, or a node when it reduces the batch."""
    count: Any = float(math.prod(x.shape[a] for a in axes if x.shape[a] is not None))
    for _ in range(builtins.sum(x.shape[a] is None for a in axes)):
        count = count * batch_size(x)
    return count


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


def public_names() -> list[str]:
    """The names `graphnet.ops` (and `graphnet`) export: the functions written here and every
    registered op with a generated function."""
    written = [n for n, v in globals().items() if not n.startswith("_") and inspect.isfunction(v)
               and v.__module__ == __name__ and n not in ("function", "public_names", "graph_dropout", "rng_step")]
    written += ["batch_size", "placeholder", "variable", "constant"]
    generated = [n for n, op in REGISTRY.items() if op.signature in ("unary", "binary")]
    return sorted(set(written + generated))
