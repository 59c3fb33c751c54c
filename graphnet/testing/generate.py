"""Seeded random graph specs over the op registry.

Every op in `graphnet.ops.REGISTRY` (and the public composites in `spec.API_OPS`) is a candidate, so a
new op is fuzzed as soon as it is registered. An op's `examples` are the starting point: their shapes
(relabelled to random sizes, ranks and broadcasts), attrs (regenerated for the attr names below, else
kept), value ranges (`low`/`high`: inputs of an op with a restricted range come from leaves drawn in
that range, or from values whose range is known to lie inside it) and integer inputs. The op's own
shape rule (`infer`) decides which proposals are valid: a proposal it rejects is simply not used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

import graphnet as gn
from graphnet.batchdim import fixed_batch
from graphnet.graph import ancestors
from graphnet.ops import REGISTRY
from graphnet.ops.base import Example

from .known import excluded
from .spec import API_OPS, DtypeToken, Leaf, OpNode, Spec, apply_op, concrete, prune, resolve_attrs, token_of

DEFAULT_RANGE = (-2.0, 2.0)


@dataclass(frozen=True)
class Profile:
    """How big and how varied the generated graphs are."""

    name: str = "default"
    max_ops: int = 8
    max_rank: int = 4
    max_dim: int = 5
    big_dims: tuple = (7, 8, 16, 17, 33)  # occasionally, to reach tiled and vectorised code paths
    big_dim_p: float = 0.06
    max_elements: int = 4096  # static elements of any value, the batch counted as max_batch
    max_batch: int = 6
    large_p: float = 0.04  # graphs allowed large values (parallel loops start at 2**14 elements)
    large_elements: int = 1 << 17
    large_dims: tuple = (64, 128, 256, 512)
    reuse_p: float = 0.75  # an input is an earlier value (not a new leaf)
    special_p: float = 0.08  # graphs whose placeholders get NaN/Inf entries
    wide_p: float = 0.1  # leaves of unrestricted ops drawn from a wide or a tiny range
    float64_p: float = 0.4
    modes: tuple = (("forward", 0.35), ("grad", 0.35), ("train", 0.3))
    threads: tuple = (1, 2)
    kinds: tuple = ()  # op kinds drawn first, with probability kinds_p (else any op)
    kinds_p: float = 0.0
    examples: tuple = ()  # (op name, Example): the profile's own starting points, instead of the op's


def _conv(strides=1, padding=0, dilations=1, groups=1, data_format="NHWC") -> dict:
    """A conv's geometry attrs (each of strides, padding, dilations the same on both axes)."""
    return dict(strides=(strides, strides), padding=((padding, padding), (padding, padding)),
                dilations=(dilations, dilations), groups=groups, data_format=data_format)


# Convolutions at the sizes that reach the native conv kernels, which the ops' own examples (a few
# elements per axis) stay below: the implicit GEMM (igemm.IGEMM_MIN_STATIC multiply-adds per image), the tap
# conv (3 channels into 32), the one-vector conv (16 filters), the narrow row conv (1 channel into
# 6), strided, dilated, NCHW and grouped forms; `grad` and `train` graphs add their gradients.
CONV_EXAMPLES = (
    ("conv2d", Example([(None, 12, 12, 16), (3, 3, 16, 32)], _conv(padding=1))),
    ("conv2d", Example([(None, 16, 16, 3), (3, 3, 3, 32)], _conv(padding=1))),
    ("conv2d", Example([(None, 14, 14, 6), (5, 5, 6, 16)], _conv())),
    ("conv2d", Example([(None, 20, 20, 1), (5, 5, 1, 6)], _conv())),
    ("conv2d", Example([(None, 11, 11, 8), (3, 3, 8, 24)], _conv(strides=2, padding=1))),
    ("conv2d", Example([(None, 12, 12, 8), (3, 3, 8, 16)], _conv(padding=2, dilations=2))),
    ("conv2d", Example([(None, 16, 10, 10), (3, 3, 16, 16)], _conv(padding=1, data_format="NCHW"))),
    ("conv2d", Example([(None, 10, 10, 16), (3, 3, 8, 16)], _conv(padding=1, groups=2))),
    ("conv2d_input_grad", Example([(None, 12, 12, 32), (3, 3, 16, 32)], dict(input_size=(12, 12), **_conv(padding=1)))),
    ("conv2d_filter_grad", Example([(None, 12, 12, 16), (None, 12, 12, 32)], dict(kernel_size=(3, 3),
                                                                                 **_conv(padding=1)))),
    ("max_pool2d", Example([(None, 12, 12, 16)], dict(ksize=(2, 2), strides=(2, 2), padding=((0, 0), (0, 0)),
                                                      dilations=(1, 1), data_format="NHWC"), smooth=False)),
    ("api:conv2d_transpose", Example([(None, 6, 6, 16), (3, 3, 8, 16)], dict(strides=2, padding="same"))),
)

