"""Keras-style layers for sequences of vectors (batch, steps, channels), and global max pooling of
images: Conv1D, MaxPooling1D, AveragePooling1D, GlobalAveragePooling1D, GlobalMaxPooling1D and
GlobalMaxPooling2D, registered in graphnet.layers on import.

A 1-D layer is its 2-D counterpart on images of height 1 (a reshape on each side), so it runs on the
2-D ops' kernels and gradients. Shapes, defaults and weight layouts are Keras's: sequences
(batch, steps, channels) unless `data_format="channels_first"`, a Conv1D kernel (K, Cin / groups,
filters); Conv1D's padding "causal" pads (K - 1) * dilation steps before the sequence only.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from . import init, ops
from .conv_layers import _check_initializer, _format, _padding_name
from .graph import Graph, Node, shape_str
from .layers import Layer, activation_name, register, resolve_activation
from .ops.conv import out_size, same_padding


def _positive(value: Any, what: str, layer: str) -> int:
    item = value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value
    if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or item < 1:
        raise ValueError(f"{layer}: {what} must be a positive integer, got {value!r}")
    return int(item)


def _sequence(shape: tuple, layer: str, fmt: str) -> tuple[int, int]:
    """(steps, channels) of a layer's (batch, ...) input shape; ValueError for anything else."""
    if len(shape) != 3:
        axes = "steps, channels" if fmt == "NHWC" else "channels, steps"
        raise ValueError(f"{layer} expects 3-D sequence batches (batch, {axes}), got {shape_str(shape)}")
    return (shape[1], shape[2]) if fmt == "NHWC" else (shape[2], shape[1])


def _as_image(x: Node, fmt: str) -> Node:
    """(N, L, C) as (N, 1, L, C), or (N, C, L) as (N, C, 1, L)."""
    n = x.shape[0]
    return ops.reshape(x, (n, 1, *x.shape[1:]) if fmt == "NHWC" else (n, x.shape[1], 1, x.shape[2]))


def _as_sequence(y: Node, fmt: str) -> Node:
    n = y.shape[0]
    return ops.reshape(y, (n, y.shape[2], y.shape[3]) if fmt == "NHWC" else (n, y.shape[1], y.shape[3]))


def _pad(steps: int, k: int, s: int, d: int, padding: str) -> tuple[int, int]:
    """(before, after) steps of Keras's "valid", "same" or "causal" padding of a window of k
    (dilation d, stride s)."""
    if padding == "same":
        return same_padding(steps, k, s, d)
    return (d * (k - 1), 0) if padding == "causal" else (0, 0)


def _steps(layer: str, steps: int, k: int, s: int, d: int, padding: str) -> int:
    """The output steps of a window of k (dilation d, stride s) over `steps` with Keras's padding."""
    out = out_size(steps, k, s, d, _pad(steps, k, s, d, padding))
    if out < 1:
        raise ValueError(f"{layer}: the window {k} (dilation {d}) is longer than the input's {steps} steps")
    return out


def _shape(fmt: str, steps: int, channels: int) -> tuple:
    return (None, steps, channels) if fmt == "NHWC" else (None, channels, steps)


