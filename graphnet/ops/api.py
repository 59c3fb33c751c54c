"""The public op functions: each builds one graph node through the op registry (see base.py).

Elementwise ops with the plain signatures `f(x)` and `f(a, b)` (`Op.signature` "unary" or "binary")
get their function from the registry (`function`), so adding such an op is one registry entry; the
others are written here. The op families' gradient rules call these functions as `ops.<name>`:
this module imports no family, so the registry can import it.
"""
from __future__ import annotations

import builtins
import inspect
import itertools
import math
from typing import Any, Callable, Sequence

import numpy as np

from ..batchdim import unify_shapes
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


def argmax(x: Any, axis: int | None = -1, keepdims: bool = False) -> Node:
    """The int64 index of the first maximum along `axis` (the first NaN where a slice holds one), as
    numpy's; the default axis is the last (axis=None: the index into the flattened tensor, for tensors
    of static shape). With `keepdims` the reduced axis stays, of extent 1. It has no gradient
    (differentiating through it is an error)."""
    return _arg_reduce("argmax", x, axis, keepdims)


def argmin(x: Any, axis: int | None = -1, keepdims: bool = False) -> Node:
    """The int64 index of the first minimum along `axis` (the first NaN where a slice holds one); `axis`
    and `keepdims` as argmax's."""
    return _arg_reduce("argmin", x, axis, keepdims)


def _arg_reduce(name: str, x: Any, axis: int | None, keepdims: bool) -> Node:
    (x,) = promote([x])
    if axis is None:
        if None in x.shape:
            raise ShapeError(f"{name}: axis=None flattens the tensor, and {shape_str(x.shape)} has a batch axis "
                             f"(its length is known only at run time): give an axis (at {user_location()})")
        flat = apply(name, [reshape(x, (int(np.prod(x.shape, dtype=np.int64)),))], axis=0)
        return reshape(flat, (1,) * x.ndim) if keepdims else flat
    a = _axes(name, int(axis), x)[0]
    r = apply(name, [x], axis=a)
    return reshape(r, x.shape[:a] + (1,) + x.shape[a + 1:]) if keepdims else r


def cumsum(x: Any, axis: int = -1, reverse: bool = False) -> Node:
    """The running sum along `axis` (numpy's cumsum; with `reverse`, from the end: tf.cumsum's
    reverse=True). Its gradient is the cumsum of the incoming gradient in the other direction."""
    (x,) = promote([x])
    return apply("cumsum", [x], axis=_axes("cumsum", int(axis), x)[0], reverse=bool(reverse))


def mean(x: Any, axis: Any = None, keepdims: bool = False) -> Node:
    """Sum divided by the element count (the runtime batch size N once for each reduced batch axis);
    the mean of no elements is NaN, as numpy's."""
    (x,) = promote([x])
    axes = _axes("mean", axis, x)
    count = math.prod(x.shape[a] for a in axes if x.shape[a] is not None)
    total = sum(x, axes, keepdims) * (1.0 / count if count else math.nan)
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
RNG_OFFSET = "rng/offset"


def rng_step(graph) -> Node:
    """The graph's dropout step counter (a non-trainable int32 variable advanced by training calls)."""
    if RNG_STEP not in graph.variables:
        variable(RNG_STEP, np.int32(0), trainable=False, graph=graph)
    return graph.variables[RNG_STEP]


def rng_offset(graph) -> Node:
    """The global index of the batch's first row (a non-trainable int32 variable, 0 unless set): a
    data-parallel rank sets its shard's offset in the global batch, so dropout draws that batch's masks."""
    if RNG_OFFSET not in graph.variables:
        variable(RNG_OFFSET, np.int32(0), trainable=False, graph=graph)
    return graph.variables[RNG_OFFSET]


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


def graph_dropout(x: Node, step: Node, rate: float, seed: int, offset: Node | None = None,
                  row: int | None = None) -> Node:
    """The dropout op; by default keyed by the graph's row offset, `row` the elements per batch row."""
    offset = rng_offset(x.graph) if offset is None else offset
    row = _batch_row(x.shape) if row is None else row
    return apply("dropout", [x, step, offset], rate=rate, seed=seed, row=row)


def _batch_row(shape: tuple) -> int:
    """Dropout's counter stride per batch row: the product of the static extents where the shape has
    one batch axis (None). With the batch leading, offset * row + flat index is the element's flat
    index in the whole batch; with it elsewhere, shards draw from disjoint counters but not the whole
    batch's masks. Without a batch axis (or with several) it is 0: the offset is not read."""
    if shape.count(None) != 1:
        return 0
    return int(np.prod([d for d in shape if d is not None], dtype=np.int64))


