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


def placeholder(name_or_dtype: Any = None, /, shape: Any = None, dtype: Any = None, graph: Graph | None = None, *,
                name: str | None = None) -> Node:
    """An input fed at call time by its name: `placeholder("x", (None, 2), dtype=np.float32)`; a `None`
    dimension is the batch size. TF1's order `placeholder(np.float32, (None, 2), name="x")` is accepted
    too (the name is required: a compiled function is fed by name).

    Declaring a name that exists is an error, except from the same source line with the same shape and
    dtype (a re-run notebook cell, a helper called twice), which returns the existing placeholder."""
    name, shape, dtype = _placeholder_args(name_or_dtype, shape, dtype, name)
    graph = graph if graph is not None else get_default_graph()  # an empty Graph is falsy (len 0)
    check_name(name, "placeholder")
    shape = tuple(None if d is None else int(d) for d in shape)
    if sum(d is None for d in shape) > 1:
        raise ShapeError(f"placeholder '{name}': only one dimension may be None (the batch)")
    if any(d is not None and d < 0 for d in shape):
        raise ShapeError(f"placeholder '{name}': negative dimension in {shape}")
    dtype = np.dtype(dtype)
    if name in graph.placeholders:
        old = graph.placeholders[name]
        if old.source == user_location() and old.shape == shape and old.dtype == dtype:
            return old
        raise ValueError(f"a placeholder named '{name}' already exists (created at {old.source}); {_RESET_HINT}")
    if dtype.kind not in "fiub":
        raise TypeError(f"placeholder '{name}': unsupported dtype {dtype} (at {user_location()})")
    node = graph.apply(_PLACEHOLDER, (), {"name": name, "shape": shape, "dtype": dtype})
    graph.placeholders[name] = node
    return node


_RESET_HINT = ("names are unique in a graph: choose another name, build in a fresh `with gn.Graph():`, or call "
               "gn.reset_default_graph() to start the default graph over (e.g. before re-running a notebook cell)")
_BOTH_FORMS = ("gn.placeholder('x', (None, 2), np.float32) or, in TF1's order, "
               "gn.placeholder(np.float32, (None, 2), name='x')")


def _is_dtype(value: Any) -> bool:
    if not isinstance(value, (type, np.dtype)):
        return False
    try:
        np.dtype(value)
    except TypeError:
        return False
    return True


def _placeholder_args(first: Any, shape: Any, dtype: Any, name: Any) -> tuple[str, Any, Any]:
    """(name, shape, dtype) from graphnet's order (name, shape, dtype) or TF1's (dtype, shape, name)."""
    if _is_dtype(first):  # TF1: placeholder(dtype, shape=None, name=None); a third positional is the name
        if isinstance(dtype, str) and name is None:
            dtype, name = None, dtype
        if dtype is not None:
            raise TypeError(f"placeholder: dtype given twice ({first!r} and {dtype!r}); write {_BOTH_FORMS}")
        if name is None:
            raise TypeError(f"placeholder: a name is required (a compiled function is fed by name, fn(x=...)); "
                            f"write {_BOTH_FORMS}")
        dtype = first
    elif first is None:
        if name is None:
            raise TypeError(f"placeholder: a name is required; write {_BOTH_FORMS}")
    elif not isinstance(first, str):
        raise TypeError(f"placeholder name must be a string (or, in TF1's order, the first argument a dtype), got "
                        f"{type(first).__name__} {first!r}; write {_BOTH_FORMS}")
    elif name is not None:
        raise TypeError(f"placeholder: name given twice ({first!r} and name={name!r}); write {_BOTH_FORMS}")
    else:
        name = first
    if shape is None:
        raise TypeError(f"placeholder '{name}': a shape is required (None marks the batch dimension); write "
                        f"{_BOTH_FORMS}")
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    return name, shape, np.float32 if dtype is None else dtype


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
        if graph.variables[name].source != user_location():
            raise ValueError(f"a variable named '{name}' already exists (created at {graph.variables[name].source}); "
                             f"{_RESET_HINT}")
        name = _next_free(name, graph.variables)  # the same line again (a re-run cell, a loop): TF1's W_1, W_2
    return variable_of(name, Variable(name, arr, trainable), graph)


def variable_of(name: str, var: Variable, graph: Graph) -> Node:
    """A variable node named `name` in `graph` over existing storage `var` (a layer's weights shared by
    the graphs of every model that uses the layer)."""
    check_name(name, "variable")
    if name in graph.variables:
        raise ValueError(f"a variable named '{name}' already exists (created at {graph.variables[name].source}); "
                         f"{_RESET_HINT}")
    node = graph.apply(_VARIABLE, (), {"name": name, "var": var})
    graph.variables[name] = node
    return node


def _next_free(name: str, taken: dict) -> str:
    k = 1
    while f"{name}_{k}" in taken:
        k += 1
    return f"{name}_{k}"


def batch_size(like: Node, dtype: Any = None) -> Node:
    """The runtime batch size as a scalar node of `dtype` (default: like's dtype)."""
    return like.graph.apply(_BATCH, (), {"dtype": np.dtype(dtype or like.dtype)})


from .base import REGISTRY as _R  # noqa: E402

_PLACEHOLDER, _VARIABLE, _BATCH = _R["placeholder"], _R["variable"], _R["batch_size"]
