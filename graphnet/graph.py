"""The graph IR: nodes (tensors), graphs, variables and structural hashing.

A `Node` is one op application: op, inputs, attributes, static shape (``None`` marks the batch
dimension, the one size fixed only at call time), dtype and the user's source line. Nodes are
immutable and interned by structure, so building the same expression twice yields one node.
"""
from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import threading
import unicodedata
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from .batchdim import one_extent, recording
from .errors import ShapeError
from .source import user_location

if TYPE_CHECKING:
    import networkx as nx

    from .ops.base import Op

Shape = tuple  # tuple[int | None, ...]; None is the batch dimension


def check_name(name: Any, what: str) -> str:
    """`name` if it is a string without control characters (C0, DEL, C1, line and paragraph
    separators) or lone surrogates: a name ends up in dumps, DOT pictures, reports and generated
    code, where such characters break the file or the tool reading it. ValueError naming it."""
    if not isinstance(name, str):
        raise TypeError(f"{what} name must be a string, got {type(name).__name__} {name!r}")
    for i, c in enumerate(name):
        category = unicodedata.category(c)
        if category in ("Cc", "Zl", "Zp"):
            raise ValueError(f"{what} name {name!r} contains the control character {c!r} at position {i}")
        if category == "Cs":
            raise ValueError(f"{what} name {name!r} contains the lone surrogate {c!r} at position {i}")
    return name


def shape_str(shape: Shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class Constant:
    """A constant's value, hashed by content so equal constants intern to one node."""

    __slots__ = ("array", "_key")

    def __init__(self, array: np.ndarray):
        self.array = np.array(array, copy=True, order="C")  # a broadcast view would copy as Fortran-like strides
        self.array.setflags(write=False)
        self._key = (self.array.dtype.str, self.array.shape, hashlib.sha1(self.array.tobytes()).hexdigest())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Constant) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        if self.array.size <= 4:
            return np.array2string(self.array, separator=",", precision=6).replace("\n", "")
        return f"<{self.array.dtype} {shape_str(self.array.shape)} #{self._key[2][:8]}>"


class Variable:
    """The persistent value behind a variable node, shared by every compiled function.

    Backends that keep a device copy register a `mirror` with `pull()`/`push()` so that
    `value` and `assign` stay coherent with the device.
    """

    def __init__(self, name: str, value: np.ndarray, trainable: bool):
        self.name = name
        self.array = np.array(value, order="C")  # (ascontiguousarray would turn a scalar into shape (1,))
        self.trainable = trainable
        self.mirrors: list[Any] = []
        self.step_lock: Any = None  # graphnet.function.StepLock: held by the steps that use it, read and write

    any_mirrors = False  # set once any variable gets a device copy: host backends then keep them coherent

    def add_mirror(self, mirror: Any) -> None:
        self.mirrors.append(mirror)
        Variable.any_mirrors = True

    def read(self) -> np.ndarray:
        with self._held():
            for mirror in self.mirrors:
                mirror.pull(self)
            return self.array.copy()

    def write(self, value: Any) -> None:
        value = np.asarray(value)
        if value.shape != self.array.shape:
            raise ValueError(f"assign to variable '{self.name}': expected shape {self.array.shape}, got {value.shape}")
        if value.dtype.kind not in "fiub":
            raise TypeError(f"assign to variable '{self.name}': cannot assign dtype {value.dtype}")
        with self._held():
            self.array[...] = value  # in place: native code holds this buffer's address
            for mirror in self.mirrors:
                mirror.push(self)

    def _held(self) -> Any:
        """Its step lock held: no step that uses the variable runs meanwhile."""
        return self.step_lock.hold() if self.step_lock is not None else contextlib.nullcontext()

    def __repr__(self) -> str:
        return self.name


