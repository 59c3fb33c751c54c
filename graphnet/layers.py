"""Keras-style layers.

Calling a layer on a `SymbolicTensor` only records the connection and the output shape; a `Model`
then replays the recorded layer DAG into a graph of its own (`Layer.build`), so the trained model
is an ordinary graphnet graph. Each node keeps the source line of the layer call that made it.
"""
from __future__ import annotations

import inspect
import itertools
import math
from typing import Any, Callable, Sequence

import numpy as np

from . import init, ops
from .graph import Graph, Node, check_name, shape_str
from .random import next_dropout_seed
from .source import user_location

ACTIVATIONS: dict[str, Callable[[Node], Node]] = {
    "linear": lambda x: x,
    "relu": ops.relu,
    "sigmoid": ops.sigmoid,
    "tanh": ops.tanh,
    "softmax": ops.softmax,
    "log_softmax": ops.log_softmax,
    "softplus": ops.softplus,
    "leaky_relu": ops.leaky_relu,
}

_order = itertools.count()


class SymbolicTensor:
    """A layer output before any graph exists: its shape (None = batch), producer and call site."""

    def __init__(self, shape: tuple, layer: "Layer", inbound: Sequence["SymbolicTensor"]):
        self.shape, self.layer, self.inbound = tuple(shape), layer, list(inbound)
        self.source = user_location()
        self.order = next(_order)  # creation order is a topological order

    def __repr__(self) -> str:
        return f"<SymbolicTensor {shape_str(self.shape)} from {type(self.layer).__name__} at {self.source}>"


def resolve_activation(activation: str | Callable | None) -> Callable[[Node], Node]:
    if activation is None:
        return ACTIVATIONS["linear"]
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{activation}' (choose from {', '.join(ACTIVATIONS)} or a callable)")
    return ACTIVATIONS[activation]


def activation_name(activation: str | Callable | None) -> str:
    """The config name of an activation; a callable is storable only if it is a graphnet op."""
    if activation is None or isinstance(activation, str):
        return activation or "linear"
    name = getattr(activation, "__name__", "")
    if ACTIVATIONS.get(name) is activation:
        return name
    raise ValueError(f"activation {activation!r} is a Python callable and cannot be stored in a model config; "
                     f"use a name ({', '.join(ACTIVATIONS)}) or save_weights")


class Layer:
    """Base layer: `__call__` records the connection, `build` creates the graph nodes."""

    def __init__(self, name: str | None = None):
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"layer name must be a non-empty string without '/', got {name!r}")
        if name is not None:
            check_name(name, "layer")
        self.name = name
        self.output: SymbolicTensor | None = None
        self.weights: dict[str, Node] = {}  # set by build: weight name -> variable node
        self.owner: object | None = None  # the model this layer belongs to (layers are not shared)

    @property
    def kind(self) -> str:
        return type(self).__name__.lower()

    def __call__(self, inputs: SymbolicTensor | Sequence[SymbolicTensor]) -> SymbolicTensor:
        inbound = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        for x in inbound:
            if not isinstance(x, SymbolicTensor):
                raise TypeError(f"{type(self).__name__} must be called on a layer output (Input(...) or another "
                                f"layer's result), got {type(x).__name__}")
        if self.output is not None:
            raise ValueError(f"{type(self).__name__} layer {self.name or ''} is already connected at "
                             f"{self.output.source}; create a new layer (weight sharing is not supported)")
        self.output = SymbolicTensor(self.output_shape([x.shape for x in inbound]), self, inbound)
        return self.output

    def output_shape(self, input_shapes: list[tuple]) -> tuple:
        (shape,) = self._single(input_shapes)
        return shape

    def _single(self, input_shapes: list[tuple]) -> list[tuple]:
        if len(input_shapes) != 1:
            raise ValueError(f"{type(self).__name__} takes one input, got {len(input_shapes)}")
        return input_shapes

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        raise NotImplementedError

    def weight_shapes(self, input_shapes: list[tuple]) -> dict[str, tuple]:
        """The shape of each weight `build` makes for inputs of these shapes (known before building)."""
        return {}

    def _weight(self, graph: Graph, slot: str, value: np.ndarray, trainable: bool = True) -> Node:
        node = ops.variable(f"{self.name}/{slot}", value, trainable=trainable, graph=graph)
        self.weights[slot] = node
        return node

    def get_config(self) -> dict:
        return {"name": self.name}

    def count_params(self) -> int:
        return sum(int(np.prod(w.shape)) for w in self.weights.values())


class InputLayer(Layer):
    """The layer behind `Input`: a placeholder of the per-sample `shape` plus the batch dimension."""

    kind = "input"

    def __init__(self, shape: Sequence[int], dtype: Any = np.float32, name: str | None = None):
        super().__init__(name)
        shape = tuple(shape) if isinstance(shape, (list, tuple)) else (shape,)
        if not shape or any(not isinstance(d, (int, np.integer)) or d <= 0 for d in shape):
            raise ValueError(f"Input shape must be positive integers, got {shape!r}")
        self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        self.output = SymbolicTensor((None,) + self.shape, self, [])

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        return ops.placeholder(self.name, (None,) + self.shape, self.dtype, graph=graph)

    def get_config(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype.name}


