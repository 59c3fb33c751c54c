"""Keras-style layers.

Calling a layer on a `SymbolicTensor` only records the call and the output shape; a `Model` then
replays the recorded calls into a graph of its own (`Layer.build`), so the trained model is an
ordinary graphnet graph. Each node keeps the source line of the layer call that made it.

A layer may be called several times (shared layers): every call uses the same weights, so their
gradients add up. The weights' storage belongs to the layer and outlives any one graph, so every
model that uses a layer (a sub-model, a model built on another's layers, a recompiled model) reads and
trains the same values.
"""
from __future__ import annotations

import re

import contextlib
import contextvars
import inspect
import itertools
import math
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import init, ops
from .graph import Graph, Node, Variable, check_name, shape_str
from .ops.sources import variable_of
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
    "swish": ops.swish,
    "silu": ops.silu,
    "elu": ops.elu,
    "selu": ops.selu,
    "hard_sigmoid": ops.hard_sigmoid,  # Keras 3's relu6(x + 3) / 6 (Keras 2's was clip(0.2 x + 0.5, 0, 1))
    "exponential": ops.exp,
}

_order = itertools.count()
_weight_prefix: contextvars.ContextVar[str] = contextvars.ContextVar("weight_prefix", default="")


class SymbolicTensor:
    """A layer output before any graph exists: its shape (None = batch), the layer call that makes it
    (`layer`, its `inbound` tensors, `index`: which call of the layer) and the call site."""

    def __init__(self, shape: tuple, layer: "Layer", inbound: Sequence["SymbolicTensor"], index: int = 0):
        self.shape, self.layer, self.inbound, self.index = tuple(shape), layer, list(inbound), index
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


@contextlib.contextmanager
def weight_prefix(prefix: str) -> Iterator[None]:
    """Name the weights built inside the block `<prefix><layer>/<slot>` (a sub-model's layers)."""
    token = _weight_prefix.set(_weight_prefix.get() + prefix)
    try:
        yield
    finally:
        _weight_prefix.reset(token)


