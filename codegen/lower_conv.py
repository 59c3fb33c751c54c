"""Window ops (graphnet/ops/conv.py) -> loop IR.

Each op is one reduction kernel over its output and its window: the image operand is read through a
`Window` load (codegen/window.py) whose coordinates are affine in (output position, window position)
less the padding, divided by the stride where a gradient reads back through a strided window; the
other operands are ordinary loads (or expressions fused into the kernel). Grouped channels split the
channel axis into two loop vars (group, channel in group), written as a composite form
((group var, channels per group), (channel var, 1)) in the kernel's view, so a bias or activation
after the op joins its kernel as after a matmul.

    conv2d              over (n, i, j, group, out channel, kh, kw, in channel), sum of the last three
    conv2d_input_grad   over (n, h, w, group, in channel, kh, kw, out channel), dy read at ((h + top
                        - kh*dh) / sh, (w + left - kw*dw) / sw)
    conv2d_filter_grad  over (kh, kw, in channel, group, out channel, n, i, j)
    max_pool2d          over (n, i, j, c, kh, kw), x read at (i*sh + kh*dh - top, j*sw + kw*dw - left),
                        max, padding reads -inf
    max_pool2d_grad     a kernel counting each window's maxima, then over (n, h, w, c, kh, kw): dy / count
                        of every window whose maximum x[n, h, w, c] equals, read at ((h + top - kh*dh) / sh,
                        (w + left - kw*dw) / sw); windows that tile the image (stride = window, no padding,
                        no dilation) over (n, i, j, c, kh, kw) instead, no reduction:
                        each element's one window, stored at (i * kh + kh', j * kw + kw'), its count of
                        maxima a sum over the window written out in the same kernel (at most
                        TILE_COUNT_MAX elements; a larger window's counts are a kernel of their own)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from graphnet.graph import Node
from graphnet.ops.conv import image_dims

from .loopir import Acc, Const, Expr, Op, Reduce
from .window import Coord, window

TILE_COUNT_MAX = 16  # a tiling window of at most this many elements counts its maxima inline (the count's
#                     loads are the kernel's own, once its window loops are unrolled)

# Which inputs each op reads through windows: the lowering materializes them in buffers.
WINDOW_INPUTS = {"conv2d": (0,), "conv2d_input_grad": (0,), "conv2d_filter_grad": (0,), "max_pool2d": (0,),
                 "max_pool2d_grad": (0, 1, 2)}


def place_window(low: Any, r: Node) -> tuple[Any, Expr]:
    """The kernel computing window op `r` (`low` is the lower.Lowering) and r's value in it."""
    return PLACE[r.op.name](low, r)


def _buffer(low, n: Node) -> int:
    """The buffer a window reads `n` from; a one-element constant (which lower.py inlines) gets one."""
    if n not in low.buffer_of:
        low.buffer_of[n] = low._buffer(n.name, "constant", n.shape, n.dtype)
        low.storage[low.buffer_of[n]] = n.attrs["value"].array
    return low.buffer_of[n]


def _image(fmt: str, n, h, w, c) -> tuple:
    """Per-axis items of an image in its layout."""
    return (n, h, w, c) if fmt == "NHWC" else (n, c, h, w)


def _channel(outer: int, size: int, inner: int, domain: tuple) -> Any:
    """The form of a channel split into (group var `outer`, channel var `inner`): channel = outer * size + inner."""
    if domain[outer] == 1:
        return inner
    if domain[inner] == 1:
        return outer
    return ((outer, size), (inner, 1))


def _coord(*terms, const: int = 0, div: int = 1) -> Coord:
    return Coord(tuple(t for t in terms if t[1] != 0), const, div)


def _geometry(r: Node) -> tuple:
    return _geometry_of(r.attrs)


def _geometry_of(a: dict) -> tuple:
    (sh, sw), ((top, _), (left, _)) = a["strides"], a["padding"]
    dh, dw = a.get("dilations", (1, 1))
    return a["data_format"], sh, sw, dh, dw, top, left


