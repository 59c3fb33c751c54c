"""Keras-style layers for images: Conv2D, Conv2DTranspose, DepthwiseConv2D, SeparableConv2D, Cropping2D,
MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, UpSampling2D, ZeroPadding2D and
BatchNormalization, registered in graphnet.layers on import.

Shapes, defaults and weight layouts are Keras's: images (batch, height, width, channels) unless
`data_format="channels_first"`, kernels (KH, KW, Cin, Cout), a depthwise kernel (KH, KW, C,
multiplier). BatchNormalization's moving statistics are non-trainable weights that the model's
training step updates (`pop_state_updates`); evaluate and predict normalize with them.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from . import init, ops
from .graph import Graph, Node, shape_str
from .layers import Layer, activation_name, register, resolve_activation
from .ops.conv import image_dims, image_shape, out_size, same_padding

_FORMATS = {"channels_last": "NHWC", "channels_first": "NCHW", None: "NHWC"}


def _pair(value: Any, what: str, layer: str) -> tuple[int, int]:
    pair = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in pair):
        raise ValueError(f"{layer}: {what} must be a positive integer or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _format(data_format: str | None, layer: str) -> str:
    if data_format not in _FORMATS:
        raise ValueError(f"{layer}: data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
    return _FORMATS[data_format]


def _padding_name(padding: str, layer: str) -> str:
    if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
        raise ValueError(f"{layer}: padding must be 'valid' or 'same', got {padding!r}")
    return padding.lower()


def _image_input(shape: tuple, layer: str, fmt: str) -> tuple[int, int, int]:
    """(H, W, C) of a layer's (batch, ...) input shape; ValueError for anything but an image batch."""
    if len(shape) != 4:
        axes = "height, width, channels" if fmt == "NHWC" else "channels, height, width"
        raise ValueError(f"{layer} expects 4-D image batches (batch, {axes}), got {shape_str(shape)}")
    return image_dims(shape, fmt)


def _windowed_shape(layer: str, shape: tuple, fmt: str, window: tuple, strides: tuple, padding: str,
                    dilation: tuple, channels: int | None) -> tuple:
    """The output shape of a window of `window` sliding over a (batch, image) input."""
    h, w, c = _image_input(shape, layer, fmt)
    sizes = []
    for size, k, s, d in zip((h, w), window, strides, dilation):
        pad = same_padding(size, k, s, d) if padding == "same" else (0, 0)
        n = out_size(size, k, s, d, pad)
        if n < 1:
            raise ValueError(f"{layer}: the window {window[0]}x{window[1]} is larger than the input "
                             f"{shape_str(shape)}")
        sizes.append(n)
    return image_shape(None, sizes[0], sizes[1], c if channels is None else channels, fmt)


def _check_initializer(layer: str, **names: str) -> None:
    for what, value in names.items():
        if value not in init.BY_NAME:
            raise ValueError(f"{layer}: unknown {what} '{value}' (choose from {', '.join(init.BY_NAME)})")


