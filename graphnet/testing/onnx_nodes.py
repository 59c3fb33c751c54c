"""ONNX models as graphnet graphs: the ONNX backend node tests as an external reference for the
ops' semantics (`tests/test_onnx_nodes.py`).

`translate(model, inputs)` builds a graphnet graph from an ONNX model's nodes: graph inputs become
placeholders with the test data's shapes, initializers and Constant nodes constants, and the inputs
an op needs while the graph is built (a Reshape's shape, a Slice's bounds, a Pad's widths: graphnet's
shapes are static) constants taken from the data. `RULES` maps each ONNX op type to a function of
the node (its attributes and opset) and its inputs that returns the graphnet expression. ONNX's
NCHW images map to graphnet's NCHW convolutions and pooling; a 1-D one is a 2-D one of height 1.

What the translator cannot express exactly (an attribute value graphnet lacks, an unsupported
dtype) raises `Unsupported` with the reason: it never approximates. Needs the `onnx` package.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

import graphnet as gn
from graphnet.graph import Node
from graphnet.ops.elementwise import SELU_ALPHA, SELU_SCALE
from graphnet.ops.resizing import COORDINATE_MODES, axis_taps, resample

# dtypes graphnet computes in (float16 and the narrow ONNX types it does not)
DTYPES = {np.dtype(t) for t in (np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8,
                                np.uint16, np.uint32, np.uint64, np.bool_)}
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class Unsupported(Exception):
    """The model uses something graphnet cannot express exactly; the message says what."""


@dataclass(frozen=True)
class OnnxNode:
    """What a rule reads of one ONNX node: its type, attributes, opset and output count."""

    op_type: str
    attrs: dict
    opset: int
    outputs: int

    def get(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


@dataclass(frozen=True)
class Rule:
    build: Callable[[OnnxNode, list], Any]
    static: tuple[int, ...] = ()  # input slots known while building: shapes, bounds, widths, axes
    training: Callable[[OnnxNode], bool] | None = None  # the node computes its training form


RULES: dict[str, Rule] = {}


def rule(*op_types: str, static: tuple[int, ...] = (), training: Callable[[OnnxNode], bool] | None = None
         ) -> Callable:
    def register(fn: Callable) -> Callable:
        for op_type in op_types:
            RULES[op_type] = Rule(fn, static, training)
        return fn
    return register


@dataclass
class Translation:
    """A model as a graphnet graph: its feeds (placeholder name -> the data set's value), its
    outputs (nodes, or arrays where an output is a constant) and the mode to compile it in."""

    graph: gn.Graph
    feeds: dict[str, np.ndarray]
    outputs: list
    training: bool = False  # compile in training (batch statistics)


# ---- translation ------------------------------------------------------------------------------
def _decode(value: Any) -> Any:
    import onnx
    from onnx import numpy_helper
    if isinstance(value, onnx.TensorProto):
        return _array(numpy_helper.to_array(value))
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (list, tuple)):
        return [_decode(v) for v in value]
    return value


def _array(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype not in DTYPES:
        raise Unsupported(f"dtype {a.dtype} (graphnet computes in {', '.join(sorted(str(d) for d in DTYPES))})")
    return a


def to_array(value: Any) -> Any:
    """A test data set's value as a numpy array (a TensorProto decoded; other kinds as they are)."""
    import onnx
    from onnx import numpy_helper
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def _input(name: str, value: Any) -> np.ndarray:
    value = to_array(value)
    if not isinstance(value, (np.ndarray, np.generic)):
        raise Unsupported(f"input {name!r} is a {type(value).__name__}, not a tensor")
    return _array(np.asarray(value))


def _attributes(node: Any) -> dict:
    from onnx import helper
    return {a.name: _decode(helper.get_attribute_value(a)) for a in node.attribute}


def translate(model: Any, inputs: Sequence[np.ndarray], graph: gn.Graph | None = None,
              prefix: str = "") -> Translation:
    """Build `model`'s graph in `graph` (default: a new one), its placeholders named `prefix` +
    "input<i>"; `inputs` (the graph inputs' values, in order) give the placeholders' shapes and the
    values of inputs used where a constant is needed."""
    graph_proto = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    initialized = {t.name for t in graph_proto.initializer}
    names = [i.name for i in graph_proto.input if i.name not in initialized]
    if len(names) != len(inputs):
        raise ValueError(f"the model has {len(names)} inputs, the data set {len(inputs)}")
    for value in graph_proto.input:
        if not value.type.HasField("tensor_type"):
            raise Unsupported(f"input {value.name!r} is not a tensor")
    static = set()
    for node in graph_proto.node:
        if node.domain not in ("", "ai.onnx"):
            raise Unsupported(f"operator domain {node.domain!r}")
        if node.op_type not in RULES:
            raise Unsupported(f"no rule for ONNX op {node.op_type}")
        static.update(node.input[i] for i in RULES[node.op_type].static if i < len(node.input))
    modes = {bool(RULES[node.op_type].training(_onnx_node(node, opset)))
             for node in graph_proto.node if RULES[node.op_type].training}
    if len(modes) > 1:
        raise Unsupported("nodes in training mode beside nodes in inference mode (graphnet compiles one mode)")
    graph = gn.Graph() if graph is None else graph
    env: dict[str, Any] = {"": None}
    feeds = {}
    with graph:
        for t in graph_proto.initializer:
            env[t.name] = _decode(t)
        for i, (name, value) in enumerate(zip(names, inputs)):
            value = _input(name, value)
            if name in static:
                env[name] = value
            else:
                feeds[f"{prefix}input{i}"] = value
                env[name] = gn.placeholder(f"{prefix}input{i}", value.shape, value.dtype)
        for node in graph_proto.node:
            r = RULES[node.op_type]
            ins = [env[name] for name in node.input]
            for slot in r.static:
                if slot < len(ins) and isinstance(ins[slot], Node):
                    raise Unsupported(f"{node.op_type}: input {slot} must be a constant (graphnet's shapes are static)")
            outputs = list(node.output)
            result = r.build(_onnx_node(node, opset), ins)
            result = list(result) if isinstance(result, (list, tuple)) else [result]
            if static.intersection(outputs) and not any(isinstance(v, Node) for v in ins):
                result = [_folded(v) for v in result]  # a shape computed from constants, where one is needed
            if len(result) < len(outputs):
                raise Unsupported(f"{node.op_type}: output {len(result)} ({outputs[len(result)]!r})")
            env.update((name, value) for name, value in zip(outputs, result) if name)
    return Translation(graph, feeds, [env[o.name] for o in graph_proto.output], modes == {True})


def _folded(value: Any) -> Any:
    """A node of constants as its value (the numpy backend evaluates it): a later node needs it static."""
    if not isinstance(value, Node):
        return value
    return _array(np.asarray(gn.compile(value, backend="numpy")()))


def _onnx_node(node: Any, opset: int) -> OnnxNode:
    return OnnxNode(node.op_type, _attributes(node), opset, len(node.output))


def run(model: Any, inputs: Sequence[np.ndarray], backend: str) -> list[np.ndarray]:
    """`model`'s outputs on `inputs`, computed by graphnet's `backend` ("numpy", "llvm", "opencl")."""
    return _run_together([translate(model, inputs)], backend)[0]


def run_many(runs: Sequence[tuple[Any, Sequence[np.ndarray]]], backend: str) -> list:
    """Each (model, inputs) pair's outputs, as `run` gives them, or the exception it raised. The
    translations of one mode share one graph and one compiled function (a compile per model would
    cost more than the models' code); where that compile or call fails, each runs alone."""
    results: list = [None] * len(runs)
    modes: dict[bool, list] = {}
    graph = {False: gn.Graph(), True: gn.Graph()}
    for k, (model, inputs) in enumerate(runs):
        try:
            probe = translate(model, inputs)  # the mode, and Unsupported before touching a shared graph
            modes.setdefault(probe.training, []).append((k, translate(model, inputs, graph[probe.training],
                                                                          f"m{k}_")))
        except Unsupported as e:
            results[k] = e
    for group in modes.values():
        try:
            outputs = _run_together([t for _, t in group], backend)
        except Exception:
            outputs = [_run_alone(runs[k], backend) for k, _ in group]
        for (k, _), out in zip(group, outputs):
            results[k] = out
    return results


def _run_alone(model_inputs: tuple[Any, Sequence[np.ndarray]], backend: str) -> Any:
    try:
        return run(*model_inputs, backend)
    except Exception as e:  # the caller reports it with the model's name
        return e


def _run_together(translations: Sequence[Translation], backend: str) -> list[list[np.ndarray]]:
    """The outputs of translations built in one graph (of one mode), from one compiled function."""
    fetches = [out for t in translations for out in t.outputs if isinstance(out, Node)]
    values = iter([])
    if fetches:
        feeds = {name: value for t in translations for name, value in t.feeds.items()}
        with translations[0].graph:
            fn = gn.compile(fetches, backend=backend, training=translations[0].training)
            values = iter(fn(**feeds))
    return [[np.asarray(next(values)) if isinstance(out, Node) else np.asarray(out) for out in t.outputs]
            for t in translations]


# ---- the ONNX node test cases ------------------------------------------------------------------
@dataclass
class Case:
    """One ONNX backend test: a model and its data sets of (inputs, expected outputs)."""

    name: str
    model: Any
    data_sets: list
    rtol: float = 1e-3
    atol: float = 1e-7

    @property
    def op_types(self) -> list[str]:
        return [n.op_type for n in self.model.graph.node]


def generated_cases(seed: int = 0) -> list[Case]:
    """Every node test that onnx's own case generators produce (`onnx.backend.test.case.node`: the
    cases behind onnx's `data/node` folder), the random ones drawn with numpy's global generator
    seeded with `seed`."""
    from onnx.backend.test.case import node as node_cases
    import warnings
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cases = node_cases.collect_testcases()
    finally:
        np.random.set_state(state)
    return [Case(c.name, c.model, [(list(i), list(o)) for i, o in c.data_sets], c.rtol, c.atol)
            for c in cases if c.model is not None and c.data_sets]


def data_dirs() -> list[str]:
    """onnx's shipped test-case folders holding model.onnx and test_data_set_* (node, where the
    package has it; the PyTorch-converted and PyTorch-operator ones; simple)."""
    import onnx
    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
    return [os.path.join(root, kind) for kind in ("node", "pytorch-converted", "pytorch-operator", "simple")
            if os.path.isdir(os.path.join(root, kind))]


def stored_cases(directory: str) -> Iterator[Case]:
    """The cases of one folder of `test_*/model.onnx` with `test_data_set_*/{input,output}_*.pb`."""
    import onnx
    from onnx import numpy_helper
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not name.startswith("test_") or not os.path.isfile(os.path.join(path, "model.onnx")):
            continue
        model = onnx.load(os.path.join(path, "model.onnx"))
        data_sets = []
        for set_name in sorted(d for d in os.listdir(path) if d.startswith("test_data_set_")):
            def tensors(kind: str) -> list:
                files = sorted((f for f in os.listdir(os.path.join(path, set_name)) if f.startswith(kind)),
                               key=lambda f: int(f[len(kind) + 1:-3]))
                return [numpy_helper.to_array(onnx.load_tensor(os.path.join(path, set_name, f))) for f in files]
            data_sets.append((tensors("input"), tensors("output")))
        yield Case(name, model, data_sets)


# ---- helpers for the rules ---------------------------------------------------------------------
def _node(v: Any) -> Node:
    return v if isinstance(v, Node) else gn.constant(np.asarray(v), dtype=np.asarray(v).dtype)


def _float(n: OnnxNode, x: Node) -> Node:
    if x.dtype not in FLOATS:
        raise Unsupported(f"{n.op_type} on {x.dtype} (graphnet's image ops take float32 and float64)")
    return x


def _ints(v: Any) -> list[int]:
    return [int(i) for i in np.asarray(v).reshape(-1)]


def _spatial_pads(n: OnnxNode, size: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial axis from `auto_pad` / `pads`. SAME_UPPER puts the odd
    element at the end (Keras's "same"), SAME_LOWER at the beginning: both are explicit padding."""
    auto = n.get("auto_pad", "NOTSET")
    nd = len(size)
    if auto == "NOTSET":
        pads = n.get("pads", [0] * 2 * nd)
        return [(int(pads[i]), int(pads[i + nd])) for i in range(nd)]
    if auto == "VALID":
        return [(0, 0)] * nd
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"{n.op_type}: auto_pad {auto!r}")
    out = []
    for d, k, s, dil in zip(size, kernel, strides, dilations):
        total = max((-(-d // s) - 1) * s + dil * (k - 1) + 1 - d, 0)
        small, large = total // 2, total - total // 2
        out.append((small, large) if auto == "SAME_UPPER" else (large, small))
    return out


def _as_2d(n: OnnxNode, x: Node) -> tuple[Node, bool]:
    """A 1-D NCL image as a 2-D NCHW image of height 1; a 2-D one as it is; else Unsupported."""
    if x.ndim == 4:
        return x, False
    if x.ndim == 3:
        return gn.reshape(x, (x.shape[0], x.shape[1], 1, x.shape[2])), True
    raise Unsupported(f"{n.op_type} on a {x.ndim - 2}-D image (graphnet's image ops are 2-D)")


def _hw(values: Sequence[int], lifted: bool, fill: Any) -> list:
    return [fill, *values] if lifted else list(values)


def _from_2d(y: Node, lifted: bool) -> Node:
    return gn.reshape(y, (y.shape[0], y.shape[1], y.shape[3])) if lifted else y


# ---- convolution, pooling, normalization -------------------------------------------------------
@rule("Conv")
def _conv(n: OnnxNode, ins: list) -> Node:
    x, w = _float(n, _node(ins[0])), _node(ins[1])
    b = ins[2] if len(ins) > 2 else None
    nd = x.ndim - 2
    kernel = list(w.shape[2:])
    strides, dil = n.get("strides", [1] * nd), n.get("dilations", [1] * nd)
    pads = _spatial_pads(n, x.shape[2:], kernel, strides, dil)
    x, lifted = _as_2d(n, x)
    if lifted:
        w = gn.reshape(w, (w.shape[0], w.shape[1], 1, w.shape[2]))
    y = gn.conv2d(x, gn.transpose(w, (2, 3, 1, 0)), strides=tuple(_hw(strides, lifted, 1)),
                  padding=tuple(_hw(pads, lifted, (0, 0))), dilation_rate=tuple(_hw(dil, lifted, 1)),
                  groups=int(n.get("group", 1)), data_format="NCHW")
    if b is not None:
        y = y + gn.reshape(_node(b), (1, -1, 1, 1))
    return _from_2d(y, lifted)


@rule("ConvTranspose")
def _conv_transpose(n: OnnxNode, ins: list) -> Node:
    """gn.conv2d_transpose: the output size from output_shape (pads then derived as ONNX's reference:
    SAME_UPPER puts the odd one at the end, else at the start) or from pads / auto_pad and
    output_padding; the end padding graphnet is given makes that size (rows past it: output_padding)."""
    x, w = _float(n, _node(ins[0])), _node(ins[1])
    b = ins[2] if len(ins) > 2 else None
    nd = x.ndim - 2
    strides, dil = list(n.get("strides", [1] * nd)), list(n.get("dilations", [1] * nd))
    extra = list(n.get("output_padding", [0] * nd))
    spans = [(k - 1) * d + 1 for k, d in zip(w.shape[2:], dil)]
    auto, shape = n.get("auto_pad", "NOTSET"), n.get("output_shape")
    if shape is not None:
        shape = list(shape)[-nd:]
    if n.get("pads") is None and auto in ("SAME_UPPER", "SAME_LOWER"):
        shape = shape or [size * s for size, s in zip(x.shape[2:], strides)]
        totals = [s * (size - 1) + e + span - out for size, s, e, span, out in zip(x.shape[2:], strides, extra, spans, shape)]
        pads = [(t // 2, t - t // 2) if auto == "SAME_UPPER" else (t - t // 2, t // 2) for t in totals]
    else:
        flat = [0] * 2 * nd if auto == "VALID" else list(n.get("pads", [0] * 2 * nd))
        pads = [(flat[i], flat[i + nd]) for i in range(nd)]
        shape = shape or [s * (size - 1) + e + span - p0 - p1
                          for size, s, e, span, (p0, p1) in zip(x.shape[2:], strides, extra, spans, pads)]
    padding, output_padding = [], []
    for size, s, span, (begin, _), out in zip(x.shape[2:], strides, spans, pads, shape):
        end = s * (size - 1) + span - begin - out  # the end padding that gives `out` rows
        padding.append((begin, max(end, 0)))
        output_padding.append(max(-end, 0))
    if any(p < 0 for pair in padding for p in pair):
        raise Unsupported("ConvTranspose: negative pads")
    x, lifted = _as_2d(n, x)
    if lifted:
        w = gn.reshape(w, (w.shape[0], w.shape[1], 1, w.shape[2]))
    try:
        y = gn.conv2d_transpose(x, gn.transpose(w, (2, 3, 1, 0)), strides=tuple(_hw(strides, lifted, 1)),
                                padding=tuple(_hw(padding, lifted, (0, 0))),
                                output_padding=tuple(_hw(output_padding, lifted, 0)),
                                dilation_rate=tuple(_hw(dil, lifted, 1)), groups=int(n.get("group", 1)),
                                data_format="NCHW")
    except gn.ShapeError as e:
        raise Unsupported(f"ConvTranspose: {e}") from None
    if b is not None:
        y = y + gn.reshape(_node(b), (1, -1, 1, 1))
    return _from_2d(y, lifted)


def _pool_geometry(n: OnnxNode, x: Node) -> tuple[list, list, list, list]:
    """kernel, strides, (begin, end) pads and dilations per spatial axis."""
    kernel = list(n.get("kernel_shape"))
    nd = len(kernel)
    strides = list(n.get("strides", [1] * nd))
    dilations = [int(d) for d in n.get("dilations", [1] * nd)]
    pads = _spatial_pads(n, x.shape[2:], kernel, strides, dilations)
    if n.get("ceil_mode", 0):
        pads = [_ceil_pads(n, d, (k - 1) * dil + 1, s, pad)
                for d, k, s, dil, pad in zip(x.shape[2:], kernel, strides, dilations, pads)]
    return kernel, strides, pads, dilations


def _ceil_pads(n: OnnxNode, size: int, span: int, stride: int, pad: tuple[int, int]) -> tuple[int, int]:
    """ceil_mode=1 as padding: the last window's elements past the end padding are padding too
    (excluded from a max and from an average's count), and a window starting in the end padding is
    dropped (ONNX's and PyTorch's rule). `span`: the (dilated) window's extent."""
    begin, end = pad
    out = -(-(size + begin + end - span) // stride) + 1
    if (out - 1) * stride >= size + begin:
        out -= 1
    extra = max((out - 1) * stride + span - (size + begin + end), 0)
    if extra and n.get("count_include_pad", 0):
        raise Unsupported(f"{n.op_type}: ceil_mode=1 with count_include_pad=1 where a window passes the "
                          f"padding (counted neither as padding nor as input)")
    return begin, end + extra


@rule("MaxPool")
def _max_pool(n: OnnxNode, ins: list) -> Node:
    if n.outputs > 1:
        raise Unsupported("MaxPool: the Indices output (graphnet's max_pool2d gives the maxima only)")
    x = _float(n, _node(ins[0]))
    kernel, strides, pads, dilations = _pool_geometry(n, x)
    if any(p >= (k - 1) * d + 1 for (a, b), k, d in zip(pads, kernel, dilations) for p in (a, b)):
        raise Unsupported(f"MaxPool: padding {pads} as large as the window {kernel} (dilations {dilations})")
    x, lifted = _as_2d(n, x)
    y = gn.max_pool2d(x, tuple(_hw(kernel, lifted, 1)), tuple(_hw(strides, lifted, 1)),
                      tuple(_hw(pads, lifted, (0, 0))), data_format="NCHW",
                      dilation_rate=tuple(_hw(dilations, lifted, 1)))
    return _from_2d(y, lifted)


@rule("AveragePool")
def _avg_pool(n: OnnxNode, ins: list) -> Node:
    """count_include_pad=0 is graphnet's rule (padding is not counted); with 1, the zeros are
    explicit padding that the window counts."""
    x = _float(n, _node(ins[0]))
    kernel, strides, pads, dilations = _pool_geometry(n, x)
    x, lifted = _as_2d(n, x)
    pads = _hw(pads, lifted, (0, 0))
    if n.get("count_include_pad", 0):
        x = gn.pad(x, [(0, 0), (0, 0), *pads])
        pads = [(0, 0), (0, 0)]
    spans = [(k - 1) * d + 1 for k, d in zip(_hw(kernel, lifted, 1), _hw(dilations, lifted, 1))]
    if any(p >= span for (a, b), span in zip(pads, spans) for p in (a, b)):
        raise Unsupported(f"AveragePool: padding {pads} as large as the window {kernel} (dilations {dilations})")
    y = gn.avg_pool2d(x, tuple(_hw(kernel, lifted, 1)), tuple(_hw(strides, lifted, 1)), tuple(pads),
                      data_format="NCHW", dilation_rate=tuple(_hw(dilations, lifted, 1)))
    return _from_2d(y, lifted)


@rule("GlobalAveragePool")
def _global_avg_pool(n: OnnxNode, ins: list) -> Node:
    x = _float(n, _node(ins[0]))
    if x.ndim == 4:
        return gn.global_avg_pool(x, data_format="NCHW", keepdims=True)
    return gn.mean(x, tuple(range(2, x.ndim)), keepdims=True)


@rule("GlobalMaxPool")
def _global_max_pool(n: OnnxNode, ins: list) -> Node:
    x = _node(ins[0])
    return gn.max(x, tuple(range(2, x.ndim)), keepdims=True)


@rule("BatchNormalization", training=lambda n: bool(n.get("training_mode", 0)))
def _batch_norm(n: OnnxNode, ins: list) -> Any:
    """graphnet's batch_norm: outside training the given mean and variance normalize; in training
    (`training_mode=1`) the batch's statistics do, and the running mean and variance outputs are
    its moving-statistic updates (momentum * given + (1 - momentum) * batch statistic, the
    variance biased: ONNX's rule too)."""
    if not n.get("spatial", 1):
        raise Unsupported("BatchNormalization with spatial=0 (per-element statistics)")
    if n.outputs > 3 or (n.outputs > 1 and not n.get("training_mode", 0)):
        raise Unsupported("BatchNormalization's saved mean and variance outputs (opset < 14)")
    x, scale, bias, mean, var = (_node(v) for v in ins[:5])
    y, updates = gn.batch_norm(_float(n, x), scale, bias, mean, var, momentum=float(n.get("momentum", 0.9)),
                               epsilon=float(n.get("epsilon", 1e-5)), axis=1)
    return [y] + [new for _, new in updates]


# ---- matrix products -------------------------------------------------------------------------
@rule("LayerNormalization")
def _layer_norm(n: OnnxNode, ins: list) -> list:
    """gn.layer_norm over the axes from `axis` on; the optional Mean and InvStdDev outputs keep those
    axes as ones. stash_type=1 (float32 statistics) is the input's type for float32 inputs; graphnet
    computes float64 inputs' statistics in float64."""
    x = _node(ins[0])
    if x.dtype not in FLOATS:
        raise Unsupported(f"LayerNormalization on {x.dtype}")
    if x.dtype == np.float64 and n.get("stash_type", 1) == 1:
        raise Unsupported("LayerNormalization of float64 with float32 statistics (stash_type 1)")
    axes = list(range(int(n.get("axis", -1)) % x.ndim, x.ndim))
    epsilon = float(n.get("epsilon", 1e-5))
    shape = x.shape[axes[0]:]
    scale = gn.reshape(_node(ins[1]), shape)
    offset = gn.reshape(_node(ins[2]), shape) if len(ins) > 2 and ins[2] is not None else None
    y = gn.layer_norm(x, scale, offset, axes, epsilon)
    mean, variance = gn.moments(x, axes, keepdims=True)
    return [y, mean, 1.0 / gn.sqrt(variance + epsilon)]


@rule("Gemm")
def _gemm(n: OnnxNode, ins: list) -> Node:
    a, b = _node(ins[0]), _node(ins[1])
    a = gn.transpose(a) if n.get("transA", 0) else a
    b = gn.transpose(b) if n.get("transB", 0) else b
    y = gn.matmul(a, b)
    alpha, beta = float(n.get("alpha", 1.0)), float(n.get("beta", 1.0))
    y = y if alpha == 1.0 else alpha * y
    if len(ins) > 2 and ins[2] is not None:
        c = _node(ins[2])
        y = y + (c if beta == 1.0 else beta * c)
    return y


@rule("MatMul")
def _matmul(n: OnnxNode, ins: list) -> Node:
    return gn.matmul(_node(ins[0]), _node(ins[1]))


# ---- elementwise -------------------------------------------------------------------------------
def _binary(fn: Callable) -> Callable:
    """Numpy broadcasting; before opset 7, `broadcast=1` with `axis` lines b's axes up with a's from
    `axis` on (b gets trailing axes of 1)."""
    def build(n: OnnxNode, ins: list) -> Node:
        a, b = _node(ins[0]), _node(ins[1])
        if a.dtype != b.dtype:
            raise Unsupported(f"{n.op_type} of {a.dtype} and {b.dtype}")
        if n.opset < 7 and n.get("broadcast", 0) and n.get("axis") is not None:
            b = gn.reshape(b, b.shape + (1,) * (a.ndim - int(n.get("axis")) % a.ndim - b.ndim))
        return fn(a, b)
    return build


for _op_type, _fn in (("Add", gn.add), ("Sub", gn.subtract), ("Mul", gn.multiply), ("Div", gn.divide),
                      ("Equal", gn.equal), ("Greater", gn.greater), ("Less", gn.less),
                      ("GreaterOrEqual", gn.greater_equal), ("LessOrEqual", gn.less_equal)):
    rule(_op_type)(_binary(_fn))


@rule("Mod")
def _mod(n: OnnxNode, ins: list) -> Node:
    """fmod=0 (integers) is the floor modulo, gn.mod's; fmod=1 is C's fmod, which graphnet lacks."""
    if n.get("fmod", 0):
        raise Unsupported("Mod with fmod=1 (graphnet's mod is the floor modulo)")
    return _binary(gn.mod)(n, ins)


def _variadic(fn: Callable, mean: bool = False) -> Callable:
    def build(n: OnnxNode, ins: list) -> Node:
        xs = [_node(v) for v in ins]
        y = xs[0]
        for x in xs[1:]:
            y = fn(y, x)
        return y / float(len(xs)) if mean and len(xs) > 1 else y
    return build


rule("Sum")(_variadic(gn.add))
rule("Max")(_variadic(gn.maximum))
rule("Min")(_variadic(gn.minimum))
rule("Mean")(_variadic(gn.add, mean=True))


def _unary(fn: Callable, floats: bool = True) -> Callable:
    def build(n: OnnxNode, ins: list) -> Node:
        x = _node(ins[0])
        if floats and x.dtype not in FLOATS:
            raise Unsupported(f"{n.op_type} on {x.dtype}")
        return fn(x)
    return build


for _op_type, _fn in (("Relu", gn.relu), ("Sigmoid", gn.sigmoid), ("Tanh", gn.tanh), ("Exp", gn.exp),
                      ("Log", gn.log), ("Sqrt", gn.sqrt), ("Erf", gn.erf), ("Floor", gn.floor), ("Ceil", gn.ceil),
                      ("Round", gn.round), ("Softplus", gn.softplus), ("Reciprocal", lambda x: 1.0 / x),
                      ("Softsign", lambda x: x / (1.0 + gn.abs(x)))):
    rule(_op_type)(_unary(_fn))
for _op_type, _fn in (("Abs", gn.abs), ("Neg", gn.negative), ("Sign", gn.sign)):
    rule(_op_type)(_unary(_fn, floats=False))


@rule("Constant")
def _constant(n: OnnxNode, ins: list) -> np.ndarray:
    for name, dtype in (("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                        ("value_int", np.int64), ("value_ints", np.int64)):
        if name in n.attrs:
            return _array(np.asarray(n.attrs[name], dtype))
    raise Unsupported(f"Constant with {sorted(n.attrs)}")


@rule("Identity")
def _identity(n: OnnxNode, ins: list) -> Any:
    return ins[0]


@rule("LeakyRelu")
def _leaky_relu(n: OnnxNode, ins: list) -> Node:
    return gn.leaky_relu(_node(ins[0]), float(n.get("alpha", 0.01)))


@rule("Elu")
def _elu(n: OnnxNode, ins: list) -> Node:
    return gn.elu(_node(ins[0]), float(n.get("alpha", 1.0)))


@rule("Selu")
def _selu(n: OnnxNode, ins: list) -> Node:
    """graphnet's selu where the attributes are its constants (as float32), else gamma * elu(x, alpha)."""
    x = _node(ins[0])
    alpha, gamma = n.get("alpha", 1.67326319217681884765625), n.get("gamma", 1.05070102214813232421875)
    if np.float32(alpha) == np.float32(SELU_ALPHA) and np.float32(gamma) == np.float32(SELU_SCALE):
        return gn.selu(x)
    return float(gamma) * gn.elu(x, float(alpha))


@rule("HardSigmoid")
def _hard_sigmoid(n: OnnxNode, ins: list) -> Node:
    return gn.clip(float(n.get("alpha", 0.2)) * _node(ins[0]) + float(n.get("beta", 0.5)), 0.0, 1.0)


@rule("HardSwish")
def _hard_swish(n: OnnxNode, ins: list) -> Node:
    x = _node(ins[0])
    return x * gn.hard_sigmoid(x)  # graphnet's hard_sigmoid is relu6(x + 3) / 6, ONNX's HardSwish's


@rule("Gelu")
def _gelu(n: OnnxNode, ins: list) -> Node:
    return gn.gelu(_node(ins[0]), approximate=n.get("approximate", "none"))


@rule("PRelu")
def _prelu(n: OnnxNode, ins: list) -> Node:
    x, slope = _node(ins[0]), _node(ins[1])
    if n.opset < 7 and slope.ndim == 1 and x.ndim > 2 and slope.shape[0] == x.shape[1]:
        slope = gn.reshape(slope, (slope.shape[0],) + (1,) * (x.ndim - 2))  # one slope per channel
    return gn.where(x < 0, slope * x, x)


@rule("Clip", static=(1, 2))
def _clip(n: OnnxNode, ins: list) -> Node:
    """gn.clip where min <= max; ONNX's min(max(x, min), max) otherwise (every element max)."""
    x = _node(ins[0])
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else n.get("min")
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else n.get("max")
    if x.dtype not in FLOATS:  # gn.clip's bounds are floats: integer bounds are maximum and minimum
        y = x if lo is None else gn.maximum(x, np.asarray(lo, x.dtype))
        return y if hi is None else gn.minimum(y, np.asarray(hi, x.dtype))
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    return gn.clip(x, lo, hi) if lo <= hi else gn.minimum(gn.maximum(x, lo), hi)


@rule("Pow")
def _pow(n: OnnxNode, ins: list) -> Node:
    a, b = _node(ins[0]), _node(ins[1])
    if a.dtype not in FLOATS:
        raise Unsupported(f"Pow of {a.dtype}")
    return gn.power(a, b if b.dtype == a.dtype else gn.cast(b, a.dtype))


@rule("Where")
def _where(n: OnnxNode, ins: list) -> Node:
    return gn.where(_node(ins[0]), _node(ins[1]), _node(ins[2]))


# ---- softmax ---------------------------------------------------------------------------------
def _softmax(fn: Callable) -> Callable:
    """Opset 13 normalizes along `axis` (default -1); earlier opsets flatten the axes from `axis`
    (default 1) on into one and normalize along it."""
    def build(n: OnnxNode, ins: list) -> Node:
        x = _node(ins[0])
        if n.opset >= 13:
            return fn(x, int(n.get("axis", -1)))
        axis = int(n.get("axis", 1)) % max(x.ndim, 1)
        rows = int(np.prod(x.shape[:axis], dtype=np.int64))
        return gn.reshape(fn(gn.reshape(x, (rows, -1)), 1), x.shape)
    return build


rule("Softmax")(_softmax(gn.softmax))
rule("LogSoftmax")(_softmax(gn.log_softmax))


# ---- reductions --------------------------------------------------------------------------------
def _reduce(fn: Callable, axes_input_from: int) -> Callable:
    """axes an attribute before opset `axes_input_from`, then input 1; none: every axis (or, with
    noop_with_empty_axes, none)."""
    def build(n: OnnxNode, ins: list) -> Node:
        x = _node(ins[0])
        if x.dtype == np.bool_ and fn in (gn.max, gn.min):
            raise Unsupported(f"{n.op_type} of a bool tensor (graphnet reduces numbers)")
        if n.opset >= axes_input_from:
            axes = ins[1] if len(ins) > 1 and ins[1] is not None else None
        else:
            axes = n.get("axes")
        axes = None if axes is None else _ints(axes)
        keep = bool(n.get("keepdims", 1))
        if not axes:
            if n.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.ndim))
        return fn(x, tuple(axes), keepdims=keep)
    return build


rule("ReduceSum", static=(1,))(_reduce(gn.sum, 13))
rule("ReduceProd", static=(1,))(_reduce(gn.prod, 18))
rule("ReduceLogSumExp", static=(1,))(_reduce(gn.logsumexp, 18))
rule("ReduceL1", static=(1,))(_reduce(lambda x, axes, keepdims: gn.sum(gn.abs(x), axes, keepdims), 18))
rule("ReduceL2", static=(1,))(_reduce(lambda x, axes, keepdims: gn.sqrt(gn.sum(x * x, axes, keepdims)), 18))
rule("ReduceSumSquare", static=(1,))(_reduce(lambda x, axes, keepdims: gn.sum(x * x, axes, keepdims), 18))
rule("ReduceLogSum", static=(1,))(_reduce(lambda x, axes, keepdims: gn.log(gn.sum(x, axes, keepdims)), 18))


def _arg_reduce(fn: Callable) -> Callable:
    """select_last_index: the first hit of x reversed along the axis, counted from the end."""
    def build(n: OnnxNode, ins: list) -> Node:
        x = _node(ins[0])
        if x.dtype == np.bool_:
            raise Unsupported(f"{n.op_type} of a bool tensor (graphnet reduces numbers)")
        axis, keep = int(n.get("axis", 0)) % x.ndim, bool(n.get("keepdims", 1))
        if not n.get("select_last_index", 0):
            return fn(x, axis, keepdims=keep)
        return (x.shape[axis] - 1) - fn(gn.flip(x, axis), axis, keepdims=keep)
    return build


rule("ArgMax")(_arg_reduce(gn.argmax))
rule("ArgMin")(_arg_reduce(gn.argmin))


@rule("CumSum", static=(1,))
def _cumsum(n: OnnxNode, ins: list) -> Node:
    """exclusive=1: the running sum of x shifted one element along the axis (a zero coming in)."""
    x = _node(ins[0])
    axis = int(np.asarray(ins[1]).reshape(-1)[0]) % x.ndim
    reverse = bool(n.get("reverse", 0))
    if n.get("exclusive", 0):
        key = [slice(None)] * x.ndim
        key[axis] = slice(1, None) if reverse else slice(None, -1)
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, 1) if reverse else (1, 0)
        x = gn.pad(x[tuple(key)], widths)
    return gn.cumsum(x, axis, reverse=reverse)
rule("ReduceMean", static=(1,))(_reduce(gn.mean, 18))
rule("ReduceMax", static=(1,))(_reduce(gn.max, 18))
rule("ReduceMin", static=(1,))(_reduce(gn.min, 18))


# ---- movement ----------------------------------------------------------------------------------
@rule("Flatten")
def _flatten(n: OnnxNode, ins: list) -> Node:
    x = _node(ins[0])
    axis = int(n.get("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    return gn.reshape(x, (int(np.prod(x.shape[:axis], dtype=np.int64)), int(np.prod(x.shape[axis:], dtype=np.int64))))


@rule("Reshape", static=(1,))
def _reshape(n: OnnxNode, ins: list) -> Node:
    """A 0 copies the input's extent there (unless allowzero); a -1 is left to gn.reshape."""
    x = _node(ins[0])
    shape = _ints(ins[1] if len(ins) > 1 else n.get("shape"))
    if not n.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return gn.reshape(x, tuple(shape))


@rule("Transpose")
def _transpose(n: OnnxNode, ins: list) -> Node:
    perm = n.get("perm")
    return gn.transpose(_node(ins[0]), None if perm is None else tuple(perm))


@rule("Squeeze", static=(1,))
def _squeeze(n: OnnxNode, ins: list) -> Node:
    x = _node(ins[0])
    axes = ins[1] if len(ins) > 1 and ins[1] is not None else n.get("axes")
    axes = {a % x.ndim for a in _ints(axes)} if axes is not None else {i for i, d in enumerate(x.shape) if d == 1}
    return gn.reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))


@rule("Unsqueeze", static=(1,))
def _unsqueeze(n: OnnxNode, ins: list) -> Node:
    x = _node(ins[0])
    axes = _ints(ins[1] if len(ins) > 1 else n.get("axes"))
    ndim = x.ndim + len(axes)
    axes = {a % ndim for a in axes}
    dims = iter(x.shape)
    return gn.reshape(x, tuple(1 if i in axes else next(dims) for i in range(ndim)))


@rule("Concat")
def _concat(n: OnnxNode, ins: list) -> Node:
    return gn.concat([_node(v) for v in ins], int(n.get("axis")))


@rule("Split", static=(1,))
def _split(n: OnnxNode, ins: list) -> list:
    x = _node(ins[0])
    axis = int(n.get("axis", 0)) % x.ndim
    sizes = ins[1] if len(ins) > 1 and ins[1] is not None else n.get("split")
    if sizes is None:
        parts = n.get("num_outputs", n.outputs)
        d = x.shape[axis]
        step = -(-d // parts)  # ONNX: equal parts, the last smaller where they do not divide the axis
        sizes = [min(step, d - i * step) for i in range(parts)]
    points = np.cumsum(_ints(sizes))[:-1]
    return gn.split(x, [int(p) for p in points], axis)


@rule("Slice", static=(1, 2, 3, 4))
def _slice(n: OnnxNode, ins: list) -> Node:
    """ONNX's clamping of starts and ends is Python's slice semantics, so x[key] expresses it."""
    x = _node(ins[0])
    if n.opset >= 10:
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    else:
        starts, ends = list(n.get("starts")), list(n.get("ends"))
        axes = list(n.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    key = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        key[axis % x.ndim] = slice(start, end, step)
    return x[tuple(key)]


@rule("Pad", static=(1, 2, 3))
def _pad(n: OnnxNode, ins: list) -> Node:
    x = _node(ins[0])
    mode = n.get("mode", "constant")
    if n.opset >= 11:
        pads = _ints(ins[1])
        value = ins[2] if len(ins) > 2 and ins[2] is not None else 0.0
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(x.ndim))
    else:
        pads, value, axes = list(n.get("pads")), n.get("value", 0.0), list(range(x.ndim))
    if any(p < 0 for p in pads):
        raise Unsupported(f"Pad: negative pads {pads} (cropping)")
    widths = [(0, 0)] * x.ndim
    for i, axis in enumerate(axes):
        widths[axis % x.ndim] = (pads[i], pads[i + len(axes)])
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise Unsupported(f"Pad: mode {mode!r}")
    return gn.pad(x, widths, mode, float(np.asarray(value)))


@rule("Expand", static=(1,))
def _expand(n: OnnxNode, ins: list) -> Node:
    x = _node(ins[0])
    shape = np.broadcast_shapes(tuple(x.shape), tuple(_ints(ins[1])))
    return gn.broadcast_to(x, shape)


@rule("Tile", static=(1,))
def _tile(n: OnnxNode, ins: list) -> Node:
    """Each axis repeated: x broadcast along a new axis before it, then the pair merged."""
    x = _node(ins[0])
    reps = _ints(ins[1])
    spread = tuple(d for extent in x.shape for d in (1, extent))
    tiled = tuple(d for r, extent in zip(reps, x.shape) for d in (r, extent))
    y = gn.broadcast_to(gn.reshape(x, spread), tiled)
    return gn.reshape(y, tuple(r * extent for r, extent in zip(reps, x.shape)))


@rule("Gather")
def _gather(n: OnnxNode, ins: list) -> Node:
    """gn.take (negative indices count from the end, as ONNX's)."""
    return gn.take(_node(ins[0]), _node(ins[1]), axis=int(n.get("axis", 0)))


@rule("Dropout", static=(1, 2))
def _dropout(n: OnnxNode, ins: list) -> Node:
    """Inference: the identity."""
    training = len(ins) > 2 and ins[2] is not None and bool(np.asarray(ins[2]))
    if training or n.outputs > 1 or n.get("is_test", 1) == 0:
        raise Unsupported("Dropout in training mode or its mask (graphnet's dropout draws its own masks)")
    return ins[0]


@rule("Cast")
def _cast(n: OnnxNode, ins: list) -> Node:
    from onnx import helper
    to = np.dtype(helper.tensor_dtype_to_np_dtype(int(n.get("to"))))
    if to not in DTYPES:
        raise Unsupported(f"Cast to {to}")
    return gn.cast(_node(ins[0]), to)


@rule("CastLike")
def _cast_like(n: OnnxNode, ins: list) -> Node:
    """Cast to the dtype of the second input."""
    to = ins[1].dtype if isinstance(ins[1], Node) else np.asarray(ins[1]).dtype
    if to not in DTYPES:
        raise Unsupported(f"CastLike to {to}")
    return gn.cast(_node(ins[0]), to)


@rule("Shape")
def _shape(n: OnnxNode, ins: list) -> np.ndarray:
    """The static shape, [start:end] (a constant: the graph's shapes are known when it is built)."""
    shape = ins[0].shape if isinstance(ins[0], Node) else np.shape(ins[0])
    if None in shape:
        raise Unsupported("Shape of a tensor with a batch dimension")
    return np.asarray(shape, np.int64)[n.get("start", 0):n.get("end", len(shape))]


# ---- resizing ----------------------------------------------------------------------------------
def _resized(n: OnnxNode, x: Node, scales: Sequence[float], sizes: Sequence[int], *, method: str,
             coordinate_mode: str, roi: Sequence[float] | None = None, **options: Any) -> Node:
    """x resized along each axis whose size, scale or crop is not the identity, in axis order as in
    ONNX's reference (graphnet.ops.resizing: ONNX's rule along one axis)."""
    if method not in ("nearest", "linear", "cubic"):
        raise Unsupported(f"{n.op_type}: mode {method!r}")
    if coordinate_mode not in COORDINATE_MODES:
        raise Unsupported(f"{n.op_type}: coordinate_transformation_mode {coordinate_mode!r}")
    if x.dtype not in (np.float32, np.float64):
        raise Unsupported(f"{n.op_type} of {x.dtype} (graphnet interpolates float32 and float64)")
    if None in x.shape:
        raise Unsupported(f"{n.op_type} of a tensor of unknown size")
    for axis, (scale, size) in enumerate(zip(scales, sizes)):
        crop = (float(roi[axis]), float(roi[axis + x.ndim])) if roi is not None else (0.0, 1.0)
        if size == x.shape[axis] and math.isclose(scale, 1.0) and crop == (0.0, 1.0):
            continue
        if size < 1:
            raise Unsupported(f"{n.op_type}: an output axis of {size} elements")
        taps = axis_taps(x.shape[axis], size, method, scale=scale, coordinate_transformation_mode=coordinate_mode,
                         roi=crop, **options)
        x = resample(x, axis, *taps)
    return x


@rule("Resize", static=(1, 2, 3))
def _resize(n: OnnxNode, ins: list) -> Node:
    """Every mode and coordinate transformation, scales or sizes (with keep_aspect_ratio_policy),
    axes, antialias, exclude_outside, cubic_coeff_a, and tf_crop_and_resize's roi."""
    x = _node(ins[0])
    mode = n.get("mode", "nearest")
    ctm = n.get("coordinate_transformation_mode", "half_pixel" if n.opset >= 11 else "asymmetric")
    axes = [a % x.ndim for a in n.get("axes", range(x.ndim))]
    roi = ins[1] if n.opset >= 11 and len(ins) > 1 and ins[1] is not None and np.asarray(ins[1]).size else None
    scales_in = ins[2] if n.opset >= 11 and len(ins) > 2 else (ins[1] if n.opset < 11 else None)
    sizes_in = ins[3] if len(ins) > 3 and ins[3] is not None and np.asarray(ins[3]).size else None
    scales, sizes = [1.0] * x.ndim, list(x.shape)
    if sizes_in is not None:  # the scale the coordinates use: size over input size, or one per policy
        wanted = dict(zip(axes, _ints(sizes_in)))
        ratios = {a: wanted[a] / x.shape[a] for a in axes}
        policy = n.get("keep_aspect_ratio_policy", "stretch")
        if policy in ("not_larger", "not_smaller"):
            common = (min if policy == "not_larger" else max)(ratios.values())
            ratios = {a: common for a in axes}
            wanted = {a: int(common * x.shape[a] + 0.5) for a in axes}  # rounded half up
        elif policy != "stretch":
            raise Unsupported(f"Resize: keep_aspect_ratio_policy {policy!r}")
        for a in axes:
            scales[a], sizes[a] = ratios[a], wanted[a]
    elif scales_in is not None and np.asarray(scales_in).size:
        for a, scale in zip(axes, np.asarray(scales_in, dtype=np.float64).reshape(-1)):
            scales[a], sizes[a] = float(scale), int(scale * x.shape[a])
    else:
        raise Unsupported("Resize without scales or sizes")
    if roi is not None and ctm == "tf_crop_and_resize":  # starts, then ends, of the given axes
        full = [0.0] * x.ndim + [1.0] * x.ndim
        flat = np.asarray(roi, dtype=np.float64).reshape(-1)
        for i, a in enumerate(axes):
            full[a], full[a + x.ndim] = float(flat[i]), float(flat[i + len(axes)])
        roi = full
    else:
        roi = None
    antialias = bool(n.get("antialias", 0))
    if antialias and mode == "nearest":
        raise Unsupported("Resize: antialias with mode 'nearest'")
    return _resized(n, x, scales, sizes, method=mode, coordinate_mode=ctm, roi=roi,
                    nearest_mode=n.get("nearest_mode", "round_prefer_floor"),
                    cubic_coeff_a=float(n.get("cubic_coeff_a", -0.75)),
                    exclude_outside=bool(n.get("exclude_outside", 0)), antialias=antialias,
                    extrapolation_value=float(n.get("extrapolation_value", 0.0)))


@rule("Upsample", static=(1,))
def _upsample_op(n: OnnxNode, ins: list) -> Node:
    """Upsample (deprecated): Resize with "asymmetric" coordinates, nearest rounding down."""
    x = _node(ins[0])
    scales = [float(s) for s in np.asarray(ins[1] if len(ins) > 1 else n.get("scales")).reshape(-1)]
    return _resized(n, x, scales, [int(s * d) for s, d in zip(scales, x.shape)], method=n.get("mode", "nearest"),
                    coordinate_mode="asymmetric", nearest_mode="floor")