def public_names() -> list[str]:
    """The names `graphnet.ops` (and `graphnet`) export: the functions written here and every
    registered op with a generated function."""
    written = [n for n, v in globals().items() if not n.startswith("_") and inspect.isfunction(v)
               and v.__module__ == __name__
               and n not in ("function", "public_names", "graph_dropout", "rng_step", "rng_offset")]
    written += ["batch_size", "placeholder", "variable", "constant"]
    generated = [n for n, op in REGISTRY.items() if op.signature in ("unary", "binary")]
    return sorted(set(written + generated))


# ---- indexing and joining (ops/indexing.py) ------------------------------------------------
def _where_error(name: str, message: str) -> ShapeError:
    return ShapeError(f"{name}: {message} (at {user_location()})")


def strided_slice(x: Any, slices: Sequence[tuple]) -> Node:
    """x[start:stop:step] per axis, each given normalized (0 <= start <= stop <= extent, step >= 1;
    (0, None, 1) keeps the batch axis). `x[...]` is the general form."""
    (x,) = promote([x])
    slices = tuple((int(a), None if b is None else int(b), int(c)) for a, b, c in slices)
    if all(s == (0, d, 1) for s, d in zip(slices, x.shape)):
        return x
    return apply("strided_slice", [x], slices=slices)


def flip(x: Any, axis: Any = None) -> Node:
    """Reverse the order of elements along `axis` (an int, a tuple, or None: every axis), as numpy.flip."""
    (x,) = promote([x])
    axes = _axes("flip", axis, x)
    axes = tuple(a for a in axes if x.shape[a] != 1)
    return apply("flip", [x], axes=axes) if axes else x


def pad_interior(x: Any, pads: Sequence[tuple], value: float = 0.0) -> Node:
    """`value` around and between the elements of each axis: pads[d] = (before, after, interior)
    (interior: elements of `value` between two of x's; the gradient of a strided slice)."""
    (x,) = promote([x])
    pads = tuple(tuple(int(v) for v in p) for p in pads)
    if all(p == (0, 0, 0) for p in pads):
        return x
    return apply("pad", [x], pads=pads, value=float(value))


def _pad_widths(x: Node, pads: Any) -> list[tuple[int, int]]:
    """numpy.pad's pad_width: an int, one (before, after) pair, or one pair per axis."""
    arr = np.asarray(pads)
    if arr.dtype.kind not in "iu" or arr.ndim > 2 or (arr.ndim >= 1 and arr.shape[-1] not in (1, 2)):
        raise _where_error("pad", f"pads must be an int, a (before, after) pair or one pair per axis, got {pads!r}")
    try:
        widths = np.broadcast_to(arr.reshape(-1, arr.shape[-1]) if arr.ndim else arr, (x.ndim, 2))
    except ValueError:
        raise _where_error("pad", f"pads {pads!r} do not fit the {x.ndim} axes of {shape_str(x.shape)}") from None
    if (widths < 0).any():
        raise _where_error("pad", f"pads must be non-negative, got {pads!r}")
    return [(int(a), int(b)) for a, b in widths]


_PAD_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")


def pad(x: Any, pads: Any, mode: str = "constant", value: float = 0.0) -> Node:
    """numpy.pad: `pads` an int, a (before, after) pair, or one pair per axis. mode "constant" fills
    with `value`; "edge" repeats the edge element; "reflect" mirrors the elements next to each edge,
    the edge not repeated; "symmetric" mirrors them, the edge repeated; "wrap" continues from the
    other end. Pads longer than the axis repeat the pattern exactly as numpy does. Torch's
    padding_mode "replicate" and "circular" are "edge" and "wrap". Padding an empty axis in any mode
    but "constant" is a ShapeError (numpy raises too); the batch axis is not padded."""
    (x,) = promote([x])
    widths = _pad_widths(x, pads)
    if mode not in _PAD_MODES:
        raise ValueError(f"pad: mode must be one of {', '.join(map(repr, _PAD_MODES))}, got {mode!r} "
                         f"(torch's 'replicate' is 'edge', 'circular' is 'wrap') (at {user_location()})")
    for axis, (d, w) in enumerate(zip(x.shape, widths)):
        if d is None and w != (0, 0):
            raise _where_error("pad", f"cannot pad axis {axis} of {shape_str(x.shape)}: it is the batch axis")
        if d == 0 and w != (0, 0) and mode != "constant":
            raise _where_error("pad", f"{mode} pads {w} of axis {axis} of {shape_str(x.shape)}: the axis is "
                                      f"empty, only mode 'constant' can pad it")
    if mode == "constant":
        return pad_interior(x, [(a, b, 0) for a, b in widths], value)
    for axis, (a, b) in enumerate(widths):
        if a or b:
            x = _pad_axis(x, axis, a, b, mode)
    return x