class Conv1D(Layer):
    """activation(conv1d(x, kernel) + bias), a (K, Cin / groups, filters) kernel; padding "valid",
    "same" or "causal"."""

    def __init__(self, filters: int, kernel_size: Any, strides: Any = 1, padding: str = "valid",
                 data_format: str | None = None, dilation_rate: Any = 1, groups: int = 1,
                 activation: str | Callable | None = None, use_bias: bool = True,
                 kernel_initializer: str = "glorot_uniform", bias_initializer: str = "zeros",
                 name: str | None = None, input_shape: Sequence[int] | None = None, trainable: bool = True):
        super().__init__(name, input_shape, trainable=trainable)
        self.filters = _positive(filters, "filters", "Conv1D")
        self.kernel_size = _positive(kernel_size, "kernel_size", "Conv1D")
        self.strides = _positive(strides, "strides", "Conv1D")
        self.dilation_rate = _positive(dilation_rate, "dilation_rate", "Conv1D")
        self.groups = _positive(groups, "groups", "Conv1D")
        if not isinstance(padding, str) or padding.lower() not in ("valid", "same", "causal"):
            raise ValueError(f"Conv1D: padding must be 'valid', 'same' or 'causal', got {padding!r}")
        self.padding = padding.lower()
        self.data_format = data_format or "channels_last"
        self.fmt = _format(data_format, "Conv1D")
        _check_initializer("Conv1D", kernel_initializer=kernel_initializer, bias_initializer=bias_initializer)
        self.activation, self.act = activation, resolve_activation(activation)
        self.use_bias, self.kernel_initializer, self.bias_initializer = bool(use_bias), kernel_initializer, bias_initializer

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        (shape,) = self._single(input_shapes)
        self.weight_shapes(input_shapes)
        steps, _ = _sequence(shape, "Conv1D", self.fmt)
        return _shape(self.fmt, _steps("Conv1D", steps, self.kernel_size, self.strides, self.dilation_rate,
                                       self.padding), self.filters)

    def weight_shapes(self, input_shapes: list[tuple]) -> dict[str, tuple]:
        (shape,) = self._single(input_shapes)
        c = _sequence(shape, "Conv1D", self.fmt)[1]
        if c % self.groups or self.filters % self.groups:
            raise ValueError(f"Conv1D: groups={self.groups} must divide the input's {c} channels and the "
                             f"{self.filters} filters")
        kernel = (self.kernel_size, c // self.groups, self.filters)
        return {"kernel": kernel, **({"bias": (self.filters,)} if self.use_bias else {})}

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        (x,) = inputs
        shapes = self.weight_shapes([x.shape])
        kernel = self._weight(graph, "kernel", lambda: init.BY_NAME[self.kernel_initializer](shapes["kernel"]))
        steps, _ = _sequence(x.shape, "Conv1D", self.fmt)
        k, d = self.kernel_size, self.dilation_rate
        padding = ((0, 0), _pad(steps, k, self.strides, d, self.padding))
        z = _as_sequence(ops.conv2d(_as_image(x, self.fmt), ops.reshape(kernel, (1, *shapes["kernel"])),
                                    (1, self.strides), padding, (1, d), self.groups, self.fmt), self.fmt)
        if self.use_bias:
            bias = self._weight(graph, "bias", lambda: init.BY_NAME[self.bias_initializer](shapes["bias"]))
            z = z + (bias if self.fmt == "NHWC" else ops.reshape(bias, (-1, 1)))
        return self.act(z)

    def get_config(self) -> dict:
        return {"name": self.name, "filters": self.filters, "kernel_size": [self.kernel_size],
                "strides": [self.strides], "padding": self.padding, "data_format": self.data_format,
                "dilation_rate": [self.dilation_rate], "groups": self.groups,
                "activation": activation_name(self.activation), "use_bias": self.use_bias,
                "kernel_initializer": self.kernel_initializer, "bias_initializer": self.bias_initializer}


class _Pooling1D(Layer):
    def __init__(self, pool_size: Any = 2, strides: Any = None, padding: str = "valid",
                 data_format: str | None = None, name: str | None = None, input_shape: Sequence[int] | None = None):
        super().__init__(name, input_shape)
        kind = type(self).__name__
        self.pool_size = _positive(pool_size, "pool_size", kind)
        self.strides = self.pool_size if strides is None else _positive(strides, "strides", kind)
        self.padding = _padding_name(padding, kind)
        self.data_format = data_format or "channels_last"
        self.fmt = _format(data_format, kind)

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        (shape,) = self._single(input_shapes)
        kind = type(self).__name__
        steps, c = _sequence(shape, kind, self.fmt)
        return _shape(self.fmt, _steps(kind, steps, self.pool_size, self.strides, 1, self.padding), c)

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        pool = ops.max_pool2d if isinstance(self, MaxPooling1D) else ops.avg_pool2d
        image = _as_image(inputs[0], self.fmt)
        return _as_sequence(pool(image, (1, self.pool_size), (1, self.strides), self.padding, self.fmt), self.fmt)

    def get_config(self) -> dict:
        return {"name": self.name, "pool_size": [self.pool_size], "strides": [self.strides],
                "padding": self.padding, "data_format": self.data_format}


class MaxPooling1D(_Pooling1D):
    """The maximum of each window of steps (strides default to the window)."""


class AveragePooling1D(_Pooling1D):
    """The mean of each window's real steps (padding is not counted)."""


class _GlobalPooling(Layer):
    """A reduction over the steps (1-D) or height and width (2-D): (batch, channels), or with
    `keepdims` the input's rank with those axes of size 1."""

    rank = 1

    def __init__(self, data_format: str | None = None, keepdims: bool = False, name: str | None = None,
                 input_shape: Sequence[int] | None = None):
        super().__init__(name, input_shape)
        self.data_format, self.keepdims = data_format or "channels_last", bool(keepdims)
        self.fmt = _format(data_format, type(self).__name__)

    def _axes(self) -> tuple[int, ...]:
        return tuple(range(1, self.rank + 1)) if self.fmt == "NHWC" else tuple(range(2, self.rank + 2))

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        (shape,) = self._single(input_shapes)
        if len(shape) != self.rank + 2:
            raise ValueError(f"{type(self).__name__} expects {self.rank + 2}-D batches, got {shape_str(shape)}")
        channels = shape[-1] if self.fmt == "NHWC" else shape[1]
        if not self.keepdims:
            return (None, channels)
        return tuple(1 if i in self._axes() else d for i, d in enumerate(shape))

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        reduce = ops.max if "Max" in type(self).__name__ else ops.mean
        return reduce(inputs[0], self._axes(), keepdims=self.keepdims)

    def get_config(self) -> dict:
        return {"name": self.name, "data_format": self.data_format, "keepdims": self.keepdims}


class GlobalAveragePooling1D(_GlobalPooling):
    """The mean over the steps."""


class GlobalMaxPooling1D(_GlobalPooling):
    """The maximum over the steps."""


class GlobalMaxPooling2D(_GlobalPooling):
    """The maximum over height and width."""

    rank = 2


for _layer in (Conv1D, MaxPooling1D, AveragePooling1D, GlobalAveragePooling1D, GlobalMaxPooling1D, GlobalMaxPooling2D):
    register(_layer)
