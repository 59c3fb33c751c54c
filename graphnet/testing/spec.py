"""A fuzzed graph as plain data (`Spec`), its deterministic feeds, and building it with the public API.

A spec is JSON-serialisable so that it can cross process boundaries, be saved next to a failure and be
shrunk. Values are referred to by index: leaves first (placeholders, variables, constants), then op
nodes in topological order. Dtypes are tokens: "float" is the spec's base float dtype, "other" the
other float dtype (reached through casts), anything else a numpy dtype name (bool, int32, int64).
Building with `uniform=True` maps "other" to the base dtype too: the float32 and float64 *twins* of a
spec, whose difference estimates the rounding error of each fetched element.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

import graphnet as gn
from graphnet import ops

FLOAT_TOKENS = ("float", "other")
SPECIAL_VALUES = (np.nan, np.inf, -np.inf)
JITTER_ULPS = 4.0


@dataclass
class Leaf:
    """A graph input: `kind` is placeholder (fed per call), variable (trainable if float) or constant."""

    kind: str
    shape: tuple
    dtype: str = "float"
    low: float = -2.0
    high: float = 2.0
    bound: int = 0  # integer and bool leaves: values in [0, bound)
    special: float = 0.0  # fraction of entries replaced by NaN, +inf or -inf (placeholders only)


@dataclass
class OpNode:
    """`op` is a registry op name, or "api:<name>" for a public composite function (see API_OPS)."""

    op: str
    inputs: tuple
    attrs: dict = field(default_factory=dict)


@dataclass
class Spec:
    """One fuzzed graph: its structure, how it is differentiated/trained, and how it is called."""

    id: str
    dtype: str  # the base float dtype: float32 or float64
    leaves: list
    nodes: list
    outputs: list  # value indices fetched
    mode: str = "forward"  # forward | grad | train
    loss: str = "sum"  # grad/train: scalar loss = sum or mean of the float outputs, or weighted (random grad_ys)
    optimizer: dict | None = None  # train: {"name": "Adam", "kwargs": {...}}
    batches: list = field(default_factory=lambda: [3])  # one call (training step) per entry: its batch size
    data_seed: int = 0
    threads: int = 1  # GRAPHNET_NUM_THREADS for native compiles
    backends: list = field(default_factory=lambda: ["llvm"])  # native backends compared with numpy
    jitter: int = 0  # nonzero: every float leaf value moved by a few ulps (the oracle's conditioning probe)

    # ---- structure ---------------------------------------------------------------------------
    @property
    def nvalues(self) -> int:
        return len(self.leaves) + len(self.nodes)

    def node(self, ref: int) -> OpNode | None:
        return self.nodes[ref - len(self.leaves)] if ref >= len(self.leaves) else None

    def consumers(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {r: [] for r in range(self.nvalues)}
        for k, n in enumerate(self.nodes):
            for i in n.inputs:
                out[i].append(len(self.leaves) + k)
        return out

    def op_names(self) -> list[str]:
        return sorted({n.op for n in self.nodes})

    def has_special(self) -> bool:
        return any(leaf.special > 0 for leaf in self.leaves)

    def to_json(self) -> str:
        return json.dumps(encode(asdict(self)))

    @staticmethod
    def from_json(text: str | dict) -> "Spec":
        d = decode(json.loads(text) if isinstance(text, str) else text)
        d["leaves"] = [Leaf(**leaf) for leaf in d["leaves"]]
        d["nodes"] = [OpNode(n["op"], tuple(n["inputs"]), dict(n["attrs"])) for n in d["nodes"]]
        d["outputs"], d["batches"], d["backends"] = list(d["outputs"]), list(d["batches"]), list(d["backends"])
        return Spec(**d)

    def copy(self, **changes: Any) -> "Spec":
        return replace(Spec.from_json(self.to_json()), **changes)


def encode(value: Any) -> Any:
    """JSON-ready: tuples become lists (restored by `decode`), dtype tokens {"__dtype__": token}."""
    if isinstance(value, DtypeToken):
        return {"__dtype__": str(value)}
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def decode(value: Any) -> Any:
    """The inverse of `encode`; lists become tuples (attrs, shapes) where the reader needs them."""
    if isinstance(value, dict):
        if set(value) == {"__dtype__"}:
            return DtypeToken(value["__dtype__"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(decode(v) for v in value)
    return value


class DtypeToken(str):
    """A dtype attr in a spec ("float", "other" or a numpy name), resolved when the graph is built."""


def other_float(dtype: str) -> str:
    return "float64" if dtype == "float32" else "float32"


def resolve(token: str, base: str, uniform: bool = False) -> np.dtype:
    """A dtype token as a numpy dtype for a spec of base dtype `base` (`uniform`: "other" -> base)."""
    if token == "float" or (token == "other" and uniform):
        return np.dtype(base)
    if token == "other":
        return np.dtype(other_float(base))
    return np.dtype(token)


def token_of(dtype: np.dtype, base: str) -> str:
    dtype = np.dtype(dtype)
    if dtype == np.dtype(base):
        return "float"
    return "other" if dtype.kind == "f" else dtype.name


def concrete(shape: Sequence, batch: int) -> tuple:
    return tuple(batch if d is None else int(d) for d in shape)


# ---- public composite functions the generator draws besides the registry ops -------------------
def _mean(x, axes=(), keepdims=False):
    return gn.mean(x, axes, keepdims)


def _softmax_ce_ids(logits, labels):
    return gn.losses.softmax_cross_entropy(logits, labels, reduction="none")


API_OPS: dict[str, Callable[..., gn.Node]] = {
    "api:mean": _mean,
    "api:mse": lambda pred, target: gn.losses.mse(pred, target),
    "api:bce_logits": lambda z, y: gn.losses.binary_cross_entropy(z, y, from_logits=True),
    "api:bce": lambda p, y: gn.losses.binary_cross_entropy(p, y),
    "api:softmax_ce": _softmax_ce_ids,
    "api:matmul_t": lambda a, b: a @ b.T,
    "api:resize": lambda x, **options: gn.resize(x, **options),
    "api:conv2d_transpose": lambda x, w, **options: gn.conv2d_transpose(x, w, **options),
}


def apply_op(name: str, inputs: Sequence[gn.Node], attrs: dict) -> gn.Node:
    """One spec node through the public API: `gn.ops.apply` for registry ops, else API_OPS."""
    if name in API_OPS:
        return API_OPS[name](*inputs, **attrs)
    return ops.apply(name, list(inputs), **attrs)


def resolve_attrs(attrs: dict, base: str, uniform: bool = False) -> dict:
    return {k: resolve(v, base, uniform) if isinstance(v, DtypeToken) else v for k, v in attrs.items()}


# ---- feeds ---------------------------------------------------------------------------------------
def leaf_values(spec: Spec, index: int, call: int, dtype: np.dtype, batch: int) -> np.ndarray:
    """The value of leaf `index` at call `call` (variables and constants: call -1), drawn in float64
    and rounded, so the float32 and float64 twins see the same numbers up to rounding."""
    leaf = spec.leaves[index]
    rng = np.random.default_rng([spec.data_seed, index, call + 1])
    shape = concrete(leaf.shape, batch)
    if dtype.kind in "iub":
        return rng.integers(0, max(1, leaf.bound), size=shape).astype(dtype)
    values = rng.uniform(leaf.low, leaf.high, size=shape)
    if leaf.special > 0 and values.size:
        hit = rng.random(shape) < leaf.special
        values[hit] = rng.choice(np.array(SPECIAL_VALUES), size=int(hit.sum()))
    values = values.astype(dtype)
    if spec.jitter:
        ulps = np.random.default_rng([spec.data_seed, index, call + 1, spec.jitter]).uniform(-JITTER_ULPS, JITTER_ULPS,
                                                                                            size=shape)
        with np.errstate(all="ignore"):
            values = (values * (1 + ulps * np.finfo(dtype).eps)).astype(dtype)
    return values


def grad_y_values(spec: Spec, k: int, call: int, shape: tuple, dtype: np.dtype) -> np.ndarray:
    rng = np.random.default_rng([spec.data_seed, 100_000 + k, call + 1])
    return rng.uniform(0.5, 1.5, size=shape).astype(dtype)


# ---- building --------------------------------------------------------------------------------------
@dataclass
class Built:
    """A spec built into its own graph: what to compile and how to feed each call."""

    graph: gn.Graph
    values: list  # one node per spec value
    fetches: list  # (name, node)
    updates: Any
    dtype: str  # the dtype the spec was built with (its base, or the twin's)
    uniform: bool
    grad_ys: list = field(default_factory=list)  # (placeholder name, node) of the weighted loss

    def feeds(self, spec: Spec, call: int) -> dict[str, np.ndarray]:
        batch = spec.batches[call]
        out = {}
        for i, leaf in enumerate(spec.leaves):
            if leaf.kind == "placeholder":
                node = self.values[i]
                out[node.attrs["name"]] = leaf_values(spec, i, call, node.dtype, batch)
        for k, (name, node) in enumerate(self.grad_ys):
            out[name] = grad_y_values(spec, k, call, concrete(node.shape, batch), node.dtype)
        return out

    def variables(self) -> dict[str, gn.Node]:
        return dict(self.graph.variables)


def float_outputs(spec: Spec, built_values: list) -> list[int]:
    return [r for r in spec.outputs if built_values[r].dtype.kind == "f"]


def build(spec: Spec, dtype: str | None = None, uniform: bool = False) -> Built:
    """Build `spec` in a fresh graph through the public API (base dtype `dtype`, default the spec's)."""
    base = dtype or spec.dtype
    graph = gn.Graph()
    with graph:
        values: list = []
        for i, leaf in enumerate(spec.leaves):
            values.append(_leaf_node(spec, i, leaf, resolve(leaf.dtype, base, uniform)))
        for n in spec.nodes:
            inputs = [values[i] for i in n.inputs]
            if spec.jitter and n.op in ROUNDING_DECIDED:
                inputs = _nudged(inputs, spec.jitter)
            values.append(apply_op(n.op, inputs, resolve_attrs(n.attrs, base, uniform)))
        built = Built(graph, values, [(f"out{k}", values[r]) for k, r in enumerate(spec.outputs)], None, base, uniform)
        if spec.mode in ("grad", "train"):
            _add_loss(spec, built)
    return built


# Ops whose result (or gradient) jumps where two float operands are equal: computed operands that are
# equal in exact arithmetic (log_softmax(x) and log_softmax(log_softmax(x))) are then decided by each
# backend's last-ulp rounding. The jittered reference runs move the last float operand of these ops by
# a few ulps, in opposite directions for odd and even jitter, so such elements come out unstable.
ROUNDING_DECIDED = frozenset({"equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
                              "maximum", "minimum"})


def _nudged(inputs: list, jitter: int) -> list:
    """`inputs` with the last float one scaled by 1 +- JITTER_ULPS ulps (sign from the jitter's parity)."""
    for k in reversed(range(len(inputs))):
        x = inputs[k]
        if x.dtype.kind == "f":
            step = (1 if jitter % 2 else -1) * JITTER_ULPS * float(np.finfo(x.dtype).eps)
            return inputs[:k] + [x * gn.constant(np.asarray(1 + step, x.dtype))] + inputs[k + 1:]
    return inputs


def _leaf_node(spec: Spec, i: int, leaf: Leaf, dtype: np.dtype) -> gn.Node:
    if leaf.kind == "placeholder":
        return gn.placeholder(f"x{i}", leaf.shape, dtype)
    value = leaf_values(spec, i, -1, dtype, 1)
    if leaf.kind == "variable":  # an integer variable is a counter, not a parameter
        return gn.variable(f"v{i}", value, trainable=dtype.kind == "f")
    return gn.constant(value, dtype)


def _add_loss(spec: Spec, built: Built) -> None:
    """The scalar loss over the float outputs; grad mode fetches its gradients, train mode minimizes it."""
    outs = [built.values[r] for r in float_outputs(spec, built.values)]
    if not outs:
        return
    terms = []
    for k, out in enumerate(outs):
        if spec.loss == "weighted":
            gy = gn.placeholder(f"gy{k}", _one_batch_axis(out.shape), out.dtype)
            built.grad_ys.append((f"gy{k}", gy))
            out = out * gy
        term = gn.mean(out) if spec.loss == "mean" else gn.sum(out)
        terms.append(gn.cast(term, built.dtype) if term.dtype != np.dtype(built.dtype) else term)
    loss = terms[0]
    for t in terms[1:]:
        loss = loss + t
    built.fetches.append(("loss", loss))
    if spec.mode == "grad":
        wrt = [(f"d{built.values[i].attrs['name']}", built.values[i])
               for i in differentiable_leaves(spec, built.values)]
        if wrt:
            grads = gn.gradients(loss, [node for _, node in wrt])
            built.fetches.extend((name, g) for (name, _), g in zip(wrt, grads))
    else:
        kwargs = dict(spec.optimizer["kwargs"])
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])
        built.updates = getattr(gn.optim, spec.optimizer["name"])(**kwargs).minimize(loss)