class Layer:
    """Base layer: `__call__` records a call, `build` creates the graph nodes of one call.

    A subclass defines `compute_output_shape(input_shapes)` (a list, one shape per input), `build(graph,
    inputs)` (making weights with `self._weight`), `weight_shapes(input_shapes)` and `get_config()`.
    `input_shape=` (or `input_dim=`) on the first layer of a `Sequential` gives the model its input.
    """

    def __init__(self, name: str | None = None, input_shape: Sequence[int] | None = None,
                 input_dim: int | None = None, trainable: bool = True):
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"layer name must be a non-empty string without '/', got {name!r}")
        if name is not None:
            check_name(name, "layer")
        if input_shape is not None and input_dim is not None:
            raise ValueError(f"{type(self).__name__}: give input_shape or input_dim, not both")
        self.name = name
        self.calls: list[SymbolicTensor] = []  # one output per call, in call order
        self._storage: dict[str, Variable] = {}  # slot -> the weight's storage, shared by every graph
        self._nodes: dict[str, Node] = {}  # slot -> the variable node of the latest build
        self._trainable = bool(trainable)
        self.call_index = 0  # which call `build` is building (set by the model replaying the calls)
        shape = (input_dim,) if input_dim is not None else input_shape
        self.input_shape_hint = None if shape is None else tuple(shape) if isinstance(shape, (list, tuple)) else (shape,)

    @property
    def kind(self) -> str:
        """The default name's stem: the class name in snake case, as Keras's (MaxPooling2D ->
        max_pooling2d, BatchNormalization -> batch_normalization)."""
        words = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", type(self).__name__)
        return re.sub(r"([a-z])([A-Z])", r"\1_\2", words).lower()

    # ---- calls ---------------------------------------------------------------------------
    def __call__(self, inputs: SymbolicTensor | Sequence[SymbolicTensor]) -> SymbolicTensor:
        inbound = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        for x in inbound:
            if not isinstance(x, SymbolicTensor):
                raise TypeError(f"{type(self).__name__} must be called on a layer output (Input(...) or another "
                                f"layer's result), got {type(x).__name__}; to compute on arrays, build a model "
                                f"and call model.predict(x) or model(x)")
        shapes = [x.shape for x in inbound]
        out_shape = self.compute_output_shape(shapes)
        if self.calls:
            first = [x.shape for x in self.calls[0].inbound]
            if self.weight_shapes(first) != self.weight_shapes(shapes):
                raise ValueError(f"{type(self).__name__} layer {self.name or ''} is shared: called at "
                                 f"{self.calls[0].source} on {', '.join(map(shape_str, first))}, it cannot take "
                                 f"{', '.join(map(shape_str, shapes))} with the same weights")
        out = SymbolicTensor(out_shape, self, inbound, len(self.calls))
        self.calls.append(out)
        return out

    @property
    def output(self) -> SymbolicTensor | None:
        """The output of the layer's first call (None before it is called)."""
        return self.calls[0] if self.calls else None

    @property
    def input(self) -> SymbolicTensor | list[SymbolicTensor]:
        first = self._first_call("input")
        return first.inbound[0] if len(first.inbound) == 1 else list(first.inbound)

    @property
    def output_shape(self) -> tuple:
        """The output shape of the first call, None for the batch (Keras's `layer.output_shape`)."""
        return self._first_call("output_shape").shape

    @property
    def input_shape(self) -> tuple | list[tuple]:
        first = self._first_call("input_shape")
        shapes = [x.shape for x in first.inbound]
        return shapes[0] if len(shapes) == 1 else shapes

    def _first_call(self, what: str) -> SymbolicTensor:
        if not self.calls:
            raise AttributeError(f"{type(self).__name__} layer {self.name or ''} has no {what}: it has not been "
                                 f"called on a layer output yet")
        return self.calls[0]

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        rule = getattr(type(self), "output_shape", None)
        if callable(rule):  # a layer written for the earlier protocol: output_shape(self, input_shapes)
            return rule(self, input_shapes)
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

    # ---- weights -------------------------------------------------------------------------
    def _weight(self, graph: Graph, slot: str, make: Callable[[], np.ndarray], trainable: bool = True) -> Node:
        """The variable node of weight `slot` in `graph`: the node already there (a shared layer's
        second call), a node over the layer's existing storage, or new storage initialised by `make()`."""
        name = f"{_weight_prefix.get()}{self.name}/{slot}"
        storage = self._storage.get(slot)
        existing = graph.variables.get(name)
        if storage is not None and existing is not None and existing.attrs["var"] is storage:
            node = existing
        elif storage is not None:
            node = variable_of(name, storage, graph)
        else:
            node = ops.variable(name, make(), trainable=trainable and self._trainable, graph=graph)
            self._storage[slot] = node.attrs["var"]
        self._nodes[slot] = node
        return node

    def graph_weights(self) -> dict[str, Node]:
        """Weight name (within the layer) -> variable node, from the latest build."""
        return dict(self._nodes)

    @property
    def weights(self) -> list[Node]:
        """The variable nodes of the latest build (Keras's `layer.weights`)."""
        return list(self._nodes.values())

    @property
    def trainable_weights(self) -> list[Node]:
        return [w for w in self._nodes.values() if w.trainable]

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        """Freeze (False) or unfreeze the layer's weights; as in Keras, compile again for it to take effect."""
        self._trainable = bool(value)
        for var in self._storage.values():
            var.trainable = self._trainable

    def get_weights(self) -> list[np.ndarray]:
        return [var.read() for var in self._storage.values()]

    def set_weights(self, values: Sequence[np.ndarray]) -> None:
        slots = list(self._storage)
        if len(values) != len(slots):
            raise ValueError(f"set_weights: layer {self.name} has {len(slots)} weights, got {len(values)} arrays")
        arrays = [np.asarray(v) for v in values]
        for slot, arr in zip(slots, arrays):
            if arr.shape != self._storage[slot].array.shape:
                raise ValueError(f"set_weights: weight '{self.name}/{slot}' has shape "
                                 f"{shape_str(self._storage[slot].array.shape)}, got {shape_str(arr.shape)}")
        for slot, arr in zip(slots, arrays):
            self._storage[slot].write(arr.astype(self._storage[slot].array.dtype))

    def count_params(self) -> int:
        if not self.calls:
            return sum(int(np.prod(v.array.shape)) for v in self._storage.values())
        shapes = self.weight_shapes([x.shape for x in self.calls[0].inbound])
        return sum(math.prod(s) for s in shapes.values())

    def get_config(self) -> dict:
        return {"name": self.name}

    def pop_state_updates(self) -> list:
        """The (variable, new value) pairs the builds since the last call made for non-trainable state
        (BatchNormalization's moving statistics); the model's training step runs them."""
        updates, self._state_updates = getattr(self, "_state_updates", []), []
        return updates