PROFILES = {
    "default": Profile(),
    "small": Profile(name="small", max_ops=5, max_dim=4, big_dim_p=0.03, max_elements=512, max_batch=5, large_p=0.0),
    "deep": Profile(name="deep", max_ops=16, max_elements=2048),
    "convs": Profile(name="convs", max_ops=6, big_dims=(8, 12, 16, 24, 32), big_dim_p=0.2, max_elements=1 << 15,
                     max_batch=4, large_p=0.0, kinds=("window",), kinds_p=0.5, examples=CONV_EXAMPLES),
}


# ---- the op catalogue ------------------------------------------------------------------------------
API_EXAMPLES: dict[str, Sequence[Example]] = {
    "api:mean": REGISTRY["sum"].examples,
    "api:mse": (Example([(None, 3), (None, 3)]), Example([(2, 3, 4), (2, 3, 4)])),
    "api:bce_logits": (Example([(None, 3), (None, 3)], low=-3.0, high=3.0),),
    "api:bce": (Example([(None, 3), (None, 3)], low=0.05, high=0.95),),
    "api:softmax_ce": (Example([(None, 4), (None,)], int_inputs={1: (np.int64, 4)}),),
    "api:matmul_t": (Example([(None, 3), (4, 3)]), Example([(2, 5), (1, 5)])),
    "api:resize": (Example([(None, 4, 5, 2)], dict(size=(7, 3), method="bilinear")),
                   Example([(None, 2, 3, 4)], dict(size=(5, 2), method="bicubic", data_format="NCHW", antialias=True)),
                   Example([(None, 5, 4, 1)], dict(size=(2, 9), method="nearest",
                                                   coordinate_transformation_mode="asymmetric"))),
    "api:conv2d_transpose": (Example([(None, 3, 4, 2), (3, 3, 5, 2)], dict(strides=2, padding="same")),
                             Example([(None, 2, 3, 4), (2, 3, 3, 4)], dict(strides=(3, 2), padding=((1, 0), (0, 1)),
                                                                          output_padding=1)),
                             Example([(None, 4, 2, 3), (3, 2, 2, 4)], dict(strides=2, groups=2, data_format="NCHW"))),
}


@dataclass(frozen=True)
class Entry:
    name: str
    examples: tuple
    kind: str


def catalogue(profile: Profile | None = None) -> list[Entry]:
    """Every op the generator draws: the registry's (sources excluded) and the API composites, each
    with its examples, or the profile's where it has some for the op."""
    own: dict[str, tuple] = {}
    for name, example in profile.examples if profile is not None else ():
        own[name] = own.get(name, ()) + (example,)
    ops = [Entry(name, tuple(op.examples), op.kind) for name, op in REGISTRY.items()
           if op.kind != "source" and op.examples]
    ops += [Entry(name, tuple(API_EXAMPLES[name]), "api") for name in API_OPS]
    return [Entry(e.name, own.get(e.name, e.examples), e.kind) for e in ops]


# Inputs whose values an API function checks (a cross-entropy's constant targets must be probabilities).
SLOT_RANGES: dict[str, dict[int, tuple]] = {"api:bce_logits": {1: (0.0, 1.0)}, "api:bce": {1: (0.0, 1.0)}}


def restricted(example: Example) -> bool:
    return (example.low, example.high) != DEFAULT_RANGE