def _one_batch_axis(shape: tuple) -> tuple:
    """`shape` with every None after the first set to 1 (a placeholder has at most one batch axis)."""
    first = shape.index(None) if None in shape else len(shape)
    return tuple(1 if d is None and k > first else d for k, d in enumerate(shape))


def differentiable_leaves(spec: Spec, values: list) -> list[int]:
    """Float placeholders and variables: what grad mode differentiates with respect to."""
    return [i for i, leaf in enumerate(spec.leaves)
            if leaf.kind in ("placeholder", "variable") and values[i].dtype.kind == "f"]


def trainable_leaves(spec: Spec) -> list[int]:
    return [i for i, leaf in enumerate(spec.leaves) if leaf.kind == "variable" and leaf.dtype in FLOAT_TOKENS]


# ---- editing (used by the generator's checks and the shrinker) -------------------------------------
def prune(spec: Spec) -> Spec:
    """Drop values no output depends on and renumber (leaves stay first, order kept)."""
    live = set()
    stack = list(spec.outputs)
    while stack:
        r = stack.pop()
        if r in live:
            continue
        live.add(r)
        node = spec.node(r)
        if node is not None:
            stack.extend(node.inputs)
    leaves = [i for i in range(len(spec.leaves)) if i in live]
    nodes = [len(spec.leaves) + k for k in range(len(spec.nodes)) if len(spec.leaves) + k in live]
    new = {old: new for new, old in enumerate(leaves + nodes)}
    out = spec.copy()
    out.leaves = [spec.leaves[i] for i in leaves]
    out.nodes = [OpNode(spec.node(r).op, tuple(new[i] for i in spec.node(r).inputs), dict(spec.node(r).attrs))
                 for r in nodes]
    out.outputs = list(dict.fromkeys(new[r] for r in spec.outputs))
    return out


def static_size(shape: Sequence, batch: int = 1) -> int:
    return math.prod(concrete(shape, batch))