class InputLayer(Layer):
    """The layer behind `Input`: a placeholder of the per-sample `shape` plus the batch dimension."""

    kind = "input"

    def __init__(self, shape: Sequence[int] | None = None, dtype: Any = np.float32, name: str | None = None,
                 input_shape: Sequence[int] | None = None):
        super().__init__(name)
        if shape is None:
            shape = input_shape
        shape = tuple(shape) if isinstance(shape, (list, tuple)) else (shape,)
        if not shape or any(not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d <= 0 for d in shape):
            raise ValueError(f"Input shape must be positive integers (the batch dimension is implied), got {shape!r}")
        self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        self.calls.append(SymbolicTensor((None,) + self.shape, self, []))

    def __call__(self, inputs: Any) -> SymbolicTensor:
        raise TypeError("an InputLayer is not called on tensors; use gn.layers.Input(shape) as a model input")

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        return ops.placeholder(self.name, (None,) + self.shape, self.dtype, graph=graph)

    def get_config(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype.name}


def Input(shape: Sequence[int] | int | None = None, dtype: Any = np.float32, name: str | None = None,
          batch_size: int | None = None) -> SymbolicTensor:
    """A model input of the given per-sample `shape` (the batch dimension is added and left open)."""
    if shape is None:
        raise ValueError("Input needs a shape, e.g. Input(shape=(2,))")
    return InputLayer(shape, dtype, name).output


class Dense(Layer):
    """`activation(x @ kernel + bias)` on (batch, features) inputs."""

    def __init__(self, units: int, activation: str | Callable | None = None, use_bias: bool = True,
                 kernel_initializer: str = "glorot_uniform", bias_initializer: str = "zeros",
                 name: str | None = None, input_shape: Sequence[int] | None = None, input_dim: int | None = None,
                 trainable: bool = True):
        super().__init__(name, input_shape, input_dim, trainable)
        if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"Dense: units must be a positive integer, got {units!r}")
        for what, value in (("kernel_initializer", kernel_initializer), ("bias_initializer", bias_initializer)):
            if value not in init.BY_NAME:
                raise ValueError(f"Dense: unknown {what} '{value}' (choose from {', '.join(init.BY_NAME)})")
        self.units, self.use_bias = int(units), bool(use_bias)
        self.activation = activation
        self.act = resolve_activation(activation)
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
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
        kernel = self._weight(graph, "kernel", lambda: init.BY_NAME[self.kernel_initializer](shapes["kernel"]))
        z = x @ kernel
        if self.use_bias:
            z = z + self._weight(graph, "bias", lambda: init.BY_NAME[self.bias_initializer](shapes["bias"]))
        return self.act(z)

    @property
    def kernel(self) -> Node:
        return self._nodes["kernel"]

    @property
    def bias(self) -> Node | None:
        return self._nodes.get("bias")

    def get_config(self) -> dict:
        return {"name": self.name, "units": self.units, "activation": activation_name(self.activation),
                "use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer,
                "bias_initializer": self.bias_initializer}


class Dropout(Layer):
    """Inverted dropout during training; the identity in evaluate and predict.

    The mask's key is fixed when the layer is made (from `gn.set_seed`), so a saved model replays
    the same masks after loading; each call of a shared Dropout draws its own masks.
    """

    def __init__(self, rate: float, seed: int | None = None, name: str | None = None,
                 input_shape: Sequence[int] | None = None):
        super().__init__(name, input_shape)
        if not 0 <= rate < 1:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = next_dropout_seed() if seed is None else int(seed) & 0xFFFFFFFF

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        seed = (self.seed + 0x9E3779B9 * self.call_index) & 0xFFFFFFFF
        return ops.dropout(inputs[0], self.rate, seed=seed)

    def get_config(self) -> dict:
        return {"name": self.name, "rate": self.rate, "seed": self.seed}


class Activation(Layer):
    """An activation function by name or callable."""

    def __init__(self, activation: str | Callable, name: str | None = None, input_shape: Sequence[int] | None = None):
        super().__init__(name, input_shape)
        self.activation, self.act = activation, resolve_activation(activation)

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        return self.act(inputs[0])

    def get_config(self) -> dict:
        return {"name": self.name, "activation": activation_name(self.activation)}


