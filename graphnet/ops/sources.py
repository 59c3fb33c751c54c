"""Leaf ops: placeholders (fed per call), variables (persistent), constants and the batch size."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ShapeError
from ..graph import Graph, Node, Variable, check_name, get_default_graph
from ..source import user_location
from .base import Op, register


class Source(Op):
    kind = "source"

    def grad(self, node: Node, g: Node) -> list:
        return []


@register
class Placeholder(Source):
    name = "placeholder"

    def infer(self, inputs, attrs):
        return attrs["shape"], attrs["dtype"]


@register
class VariableOp(Source):
    name = "variable"

    def infer(self, inputs, attrs):
        arr = attrs["var"].array
        return arr.shape, arr.dtype


@register
class ConstantOp(Source):
    name = "constant"

    def infer(self, inputs, attrs):
        arr = attrs["value"].array
        return arr.shape, arr.dtype


@register
class BatchSize(Source):
    """The runtime batch size N as a scalar (used by means over the batch)."""

    name = "batch_size"
    differentiable = False

    def infer(self, inputs, attrs):
        return (), attrs["dtype"]


def placeholder(name: str, shape: tuple, dtype: Any = np.float32, graph: Graph | None = None) -> Node:
    """An input fed at call time by `name`; a `None` dimension is the batch size."""
    graph = graph if graph is not None else get_default_graph()  # an empty Graph is falsy (len 0)
    check_name(name, "placeholder")
    shape = tuple(None if d is None else int(d) for d in shape)
    if sum(d is None for d in shape) > 1:
        raise ShapeError(f"placeholder '{name}': only one dimension may be None (the batch)")
    if any(d is not None and d < 0 for d in shape):
        raise ShapeError(f"placeholder '{name}': negative dimension in {shape}")
    if name in graph.placeholders:
        raise ValueError(f"a placeholder named '{name}' already exists (created at {graph.placeholders[name].source})")
    dtype = np.dtype(dtype)
    if dtype.kind not in "fiub":
        raise TypeError(f"placeholder '{name}': unsupported dtype {dtype} (at {user_location()})")
    node = graph.apply(_PLACEHOLDER, (), {"name": name, "shape": shape, "dtype": dtype})
    graph.placeholders[name] = node
    return node


def variable(name: str, initial_value: Any, trainable: bool = True, dtype: Any = None,
             graph: Graph | None = None) -> Node:
    """A persistent tensor (a parameter or optimizer state); `.value` / `.assign` read and set it."""
    graph = graph if graph is not None else get_default_graph()  # an empty Graph is falsy (len 0)
    check_name(name, "variable")
    arr = np.array(initial_value, dtype=dtype)
    if dtype is None and arr.dtype == np.float64 and not isinstance(initial_value, np.ndarray):
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"variable '{name}': unsupported dtype {arr.dtype} (at {user_location()})")
    if name in graph.variables:
        raise ValueError(f"a variable named '{name}' already exists (created at {graph.variables[name].source})")
    node = graph.apply(_VARIABLE, (), {"name": name, "var": Variable(name, arr, trainable)})
    graph.variables[name] = node
    return node


def batch_size(like: Node, dtype: Any = None) -> Node:
    """The runtime batch size as a scalar node of `dtype` (default: like's dtype)."""
    return like.graph.apply(_BATCH, (), {"dtype": np.dtype(dtype or like.dtype)})


from .base import REGISTRY as _R  # noqa: E402

_PLACEHOLDER, _VARIABLE, _BATCH = _R["placeholder"], _R["variable"], _R["batch_size"]