def slot_range(op: str, example: Example, i: int) -> tuple | None:
    """The range input i's values must stay in, or None for anywhere."""
    if i in SLOT_RANGES.get(op, {}):
        return SLOT_RANGES[op][i]
    return (example.low, example.high) if restricted(example) and i not in example.int_inputs else None


# ---- values known during generation ----------------------------------------------------------------
@dataclass
class Value:
    shape: tuple
    dtype: np.dtype
    range: tuple | None  # (lo, hi) the value stays within, where known
    node: Any  # its node in the scratch graph that validates proposals


@dataclass
class _State:
    """Generation in progress: `items` are leaves and op nodes in creation order (a spec lists leaves
    first; `_finish` renumbers), `values` what is known about each."""

    rng: np.random.Generator
    profile: Profile
    base: str
    large: bool = False
    items: list = field(default_factory=list)  # Leaf | OpNode (inputs index items)
    values: list = field(default_factory=list)
    scratch: Any = None
    serial: int = 0

    @property
    def nleaves(self) -> int:
        return sum(isinstance(item, Leaf) for item in self.items)


def generate(seed: int, index: int, profile: Profile = PROFILES["default"],
             backends: Sequence[str] = ("llvm",)) -> Spec:
    """The spec of graph `index` of run `seed` (the same arguments always give the same spec)."""
    rng = np.random.default_rng([seed, index])
    base = "float64" if rng.random() < profile.float64_p else "float32"
    st = _State(rng, profile, base, large=bool(rng.random() < profile.large_p), scratch=gn.Graph())
    entries = catalogue(profile)
    target = int(rng.integers(1, profile.max_ops + 1))
    added = 0
    for _ in range(target * 4):
        if added >= target:
            break
        added += _add_op(st, _next_entry(st, entries))
    if not added:
        _add_op(st, Entry("add", tuple(REGISTRY["add"].examples), "elementwise"))
    spec = _finish(st, Spec(id=f"{seed}:{index}", dtype=base, leaves=[], nodes=[], outputs=[],
                            data_seed=int(rng.integers(2**31)), backends=list(backends)))
    _choose_mode(st, spec)
    return spec


def _next_entry(st: _State, entries: list[Entry]) -> Entry:
    """A random op; sometimes one of the same kind as the last (movement after movement, as a
    transpose-reshape chain), so that lowerings which fuse neighbours meet each other."""
    last = next((item.op for item in reversed(st.items) if isinstance(item, OpNode)), None)
    kind = next((e.kind for e in entries if e.name == last), None)
    if st.profile.kinds and st.rng.random() < st.profile.kinds_p:
        entries = [e for e in entries if e.kind in st.profile.kinds]
    elif kind is not None and st.rng.random() < 0.25:
        entries = [e for e in entries if e.kind == kind]
    return entries[int(st.rng.integers(len(entries)))]


def _add_op(st: _State, entry: Entry) -> bool:
    example = entry.examples[int(st.rng.integers(len(entry.examples)))]
    for attempt in range(6):
        proposal = _propose(st, entry, example, mutate=attempt < 5)
        if proposal is not None and _commit(st, entry, example, *proposal):
            return True
    return False