def Input(shape: Sequence[int], dtype: Any = np.float32, name: str | None = None) -> SymbolicTensor:
    """A model input of the given per-sample `shape` (the batch dimension is added)."""
    return InputLayer(shape, dtype, name).output


class Dense(Layer):
    """`activation(x @ kernel + bias)` on (batch, features) inputs."""

    def __init__(self, units: int, activation: str | Callable | None = None, use_bias: bool = True,
                 kernel_initializer: str = "glorot_uniform", bias_initializer: str = "zeros",
                 name: str | None = None):
        super().__init__(name)
        if not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(f"Dense: units must be a positive integer, got {units!r}")
        for what, value in (("kernel_initializer", kernel_initializer), ("bias_initializer", bias_initializer)):
            if value not in init.BY_NAME:
                raise ValueError(f"Dense: unknown {what} '{value}' (choose from {', '.join(init.BY_NAME)})")
        self.units, self.use_bias = int(units), bool(use_bias)
        self.activation = activation
        self.act = resolve_activation(activation)
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer

    def output_shape(self, input_shapes: list[tuple]) -> tuple:
        (shape,) = self._single(input_shapes)
        if len(shape) != 2:
            raise ValueError(f"Dense expects (batch, features) inputs, got {shape_str(shape)}; add a Flatten layer")
        return (None, self.units)

    def weight_shapes(self, input_shapes: list[tuple]) -> dict[str, tuple]:
        (shape,) = self._single(input_shapes)
        return {"kernel": (shape[1], self.units), **({"bias": (self.units,)} if self.use_bias else {})}

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        (x,) = inputs
        shapes = self.weight_shapes([x.shape])
        z = x @ self._weight(graph, "kernel", init.BY_NAME[self.kernel_initializer](shapes["kernel"]))
        if self.use_bias:
            z = z + self._weight(graph, "bias", init.BY_NAME[self.bias_initializer](shapes["bias"]))
        return self.act(z)

    def get_config(self) -> dict:
        return {"name": self.name, "units": self.units, "activation": activation_name(self.activation),
                "use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer,
                "bias_initializer": self.bias_initializer}


class Dropout(Layer):
    """Inverted dropout during training; the identity in evaluate and predict.

    The mask's key is fixed when the layer is made (from `gn.set_seed`), so a saved model replays
    the same masks after loading.
    """

    def __init__(self, rate: float, seed: int | None = None, name: str | None = None):
        super().__init__(name)
        if not 0 <= rate < 1:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = next_dropout_seed() if seed is None else int(seed) & 0xFFFFFFFF

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        return ops.dropout(inputs[0], self.rate, seed=self.seed)

    def get_config(self) -> dict:
        return {"name": self.name, "rate": self.rate, "seed": self.seed}


class Activation(Layer):
    """An activation function by name or callable."""

    def __init__(self, activation: str | Callable, name: str | None = None):
        super().__init__(name)
        self.activation, self.act = activation, resolve_activation(activation)

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        return self.act(inputs[0])

    def get_config(self) -> dict:
        return {"name": self.name, "activation": activation_name(self.activation)}


class Flatten(Layer):
    """(batch, d1, d2, ...) -> (batch, d1*d2*...)."""

    def output_shape(self, input_shapes: list[tuple]) -> tuple:
        (shape,) = self._single(input_shapes)
        return (None, math.prod(shape[1:]))

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        (x,) = inputs
        return x if x.ndim == 2 else ops.reshape(x, (None, math.prod(x.shape[1:])))


class Add(Layer):
    """Elementwise sum of several layer outputs of one shape (joins the branches of a model)."""

    def output_shape(self, input_shapes: list[tuple]) -> tuple:
        if len(input_shapes) < 2 or any(s != input_shapes[0] for s in input_shapes):
            raise ValueError(f"Add needs two or more inputs of one shape, got "
                             f"{', '.join(shape_str(s) for s in input_shapes)}")
        return input_shapes[0]

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        total = inputs[0]
        for x in inputs[1:]:
            total = total + x
        return total


LAYERS: dict[str, type[Layer]] = {cls.__name__: cls for cls in (InputLayer, Dense, Dropout, Activation, Flatten, Add)}


def from_config(class_name: str, config: dict) -> Layer:
    """A layer rebuilt from its `get_config()`; ValueError for an unknown class or argument, a
    missing argument, or a value the layer refuses."""
    cls = LAYERS.get(class_name) if isinstance(class_name, str) else None
    if cls is None:
        raise ValueError(f"unknown layer class {class_name!r} (known: {', '.join(LAYERS)})")
    if not isinstance(config, dict):
        raise ValueError(f"{class_name}: the layer config must be an object, got {type(config).__name__}")
    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self")
    unknown = [k for k in config if k not in params]
    missing = [k for k, p in params.items() if p.default is p.empty and k not in config]
    if unknown or missing:
        parts = ([f"unknown argument(s) {', '.join(map(repr, unknown))}"] if unknown else []) + \
                ([f"missing argument(s) {', '.join(map(repr, missing))}"] if missing else [])
        raise ValueError(f"{class_name}: {'; '.join(parts)} (it takes {', '.join(params)})")
    try:
        return cls(**config)
    except (TypeError, ValueError) as e:  # a value of the wrong type reaches a comparison or int()
        raise ValueError(f"{class_name}: invalid config {config!r}: {e}") from None