class Flatten(Layer):
    """(batch, d1, d2, ...) -> (batch, d1*d2*...)."""

    def __init__(self, name: str | None = None, input_shape: Sequence[int] | None = None):
        super().__init__(name, input_shape)

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        (shape,) = self._single(input_shapes)
        return (None, math.prod(shape[1:]))

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        (x,) = inputs
        return x if x.ndim == 2 else ops.reshape(x, (None, math.prod(x.shape[1:])))


class _Merge(Layer):
    """Joins two or more layer outputs of one shape elementwise."""

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        if len(input_shapes) < 2 or any(s != input_shapes[0] for s in input_shapes):
            raise ValueError(f"{type(self).__name__} needs two or more inputs of one shape, got "
                             f"{', '.join(shape_str(s) for s in input_shapes)}")
        return input_shapes[0]


class Add(_Merge):
    """Elementwise sum of several layer outputs of one shape (joins the branches of a model)."""

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        total = inputs[0]
        for x in inputs[1:]:
            total = total + x
        return total


class Subtract(_Merge):
    """The first input minus the second."""

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        if len(input_shapes) != 2:
            raise ValueError(f"Subtract takes exactly two inputs, got {len(input_shapes)}")
        return super().compute_output_shape(input_shapes)

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        return inputs[0] - inputs[1]


class Multiply(_Merge):
    """Elementwise product of several layer outputs of one shape."""

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        total = inputs[0]
        for x in inputs[1:]:
            total = total * x
        return total


class Average(_Merge):
    """Elementwise mean of several layer outputs of one shape."""

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        return Add.build(self, graph, inputs) * (1.0 / len(inputs))


class Concatenate(Layer):
    """Joins layer outputs along `axis` (any axis but the batch axis); the other axes must agree."""

    def __init__(self, axis: int = -1, name: str | None = None):
        super().__init__(name)
        if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
            raise ValueError(f"Concatenate: axis must be an int, got {axis!r}")
        self.axis = int(axis)

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        shapes = ", ".join(shape_str(s) for s in input_shapes)
        rank = len(input_shapes[0]) if input_shapes else 0
        if len(input_shapes) < 2 or any(len(s) != rank for s in input_shapes):
            raise ValueError(f"Concatenate needs two or more inputs of one rank, got {shapes}")
        if not -rank <= self.axis < rank or self.axis % rank == 0:
            raise ValueError(f"Concatenate: axis {self.axis} is not a non-batch axis of {shapes}")
        axis = self.axis % rank
        if any(s[:axis] + s[axis + 1:] != input_shapes[0][:axis] + input_shapes[0][axis + 1:] for s in input_shapes):
            raise ValueError(f"Concatenate joins along axis {self.axis} inputs equal on the other axes, got {shapes}")
        return input_shapes[0][:axis] + (sum(s[axis] for s in input_shapes),) + input_shapes[0][axis + 1:]

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        return ops.concat(inputs, self.axis)

    def get_config(self) -> dict:
        return {"name": self.name, "axis": self.axis}