def _propose(st: _State, entry: Entry, example: Example, mutate: bool):
    """Inputs (value indices, new leaves as ("new", shape, dtype)) and attrs the op accepts, or None."""
    rng = st.rng
    n = len(example.shapes)
    slots = [_slot_dtype(example, i) for i in range(n)]
    first = _pick_existing(st, entry, example, 0, slots[0], None) if rng.random() < st.profile.reuse_p else None
    if first is not None:
        x = st.values[first]
        shapes = [x.shape] + [_other_shape(st, example, i, x.shape, mutate) for i in range(1, n)]
        float_dtype = x.dtype if slots[0] is None else None
    else:
        shapes = _relabel(st, example.shapes) if mutate else [tuple(s) for s in example.shapes]
        float_dtype = None
    float_dtype = float_dtype or (np.dtype(st.base) if rng.random() < 0.85 else _other_dtype(st))
    dtypes = [float_dtype if d is None else d for d in slots]
    attrs = _propose_attrs(st, example, shapes[0] if shapes else (), mutate)
    inputs: list = []
    for i, (shape, dtype) in enumerate(zip(shapes, dtypes)):
        if i == 0 and first is not None:
            inputs.append(first)
            continue
        reuse = _pick_existing(st, entry, example, i, dtype, shape) if rng.random() < st.profile.reuse_p else None
        if reuse is None and dtype.kind == "f" and slot_range(entry.name, example, i) is None and rng.random() < 0.1:
            inputs.append(("number", (), dtype))  # a Python number in user code: a scalar constant
            continue
        inputs.append(reuse if reuse is not None else ("new", shape, dtype))
    numbers = [i for i, item in enumerate(inputs) if not isinstance(item, int) and item[0] == "number"]
    if numbers and slots[0] is None and rng.random() < 0.5:  # `1 - x`: the number first
        k = numbers[0]
        inputs[0], inputs[k] = inputs[k], inputs[0]
    return None if _validate(st, entry, inputs, attrs) is None else (inputs, attrs)


def _slot_dtype(example: Example, i: int) -> np.dtype | None:
    """The dtype an input slot needs (None: a float, chosen with the op's first float input)."""
    if i in example.int_inputs:
        return np.dtype(example.int_inputs[i][0])
    return None


def _other_dtype(st: _State) -> np.dtype:
    return np.dtype("float64" if st.base == "float32" else "float32")


def _pick_existing(st: _State, entry: Entry, example: Example, i: int, dtype: np.dtype | None,
                   shape: tuple | None) -> int | None:
    """An earlier value fitting slot i: its dtype, `shape` if given, and the slot's range if any."""
    fits = []
    bounds = slot_range(entry.name, example, i)
    for k, v in enumerate(st.values):
        if dtype is None and v.dtype.kind != "f" or dtype is not None and v.dtype != dtype:
            continue
        if shape is not None and v.shape != tuple(shape):
            continue
        if bounds is not None and (v.range is None or v.range[0] < bounds[0] or v.range[1] > bounds[1]):
            continue
        fits.append(k)
    if not fits:
        return None
    # Often the newest value, else later values more likely: chains get deep rather than wide.
    if fits[-1] == len(st.values) - 1 and st.rng.random() < 0.4:
        return fits[-1]
    weights = np.arange(1, len(fits) + 1, dtype=float)
    return fits[int(st.rng.choice(len(fits), p=weights / weights.sum()))]


def _random_dim(st: _State) -> int:
    if st.large and st.rng.random() < 0.6:
        return int(st.rng.choice(st.profile.large_dims))
    if st.rng.random() < st.profile.big_dim_p:
        return int(st.rng.choice(st.profile.big_dims))
    return int(st.rng.integers(2, st.profile.max_dim + 1))


def _relabel(st: _State, shapes: Sequence[tuple]) -> list[tuple]:
    """The example's shapes with each distinct size mapped consistently to a random one (sometimes 1,
    which turns an axis into a broadcast), the batch sometimes made static, sometimes a new leading axis."""
    rng = st.rng
    sizes = sorted({d for s in shapes for d in s if d is not None and d > 1})
    mapping: dict = {d: (1 if rng.random() < 0.12 else _random_dim(st)) for d in sizes}
    if rng.random() < 0.15:
        mapping[None] = _random_dim(st)
    out = [tuple(mapping.get(d, d) for d in s) for s in shapes]
    if rng.random() < 0.15:
        lead = _random_dim(st)
        out = [(lead,) + s for s in out]
    if len(out) > 1 and rng.random() < 0.1:
        k = int(rng.integers(1, len(out)))
        out[k] = ()
    return out


def _other_shape(st: _State, example: Example, i: int, first: tuple, mutate: bool) -> tuple:
    """A shape for input i given input 0's: the example's mapped onto it, the same, a broadcast of it,
    a scalar, or the example's own (the shape rule rejects what does not fit)."""
    rng = st.rng
    ex0, exi = tuple(example.shapes[0]), tuple(example.shapes[i])
    mapping = dict(zip(ex0, first)) if len(ex0) == len(first) else {}
    mapped = tuple(mapping.get(d, d if d is None or d == 1 else _random_dim(st)) for d in exi)
    options = [mapped, mapped, first, first]
    if mutate:
        dropped = tuple(1 if rng.random() < 0.4 else d for d in first)
        suffix = first[int(rng.integers(0, len(first) + 1)):] if first else ()
        options += [dropped, suffix, (), exi]
    return options[int(rng.integers(len(options)))]


