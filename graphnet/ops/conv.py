"""Convolution and pooling over 2-D images, and batch and layer normalization.

Images are NHWC (Keras's layout) or NCHW (`data_format`); a filter is (KH, KW, Cin / groups, Cout),
Keras's HWIO. Every window op keeps its geometry in normalized attrs: `strides` (sh, sw), `padding`
((top, bottom), (left, right)) in elements, `dilations` (dh, dw), `groups`, `data_format`; the
public functions turn "valid" / "same" into explicit padding (as Keras: "same" gives ceil(size /
stride) outputs, the odd element of padding at the bottom / right).

conv2d's gradients with respect to its input and its filter are ops of their own, and the three are
each other's gradients (each is linear in both operands), so derivatives of any order stay in the
family. Max pooling shares a window's gradient evenly between the elements equal to its maximum
(as gn.max does at ties). Average pooling is a depthwise conv2d with a filter of ones, scaled by
each window's count of real (unpadded) elements, as Keras counts them. Pooling windows dilate as
conv2d's (torch's `dilation`); no pooling window may cover only padding. The ops' kind "window" is
lowered by codegen/lower_conv.py.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import api as ops
from ..errors import NotDifferentiableError, ShapeError
from ..graph import Node, shape_str
from ..source import user_location
from .base import Example, Op, apply, promote, register, require_float, same_dtype

FORMATS = ("NHWC", "NCHW")


# ---- geometry -------------------------------------------------------------------------------
def image_dims(shape: tuple, data_format: str) -> tuple:
    """(H, W, C) of an image shape."""
    return (shape[1], shape[2], shape[3]) if data_format == "NHWC" else (shape[2], shape[3], shape[1])


def image_shape(n: Any, h: int, w: int, c: int, data_format: str) -> tuple:
    return (n, h, w, c) if data_format == "NHWC" else (n, c, h, w)


def out_size(size: int, k: int, stride: int, dilation: int, pad: tuple) -> int:
    """Output positions along one axis: windows of span dilation*(k-1)+1 that fit the padded size."""
    return (size + pad[0] + pad[1] - dilation * (k - 1) - 1) // stride + 1


def same_padding(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """Keras's "same": ceil(size / stride) outputs, the odd padding element after."""
    total = max((-(-size // stride) - 1) * stride + dilation * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def _filter(w) -> None:
    if w.ndim != 4 or None in w.shape:
        raise ShapeError(f"the filter must be a static 4-D (KH, KW, Cin/groups, Cout) array, got {shape_str(w.shape)}")


def _span(k: int, dilation: int) -> int:
    """The extent of a dilated window along one axis."""
    return dilation * (k - 1) + 1


def _check_geometry(attrs: dict, window: tuple, pooling: bool = False) -> None:
    if attrs["data_format"] not in FORMATS:
        raise ShapeError(f"data_format must be one of {FORMATS}, got {attrs['data_format']!r}")
    for name in ("strides", "dilations"):
        if name in attrs and any(not isinstance(v, (int, np.integer)) or v < 1 for v in attrs[name]):
            raise ShapeError(f"{name} must be positive integers, got {attrs[name]}")
    if any(p < 0 for pair in attrs["padding"] for p in pair):
        raise ShapeError(f"padding must not be negative, got {attrs['padding']}")
    dil = attrs.get("dilations", (1, 1))
    if pooling and any(p >= _span(k, d) for pair, k, d in zip(attrs["padding"], window, dil) for p in pair):
        dilated = f" (dilation {dil})" if dil != (1, 1) else ""
        raise ShapeError(f"padding {attrs['padding']} must be smaller than the window {window}{dilated}")


def _output_hw(h: Any, w: Any, window: tuple, attrs: dict, x_shape: tuple) -> tuple[int, int]:
    """The output's spatial size; ShapeError where the window does not fit the padded input."""
    if h is None or w is None:
        raise ShapeError(f"the spatial size must be static (the batch axis first, in {attrs['data_format']}), "
                         f"got {shape_str(x_shape)}")
    dil = attrs.get("dilations", (1, 1))
    ho = out_size(h, window[0], attrs["strides"][0], dil[0], attrs["padding"][0])
    wo = out_size(w, window[1], attrs["strides"][1], dil[1], attrs["padding"][1])
    if ho < 1 or wo < 1:
        raise ShapeError(f"window {window[0]}x{window[1]} (dilation {dil}) is larger than the padded input "
                         f"{h}x{w} (padding {attrs['padding']}) of {shape_str(x_shape)}")
    return ho, wo


def _check_pool_windows(size: tuple, window: tuple, attrs: dict, x_shape: tuple) -> None:
    """ShapeError where a pooling window covers only padding (a dilated window can step over the
    whole input, its span smaller than the padding on either side or not)."""
    dil = attrs.get("dilations", (1, 1))
    for axis, n, k, s, d, pad in zip(("row", "column"), size, window, attrs["strides"], dil, attrs["padding"]):
        empty = np.flatnonzero(_window_counts(n, k, s, pad, d) == 0)
        if empty.size:
            raise ShapeError(f"the window {window} (dilation {dil}) at output {axis} {empty[0]} covers only padding "
                             f"(padding {attrs['padding']}) of {shape_str(x_shape)}")


def _window_counts(size: int, k: int, stride: int, pad: tuple, dilation: int = 1) -> np.ndarray:
    """How many real (unpadded) elements each window along one axis covers."""
    starts = np.arange(out_size(size, k, stride, dilation, pad)) * stride - pad[0]
    taps = starts[:, None] + dilation * np.arange(k)[None, :]
    return ((taps >= 0) & (taps < size)).sum(axis=1)


def _image(x: Node, what: str, data_format: str) -> None:
    require_float(x, what)
    if x.ndim != 4:
        raise ShapeError(f"{what} must be a 4-D {data_format} image batch, got {shape_str(x.shape)}")


# ---- numpy references (NHWC inside) -----------------------------------------------------------
def _to_nhwc(x: np.ndarray, data_format: str) -> np.ndarray:
    return x if data_format == "NHWC" else np.transpose(x, (0, 2, 3, 1))


def _from_nhwc(y: np.ndarray, data_format: str) -> np.ndarray:
    return np.ascontiguousarray(y if data_format == "NHWC" else np.transpose(y, (0, 3, 1, 2)))


def _pad(x: np.ndarray, padding: tuple, fill: float = 0.0) -> np.ndarray:
    return np.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)), constant_values=fill)