class Embedding(Layer):
    """Rows of an (input_dim, output_dim) table at integer ids: (batch, ...) -> (batch, ..., output_dim).
    Float ids (Input's default dtype) are cast to int32 first, as Keras does; an id outside
    [0, input_dim) reads the nearest row (gn.take clamps) where Keras would raise or read zeros."""

    def __init__(self, input_dim: int, output_dim: int, embeddings_initializer: str = "uniform",
                 input_length: int | None = None, name: str | None = None, input_shape: Sequence[int] | None = None,
                 trainable: bool = True):
        super().__init__(name, input_shape if input_length is None else (input_length,), None, trainable)
        for what, value in (("input_dim", input_dim), ("output_dim", output_dim)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Embedding: {what} must be a positive integer, got {value!r}")
        if embeddings_initializer not in init.BY_NAME:
            raise ValueError(f"Embedding: unknown embeddings_initializer '{embeddings_initializer}' (choose from "
                             f"{', '.join(init.BY_NAME)})")
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.embeddings_initializer, self.input_length = embeddings_initializer, input_length

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        (shape,) = self._single(input_shapes)
        return tuple(shape) + (self.output_dim,)

    def weight_shapes(self, input_shapes: list[tuple]) -> dict[str, tuple]:
        return {"embeddings": (self.input_dim, self.output_dim)}

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        (ids,) = inputs
        table = self._weight(graph, "embeddings", lambda: init.BY_NAME[self.embeddings_initializer](
            (self.input_dim, self.output_dim)))
        return ops.take(table, ids if ids.dtype.kind in "iu" else ops.cast(ids, np.int32), axis=0)

    @property
    def embeddings(self) -> Node:
        return self._nodes["embeddings"]

    def get_config(self) -> dict:
        return {"name": self.name, "input_dim": self.input_dim, "output_dim": self.output_dim,
                "embeddings_initializer": self.embeddings_initializer, "input_length": self.input_length}


class Reshape(Layer):
    """(batch, ...) -> (batch, *target_shape); the batch axis is kept and one entry may be -1 (inferred)."""

    def __init__(self, target_shape: Sequence[int], name: str | None = None,
                 input_shape: Sequence[int] | None = None):
        super().__init__(name, input_shape)
        target = tuple(target_shape) if isinstance(target_shape, (list, tuple)) else (target_shape,)
        if any(not isinstance(d, (int, np.integer)) or isinstance(d, bool) or (d <= 0 and d != -1) for d in target) \
                or sum(d == -1 for d in target) > 1:
            raise ValueError(f"Reshape: target_shape must be positive integers with at most one -1 (the batch "
                             f"dimension is implied), got {target_shape!r}")
        self.target_shape = tuple(int(d) for d in target)

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        (shape,) = self._single(input_shapes)
        size, known = math.prod(shape[1:]), math.prod(d for d in self.target_shape if d != -1)
        if (-1 in self.target_shape and size % known) or (-1 not in self.target_shape and size != known):
            raise ValueError(f"Reshape: cannot reshape {shape_str(shape)} ({size} values per sample) to "
                             f"{shape_str((None,) + self.target_shape)}")
        return (None,) + tuple(size // known if d == -1 else d for d in self.target_shape)

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        return ops.reshape(inputs[0], self.compute_output_shape([inputs[0].shape]))

    def get_config(self) -> dict:
        return {"name": self.name, "target_shape": list(self.target_shape)}


class Lambda(Layer):
    """Wraps `function`, a Python function of graph nodes (`function(x)`, or `function([x1, x2, ...])`
    when called on several inputs), as a layer. Its output shape is found by tracing the function on
    placeholders of the input shapes. A Python function cannot be stored in a model config: saving a
    model that holds a Lambda layer is an error naming it (use save_weights), as Keras warns."""

    def __init__(self, function: Callable[..., Node], output_shape: Sequence[int] | None = None,
                 name: str | None = None, input_shape: Sequence[int] | None = None):
        super().__init__(name, input_shape)
        if not callable(function):
            raise TypeError(f"Lambda: function must be callable, got {type(function).__name__}")
        self.function = function
        self.declared_shape = None if output_shape is None else tuple(output_shape)

    def _apply(self, inputs: list[Node]) -> Node:
        out = self.function(inputs[0] if len(inputs) == 1 else list(inputs))
        if not isinstance(out, Node):
            raise TypeError(f"Lambda layer {self.name or ''}: {_function_name(self.function)} must return a graph "
                            f"node, got {type(out).__name__}")
        return out

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        with Graph() as scratch:
            xs = [ops.placeholder(f"x{i}", shape, graph=scratch) for i, shape in enumerate(input_shapes)]
            shape = self._apply(xs).shape
        if self.declared_shape is not None and shape[1:] != self.declared_shape:
            raise ValueError(f"Lambda layer {self.name or ''}: {_function_name(self.function)} returns "
                             f"{shape_str(shape)}, not the declared output_shape "
                             f"{shape_str((None,) + self.declared_shape)}")
        return shape

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        return self._apply(inputs)

    def get_config(self) -> dict:
        raise ValueError(f"Lambda layer {self.name!r} wraps the Python function {_function_name(self.function)}, "
                         f"which cannot be stored in a model config; use save_weights, or write a Layer subclass")


def _function_name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


LAYERS: dict[str, type[Layer]] = {cls.__name__: cls for cls in (InputLayer, Dense, Dropout, Activation, Flatten, Add,
                                                                 Subtract, Multiply, Average, Concatenate, Embedding,
                                                                 Reshape)}


def register(cls: type[Layer]) -> type[Layer]:
    """A layer class written in another module (conv_layers.py, which graphnet imports) joins LAYERS and
    this module's names (`gn.layers.Conv2D`)."""
    LAYERS[cls.__name__] = cls
    globals()[cls.__name__] = cls
    return cls


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