def _propose_attrs(st: _State, example: Example, first: tuple, mutate: bool) -> dict:
    attrs = dict(example.attrs)
    for name, value in example.attrs.items():
        if isinstance(value, np.dtype):
            attrs[name] = DtypeToken(token_of(value, st.base) if value.kind != "f" else
                                     ("float" if not mutate or st.rng.random() < 0.5 else "other"))
        elif mutate and st.rng.random() < 0.8:
            attrs[name] = _attr_value(st, name, value, first, attrs)
    return attrs


def _attr_value(st: _State, name: str, value: Any, first: tuple, attrs: dict) -> Any:
    """A random value for an attr the generator knows by name, else the example's."""
    rng, ndim = st.rng, len(first)
    if name == "perm":
        return tuple(int(p) for p in rng.permutation(ndim))
    if name == "axes":
        k = int(rng.integers(0, ndim + 1)) if rng.random() > 0.1 else 0
        return tuple(sorted(int(a) for a in rng.choice(ndim, size=k, replace=False))) if ndim else ()
    if name == "keepdims":
        return bool(rng.random() < 0.5)
    if name == "axis":
        return int(rng.integers(ndim)) if ndim else 0
    if name == "shape":
        return _reshape_target(st, first) if rng.random() < 0.5 else _broadcast_target(st, first)
    if name == "alpha":
        return float(np.round(rng.uniform(0.01, 0.5), 3))
    if name == "lo":
        return float(np.round(rng.uniform(-1.5, 0.3), 3))
    if name == "hi":
        lo = attrs.get("lo", -0.5)
        return float(np.round(lo + rng.uniform(0.1, 2.0), 3))
    if name == "rate":
        return float(np.round(rng.uniform(0.1, 0.7), 3))
    if name == "seed":
        return int(rng.integers(2**31))
    return value


def _reshape_target(st: _State, shape: tuple) -> tuple:
    """A random shape with the same static element count (the batch axis kept, somewhere)."""
    rng = st.rng
    static = math.prod(d for d in shape if d is not None)
    factors = []
    n = static
    for p in (2, 3, 5, 7, 11, 13, 17, 31):
        while n % p == 0:
            factors.append(p)
            n //= p
    if n > 1:
        factors.append(n)
    rng.shuffle(factors)
    ndims = int(rng.integers(1, min(st.profile.max_rank, max(1, len(factors))) + 1))
    dims = [1] * ndims
    for f in factors:
        dims[int(rng.integers(ndims))] *= f
    if rng.random() < 0.2:
        dims.insert(int(rng.integers(len(dims) + 1)), 1)
    if None in shape:
        dims.insert(int(rng.integers(len(dims) + 1)), None)
    if rng.random() < 0.2:
        static_axes = [k for k, d in enumerate(dims) if d is not None]
        if static_axes:
            dims[int(rng.choice(static_axes))] = -1
    return tuple(dims)


def _broadcast_target(st: _State, shape: tuple) -> tuple:
    """`shape` with some size-1 axes expanded and leading axes added (at most one None overall)."""
    rng = st.rng
    dims = list(shape)
    has_none = None in dims
    for k, d in enumerate(dims):
        if d == 1 and rng.random() < 0.6:
            if not has_none and rng.random() < 0.3:
                dims[k], has_none = None, True
            else:
                dims[k] = _random_dim(st)
    for _ in range(int(rng.integers(0, 3))):
        if not has_none and rng.random() < 0.4:
            dims.insert(0, None)
            has_none = True
        else:
            dims.insert(0, _random_dim(st))
    return tuple(dims)