def _windows(xp: np.ndarray, window: tuple, strides: tuple, dilations: tuple = (1, 1)) -> np.ndarray:
    """The (N, Ho, Wo, C, KH, KW) view of a padded NHWC batch's windows."""
    span = tuple(d * (k - 1) + 1 for k, d in zip(window, dilations))
    view = sliding_window_view(xp, span, axis=(1, 2))
    return view[:, ::strides[0], ::strides[1], :, ::dilations[0], ::dilations[1]]


def _scatter_windows(parts, n_hw: tuple, padded: tuple, window: tuple, strides: tuple, dilations: tuple,
                     padding: tuple, dtype) -> np.ndarray:
    """Sum each window element's contribution back at its input position (the transpose of
    `_windows`), then drop the padding. `parts(kh, kw)` is an (N, Ho, Wo, C) array."""
    n, ho, wo, c = n_hw
    out = np.zeros((n, padded[0], padded[1], c), dtype)
    for kh, kw in np.ndindex(*window):
        h0, w0 = kh * dilations[0], kw * dilations[1]
        out[:, h0:h0 + strides[0] * (ho - 1) + 1:strides[0], w0:w0 + strides[1] * (wo - 1) + 1:strides[1]] += \
            parts(kh, kw)
    (pt, pb), (pl, pr) = padding
    return out[:, pt:padded[0] - pb, pl:padded[1] - pr]