class Conv2D(Layer):
    """activation(conv2d(x, kernel) + bias), a (KH, KW, Cin / groups, filters) kernel."""

    def __init__(self, filters: int, kernel_size: Any, strides: Any = (1, 1), padding: str = "valid",
                 data_format: str | None = None, dilation_rate: Any = (1, 1), groups: int = 1,
                 activation: str | Callable | None = None, use_bias: bool = True,
                 kernel_initializer: str = "glorot_uniform", bias_initializer: str = "zeros",
                 name: str | None = None, input_shape: Sequence[int] | None = None, trainable: bool = True):
        super().__init__(name, input_shape, trainable=trainable)
        kind = type(self).__name__
        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters <= 0:
            raise ValueError(f"{kind}: filters must be a positive integer, got {filters!r}")
        _check_initializer(kind, kernel_initializer=kernel_initializer, bias_initializer=bias_initializer)
        self.filters, self.groups, self.use_bias = int(filters), int(groups), bool(use_bias)
        self.kernel_size = _pair(kernel_size, "kernel_size", kind)
        self.strides = _pair(strides, "strides", kind)
        self.dilation_rate = _pair(dilation_rate, "dilation_rate", kind)
        self.padding = _padding_name(padding, kind)
        self.data_format = data_format or "channels_last"
        self.fmt = _format(data_format, kind)
        self.activation, self.act = activation, resolve_activation(activation)
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        (shape,) = self._single(input_shapes)
        self.weight_shapes(input_shapes)
        return _windowed_shape(type(self).__name__, shape, self.fmt, self.kernel_size, self.strides, self.padding,
                               self.dilation_rate, self._out_channels(shape))

    def _out_channels(self, shape: tuple) -> int:
        return self.filters

    def weight_shapes(self, input_shapes: list[tuple]) -> dict[str, tuple]:
        (shape,) = self._single(input_shapes)
        c = _image_input(shape, type(self).__name__, self.fmt)[2]
        if c % self.groups or self.filters % self.groups:
            raise ValueError(f"{type(self).__name__}: groups={self.groups} must divide the input's {c} channels "
                             f"and the {self.filters} filters")
        kernel = (*self.kernel_size, c // self.groups, self.filters)
        return {"kernel": kernel, **({"bias": (self.filters,)} if self.use_bias else {})}

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        (x,) = inputs
        shapes = self.weight_shapes([x.shape])
        kernel = self._weight(graph, "kernel", lambda: init.BY_NAME[self.kernel_initializer](shapes["kernel"]))
        z = self._convolve(x, kernel)
        if self.use_bias:
            bias = self._weight(graph, "bias", lambda: init.BY_NAME[self.bias_initializer](shapes["bias"]))
            z = z + (bias if self.fmt == "NHWC" else ops.reshape(bias, (-1, 1, 1)))
        return self.act(z)

    def _convolve(self, x: Node, kernel: Node) -> Node:
        return ops.conv2d(x, kernel, self.strides, self.padding, self.dilation_rate, self.groups, self.fmt)

    def get_config(self) -> dict:
        return {"name": self.name, "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding, "data_format": self.data_format,
                "dilation_rate": list(self.dilation_rate), "groups": self.groups,
                "activation": activation_name(self.activation), "use_bias": self.use_bias,
                "kernel_initializer": self.kernel_initializer, "bias_initializer": self.bias_initializer}


class Conv2DTranspose(Conv2D):
    """activation(conv2d_transpose(x, kernel) + bias), a (KH, KW, filters, Cin) kernel (Keras's
    layout); output sizes as Keras's (gn.conv2d_transpose), `output_padding` None or per axis."""

    def __init__(self, filters: int, kernel_size: Any, strides: Any = (1, 1), padding: str = "valid",
                 output_padding: Any = None, data_format: str | None = None, dilation_rate: Any = (1, 1),
                 activation: str | Callable | None = None, use_bias: bool = True,
                 kernel_initializer: str = "glorot_uniform", bias_initializer: str = "zeros",
                 name: str | None = None, input_shape: Sequence[int] | None = None, trainable: bool = True):
        super().__init__(filters, kernel_size, strides, padding, data_format, dilation_rate, 1, activation, use_bias,
                         kernel_initializer, bias_initializer, name, input_shape, trainable)
        self.output_padding = None if output_padding is None else _pair_from_zero(output_padding, "Conv2DTranspose")

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        (shape,) = self._single(input_shapes)
        self.weight_shapes(input_shapes)
        h, w, _ = _image_input(shape, "Conv2DTranspose", self.fmt)
        with Graph():  # the op's own size rule, on a placeholder of the input's shape
            x = ops.placeholder("x", (None, h, w, 1) if self.fmt == "NHWC" else (None, 1, h, w))
            y = self._convolve(x, ops.constant(np.zeros((*self.kernel_size, self.filters, 1), np.float32)))
        return (None,) + y.shape[1:]

    def weight_shapes(self, input_shapes: list[tuple]) -> dict[str, tuple]:
        (shape,) = self._single(input_shapes)
        c = _image_input(shape, "Conv2DTranspose", self.fmt)[2]
        return {"kernel": (*self.kernel_size, self.filters, c), **({"bias": (self.filters,)} if self.use_bias else {})}

    def _convolve(self, x: Node, kernel: Node) -> Node:
        return ops.conv2d_transpose(x, kernel, self.strides, self.padding, self.output_padding, self.dilation_rate,
                                    1, self.fmt)

    def get_config(self) -> dict:
        config = super().get_config()
        del config["groups"]
        return {**config, "output_padding": None if self.output_padding is None else list(self.output_padding)}


def _pair_from_zero(value: Any, layer: str) -> tuple[int, int]:
    pair = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in pair):
        raise ValueError(f"{layer}: output_padding must be a non-negative integer or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


class DepthwiseConv2D(Conv2D):
    """Each input channel convolved with `depth_multiplier` filters of its own: a (KH, KW, C,
    depth_multiplier) depthwise kernel; output channel c * depth_multiplier + m."""

    def __init__(self, kernel_size: Any, strides: Any = (1, 1), padding: str = "valid", depth_multiplier: int = 1,
                 data_format: str | None = None, dilation_rate: Any = (1, 1),
                 activation: str | Callable | None = None, use_bias: bool = True,
                 depthwise_initializer: str = "glorot_uniform", bias_initializer: str = "zeros",
                 name: str | None = None, input_shape: Sequence[int] | None = None, trainable: bool = True):
        super().__init__(depth_multiplier, kernel_size, strides, padding, data_format, dilation_rate, 1, activation,
                         use_bias, depthwise_initializer, bias_initializer, name, input_shape, trainable)
        self.depth_multiplier = self.filters

    def _out_channels(self, shape: tuple) -> int:
        return image_dims(shape, self.fmt)[2] * self.depth_multiplier

    def weight_shapes(self, input_shapes: list[tuple]) -> dict[str, tuple]:
        (shape,) = self._single(input_shapes)
        c = _image_input(shape, "DepthwiseConv2D", self.fmt)[2]
        out = c * self.depth_multiplier
        return {"kernel": (*self.kernel_size, c, self.depth_multiplier), **({"bias": (out,)} if self.use_bias else {})}

    def _convolve(self, x: Node, kernel: Node) -> Node:
        return ops.depthwise_conv2d(x, kernel, self.strides, self.padding, self.dilation_rate, self.fmt)

    def get_config(self) -> dict:
        config = {k: v for k, v in super().get_config().items() if k not in ("filters", "groups", "kernel_initializer")}
        return {**config, "depth_multiplier": self.depth_multiplier, "depthwise_initializer": self.kernel_initializer}


class _Pooling2D(Layer):
    def __init__(self, pool_size: Any = (2, 2), strides: Any = None, padding: str = "valid",
                 data_format: str | None = None, name: str | None = None, input_shape: Sequence[int] | None = None):
        super().__init__(name, input_shape)
        kind = type(self).__name__
        self.pool_size = _pair(pool_size, "pool_size", kind)
        self.strides = self.pool_size if strides is None else _pair(strides, "strides", kind)
        self.padding = _padding_name(padding, kind)
        self.data_format = data_format or "channels_last"
        self.fmt = _format(data_format, kind)

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        (shape,) = self._single(input_shapes)
        return _windowed_shape(type(self).__name__, shape, self.fmt, self.pool_size, self.strides, self.padding,
                               (1, 1), None)

    def get_config(self) -> dict:
        return {"name": self.name, "pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding, "data_format": self.data_format}


class MaxPooling2D(_Pooling2D):
    """The maximum of each window (strides default to the window)."""

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        return ops.max_pool2d(inputs[0], self.pool_size, self.strides, self.padding, self.fmt)


class AveragePooling2D(_Pooling2D):
    """The mean of each window's real elements (padding is not counted)."""

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        return ops.avg_pool2d(inputs[0], self.pool_size, self.strides, self.padding, self.fmt)


class GlobalAveragePooling2D(Layer):
    """The mean over height and width: (batch, channels), or with `keepdims` a 1x1 image."""

    def __init__(self, data_format: str | None = None, keepdims: bool = False, name: str | None = None,
                 input_shape: Sequence[int] | None = None):
        super().__init__(name, input_shape)
        self.data_format, self.keepdims = data_format or "channels_last", bool(keepdims)
        self.fmt = _format(data_format, "GlobalAveragePooling2D")

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        (shape,) = self._single(input_shapes)
        c = _image_input(shape, "GlobalAveragePooling2D", self.fmt)[2]
        return image_shape(None, 1, 1, c, self.fmt) if self.keepdims else (None, c)

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        return ops.global_avg_pool(inputs[0], self.fmt, self.keepdims)

    def get_config(self) -> dict:
        return {"name": self.name, "data_format": self.data_format, "keepdims": self.keepdims}


class UpSampling2D(Layer):
    """Each image `size` = (rows, cols) times as tall and wide: "nearest" repeats each pixel (Keras's
    default), "bilinear" interpolates as tf.image.resize does (half-pixel centres: gn.resize)."""

    def __init__(self, size: Any = (2, 2), data_format: str | None = None, interpolation: str = "nearest",
                 name: str | None = None, input_shape: Sequence[int] | None = None):
        super().__init__(name, input_shape)
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"UpSampling2D: interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
        self.interpolation = interpolation
        self.size = _pair(size, "size", "UpSampling2D")
        self.data_format = data_format or "channels_last"
        self.fmt = _format(data_format, "UpSampling2D")

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        (shape,) = self._single(input_shapes)
        h, w, c = _image_input(shape, "UpSampling2D", self.fmt)
        return image_shape(None, h * self.size[0], w * self.size[1], c, self.fmt)

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        if self.interpolation == "nearest":
            return ops.upsample2d(inputs[0], self.size, self.fmt)
        h, w, _ = image_dims(inputs[0].shape, self.fmt)
        return ops.resize(inputs[0], (h * self.size[0], w * self.size[1]), "bilinear", self.fmt)

    def get_config(self) -> dict:
        return {"name": self.name, "size": list(self.size), "data_format": self.data_format,
                "interpolation": self.interpolation}


def _edges(value: Any, what: str, layer: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """An int, (rows, cols) or ((top, bottom), (left, right)) of non-negative integers."""
    pairs = value if isinstance(value, (list, tuple)) else (value, value)
    pairs = tuple(tuple(p) if isinstance(p, (list, tuple)) else (p, p) for p in pairs)
    if len(pairs) != 2 or any(len(p) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                                 or v < 0 for v in p) for p in pairs):
        raise ValueError(f"{layer}: {what} must be an int, (rows, cols) or ((top, bottom), (left, right)) "
                         f"of non-negative integers, got {value!r}")
    return tuple((int(a), int(b)) for a, b in pairs)


class ZeroPadding2D(Layer):
    """Zeros around each image: `padding` an int, (rows, cols) or ((top, bottom), (left, right))."""

    def __init__(self, padding: Any = (1, 1), data_format: str | None = None, name: str | None = None,
                 input_shape: Sequence[int] | None = None):
        super().__init__(name, input_shape)
        self.padding = _edges(padding, "padding", "ZeroPadding2D")
        self.data_format = data_format or "channels_last"
        self.fmt = _format(data_format, "ZeroPadding2D")

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        (shape,) = self._single(input_shapes)
        h, w, c = _image_input(shape, "ZeroPadding2D", self.fmt)
        return image_shape(None, h + sum(self.padding[0]), w + sum(self.padding[1]), c, self.fmt)

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        """A depthwise 1x1 convolution with a filter of ones: its padding is the zeros."""
        (x,) = inputs
        c = image_dims(x.shape, self.fmt)[2]
        ones = ops.constant(np.ones((1, 1, 1, c), x.dtype), graph=graph)
        return ops.conv2d(x, ones, 1, self.padding, 1, c, self.fmt)

    def get_config(self) -> dict:
        return {"name": self.name, "padding": [list(p) for p in self.padding], "data_format": self.data_format}


class Cropping2D(Layer):
    """Each image without `cropping` rows and columns at its edges: an int, (rows, cols) or
    ((top, bottom), (left, right))."""

    def __init__(self, cropping: Any = ((0, 0), (0, 0)), data_format: str | None = None, name: str | None = None,
                 input_shape: Sequence[int] | None = None):
        super().__init__(name, input_shape)
        self.cropping = _edges(cropping, "cropping", "Cropping2D")
        self.data_format = data_format or "channels_last"
        self.fmt = _format(data_format, "Cropping2D")

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        (shape,) = self._single(input_shapes)
        h, w, c = _image_input(shape, "Cropping2D", self.fmt)
        rows, cols = h - sum(self.cropping[0]), w - sum(self.cropping[1])
        if rows < 1 or cols < 1:
            raise ValueError(f"Cropping2D: cropping {self.cropping} leaves nothing of {shape_str(shape)}")
        return image_shape(None, rows, cols, c, self.fmt)

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        (x,) = inputs
        h, w, _ = image_dims(x.shape, self.fmt)
        (top, bottom), (left, right) = self.cropping
        rows, cols = slice(top, h - bottom), slice(left, w - right)
        return x[:, rows, cols] if self.fmt == "NHWC" else x[:, :, rows, cols]

    def get_config(self) -> dict:
        return {"name": self.name, "cropping": [list(p) for p in self.cropping], "data_format": self.data_format}


class SeparableConv2D(Conv2D):
    """A depthwise conv (each channel with `depth_multiplier` (KH, KW) filters, strides, padding and
    dilation) then a pointwise 1x1 conv into `filters`, plus the bias: weights depthwise_kernel (KH, KW,
    C, depth_multiplier), pointwise_kernel (1, 1, C * depth_multiplier, filters) and bias, as Keras."""

    def __init__(self, filters: int, kernel_size: Any, strides: Any = (1, 1), padding: str = "valid",
                 data_format: str | None = None, dilation_rate: Any = (1, 1), depth_multiplier: int = 1,
                 activation: str | Callable | None = None, use_bias: bool = True,
                 depthwise_initializer: str = "glorot_uniform", pointwise_initializer: str = "glorot_uniform",
                 bias_initializer: str = "zeros", name: str | None = None, input_shape: Sequence[int] | None = None,
                 trainable: bool = True):
        super().__init__(filters, kernel_size, strides, padding, data_format, dilation_rate, 1, activation, use_bias,
                         depthwise_initializer, bias_initializer, name, input_shape, trainable)
        _check_initializer("SeparableConv2D", pointwise_initializer=pointwise_initializer)
        if isinstance(depth_multiplier, bool) or not isinstance(depth_multiplier, (int, np.integer)) or depth_multiplier < 1:
            raise ValueError(f"SeparableConv2D: depth_multiplier must be a positive integer, got {depth_multiplier!r}")
        self.depth_multiplier, self.pointwise_initializer = int(depth_multiplier), pointwise_initializer

    def weight_shapes(self, input_shapes: list[tuple]) -> dict[str, tuple]:
        (shape,) = self._single(input_shapes)
        c = _image_input(shape, "SeparableConv2D", self.fmt)[2]
        return {"depthwise_kernel": (*self.kernel_size, c, self.depth_multiplier),
                "pointwise_kernel": (1, 1, c * self.depth_multiplier, self.filters),
                **({"bias": (self.filters,)} if self.use_bias else {})}

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        (x,) = inputs
        shapes = self.weight_shapes([x.shape])
        depthwise = self._weight(graph, "depthwise_kernel",
                                 lambda: init.BY_NAME[self.kernel_initializer](shapes["depthwise_kernel"]))
        pointwise = self._weight(graph, "pointwise_kernel",
                                 lambda: init.BY_NAME[self.pointwise_initializer](shapes["pointwise_kernel"]))
        z = ops.depthwise_conv2d(x, depthwise, self.strides, self.padding, self.dilation_rate, self.fmt)
        z = ops.conv2d(z, pointwise, 1, "valid", 1, 1, self.fmt)
        if self.use_bias:
            bias = self._weight(graph, "bias", lambda: init.BY_NAME[self.bias_initializer](shapes["bias"]))
            z = z + (bias if self.fmt == "NHWC" else ops.reshape(bias, (-1, 1, 1)))
        return self.act(z)

    def get_config(self) -> dict:
        config = {k: v for k, v in super().get_config().items() if k not in ("groups", "kernel_initializer")}
        return {**config, "depth_multiplier": self.depth_multiplier, "depthwise_initializer": self.kernel_initializer,
                "pointwise_initializer": self.pointwise_initializer}


class BatchNormalization(Layer):
    """Keras's batch normalization over every axis but `axis`: in training the batch statistics
    normalize and the moving ones take momentum * moving + (1 - momentum) * batch; evaluate and
    predict use the moving statistics. Weights gamma, beta (trainable), moving_mean, moving_variance."""

    def __init__(self, axis: int = -1, momentum: float = 0.99, epsilon: float = 1e-3, center: bool = True,
                 scale: bool = True, name: str | None = None, input_shape: Sequence[int] | None = None,
                 trainable: bool = True):
        super().__init__(name, input_shape, trainable=trainable)
        if not 0 <= momentum <= 1 or not epsilon > 0:
            raise ValueError(f"BatchNormalization: momentum must be in [0, 1] and epsilon positive, got "
                             f"{momentum!r}, {epsilon!r}")
        self.axis, self.momentum, self.epsilon = int(axis), float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)

    def _channels(self, shape: tuple) -> int:
        if not -len(shape) < self.axis < len(shape) or self.axis % len(shape) == 0 or shape[self.axis] is None:
            raise ValueError(f"BatchNormalization: axis {self.axis} is not a feature axis of {shape_str(shape)}")
        return shape[self.axis]

    def weight_shapes(self, input_shapes: list[tuple]) -> dict[str, tuple]:
        (shape,) = self._single(input_shapes)
        c = (self._channels(shape),)
        return {**({"gamma": c} if self.scale else {}), **({"beta": c} if self.center else {}),
                "moving_mean": c, "moving_variance": c}

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        self.weight_shapes(input_shapes)
        return input_shapes[0]

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        (x,) = inputs
        c = self._channels(x.shape)

        def weight(slot: str, fill: float, trainable: bool = True) -> Node:
            return self._weight(graph, slot, lambda: np.full(c, fill, x.dtype), trainable=trainable)
        gamma = weight("gamma", 1.0) if self.scale else np.ones(c, x.dtype)
        beta = weight("beta", 0.0) if self.center else np.zeros(c, x.dtype)
        mean, variance = weight("moving_mean", 0.0, False), weight("moving_variance", 1.0, False)
        y, updates = ops.batch_norm(x, gamma, beta, mean, variance, self.momentum, self.epsilon, self.axis)
        self._state_updates = getattr(self, "_state_updates", []) + updates
        return y

    def get_config(self) -> dict:
        return {"name": self.name, "axis": self.axis, "momentum": self.momentum, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale}


for _layer in (Conv2D, Conv2DTranspose, DepthwiseConv2D, SeparableConv2D, Cropping2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, UpSampling2D,
               ZeroPadding2D, BatchNormalization):
    register(_layer)