# ---- validating and committing a proposal ------------------------------------------------------------
def _scratch_input(st: _State, item: Any) -> gn.Node:
    if isinstance(item, int):
        return st.values[item].node
    _, shape, dtype = item
    st.serial += 1
    return gn.placeholder(f"s{st.serial}", shape, dtype, graph=st.scratch)


def _validate(st: _State, entry: Entry, inputs: list, attrs: dict) -> gn.Node | None:
    """The op applied in the scratch graph, or None where its shape rule (or a size limit) says no."""
    try:
        with st.scratch:
            nodes = [_scratch_input(st, item) for item in inputs]
            node = apply_op(entry.name, nodes, resolve_attrs(attrs, st.base))
    except (gn.ShapeError, ValueError, TypeError):
        return None
    if excluded(entry.name, nodes, attrs, node):
        return None
    if None in node.shape and not any(None in n.shape for n in nodes):
        return None  # a batch axis from nowhere: no placeholder would set its size (a ValueError by design)
    try:  # a shape rule may fix N (a static extent met it): one graph cannot fix it to two sizes
        fixed_batch(ancestors([v.node for v in st.values] + [node]))  # a composite fixes it inside
    except gn.ShapeError:
        return None
    shapes = [node.shape] + [n.shape for n in nodes]
    limit = st.profile.large_elements if st.large else st.profile.max_elements
    if any(len(s) > st.profile.max_rank or math.prod(concrete(s, st.profile.max_batch)) > limit for s in shapes):
        return None
    if sum(1 for item in inputs if not isinstance(item, int)) + st.nleaves > 10:
        return None
    return node


def _commit(st: _State, entry: Entry, example: Example, inputs: list, attrs: dict) -> bool:
    """Add the proposal's new leaves and its node; False (nothing added) where the op refuses the
    leaves' kinds (a loss refusing a trainable target)."""
    before = len(st.items)
    refs = [item if isinstance(item, int) else
            _new_leaf(st, slot_range(entry.name, example, i), example, i, item[1], item[2], item[0] == "number")
            for i, item in enumerate(inputs)]
    try:
        with st.scratch:
            node = apply_op(entry.name, [st.values[r].node for r in refs], resolve_attrs(attrs, st.base))
    except (gn.ShapeError, ValueError, TypeError):
        del st.items[before:], st.values[before:]
        return False
    st.items.append(OpNode(entry.name, tuple(refs), attrs))
    st.values.append(Value(node.shape, node.dtype, _range_of(st, entry, refs, attrs, node), node))
    return True


ROUND_NUMBERS = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 3.0)


def _new_leaf(st: _State, bounds: tuple | None, example: Example, i: int, shape: tuple, dtype: np.dtype,
              number: bool = False) -> int:
    """Append a leaf for input slot i of an op with this example (values within `bounds` where given);
    returns its item index."""
    rng = st.rng
    if number:
        value = float(rng.choice(ROUND_NUMBERS))
        leaf = Leaf("constant", (), token_of(dtype, st.base), value, value)
        known = (value, value)
    elif dtype.kind in "iub":
        bound = 2 if dtype.kind == "b" else int(example.int_inputs.get(i, (None, 4))[1])
        kind = "constant" if None not in shape and rng.random() < 0.3 else "placeholder"
        if dtype.kind in "iu" and shape == ():
            kind = "variable"  # an integer scalar is a counter (dropout's step): training advances it
        leaf = Leaf(kind, tuple(shape), dtype.name, bound=bound)
        known = None
    else:
        low, high = bounds if bounds is not None else _unrestricted_range(st)
        kind = "placeholder"
        if None not in shape:
            kind = str(rng.choice(["placeholder", "variable", "constant"], p=[0.5, 0.35, 0.15]))
        if kind == "variable" and bounds is not None:
            low = low + 0.1 * (high - low)  # training steps move variables: stay inside the op's range
        leaf = Leaf(kind, tuple(shape), token_of(dtype, st.base), float(low), float(high))
        known = (float(low), float(high))
    st.serial += 1
    if leaf.kind == "variable":  # (losses refuse targets that depend on trainable variables)
        node = gn.variable(f"s{st.serial}", np.zeros(shape, dtype), trainable=dtype.kind == "f", graph=st.scratch)
    else:
        node = gn.placeholder(f"s{st.serial}", shape, dtype, graph=st.scratch)
    st.items.append(leaf)
    st.values.append(Value(tuple(shape), np.dtype(dtype), known, node))
    return len(st.items) - 1