def _pad_axis(x: Node, axis: int, before: int, after: int, mode: str) -> Node:
    """x with `before` and `after` elements on `axis` in a mode other than "constant": slices of x,
    flipped where mirrored, joined. "edge" broadcasts the end elements; the other modes extend x
    periodically, one period a list of (start, stop, flipped) ranges of x: wrap x, symmetric x and
    x reversed, reflect x and x reversed without its ends (numpy's result for any width)."""
    d = x.shape[axis]

    def part(start: int, stop: int, flipped: bool = False) -> Node:
        slices = [(0, e, 1) for e in x.shape]
        slices[axis] = (start, stop, 1)
        piece = strided_slice(x, slices)
        return flip(piece, axis) if flipped else piece
    if mode == "edge":
        def edge(i: int, n: int) -> list[Node]:
            return [broadcast_to(part(i, i + 1), x.shape[:axis] + (n,) + x.shape[axis + 1:])] if n else []
        return concat(edge(0, before) + [x] + edge(d - 1, after), axis)
    period = {"wrap": [(0, d, False)], "symmetric": [(0, d, False), (0, d, True)],
              "reflect": [(0, d, False), (1, d - 1, True)]}[mode]
    period = [r for r in period if r[1] > r[0]]
    offset, left = -before % builtins.sum(b - a for a, b, _ in period), before + d + after
    pieces = []
    for start, stop, flipped in itertools.cycle(period):
        if offset >= stop - start:
            offset -= stop - start
            continue
        n = builtins.min(stop - start - offset, left)
        pieces.append(part(stop - offset - n, stop - offset, True) if flipped else
                      part(start + offset, start + offset + n))
        offset, left = 0, left - n
        if not left:
            return concat(pieces, axis)


def take(x: Any, indices: Any, axis: int | None = None) -> Node:
    """numpy.take: the elements of x at integer `indices` (a node, array or list) along `axis`
    (None: of x flattened). Indices count from the end when negative and are clamped into the axis
    (numpy's mode="clip"): every backend reads the same element and never outside the tensor."""
    (x,) = promote([x])
    if not isinstance(indices, Node):
        indices = constant(np.asarray(indices), graph=x.graph)
    if axis is None:
        if None in x.shape:
            raise _where_error("take", f"axis=None flattens x, which {shape_str(x.shape)} cannot be: give an axis")
        x, axis = reshape(x, (-1,)), 0
    return apply("take", [x, indices], axis=_axes("take", axis, x)[0])


def scatter_add(updates: Any, indices: Any, axis: int, size: int | None) -> Node:
    """Zeros with `size` elements on `axis` (None: the batch size) plus each slice of `updates` at its
    (clamped, as in take) index; duplicate indices add up. The gradient of take."""
    (updates,) = promote([updates])
    if not isinstance(indices, Node):
        indices = constant(np.asarray(indices), graph=updates.graph)
    return apply("scatter_add", [updates, indices], axis=int(axis), size=None if size is None else int(size))


