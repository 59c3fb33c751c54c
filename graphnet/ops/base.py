"""The op protocol and the registry every pass, backend and test iterates over.

An op is one object holding everything about it: its shape/dtype rule (`infer`), its numpy
reference (`numpy`), its gradient written in graphnet ops (`grad`), and how backends lower it:
elementwise ops give a scalar expression over a builder `s` (`scalar`), composite ops expand into
simpler graph ops (`expand`); reductions, matmul and movement ops are lowered by kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..batchdim import fix_batch
from ..errors import ShapeError
from ..graph import Constant, Graph, Node, get_default_graph, shape_str
from ..source import user_location

REGISTRY: dict[str, "Op"] = {}

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass
class Example:
    """Sample inputs for the registry-driven tests: shapes (None = batch), attrs, value range."""

    shapes: Sequence[tuple]
    attrs: dict = field(default_factory=dict)
    low: float = -2.0
    high: float = 2.0
    int_inputs: dict = field(default_factory=dict)  # input index -> (dtype, exclusive upper bound)
    smooth: bool = True  # second derivatives are checked where True


class Op:
    """Base class; subclasses set `name` and `kind` and override what applies to them."""

    name: str = ""
    kind: str = "elementwise"  # source | elementwise | reduce | matmul | movement | gather | scatter | composite
    differentiable: bool = True
    needs_out_shape: bool = False  # numpy() also receives out_shape= (the batch size resolved)
    signature: str = ""  # "unary" / "binary": the public function gn.<name>(x) / (a, b) is generated
    #                      from the registry (ops/api.py); otherwise api.py has a hand-written one
    examples: Sequence[Example] = ()

    def infer(self, inputs: Sequence[Node], attrs: dict) -> tuple[tuple, np.dtype]:
        raise NotImplementedError

    def numpy(self, *args: np.ndarray, **attrs: Any) -> np.ndarray:
        raise NotImplementedError

    def grad(self, node: Node, g: Node) -> list[Node | None]:
        """Gradients for each input given the output gradient `g` (None: zero / not differentiable)."""
        raise NotImplementedError(f"no gradient rule for {self.name}")

    def scalar(self, s: Any, *args: Any, **attrs: Any) -> Any:
        """Elementwise ops: the scalar expression over builder `s` (see ops/scalar.py)."""
        raise NotImplementedError

    def expand(self, node: Node) -> Node:
        """Composite ops: the same value built from primitive ops (used before lowering)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Op({self.name})"


def register(cls: type[Op]) -> type[Op]:
    op = cls()
    if op.name in REGISTRY:
        raise ValueError(f"op {op.name} registered twice")
    REGISTRY[op.name] = op
    return cls


def graph_of(values: Sequence[Any]) -> Graph:
    for v in values:
        if isinstance(v, Node):
            return v.graph
    return get_default_graph()


def constant(value: Any, dtype: Any = None, graph: Graph | None = None) -> Node:
    """A constant node from a Python number or numpy array."""
    arr = np.asarray(value, dtype=dtype)
    if arr.dtype == np.float64 and dtype is None and not isinstance(value, np.ndarray):
        arr = arr.astype(np.float32)  # Python floats default to float32, as everywhere in graphnet
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"cannot make a constant of dtype {arr.dtype} (at {user_location()})")
    return (graph if graph is not None else get_default_graph()).apply(REGISTRY["constant"], (), {"value": Constant(arr)})


def promote(values: Sequence[Any]) -> list[Node]:
    """Turn the non-node operands of an op into constants matching the node operands' dtype."""
    graph = graph_of(values)
    like = next((v.dtype for v in values if isinstance(v, Node) and v.dtype.kind != "b"), None)
    out = []
    for v in values:
        if isinstance(v, Node):
            out.append(v)
            continue
        arr = np.asarray(v)
        if like is not None and like.kind == "f" and arr.dtype.kind in "fiub":
            arr = arr.astype(like)  # numbers and arrays are weakly typed: they take the tensor's dtype
        elif like is not None and like.kind in "iu" and arr.dtype.kind in "iub":
            arr = arr.astype(like)
        out.append(constant(arr, graph=graph))
    return out


def apply(op_name: str, inputs: Sequence[Any], **attrs: Any) -> Node:
    nodes = promote(inputs)
    return graph_of(nodes).apply(REGISTRY[op_name], nodes, attrs)


def broadcast_shapes(*shapes: tuple) -> tuple:
    """numpy broadcasting, where None (the batch size N) meeting a static extent k > 1 gives k and
    fixes N == k (batchdim.py); 1 broadcasts against N as against any extent."""
    ndim = max(len(s) for s in shapes)
    out = []
    for axis in range(ndim):
        dims = [s[axis - ndim + len(s)] for s in shapes if axis - ndim + len(s) >= 0]
        known = {d for d in dims if d != 1}
        if len(known) == 2 and None in known:
            (static,) = known - {None}
            known = {fix_batch(static)}
        if len(known) > 1:
            raise ShapeError("cannot broadcast shapes " + " and ".join(shape_str(s) for s in shapes))
        out.append(known.pop() if known else 1)
    return tuple(out)


def same_dtype(inputs: Sequence[Node]) -> np.dtype:
    dtypes = {x.dtype for x in inputs}
    if len(dtypes) > 1:
        raise ShapeError("dtype mismatch: " + " vs ".join(str(x.dtype) for x in inputs) + " (use gn.cast)")
    return inputs[0].dtype


def require_float(x: Node, what: str = "input") -> None:
    if x.dtype not in FLOATS:
        raise ShapeError(f"{what} must be float32 or float64, got {x.dtype}")


def normalize_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(f"axis {a} is out of range for rank {ndim}")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {axis}")
    return tuple(sorted(out))