def _unrestricted_range(st: _State) -> tuple:
    r = st.rng.random()
    if r < st.profile.wide_p / 2:
        return (-20.0, 20.0)
    if r < st.profile.wide_p:
        return (-1e-3, 1e-3)
    return DEFAULT_RANGE


def _range_of(st: _State, entry: Entry, refs: list, attrs: dict, node: gn.Node) -> tuple | None:
    """Where the new value stays: movement and max keep their input's range; an elementwise op's
    range is measured on a grid over its inputs' ranges (padded); otherwise unknown."""
    op = REGISTRY.get(entry.name)
    if op is None or node.dtype.kind != "f":
        return None
    first = st.values[refs[0]]
    if op.kind == "movement" or op.name == "max":
        return first.range
    if op.kind != "elementwise" or op.needs_out_shape:
        return None
    axes = []
    floats = sum(1 for r in refs if st.values[r].dtype.kind == "f")
    points = {0: 1, 1: 257, 2: 65}.get(floats, 17)
    for k, r in enumerate(refs):
        v = st.values[r]
        if v.dtype.kind == "b":
            axis = np.array([False, True])
        elif v.dtype.kind in "iu":
            axis = np.arange(8).astype(v.dtype)
        elif v.range is None:
            return None
        else:
            axis = np.linspace(v.range[0], v.range[1], points).astype(v.dtype)
        axes.append(axis.reshape([-1 if j == k else 1 for j in range(len(refs))]))
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(op.numpy(*axes, **resolve_attrs(attrs, st.base)), np.float64)
    except Exception:
        return None
    if out.size == 0 or not np.all(np.isfinite(out)):
        return None
    lo, hi = float(out.min()), float(out.max())
    pad = 0.05 * (hi - lo) + 1e-6
    return (lo - pad, hi + pad)


def _finish(st: _State, spec: Spec) -> Spec:
    """Pick the outputs (every sink, some intermediates) and write the items as a spec, leaves first."""
    nodes = [k for k, item in enumerate(st.items) if isinstance(item, OpNode)]
    used = {i for k in nodes for i in st.items[k].inputs}
    outputs = [k for k in nodes if k not in used or st.rng.random() < 0.15] or nodes[-1:]
    order = [k for k, item in enumerate(st.items) if isinstance(item, Leaf)] + nodes
    new = {old: new for new, old in enumerate(order)}
    spec.leaves = [st.items[k] for k in order[:len(order) - len(nodes)]]
    spec.nodes = [OpNode(st.items[k].op, tuple(new[i] for i in st.items[k].inputs), st.items[k].attrs) for k in nodes]
    spec.outputs = [new[k] for k in outputs]
    return prune(spec)


def _choose_mode(st: _State, spec: Spec) -> None:
    rng, profile = st.rng, st.profile
    names, weights = zip(*profile.modes)
    spec.mode = str(rng.choice(names, p=np.array(weights) / sum(weights)))
    spec.loss = str(rng.choice(["sum", "mean", "weighted"]))
    spec.threads = int(rng.choice(profile.threads))
    floats = [r for r in spec.outputs if _dtype_of(spec, r).kind == "f"]
    if not floats:
        spec.mode = "forward"
    if spec.mode == "train" and not _ensure_variable(spec, floats):
        spec.mode = "grad"
    if spec.mode == "train":
        spec.optimizer = random_optimizer(rng)
        big = int(rng.integers(2, profile.max_batch + 1))
        steps = [big] * int(rng.integers(1, 3)) + [int(rng.integers(1, big))]
        spec.batches = steps if rng.random() < 0.7 else steps[::-1]
    else:
        spec.batches = [int(rng.integers(1, profile.max_batch + 1)) for _ in range(int(rng.integers(1, 4)))]
    _feed_the_fixed_batch(spec)
    if rng.random() < profile.special_p:
        for leaf in spec.leaves:
            if leaf.kind == "placeholder" and leaf.dtype in ("float", "other"):
                leaf.special = float(np.round(rng.uniform(0.05, 0.25), 3))