def _sum(low, r: Node, domain: tuple, view: tuple, axes: tuple, value: Expr):
    kb = low._new_kernel(domain, view, r.shape)
    kb.reduce = Reduce("sum", axes, value(kb))
    if r.op.name.startswith("conv2d"):
        kb.flops = _conv_flops(r)
    return kb, Acc(r.dtype)


def _conv_flops(r: Node) -> tuple[int, int]:
    """A convolution kernel's useful FLOPs as Kernel.flops: 2 x (output elements of the forward conv)
    x (filter taps per output channel) for the op and both its gradients (BENCHMARKS.md's count)."""
    out = r.inputs[0] if r.op.name == "conv2d_input_grad" else r.inputs[1] if r.op.name == "conv2d_filter_grad" else r
    w = r if r.op.name == "conv2d_filter_grad" else r.inputs[1]
    kh, kw, cig, _ = w.shape
    return 2 * kh * kw * cig * int(np.prod([d for d in out.shape if d is not None], dtype=np.int64)), \
        out.shape.count(None)


def _conv2d(low, r: Node):
    x, w = r.inputs
    fmt, sh, sw, dh, dw, top, left = _geometry(r)
    ho, wo, cout = image_dims(r.shape, fmt)
    kh, kw, cig, _ = w.shape
    groups = r.attrs["groups"]
    domain = (x.shape[0], ho, wo, groups, cout // groups, kh, kw, cig)
    co = _channel(3, cout // groups, 4, domain)
    image = window(_buffer(low, x), x.shape, _image(fmt, _coord((0, 1)), _coord((1, sh), (5, dh), const=-top),
                                                     _coord((2, sw), (6, dw), const=-left), _coord((3, cig), (7, 1))),
                   x.dtype)
    return _sum(low, r, domain, _image(fmt, 0, 1, 2, co), (5, 6, 7),
                lambda kb: Op("mul", (image, low._expr(w, (5, 6, 7, co), kb)), r.dtype))


def _conv2d_input_grad(low, r: Node):
    dy, w = r.inputs
    fmt, sh, sw, dh, dw, top, left = _geometry(r)
    h, wd, cin = image_dims(r.shape, fmt)
    kh, kw, cig, cout = w.shape
    groups = r.attrs["groups"]
    cog = cout // groups
    domain = (dy.shape[0], h, wd, groups, cig, kh, kw, cog)
    image = window(_buffer(low, dy), dy.shape, _image(
        fmt, _coord((0, 1)), _coord((1, 1), (5, -dh), const=top, div=sh), _coord((2, 1), (6, -dw), const=left, div=sw),
        _coord((3, cog), (7, 1))), dy.dtype)
    filt = (5, 6, 4, _channel(3, cog, 7, domain))
    return _sum(low, r, domain, _image(fmt, 0, 1, 2, _channel(3, cig, 4, domain)), (5, 6, 7),
                lambda kb: Op("mul", (image, low._expr(w, filt, kb)), r.dtype))


def _conv2d_filter_grad(low, r: Node):
    x, dy = r.inputs
    fmt, sh, sw, dh, dw, top, left = _geometry(r)
    kh, kw, cig, cout = r.shape
    ho, wo, _ = image_dims(dy.shape, fmt)
    groups = r.attrs["groups"]
    domain = (kh, kw, cig, groups, cout // groups, x.shape[0], ho, wo)
    co = _channel(3, cout // groups, 4, domain)
    image = window(_buffer(low, x), x.shape, _image(fmt, _coord((5, 1)), _coord((6, sh), (0, dh), const=-top),
                                                     _coord((7, sw), (1, dw), const=-left), _coord((3, cig), (2, 1))),
                   x.dtype)
    return _sum(low, r, domain, (0, 1, 2, co), (5, 6, 7),
                lambda kb: Op("mul", (image, low._expr(dy, _image(fmt, 5, 6, 7, co), kb)), r.dtype))


def _pool_window(low, x: Node, pooled: tuple, attrs: dict, fill: float):
    """The (n, i, j, c, kh, kw) domain of pooling x into shape `pooled`, and x's window load there."""
    fmt, sh, sw, dh, dw, top, left = _geometry_of(attrs)
    ho, wo, c = image_dims(pooled, fmt)
    domain = (x.shape[0], ho, wo, c, *attrs["ksize"])
    image = window(_buffer(low, x), x.shape, _image(fmt, _coord((0, 1)), _coord((1, sh), (4, dh), const=-top),
                                                     _coord((2, sw), (5, dw), const=-left), _coord((3, 1))), x.dtype,
                   fill)
    return domain, image


def _max_pool2d(low, r: Node):
    domain, image = _pool_window(low, r.inputs[0], r.shape, r.attrs, float("-inf"))
    kb = low._new_kernel(domain, _image(r.attrs["data_format"], 0, 1, 2, 3), r.shape)
    kb.reduce = Reduce("max", (4, 5), image)
    return kb, Acc(r.dtype)


@dataclass(frozen=True)
class _Internal:
    """A value an op's lowering stores for its own use, standing in for a node in a kernel's members
    (lower.py reads a member's node for its name, shape, op name and source line)."""

    name: str
    shape: tuple
    source: str
    op: Any


@dataclass(frozen=True)
class _OpName:
    name: str


@dataclass
class _Stored:
    """A kernel member as lower.py's `_finish` reads it: the value stored at `view` into `buffer`."""

    node: _Internal
    view: tuple
    value: Expr
    buffer: int


def _max_pool2d_grad(low, r: Node):
    if _tiling(r):
        return _tiled_max_pool2d_grad(low, r)
    x = r.inputs[0]
    fmt, sh, sw, dh, dw, top, left = _geometry(r)
    counts = _window_maxima(low, r)
    h, wd, c = image_dims(r.shape, fmt)
    kh, kw = r.attrs["ksize"]
    domain = (x.shape[0], h, wd, c, kh, kw)
    pooled = _image(fmt, _coord((0, 1)), _coord((1, 1), (4, -dh), const=top, div=sh),
                    _coord((2, 1), (5, -dw), const=left, div=sw), _coord((3, 1)))
    return _sum(low, r, domain, _image(fmt, 0, 1, 2, 3), (4, 5),
                lambda kb: _share_of_maximum(low, r, kb, _image(fmt, 0, 1, 2, 3), pooled,
                                             window(counts, r.inputs[1].shape, pooled, r.dtype, 1.0)))


def _share_of_maximum(low, r: Node, kb, x_view: tuple, pooled: tuple, count: Expr) -> Expr:
    """max_pool2d_grad's term: x (at `x_view`) equal to its window's maximum y gets dy / `count` (the
    window's count of maxima), else 0 (y and dy read at window coordinates `pooled`)."""
    x, y, dy = r.inputs
    hit = Op("eq", (low._expr(x, x_view, kb), _pooled(low, r, y, pooled, float("nan"))), _BOOL)
    share = Op("div", (_pooled(low, r, dy, pooled, 0.0), count), r.dtype)
    return Op("select", (hit, share, Const(0.0, r.dtype)), r.dtype)


def _pooled(low, r: Node, n: Node, pooled: tuple, fill: float) -> Expr:
    """Pooled-shape operand `n` (y or dy) of max_pool2d_grad `r` read at window coordinates `pooled`."""
    return window(_buffer(low, n), n.shape, pooled, r.dtype, fill)


def _tiling(r: Node) -> bool:
    """Do max_pool2d_grad's windows tile its image (stride = window, no padding, no rows or columns
    left over, no dilation: a dilated window's gaps belong to other windows, which overlap it), so
    that each element lies in exactly one window?"""
    fmt, sh, sw, dh, dw, _, _ = _geometry(r)
    (h, w, _), (ho, wo, _) = image_dims(r.shape, fmt), image_dims(r.inputs[1].shape, fmt)
    kh, kw = r.attrs["ksize"]
    undilated = (dh == 1 or kh == 1) and (dw == 1 or kw == 1)
    return (undilated and (sh, sw) == (kh, kw) and r.attrs["padding"] == ((0, 0), (0, 0))
            and (h, w) == (ho * sh, wo * sw))


def _tiled_max_pool2d_grad(low, r: Node):
    """max_pool2d_grad of tiling windows without a reduction: over (n, i, j, c, kh, kw), the element at
    (i * kh + kh', j * kw + kw') of window (i, j) gets dy / count where it equals the window's maximum
    (the general form reads every window that could cover an element, through divisions). The count
    is a sum over the window in this kernel (one pass over x, no kernel of counts), up to TILE_COUNT_MAX
    elements."""
    x, y, _ = r.inputs
    fmt = r.attrs["data_format"]
    ho, wo, c = image_dims(y.shape, fmt)
    kh, kw = r.attrs["ksize"]
    view = _image(fmt, 0, ((1, kh), (4, 1)), ((2, kw), (5, 1)), 3)
    pooled = _image(fmt, _coord((0, 1)), _coord((1, 1)), _coord((2, 1)), _coord((3, 1)))
    counts = _window_maxima(low, r) if kh * kw > TILE_COUNT_MAX else None
    kb = low._new_kernel((x.shape[0], ho, wo, c, kh, kw), view, r.shape)
    count = window(counts, y.shape, pooled, r.dtype, 1.0) if counts is not None else _tile_maxima(low, r, pooled)
    return kb, _share_of_maximum(low, r, kb, view, pooled, count)


def _tile_maxima(low, r: Node, pooled: tuple) -> Expr:
    """The count of window (i, j)'s elements equal to its maximum y, as a sum over the window's kh x kw
    elements (tiling windows: each element at (i * kh + a, j * kw + b), never outside the image)."""
    x, y, _ = r.inputs
    fmt = r.attrs["data_format"]
    kh, kw = r.attrs["ksize"]
    maximum = _pooled(low, r, y, pooled, float("nan"))
    count = None
    for a in range(kh):
        for b in range(kw):
            element = window(_buffer(low, x), x.shape, _image(fmt, _coord((0, 1)), _coord((1, kh), const=a),
                                                               _coord((2, kw), const=b), _coord((3, 1))), x.dtype)
            term = Op("cast", (Op("eq", (element, maximum), _BOOL),), r.dtype)
            count = term if count is None else Op("add", (count, term), r.dtype)
    return count


def _window_maxima(low, r: Node) -> int:
    """A kernel counting, per window, the elements equal to its maximum; returns its buffer."""
    x, y, _ = r.inputs
    domain, image = _pool_window(low, x, y.shape, r.attrs, float("-inf"))
    view = _image(r.attrs["data_format"], 0, 1, 2, 3)
    kb = low._new_kernel(domain, view, y.shape)
    hit = Op("eq", (image, low._expr(y, view, kb)), _BOOL)
    kb.reduce = Reduce("sum", (4, 5), Op("cast", (hit,), r.dtype))
    buffer = low._buffer(f"maxima_{r.name}", "temp", y.shape, r.dtype)
    internal = _Internal(f"maxima_{r.name}", y.shape, r.source, _OpName("max_pool2d_maxima"))
    kb.members[internal] = _Stored(internal, kb.view, Acc(r.dtype), buffer)
    return buffer


_BOOL = np.dtype(bool)

PLACE: dict[str, Callable] = {"conv2d": _conv2d, "conv2d_input_grad": _conv2d_input_grad,
                              "conv2d_filter_grad": _conv2d_filter_grad, "max_pool2d": _max_pool2d,
                              "max_pool2d_grad": _max_pool2d_grad}