class Node:
    """One op application in a graph; also the user's tensor handle (operators build new nodes).

    `fixes_batch`: the batch size N its shape rule fixed by meeting N with a static extent (its
    result is right only for that batch: see batchdim.py), else None."""

    __slots__ = ("op", "inputs", "attrs", "shape", "dtype", "source", "graph", "id", "fixes_batch", "__weakref__")
    __array_priority__ = 1000  # numpy defers `array + node` to Node.__radd__

    def __init__(self, op: "Op", inputs: tuple["Node", ...], attrs: dict, shape: Shape, dtype: np.dtype,
                 source: str, graph: "Graph", id: int, fixes_batch: int | None = None):
        self.op, self.inputs, self.attrs = op, inputs, attrs
        self.shape, self.dtype, self.source, self.graph, self.id = shape, dtype, source, graph, id
        self.fixes_batch = fixes_batch

    # ---- identity -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.attrs.get("name") or f"{self.op.name}_{self.id}"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"<{self.name}: {self.dtype} {shape_str(self.shape)} at {self.source}>"

    # Identity, as object's own (C) slots: tensors do not compare elementwise, and every pass, lowering
    # and autodiff keys dicts and sets by nodes, so a hash written in Python costs a call per lookup.
    __hash__ = object.__hash__
    __eq__ = object.__eq__

    def __bool__(self) -> bool:
        raise TypeError(f"the truth value of graph node {self.name} is unknown until the graph runs")

    # ---- variables ------------------------------------------------------------------------
    @property
    def value(self) -> np.ndarray:
        """A numpy copy of a variable's current value."""
        return self._variable().read()

    def assign(self, value: Any) -> "tuple[Node, Node] | None":
        """Set a variable's value in place (every compiled function sees it). Given a graph node instead
        (TF1's `v.assign(expr)`), change nothing and return the update `(v, expr)` for
        `gn.compile(..., updates=[...])`."""
        if isinstance(value, Node):
            return self._update(value)
        self._variable().write(value)
        return None

    def assign_add(self, value: Any) -> "tuple[Node, Node] | None":
        """`assign(v + value)`: an update for a graph node, else an in-place change now."""
        if isinstance(value, Node):
            return self._update(self + value)
        self._add_now(np.asarray(value))
        return None

    def assign_sub(self, value: Any) -> "tuple[Node, Node] | None":
        """`assign(v - value)`: an update for a graph node, else an in-place change now."""
        if isinstance(value, Node):
            return self._update(self - value)
        self._add_now(-np.asarray(value))
        return None

    def _add_now(self, delta: np.ndarray) -> None:
        var = self._variable()
        with var._held():  # one read-modify-write: no step runs between the read and the write (re-entrant)
            var.write(var.read() + delta)

    def _update(self, value: "Node") -> "tuple[Node, Node]":
        """The pair (variable, new value), checked for graph and shape at build time and cast to the
        variable's dtype."""
        self._variable()
        if value.graph is not self.graph:
            raise ValueError(f"assign to variable '{self.name}': the value belongs to another graph "
                             f"(created at {value.source})")
        if value.shape != self.shape:
            raise ShapeError(f"assign to variable '{self.name}': the value has shape {shape_str(value.shape)}, the "
                             f"variable {shape_str(self.shape)} (value created at {value.source})")
        return (self, _ops.cast(value, self.dtype))

    @property
    def trainable(self) -> bool:
        return self._variable().trainable

    def _variable(self) -> Variable:
        if self.op.name != "variable":
            raise TypeError(f"{self.name} is not a variable")
        return self.attrs["var"]

    # ---- tensor methods -------------------------------------------------------------------
    @property
    def T(self) -> "Node":
        return _ops.transpose(self)

    def sum(self, axis=None, keepdims: bool = False) -> "Node":
        return _ops.sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims: bool = False) -> "Node":
        return _ops.mean(self, axis, keepdims)

    def max(self, axis=None, keepdims: bool = False) -> "Node":
        return _ops.max(self, axis, keepdims)

    def min(self, axis=None, keepdims: bool = False) -> "Node":
        return _ops.min(self, axis, keepdims)

    def prod(self, axis=None, keepdims: bool = False) -> "Node":
        return _ops.prod(self, axis, keepdims)

    def reshape(self, *shape) -> "Node":
        return _ops.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    def __getitem__(self, key: Any) -> "Node":
        """numpy's basic indexing: ints, slices, None, Ellipsis (see ops.api.getitem)."""
        return _ops.getitem(self, key)

    def __iter__(self):  # __getitem__ alone would make a node iterable by calling it with 0, 1, 2, ...
        raise TypeError(f"graph node {self.name} is not iterable; index it (x[i]) or use gn.split")

    def _bin(self, name: str, other: Any, reverse: bool = False) -> "Node":
        fn = getattr(_ops, name)
        return fn(other, self) if reverse else fn(self, other)

    def __add__(self, o): return self._bin("add", o)
    def __radd__(self, o): return self._bin("add", o, True)
    def __sub__(self, o): return self._bin("subtract", o)
    def __rsub__(self, o): return self._bin("subtract", o, True)
    def __mul__(self, o): return self._bin("multiply", o)
    def __rmul__(self, o): return self._bin("multiply", o, True)
    def __truediv__(self, o): return self._bin("divide", o)
    def __rtruediv__(self, o): return self._bin("divide", o, True)
    def __mod__(self, o): return self._bin("mod", o)
    def __rmod__(self, o): return self._bin("mod", o, True)
    def __pow__(self, o): return self._bin("power", o)
    def __rpow__(self, o): return self._bin("power", o, True)
    def __matmul__(self, o): return self._bin("matmul", o)
    def __rmatmul__(self, o): return self._bin("matmul", o, True)
    def __lt__(self, o): return self._bin("less", o)
    def __le__(self, o): return self._bin("less_equal", o)
    def __gt__(self, o): return self._bin("greater", o)
    def __ge__(self, o): return self._bin("greater_equal", o)

    def __neg__(self):
        return _ops.negative(self)