def _feed_the_fixed_batch(spec: Spec) -> None:
    """Where a shape rule fixed N (TF1's rule: a static extent met the batch), every call feeds that
    batch (another one is an error by design). A loss or gradient fixing it to a second size, or a
    gradient that does not exist (through max pooling's gradient), makes the spec forward-only."""
    from .spec import build
    try:
        fixed = fixed_batch(build(spec).graph.nodes)
    except (gn.ShapeError, gn.NotDifferentiableError):
        spec.mode, spec.optimizer = "forward", None
        fixed = fixed_batch(build(spec).graph.nodes)
    if fixed is not None:
        spec.batches = [fixed.size] * len(spec.batches)


def _dtype_of(spec: Spec, ref: int) -> np.dtype:
    """A value's dtype, by building the spec (cheap: a handful of nodes)."""
    from .spec import build
    return build(spec.copy(mode="forward")).values[ref].dtype


def _ensure_variable(spec: Spec, float_outputs: list[int]) -> bool:
    """Train mode needs a float variable with a differentiable path to the loss: turn static float
    placeholders under the outputs into variables until the optimizer finds one."""
    from .spec import build
    ancestors, stack = set(), list(float_outputs)
    while stack:
        r = stack.pop()
        if r not in ancestors:
            ancestors.add(r)
            node = spec.node(r)
            stack.extend(node.inputs if node is not None else ())
    candidates = [i for i, leaf in enumerate(spec.leaves) if i in ancestors and leaf.kind == "placeholder"
                  and leaf.dtype in ("float", "other") and None not in leaf.shape]
    trial = spec.copy(optimizer={"name": "SGD", "kwargs": {"lr": 0.1}})
    for i in [None] + candidates:
        if i is not None:
            trial.leaves[i].kind = spec.leaves[i].kind = "variable"
        try:
            build(trial)
            return True
        except ValueError:  # no differentiable path yet, or a loss refusing a trainable target
            if i is not None:
                trial.leaves[i].kind = spec.leaves[i].kind = "placeholder"
    return False


OPTIMIZERS = ("SGD", "Momentum", "Adagrad", "Adadelta", "RMSProp", "Adam", "AdamW")


def random_optimizer(rng: np.random.Generator) -> dict:
    """An optimizer of gn.optim with random hyper-parameters (every option of each is reached)."""
    name = str(rng.choice(OPTIMIZERS))
    pick = lambda *options: options[int(rng.integers(len(options)))]  # noqa: E731
    kw: dict[str, Any] = {"lr": pick(0.01, 0.05, 0.1)}
    if name == "SGD":
        kw["momentum"] = pick(0.0, 0.9)
        kw["nesterov"] = bool(kw["momentum"] and rng.random() < 0.5)
        kw["dampening"] = 0.0 if kw["nesterov"] or not kw["momentum"] else pick(0.0, 0.1)
        kw["weight_decay"] = pick(0.0, 0.01)
    elif name == "Momentum":
        kw.update(nesterov=bool(rng.random() < 0.5), weight_decay=pick(0.0, 0.01))
    elif name == "Adagrad":
        kw.update(lr_decay=pick(0.0, 0.01), weight_decay=pick(0.0, 0.01), initial_accumulator_value=pick(0.0, 0.1))
    elif name == "Adadelta":
        kw.update(lr=pick(1.0, 0.5), rho=pick(0.9, 0.95), weight_decay=pick(0.0, 0.01))
    elif name == "RMSProp":
        kw.update(alpha=pick(0.99, 0.9), weight_decay=pick(0.0, 0.01), momentum=pick(0.0, 0.9),
                  centered=bool(rng.random() < 0.5))
    else:
        kw.update(betas=pick((0.9, 0.999), (0.8, 0.99)), weight_decay=pick(0.0, 0.01), amsgrad=bool(rng.random() < 0.5))
    if rng.random() < 0.2:
        kw["clipnorm"] = pick(0.5, 1.0)
    return {"name": name, "kwargs": kw}