def conv2d_reference(x, w, strides, padding, dilations, groups, data_format) -> np.ndarray:
    x = _to_nhwc(x, data_format)
    kh, kw, cig, cout = w.shape
    win = _windows(_pad(x, padding), (kh, kw), strides, dilations)
    n, ho, wo = win.shape[:3]
    win = win.reshape(n, ho, wo, groups, cig, kh, kw)
    y = np.einsum("nhwgckl,klcgo->nhwgo", win, w.reshape(kh, kw, cig, groups, cout // groups), optimize=True)
    return _from_nhwc(y.reshape(n, ho, wo, cout).astype(x.dtype), data_format)


def conv2d_input_grad_reference(dy, w, input_size, strides, padding, dilations, groups, data_format) -> np.ndarray:
    """The transposed convolution as XLA defines it: dy spread out by the strides (zeros between), padded
    with zeros and convolved with the flipped filter. Every (input position, filter tap) pair is a term,
    a zero one included, so an infinite weight meeting a zero gives NaN there, as on the compiled backends
    (whose kernels read a zero wherever a stride or the padding skips dy) and in XLA."""
    dy = _to_nhwc(dy, data_format)
    kh, kw, cig, cout = w.shape
    n, ho, wo, _ = dy.shape
    dyg_shape = (n, input_size[0], input_size[1], groups, cout // groups)

    def taps(size: int, pad: int, k: int, dilation: int, stride: int, out: int):
        """dy's coordinate for each (input coordinate, tap), and whether dy has one there."""
        at = np.arange(size)[:, None] + pad - dilation * np.arange(k)[None, :]
        valid = (at % stride == 0) & (at >= 0) & (at // stride < out)
        return np.where(valid, at // stride, 0), valid

    rows, row_ok = taps(input_size[0], padding[0][0], kh, dilations[0], strides[0], ho)
    cols, col_ok = taps(input_size[1], padding[1][0], kw, dilations[1], strides[1], wo)
    dx = np.zeros((n, input_size[0], input_size[1], groups, cig), np.result_type(dy, w))
    for i, j in np.ndindex(kh, kw):
        ok = (row_ok[:, i, None] & col_ok[None, :, j])[None, :, :, None]
        g = np.where(ok, dy[:, rows[:, i, None], cols[None, :, j], :], 0).reshape(dyg_shape)
        dx += np.einsum("nhwgo,cgo->nhwgc", g, w[i, j].reshape(cig, groups, cout // groups), optimize=True)
    return _from_nhwc(dx.reshape(n, input_size[0], input_size[1], cig * groups).astype(dy.dtype), data_format)


def conv2d_filter_grad_reference(x, dy, kernel_size, strides, padding, dilations, groups, data_format) -> np.ndarray:
    x, dy = _to_nhwc(x, data_format), _to_nhwc(dy, data_format)
    win = _windows(_pad(x, padding), kernel_size, strides, dilations)
    n, ho, wo, c = win.shape[:4]
    cout = dy.shape[3]
    dw = np.einsum("nhwgckl,nhwgo->klcgo", win.reshape(n, ho, wo, groups, c // groups, *kernel_size),
                   dy.reshape(n, ho, wo, groups, cout // groups), optimize=True)
    return np.ascontiguousarray(dw.reshape(*kernel_size, c // groups, cout).astype(x.dtype))


def max_pool2d_reference(x, ksize, strides, padding, data_format, dilations=(1, 1)) -> np.ndarray:
    win = _windows(_pad(_to_nhwc(x, data_format), padding, -np.inf), ksize, strides, dilations)
    return _from_nhwc(win.max(axis=(4, 5)), data_format)


def max_pool2d_grad_reference(x, y, dy, ksize, strides, padding, data_format, dilations=(1, 1)) -> np.ndarray:
    x, y, dy = (_to_nhwc(a, data_format) for a in (x, y, dy))
    xp = _pad(x, padding, -np.inf)
    hit = _windows(xp, ksize, strides, dilations) == y[..., None, None]
    with np.errstate(all="ignore"):
        share = dy / hit.sum(axis=(4, 5))
    dx = _scatter_windows(lambda i, j: np.where(hit[..., i, j], share, 0), dy.shape, xp.shape[1:3], ksize, strides,
                          dilations, padding, x.dtype)
    return _from_nhwc(dx, data_format)


# ---- ops ------------------------------------------------------------------------------------
def _geometry(strides=(1, 1), padding=((0, 0), (0, 0)), dilations=(1, 1), groups=1, data_format="NHWC") -> dict:
    return dict(strides=tuple(strides), padding=tuple(tuple(p) for p in padding), dilations=tuple(dilations),
                groups=groups, data_format=data_format)


def _pool_geometry(ksize, strides, padding=((0, 0), (0, 0)), data_format="NHWC", dilations=(1, 1)) -> dict:
    return dict(ksize=tuple(ksize), strides=tuple(strides), padding=tuple(tuple(p) for p in padding),
                dilations=tuple(dilations), data_format=data_format)


class Window(Op):
    kind = "window"  # codegen/lower_conv.py makes the loop nest


def _channels(cin: int, w_shape: tuple, groups: int, x_shape: tuple) -> None:
    """The filter's input channels times `groups` must be the image's channels, and groups divide Cout."""
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ShapeError(f"groups must be a positive integer, got {groups!r}")
    if w_shape[2] * groups != cin or w_shape[3] % groups:
        raise ShapeError(f"channel mismatch: the image {shape_str(x_shape)} has {cin} channels, the filter "
                         f"{shape_str(w_shape)} (KH, KW, Cin/groups, Cout) with groups={groups} expects "
                         f"{w_shape[2] * groups}" + (f" and Cout divisible by {groups}" if w_shape[3] % groups else ""))


@register
class Conv2D(Window):
    """y[n, i, j, o] = sum over (kh, kw, c) of x[n, i*sh + kh*dh - top, j*sw + kw*dw - left, g*Cig + c] *
    w[kh, kw, c, o], g = o's group; zero outside the image."""

    name = "conv2d"
    examples = (Example([(None, 5, 5, 2), (3, 3, 2, 3)], _geometry(padding=((1, 1), (1, 1)))),
                Example([(None, 6, 7, 2), (2, 3, 2, 2)], _geometry((2, 1), ((0, 1), (2, 1)), (1, 2))),
                Example([(None, 4, 4, 4), (2, 2, 2, 4)], _geometry(groups=2)),
                Example([(None, 3, 5, 5), (3, 3, 1, 6)], _geometry((2, 2), ((1, 1), (1, 1)), groups=3,
                                                                   data_format="NCHW")))

    def infer(self, inputs, attrs):
        x, w = inputs
        fmt = attrs["data_format"]
        _filter(w)
        _check_geometry(attrs, w.shape[:2])
        _image(x, "input", fmt)
        dtype = same_dtype(inputs)
        h, wd, c = image_dims(x.shape, fmt)
        _channels(c, w.shape, attrs["groups"], x.shape)
        ho, wo = _output_hw(h, wd, w.shape[:2], attrs, x.shape)
        return image_shape(x.shape[0], ho, wo, w.shape[3], fmt), dtype

    def numpy(self, x, w, **attrs):
        return conv2d_reference(x, w, **attrs)

    def grad(self, node, g):
        x, w = node.inputs
        h, wd, _ = image_dims(x.shape, node.attrs["data_format"])
        return [apply("conv2d_input_grad", [g, w], input_size=(h, wd), **node.attrs),
                apply("conv2d_filter_grad", [x, g], kernel_size=w.shape[:2], **node.attrs)]


@register
class Conv2DInputGrad(Window):
    """d conv2d / d x applied to the output gradient dy: every window element gets dy times its weight."""

    name = "conv2d_input_grad"
    examples = (Example([(None, 5, 5, 3), (3, 3, 2, 3)], dict(input_size=(5, 5), **_geometry(
                    padding=((1, 1), (1, 1))))),
                Example([(None, 3, 6, 2), (2, 3, 2, 2)], dict(input_size=(6, 7), **_geometry((2, 1), ((0, 1), (2, 1)),
                                                                                             (1, 2)))),
                Example([(None, 6, 2, 2), (3, 3, 1, 6)], dict(input_size=(4, 3), **_geometry(
                    (2, 2), ((1, 1), (1, 1)), groups=3, data_format="NCHW"))))

    def infer(self, inputs, attrs):
        dy, w = inputs
        fmt = attrs["data_format"]
        _filter(w)
        _check_geometry(attrs, w.shape[:2])
        _image(dy, "output gradient", fmt)
        dtype = same_dtype(inputs)
        h, wd = attrs["input_size"]
        x_shape = image_shape(dy.shape[0], h, wd, w.shape[2] * attrs["groups"], fmt)
        _channels(w.shape[2] * attrs["groups"], w.shape, attrs["groups"], x_shape)
        want = image_shape(dy.shape[0], *_output_hw(h, wd, w.shape[:2], attrs, x_shape), w.shape[3], fmt)
        if dy.shape != want:
            raise ShapeError(f"the output gradient {shape_str(dy.shape)} is not conv2d's output {shape_str(want)}")
        return x_shape, dtype

    def numpy(self, dy, w, input_size, **attrs):
        return conv2d_input_grad_reference(dy, w, input_size, **attrs)

    def grad(self, node, g):
        dy, w = node.inputs
        geometry = {k: v for k, v in node.attrs.items() if k != "input_size"}
        return [apply("conv2d", [g, w], **geometry),
                apply("conv2d_filter_grad", [g, dy], kernel_size=w.shape[:2], **geometry)]


@register
class Conv2DFilterGrad(Window):
    """d conv2d / d w applied to the output gradient dy: each weight's windows of x times dy, summed
    over the batch and the output positions."""

    name = "conv2d_filter_grad"
    examples = (Example([(None, 5, 5, 2), (None, 5, 5, 3)], dict(kernel_size=(3, 3), **_geometry(
                    padding=((1, 1), (1, 1))))),
                Example([(None, 6, 7, 2), (None, 3, 6, 2)], dict(kernel_size=(2, 3), **_geometry(
                    (2, 1), ((0, 1), (2, 1)), (1, 2)))),
                Example([(None, 4, 4, 4), (None, 3, 3, 4)], dict(kernel_size=(2, 2), **_geometry(groups=2))))

    def infer(self, inputs, attrs):
        x, dy = inputs
        fmt = attrs["data_format"]
        _check_geometry(attrs, attrs["kernel_size"])
        _image(x, "input", fmt)
        _image(dy, "output gradient", fmt)
        dtype = same_dtype(inputs)
        h, wd, c = image_dims(x.shape, fmt)
        cout = image_dims(dy.shape, fmt)[2]
        groups = attrs["groups"]
        w_shape = (*attrs["kernel_size"], c // groups if groups and c % groups == 0 else c, cout)
        _channels(c, w_shape, groups, x.shape)
        want = image_shape(x.shape[0], *_output_hw(h, wd, w_shape[:2], attrs, x.shape), cout, fmt)
        if dy.shape != want:
            raise ShapeError(f"the output gradient {shape_str(dy.shape)} is not conv2d's output {shape_str(want)}")
        return w_shape, dtype

    def numpy(self, x, dy, kernel_size, **attrs):
        return conv2d_filter_grad_reference(x, dy, kernel_size, **attrs)

    def grad(self, node, g):
        x, dy = node.inputs
        geometry = {k: v for k, v in node.attrs.items() if k != "kernel_size"}
        h, wd, _ = image_dims(x.shape, node.attrs["data_format"])
        return [apply("conv2d_input_grad", [dy, g], input_size=(h, wd), **geometry),
                apply("conv2d", [x, g], **geometry)]


@register
class MaxPool2D(Window):
    """The maximum of each window; padding never wins (it counts as -inf)."""

    name = "max_pool2d"
    examples = (Example([(None, 4, 4, 2)], _pool_geometry((2, 2), (2, 2)), smooth=False),
                Example([(None, 2, 5, 5)], _pool_geometry((3, 3), (2, 2), ((1, 1), (1, 1)), "NCHW"), smooth=False),
                Example([(None, 2, 7, 7)], _pool_geometry((2, 2), (2, 1), ((1, 0), (1, 1)), "NCHW", (2, 3)),
                        smooth=False))

    def infer(self, inputs, attrs):
        (x,) = inputs
        fmt = attrs["data_format"]
        _check_geometry(attrs, attrs["ksize"], pooling=True)
        _image(x, "input", fmt)
        h, wd, c = image_dims(x.shape, fmt)
        hw = _output_hw(h, wd, attrs["ksize"], attrs, x.shape)
        _check_pool_windows((h, wd), attrs["ksize"], attrs, x.shape)
        return image_shape(x.shape[0], *hw, c, fmt), x.dtype

    def numpy(self, x, **attrs):
        return max_pool2d_reference(x, **attrs)

    def grad(self, node, g):
        return [apply("max_pool2d_grad", [node.inputs[0], node, g], **node.attrs)]


@register
class MaxPool2DGrad(Window):
    """max_pool2d's gradient: each window's dy, shared evenly by the window's elements equal to its
    maximum y. Piecewise constant in x and y; its gradient in dy is not implemented."""

    name = "max_pool2d_grad"
    differentiable = False
    examples = (Example([(None, 4, 4, 2), (None, 2, 2, 2), (None, 2, 2, 2)], _pool_geometry((2, 2), (2, 2))),
                Example([(None, 2, 5, 5), (None, 2, 3, 3), (None, 2, 3, 3)],
                        _pool_geometry((3, 3), (2, 2), ((1, 1), (1, 1)), "NCHW")),
                Example([(None, 7, 7, 2), (None, 3, 6, 2), (None, 3, 6, 2)],
                        _pool_geometry((2, 2), (2, 1), ((1, 0), (1, 1)), "NHWC", (2, 3))))

    def infer(self, inputs, attrs):
        x, y, dy = inputs
        pooled, _ = MaxPool2D.infer(self, [x], attrs)
        if y.shape != pooled or dy.shape != pooled:
            raise ShapeError(f"the pooled value {shape_str(y.shape)} and its gradient {shape_str(dy.shape)} must "
                             f"have max_pool2d's output shape {shape_str(pooled)}")
        return x.shape, same_dtype(inputs)

    def numpy(self, x, y, dy, **attrs):
        return max_pool2d_grad_reference(x, y, dy, **attrs)

    def grad(self, node, g):
        raise NotDifferentiableError(f"max_pool2d: second derivatives through max pooling are not implemented "
                                  f"(at {node.source})")


@register
class InTraining(Op):
    """`a` in functions compiled for training, `b` in the others (batch normalization's batch and
    running statistics); the strip_dropout pass picks `b` outside training."""

    name = "in_training"
    kind = "elementwise"
    examples = (Example([(None, 3), (None, 3)]),)

    def infer(self, inputs, attrs):
        a, b = inputs
        if a.shape != b.shape:
            raise ShapeError(f"both values must have one shape, got {shape_str(a.shape)} and {shape_str(b.shape)}")
        return a.shape, same_dtype(inputs)

    def numpy(self, a, b):
        return a

    def grad(self, node, g):
        zero = ops.zeros_like(g)  # each input gets the gradient only in the functions that use its value
        return [apply("in_training", [g, zero]), apply("in_training", [zero, g])]

    def scalar(self, s, a, b):
        return a


# ---- public functions -------------------------------------------------------------------------
def _pair(value: Any, name: str, op: str) -> tuple[int, int]:
    pair = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in pair):
        raise ShapeError(f"{op}: {name} must be a positive integer or a pair of them, got {value!r} "
                         f"(at {user_location()})")
    return int(pair[0]), int(pair[1])


def _padding(padding: Any, x: Node, window: tuple, strides: tuple, dilations: tuple, data_format: str,
             op: str) -> tuple:
    """Explicit ((top, bottom), (left, right)) padding from "valid", "same", an int, a pair or pairs."""
    if isinstance(padding, str):
        if padding.lower() == "valid":
            return (0, 0), (0, 0)
        if padding.lower() == "same":
            h, w, _ = image_dims(x.shape, data_format) if x.ndim == 4 else (None, None, None)
            if h is None or w is None:
                raise ShapeError(f"{op}: padding='same' needs a 4-D {data_format} input with a static size, got "
                                 f"{shape_str(x.shape)} (at {user_location()})")
            return (same_padding(h, window[0], strides[0], dilations[0]),
                    same_padding(w, window[1], strides[1], dilations[1]))
        raise ShapeError(f"{op}: padding must be 'valid', 'same' or numbers, got {padding!r} (at {user_location()})")
    pairs = padding if isinstance(padding, (list, tuple)) else (padding, padding)
    pairs = tuple(tuple(p) if isinstance(p, (list, tuple)) else (p, p) for p in pairs)
    if len(pairs) != 2 or any(len(p) != 2 or any(not isinstance(v, (int, np.integer)) or v < 0 for v in p)
                              for p in pairs):
        raise ShapeError(f"{op}: padding must be 'valid', 'same', an int, (ph, pw) or ((top, bottom), (left, right)) "
                         f"of non-negative integers, got {padding!r} (at {user_location()})")
    return tuple((int(a), int(b)) for a, b in pairs)


def _format(data_format: str, op: str) -> str:
    fmt = {"channels_last": "NHWC", "channels_first": "NCHW"}.get(data_format, data_format)
    if fmt not in FORMATS:
        raise ShapeError(f"{op}: data_format must be NHWC / channels_last or NCHW / channels_first, got "
                         f"{data_format!r} (at {user_location()})")
    return fmt


def conv2d(x: Any, filters: Any, strides: Any = 1, padding: Any = "valid", dilation_rate: Any = 1,
           groups: int = 1, data_format: str = "NHWC") -> Node:
    """2-D convolution (cross-correlation, as Keras and torch) of an image batch with a (KH, KW,
    Cin/groups, Cout) filter; `padding` "valid", "same" (Keras's), or explicit element counts."""
    x, filters = promote([x, filters])
    fmt = _format(data_format, "conv2d")
    st, dil = _pair(strides, "strides", "conv2d"), _pair(dilation_rate, "dilation_rate", "conv2d")
    pad = _padding(padding, x, filters.shape[:2], st, dil, fmt, "conv2d")
    return apply("conv2d", [x, filters], **_geometry(st, pad, dil, int(groups), fmt))


def conv2d_transpose(x: Any, filters: Any, strides: Any = 1, padding: Any = "valid", output_padding: Any = None,
                     dilation_rate: Any = 1, groups: int = 1, data_format: str = "NHWC") -> Node:
    """The transposed convolution (Keras's Conv2DTranspose, torch's conv_transpose2d, ONNX's
    ConvTranspose): conv2d's gradient with respect to its input, applied to x. `filters` is Keras's
    (KH, KW, Cout / groups, Cin). Output size per axis, with the dilated window span k', as Keras:
    "valid" (H - 1) * s + max(k', s), "same" H * s, and with output_padding (H - 1) * s + k' + output_padding,
    less 2 * (k' // 2) for "same" ("same" places the output as the conv's "same" padding of that size
    does, as TensorFlow). Explicit padding is the conv's ((top, bottom), (left, right)), torch's
    `padding` and ONNX's `pads`, taken off the full output: (H - 1) * s + k' - top - bottom +
    output_padding. output_padding (an int or a pair) is less than the stride or the dilation."""
    x, filters = promote([x, filters])
    fmt = _format(data_format, "conv2d_transpose")
    where = f"(at {user_location()})"
    st = _pair(strides, "strides", "conv2d_transpose")
    dil = _pair(dilation_rate, "dilation_rate", "conv2d_transpose")
    if x.ndim != 4 or filters.ndim != 4 or None in filters.shape:
        raise ShapeError(f"conv2d_transpose: expects a 4-D {fmt} image batch and a static (KH, KW, Cout/groups, Cin) "
                         f"filter, got {shape_str(x.shape)} and {shape_str(filters.shape)} {where}")
    h, w, c = image_dims(x.shape, fmt)
    if None in (h, w):
        raise ShapeError(f"conv2d_transpose: the spatial size must be static, got {shape_str(x.shape)} {where}")
    if filters.shape[3] != c:
        raise ShapeError(f"conv2d_transpose: the filter {shape_str(filters.shape)} (KH, KW, Cout/groups, Cin) must "
                         f"end in the input's {c} channels {where}")
    spans = [_span(k, d) for k, d in zip(filters.shape[:2], dil)]
    extra = (0, 0) if output_padding is None else tuple(
        int(v) for v in (output_padding if isinstance(output_padding, (list, tuple)) else (output_padding,) * 2))
    if len(extra) != 2 or any(v < 0 or v >= max(s, d) for v, s, d in zip(extra, st, dil)):
        raise ShapeError(f"conv2d_transpose: output_padding must be non-negative and less than the stride or the "
                         f"dilation, got {output_padding!r} with strides {st} {where}")
    name = padding.lower() if isinstance(padding, str) else None
    if name in ("valid", "same"):  # Keras's output sizes; "same" places them as the conv's "same" padding would
        if output_padding is None:
            sizes = [n * s + max(k - s, 0) if name == "valid" else n * s for n, k, s in zip((h, w), spans, st)]
        else:
            sizes = [(n - 1) * s + k - (2 * (k // 2) if name == "same" else 0) + e
                     for n, k, s, e in zip((h, w), spans, st, extra)]
        pads = tuple((0, 0) if name == "valid" else same_padding(size, k, s, d)
                     for size, k, s, d in zip(sizes, filters.shape[:2], st, dil))
    else:
        pads = _padding(padding, x, filters.shape[:2], st, dil, fmt, "conv2d_transpose")
        sizes = [(n - 1) * s + k - p[0] - p[1] + e for n, k, s, p, e in zip((h, w), spans, st, pads, extra)]
    if min(sizes) < 1:
        raise ShapeError(f"conv2d_transpose: padding {padding!r} leaves an output of {sizes[0]}x{sizes[1]} from "
                         f"{shape_str(x.shape)} {where}")
    back = [out_size(size, k, s, d, p) for size, k, s, d, p in zip(sizes, filters.shape[:2], st, dil, pads)]
    if back != [h, w]:  # (Keras's "same" with an output_padding, a kernel narrower than the stride)
        raise ShapeError(f"conv2d_transpose: padding {padding!r} and output_padding {output_padding!r} give an output "
                         f"of {sizes[0]}x{sizes[1]}, which the strided conv maps to {back[0]}x{back[1]}, not the "
                         f"input's {h}x{w} {where}")
    return apply("conv2d_input_grad", [x, filters], input_size=tuple(sizes), **_geometry(st, pads, dil, int(groups), fmt))


def depthwise_conv2d(x: Any, filters: Any, strides: Any = 1, padding: Any = "valid", dilation_rate: Any = 1,
                     data_format: str = "NHWC") -> Node:
    """Each input channel convolved with its own (KH, KW) filters: `filters` is (KH, KW, C, multiplier)
    (Keras's depthwise kernel); output channel c * multiplier + m."""
    x, filters = promote([x, filters])
    if filters.ndim != 4:
        raise ShapeError(f"depthwise_conv2d: the filter must be (KH, KW, C, multiplier), got "
                         f"{shape_str(filters.shape)} (at {user_location()})")
    kh, kw, c, m = filters.shape
    return conv2d(x, ops.reshape(filters, (kh, kw, 1, c * m)), strides, padding, dilation_rate, c, data_format)


def _pool_args(x: Any, pool_size: Any, strides: Any, padding: Any, data_format: str, dilation_rate: Any, op: str):
    (x,) = promote([x])
    fmt = _format(data_format, op)
    window = _pair(pool_size, "pool_size", op)
    st = window if strides is None else _pair(strides, "strides", op)
    dil = _pair(dilation_rate, "dilation_rate", op)
    return x, fmt, window, st, dil, _padding(padding, x, window, st, dil, fmt, op)


def max_pool2d(x: Any, pool_size: Any = 2, strides: Any = None, padding: Any = "valid",
               data_format: str = "NHWC", dilation_rate: Any = 1) -> Node:
    """The maximum of each window (strides default to the window, as Keras); `dilation_rate` spaces
    the window's elements as conv2d's (torch's MaxPool2d `dilation`)."""
    x, fmt, window, st, dil, pad = _pool_args(x, pool_size, strides, padding, data_format, dilation_rate,
                                              "max_pool2d")
    return apply("max_pool2d", [x], **_pool_geometry(window, st, pad, fmt, dil))


def avg_pool2d(x: Any, pool_size: Any = 2, strides: Any = None, padding: Any = "valid",
               data_format: str = "NHWC", dilation_rate: Any = 1) -> Node:
    """The mean of each window's real elements (padding is not counted, as Keras); `dilation_rate`
    spaces the window's elements as conv2d's."""
    x, fmt, window, st, dil, pad = _pool_args(x, pool_size, strides, padding, data_format, dilation_rate,
                                              "avg_pool2d")
    if x.ndim != 4:
        raise ShapeError(f"avg_pool2d: input must be a 4-D {fmt} image batch, got {shape_str(x.shape)} "
                         f"(at {user_location()})")
    h, w, c = image_dims(x.shape, fmt)
    ones = ops.constant(np.ones((*window, 1, c), x.dtype), graph=x.graph)
    attrs = _pool_geometry(window, st, pad, fmt, dil)
    try:
        _output_hw(h, w, window, attrs, x.shape)
        _check_pool_windows((h, w), window, attrs, x.shape)
    except ShapeError as e:
        raise ShapeError(f"avg_pool2d: {e} (at {user_location()})") from None
    total = apply("conv2d", [x, ones], **_geometry(st, pad, dil, c, fmt))
    counts = [_window_counts(size, k, s, p, d) for size, k, s, p, d in zip((h, w), window, st, pad, dil)]
    inverse = 1.0 / np.outer(*counts)
    shape = inverse.shape + (1,) if fmt == "NHWC" else (1,) + inverse.shape
    return total * ops.constant(inverse.reshape(shape).astype(x.dtype), graph=x.graph)


def global_avg_pool(x: Any, data_format: str = "NHWC", keepdims: bool = False) -> Node:
    """The mean over the spatial axes: (N, C), or with `keepdims` the image layout with 1x1 size."""
    (x,) = promote([x])
    fmt = _format(data_format, "global_avg_pool")
    if x.ndim != 4:
        raise ShapeError(f"global_avg_pool: input must be a 4-D {fmt} image batch, got {shape_str(x.shape)} "
                         f"(at {user_location()})")
    return ops.mean(x, (1, 2) if fmt == "NHWC" else (2, 3), keepdims=keepdims)


def upsample2d(x: Any, size: Any = 2, data_format: str = "NHWC") -> Node:
    """Nearest-neighbour upsampling: each pixel repeated `size` = (rows, cols) times along height and
    width (Keras's UpSampling2D, torch's `interpolate(mode="nearest")` at an integer scale). A reshape of a
    broadcast, so its gradient is the sum over each pixel's copies."""
    (x,) = promote([x])
    fmt = _format(data_format, "upsample2d")
    sh, sw = _pair(size, "size", "upsample2d")
    if x.ndim != 4:
        raise ShapeError(f"upsample2d: input must be a 4-D {fmt} image batch, got {shape_str(x.shape)} "
                         f"(at {user_location()})")
    h, w, c = image_dims(x.shape, fmt)
    n = x.shape[0]
    if fmt == "NHWC":
        spread, repeated = (n, h, 1, w, 1, c), (n, h, sh, w, sw, c)
    else:
        spread, repeated = (n, c, h, 1, w, 1), (n, c, h, sh, w, sw)
    y = ops.broadcast_to(ops.reshape(x, spread), repeated)
    return ops.reshape(y, image_shape(n, h * sh, w * sw, c, fmt))


def moments(x: Any, axes: Sequence[int], keepdims: bool = False) -> tuple[Node, Node]:
    """The mean and the biased variance (mean of squared deviations) over `axes`."""
    (x,) = promote([x])
    mean = ops.mean(x, axes, keepdims=True)
    centered = x - mean
    variance = ops.mean(centered * centered, axes, keepdims=keepdims)
    return (mean if keepdims else ops.mean(x, axes)), variance


def layer_norm(x: Any, scale: Any = None, offset: Any = None, axis: Any = -1, epsilon: float = 1e-3) -> Node:
    """Layer normalization, as Keras's LayerNormalization and torch's F.layer_norm: each sample
    normalized over `axis` (an int or a sequence of them; not the batch), (x - mean) / sqrt(variance +
    epsilon) with the biased variance, then times `scale` and plus `offset` (shaped as those axes;
    None: 1 and 0). Composed of reductions and elementwise ops: differentiable to any order."""
    (x,) = promote([x])
    given = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    axes = sorted({int(a) % x.ndim for a in given}) if all(-x.ndim <= int(a) < x.ndim for a in given) else []
    if not axes or 0 in axes and x.shape[0] is None or not epsilon > 0:
        raise ShapeError(f"layer_norm: axis {axis!r} must name axes of {shape_str(x.shape)} other than the batch, "
                         f"and epsilon be positive (got {epsilon}) (at {user_location()})")
    mean, variance = moments(x, axes, keepdims=True)
    y = (x - mean) / ops.sqrt(variance + epsilon)
    shape = tuple(d if i in axes else 1 for i, d in enumerate(x.shape))
    if scale is not None:
        y = y * ops.reshape(promote([x, scale])[1], shape)
    if offset is not None:
        y = y + ops.reshape(promote([x, offset])[1], shape)
    return y


def batch_norm(x: Any, scale: Any, offset: Any, moving_mean: Node, moving_variance: Node, momentum: float = 0.99,
               epsilon: float = 1e-3, axis: int = -1) -> tuple[Node, list]:
    """Batch normalization along `axis` (the channels), as Keras's BatchNormalization: in training,
    (x - batch mean) / sqrt(batch variance + epsilon) * scale + offset, with the updates
    moving <- momentum * moving + (1 - momentum) * batch statistic (the variance biased, as Keras 3);
    outside training the moving statistics normalize. `moving_mean` and `moving_variance` are
    variables of shape (C,). Returns (output, updates): give the updates to gn.compile."""
    (x,) = promote([x])
    if not 0 <= momentum <= 1 or not epsilon > 0:
        raise ValueError(f"batch_norm: momentum must be in [0, 1] and epsilon positive, got {momentum}, {epsilon} "
                         f"(at {user_location()})")
    axis = axis % x.ndim
    shape = tuple(d if i == axis else 1 for i, d in enumerate(x.shape))
    reduced = tuple(i for i in range(x.ndim) if i != axis)
    scale, offset, mm, mv = (ops.reshape(v, shape) for v in promote([x, scale, offset, moving_mean,
                                                                      moving_variance])[1:])
    mean, variance = moments(x, reduced, keepdims=True)

    def normalize(m: Node, v: Node) -> Node:
        return (x - m) * (ops.rsqrt(v + epsilon) * scale) + offset
    y = apply("in_training", [normalize(mean, variance), normalize(mm, mv)])
    updates = [(var, var * momentum + ops.reshape(ops.stop_gradient(stat), var.shape) * (1 - momentum))
               for var, stat in ((moving_mean, mean), (moving_variance, variance))]
    return y, updates


PUBLIC = ["conv2d", "conv2d_transpose", "depthwise_conv2d", "max_pool2d", "avg_pool2d", "global_avg_pool", "upsample2d", "moments",
          "batch_norm", "layer_norm"]