def _join_axis(name: str, xs: Sequence[Node], axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise _where_error(name, f"axis {axis} is out of range for " + " and ".join(shape_str(x.shape) for x in xs))
    return axis % ndim


def _tensors(name: str, xs: Any) -> list[Node]:
    if isinstance(xs, Node) or not isinstance(xs, (list, tuple)) or not xs:
        raise TypeError(f"{name}: expects a non-empty list of tensors (at {user_location()})")
    graph = graph_of(xs)
    return [x if isinstance(x, Node) else constant(np.asarray(x), graph=graph) for x in xs]


def concat(xs: Sequence[Any], axis: int = 0) -> Node:
    """numpy.concatenate along a static axis (shapes equal elsewhere, one dtype)."""
    xs = _tensors("concat", xs)
    if len(xs) == 1:
        return xs[0]
    return apply("concat", xs, axis=_join_axis("concat", xs, axis, xs[0].ndim))


def stack(xs: Sequence[Any], axis: int = 0) -> Node:
    """numpy.stack: join tensors of one shape along a new axis."""
    xs = _tensors("stack", xs)
    axis = _join_axis("stack", xs, axis, xs[0].ndim + 1)
    try:  # N meeting a static extent k agrees: the concat below fixes N == k
        for x in xs[1:]:
            unify_shapes(xs[0].shape, x.shape)
    except ShapeError:
        shapes = " and ".join(shape_str(x.shape) for x in xs)
        raise _where_error("stack", f"needs tensors of one shape, got {shapes}") from None
    return concat([reshape(x, x.shape[:axis] + (1,) + x.shape[axis:]) for x in xs], axis)


def split(x: Any, sections: int | Sequence[int], axis: int = 0) -> list[Node]:
    """numpy.split: `sections` equal parts, or the parts between sorted split points (clipped to the
    axis, as numpy)."""
    (x,) = promote([x])
    axis = _axes("split", axis, x)[0]
    d = x.shape[axis]
    if d is None:
        raise _where_error("split", f"cannot split axis {axis} of {shape_str(x.shape)}: it is the batch axis")
    if isinstance(sections, (int, np.integer)):
        if sections <= 0 or d % sections:
            raise _where_error("split", f"{d} elements on axis {axis} of {shape_str(x.shape)} do not split into "
                                        f"{sections} equal parts")
        points = [d // sections * i for i in range(1, int(sections))]
    else:
        points = [builtins.min(builtins.max(int(p), 0), d) for p in sections]
    bounds = list(zip([0] + points, points + [d]))
    parts = []
    for start, stop in bounds:
        slices = [(0, e, 1) for e in x.shape]
        slices[axis] = (start, builtins.max(start, stop), 1)
        parts.append(strided_slice(x, slices))
    return parts


def getitem(x: Any, key: Any) -> Node:
    """x[key] with numpy's basic indexing: ints (negative from the end), slices (any step, bounds
    clipped), None (a new axis) and one Ellipsis. The batch axis takes ':' and '::-1' only (its
    length is known at run time); integer tensors index through gn.take."""
    (x,) = promote([x])
    items = _expand_key(x, key if isinstance(key, tuple) else (key,))
    slices, flips, shape, axis = [], [], [], 0
    for item in items:
        if item is None:
            shape.append(1)
            continue
        d = x.shape[axis]
        if isinstance(item, builtins.slice):
            start, stop, step, reverse = _normal_slice(x, axis, item)
            slices.append((start, stop, step))
            flips += [axis] if reverse else []
            shape.append(None if d is None else len(range(start, stop, step)))
        else:
            slices.append((item, item + 1, 1))
        axis += 1
    y = flip(strided_slice(x, slices), tuple(flips))
    return y if y.shape == tuple(shape) else reshape(y, tuple(shape))


def _expand_key(x: Node, key: tuple) -> list:
    """The key with its Ellipsis expanded and ':' for the axes it leaves out; ints made non-negative."""
    for item in key:
        if isinstance(item, (bool, np.bool_)) or not (item is None or item is Ellipsis or
                                                       isinstance(item, (int, np.integer, builtins.slice))):
            raise TypeError(f"x[...]: index {item!r} is not an int, slice, None or Ellipsis; index with an integer "
                            f"tensor through gn.take(x, indices, axis) (at {user_location()})")
    if builtins.sum(item is Ellipsis for item in key) > 1:
        raise _where_error("x[...]", "an index can only have a single ellipsis ('...')")
    used = builtins.sum(item is not None and item is not Ellipsis for item in key)
    if used > x.ndim:
        raise _where_error("x[...]", f"too many indices ({used}) for {shape_str(x.shape)}")
    rest = [builtins.slice(None)] * (x.ndim - used)
    at = next((i for i, item in enumerate(key) if item is Ellipsis), len(key))
    items = list(key[:at]) + rest + list(key[at + 1:])
    axis = 0
    for i, item in enumerate(items):
        if item is None:
            continue
        if isinstance(item, (int, np.integer)):
            items[i] = _normal_int(x, axis, int(item))
        axis += 1
    return items


def _normal_int(x: Node, axis: int, i: int) -> int:
    d = x.shape[axis]
    if d is None:
        raise _where_error("x[...]", f"cannot index axis {axis} of {shape_str(x.shape)} with an int: it is the batch "
                                     f"axis (its length is known at run time); use gn.take")
    if not -d <= i < d:
        raise _where_error("x[...]", f"index {i} is out of range for axis {axis} of size {d} in {shape_str(x.shape)}")
    return i % d


def _normal_slice(x: Node, axis: int, item: builtins.slice) -> tuple[int, int | None, int, bool]:
    """(start, stop, step, reversed): the elements of `item` as a positive-step slice, flipped when reversed."""
    d = x.shape[axis]
    if item.step == 0:
        raise _where_error("x[...]", f"slice step cannot be zero (axis {axis} of {shape_str(x.shape)})")
    if d is None:
        if item.start is None and item.stop is None and item.step in (None, 1, -1):
            return 0, None, 1, item.step == -1
        raise _where_error("x[...]", f"axis {axis} of {shape_str(x.shape)} is the batch axis (its length is known "
                                     f"at run time): slice it with ':' or '::-1' only, or use gn.take")
    r = range(*item.indices(d))
    if not r:
        return 0, 0, 1, False
    if r.step > 0:
        return r[0], r[-1] + 1, r.step, False
    return r[-1], r[0] + 1, -r.step, True