_ops: Any = None  # graphnet.ops.api, which Node's operators and methods call


def install_op_functions(module: Any) -> None:
    """Called by graphnet.ops when it loads: the public op functions Node's operators call (graph.py
    cannot import them, the ops are built on it)."""
    global _ops
    _ops = module


_local = threading.local()


class Graph:
    """A container of interned nodes. Use as a context manager to make it the default graph."""

    def __init__(self, intern: bool = True):
        self.nodes: list[Node] = []
        self.placeholders: dict[str, Node] = {}
        self.variables: dict[str, Node] = {}
        self.intern = intern
        self._interned: dict[tuple, Node] = {}

    def __enter__(self) -> "Graph":
        _stack().append(self)
        return self

    def __exit__(self, *exc) -> None:
        _stack().pop()

    def __len__(self) -> int:
        return len(self.nodes)

    def apply(self, op: "Op", inputs: Sequence[Node], attrs: dict | None = None, source: str | None = None) -> Node:
        """Create (or find) the node `op(*inputs, **attrs)`, checking its shape and dtype rule."""
        inputs = tuple(inputs)
        attrs = dict(attrs or {})
        for x in inputs:
            if x.graph is not self:
                raise ValueError(f"{op.name}: input {x.name} belongs to another graph (created at {x.source})")
        key = (op.name, tuple(x.id for x in inputs), _freeze(attrs))
        if self.intern and key in self._interned:
            return self._interned[key]
        source = source or user_location()
        try:
            with recording() as fixed:
                shape, dtype = op.infer(inputs, attrs)
            fixes_batch = one_extent(fixed)
        except ShapeError as e:
            raise ShapeError(f"{op.name}: {e} (at {source})") from None
        node = Node(op, inputs, attrs, tuple(shape), np.dtype(dtype), source, self, len(self.nodes), fixes_batch)
        self.nodes.append(node)
        if self.intern:
            self._interned[key] = node
        return node

    def to_networkx(self, outputs: Iterable[Node] | None = None) -> nx.DiGraph:
        """A networkx DiGraph of the nodes (all, or those `outputs` depend on); edges point to consumers."""
        import networkx as nx  # (here: importing it is slow, and graphnet's own walks do without it)
        nodes = self.nodes if outputs is None else ancestors(outputs)
        g = nx.DiGraph()
        for n in nodes:
            g.add_node(n, op=n.op.name, shape=n.shape, dtype=str(n.dtype), source=n.source)
            for i, x in enumerate(n.inputs):
                g.add_edge(x, n, index=i)
        return g


def ancestors(outputs: Iterable[Node]) -> list[Node]:
    """Every node `outputs` depend on (including them), in a topological order."""
    # Kahn's algorithm taking the smallest id first (networkx's lexicographical_topological_sort,
    # without building a DiGraph: compiles call this dozens of times).
    stack, seen = list(outputs), set()
    consumers: dict[Node, list[Node]] = {}
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        consumers.setdefault(n, [])
        for x in set(n.inputs):
            consumers.setdefault(x, []).append(n)
            stack.append(x)
    pending = {n: len(set(n.inputs)) for n in consumers}
    tie = itertools.count()  # ids are unique within a graph; this keeps heap entries comparable anyway
    ready = [(n.id, next(tie), n) for n in consumers if pending[n] == 0]
    heapq.heapify(ready)
    order: list[Node] = []
    while ready:
        n = heapq.heappop(ready)[2]
        order.append(n)
        for c in consumers[n]:
            pending[c] -= 1
            if pending[c] == 0:
                heapq.heappush(ready, (c.id, next(tie), c))
    return order


def structural_hash(outputs: Sequence[Node], extra: Any = ()) -> str:
    """A canonical hash of the computation producing `outputs`, independent of node ids.

    Variables and placeholders hash by name, shape and dtype (not by value), constants by content.
    """
    digests: dict[Node, str] = {}
    for n in ancestors(outputs):
        attrs = {k: (v.name if isinstance(v, Variable) else v._key if isinstance(v, Constant) else v)
                 for k, v in n.attrs.items()}
        text = repr((n.op.name, [digests[x] for x in n.inputs], _freeze(attrs), n.shape, n.dtype.str))
        digests[n] = hashlib.sha256(text.encode()).hexdigest()
    top = repr(([digests[o] for o in outputs], extra))
    return hashlib.sha256(top.encode()).hexdigest()


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.dtype):
        return value.str
    return value


def _stack() -> list[Graph]:
    if not hasattr(_local, "stack"):
        _local.stack = [Graph()]
    return _local.stack


def get_default_graph() -> Graph:
    """The graph new nodes go into when none of their inputs names one."""
    return _stack()[-1]


def reset_default_graph() -> Graph:
    """Replace the bottom default graph with a fresh one (outside any `with Graph()`)."""
    _stack()[0] = Graph()
    return _stack()[0]
