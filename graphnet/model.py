"""Keras-style models: a layer DAG replayed into a graph the model owns, trained by `fit`.

`compile` builds the loss, metrics and optimizer updates as graph nodes; the training step, the
evaluation step and the prediction function are each compiled once (lazily, on first use) with the
batch dimension left open, so the short last batch reuses them. Every array the user passes is
checked before the first step, so bad input raises ValueError with the model unchanged.
"""
from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from . import metrics as objectives
from .callbacks import Callback, CallbackList, History, ProgressLogger
from .checkpoint import MAX_ELEMENTS, load_npz, save_npz
from .function import BACKENDS, Function, compile as compile_function
from .graph import Graph, Node, shape_str
from .layers import InputLayer, Layer, SymbolicTensor, from_config
from .ops import RNG_STEP
from .random import numpy_rng
from .source import source_of

FORMAT = "graphnet.model/1"


@dataclass
class _Built:
    """One instantiation of the layer DAG in a fresh graph (plus, once compiled, its objective)."""

    graph: Graph
    inputs: list[Node]
    outputs: list[Node]
    weights: dict[str, Node]  # "layer/slot" -> variable node
    fetch_keys: list[str] = field(default_factory=list)
    fetches: list[Node] = field(default_factory=list)
    updates: list = field(default_factory=list)


@dataclass(frozen=True)
class _CompileConfig:
    optimizer: Any
    losses: tuple
    metrics: tuple
    backend: str


class Model:
    """A functional model from `Input` tensors to layer outputs (one or several of each)."""

    def __init__(self, inputs: SymbolicTensor | Sequence[SymbolicTensor],
                 outputs: SymbolicTensor | Sequence[SymbolicTensor], name: str | None = None):
        self._multi_in = isinstance(inputs, (list, tuple))
        self._multi_out = isinstance(outputs, (list, tuple))
        self.inputs = _tensors(inputs, "inputs")
        self.outputs = _tensors(outputs, "outputs")
        for t in self.inputs:
            if not isinstance(t.layer, InputLayer):
                raise ValueError(f"model inputs must come from Input(...), got {t!r}")
        self.layers = _collect_layers(self.inputs, self.outputs)
        for layer in self.layers:
            if layer.owner is not None:
                raise ValueError(f"layer '{layer.name}' already belongs to another model; graphnet models do not "
                                 f"share layers")
        _name_layers(self.layers)
        for layer in self.layers:
            layer.owner = self
        self.name = name or "model"
        self.seed = int(numpy_rng().integers(2 ** 31))  # keys the per-epoch shuffles, so resumed fits replay
        self.stop_training = False
        self.optimizer: Any = None
        self.backend = "llvm"  # compile(backend=...) sets it; predict on an uncompiled model uses it too
        self.history: History | None = None
        self._config: _CompileConfig | None = None
        self._built = self._instantiate()
        self._functions: dict[str, Function] = {}

    # ---- graph --------------------------------------------------------------------------
    def _instantiate(self) -> _Built:
        """Build the layer DAG into a fresh graph, carrying over current weights and the dropout step."""
        graph = Graph()
        nodes: dict[Layer, Node] = {}
        weights: dict[str, Node] = {}
        for layer in self.layers:
            with graph, source_of(layer.output.source):
                nodes[layer] = layer.build(graph, [nodes[t.layer] for t in layer.output.inbound])
            weights.update({f"{layer.name}/{slot}": w for slot, w in layer.weights.items()})
        built = _Built(graph, [nodes[t.layer] for t in self.inputs], [nodes[t.layer] for t in self.outputs], weights)
        old = getattr(self, "_built", None)
        if old is not None:
            for name, w in weights.items():
                w.assign(old.weights[name].value)
            if RNG_STEP in old.graph.variables and RNG_STEP in graph.variables:
                graph.variables[RNG_STEP].assign(old.graph.variables[RNG_STEP].value)
        return built

    @property
    def graph(self) -> Graph:
        """The graph this model's nodes live in (rebuilt by each `compile`)."""
        return self._built.graph

    @property
    def input_nodes(self) -> list[Node]:
        return list(self._built.inputs)

    @property
    def output_nodes(self) -> list[Node]:
        return list(self._built.outputs)

    @property
    def loss(self) -> Node:
        """The total training loss node (after `compile`)."""
        self._require_compiled("loss")
        return self._built.fetches[0]

    # ---- weights ------------------------------------------------------------------------
    @property
    def weights(self) -> list[Node]:
        return list(self._built.weights.values())

    @property
    def trainable_weights(self) -> list[Node]:
        return [w for w in self._built.weights.values() if w.trainable]

    def get_weights(self) -> list[np.ndarray]:
        return [w.value for w in self._built.weights.values()]

    def set_weights(self, values: Sequence[np.ndarray]) -> None:
        names = list(self._built.weights)
        if len(values) != len(names):
            raise ValueError(f"set_weights: model has {len(names)} weights, got {len(values)} arrays")
        self._assign_weights(dict(zip(names, values)), "set_weights")

    def _assign_weights(self, values: dict[str, Any], what: str) -> None:
        """Check every name and shape first, then assign: a mismatch leaves the model unchanged."""
        own = self._built.weights
        missing = [n for n in own if n not in values]
        extra = [n for n in values if n not in own]
        if missing or extra:
            parts = ([f"missing weight(s) {', '.join(missing)}"] if missing else []) + \
                    ([f"unexpected weight(s) {', '.join(extra)}"] if extra else [])
            raise ValueError(f"{what}: weights of another architecture: {'; '.join(parts)}")
        arrays = {}
        for name, node in own.items():
            arr = np.asarray(values[name])
            if arr.shape != node.shape:
                raise ValueError(f"{what}: weight '{name}' has shape {shape_str(arr.shape)}, the model's has "
                                 f"{shape_str(node.shape)}")
            if arr.dtype.kind not in "fiu":
                raise ValueError(f"{what}: weight '{name}' has non-numeric dtype {arr.dtype}")
            arrays[name] = arr
        for name, arr in arrays.items():
            own[name].assign(arr.astype(own[name].dtype))

    def save_weights(self, path: str | os.PathLike) -> None:
        """Write the layer weights to an .npz file atomically."""
        save_npz(path, {name: w.value for name, w in self._built.weights.items()})

    def load_weights(self, path: str | os.PathLike) -> None:
        """Read weights saved by `save_weights` (or `save`); ValueError naming any mismatched weight."""
        data = load_npz(path)
        if "config" in data:
            data = {k[len("weights/"):]: v for k, v in data.items() if k.startswith("weights/")}
        self._assign_weights(data, f"load_weights({os.fspath(path)!r})")

    # ---- compile ------------------------------------------------------------------------
    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, metrics: Sequence[Any] | None = None,
                backend: str = "llvm") -> None:
        """Set the optimizer (object or name), loss (name, callable, or one per output), metrics and backend."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
        if loss is None:
            raise ValueError("compile: a loss is required (e.g. 'mse' or 'binary_crossentropy')")
        losses = list(loss) if isinstance(loss, (list, tuple)) else [loss] * len(self.outputs)
        if len(losses) != len(self.outputs):
            raise ValueError(f"compile: {len(losses)} losses for {len(self.outputs)} outputs")
        for item in losses:
            objectives.loss_name(item)
        metrics = [metrics] if isinstance(metrics, str) or callable(metrics) else list(metrics or [])
        keys = [objectives.check_metric(m) for m in metrics]
        optimizer = _make_optimizer(optimizer)

        built = self._instantiate()
        total, fetch_keys, fetches = None, [], []
        with built.graph:
            for out_layer, out, item in zip((t.layer for t in self.outputs), built.outputs, losses):
                target = objectives.target_placeholder(built.graph, f"{out_layer.name}/target", item, out)
                with source_of(out_layer.output.source):
                    value = objectives.loss_node(item, out, target)
                    total = value if total is None else total + value
                    prefix = f"{out_layer.name}_" if self._multi_out else ""
                    if self._multi_out:
                        fetch_keys.append(prefix + "loss")
                        fetches.append(value)
                    for key, metric in zip(keys, metrics):
                        fetch_keys.append(prefix + key)
                        fetches.append(objectives.metric_node(metric, item, out, target))
            built.updates = optimizer.minimize(total, [w for w in built.weights.values() if w.trainable])
        built.fetch_keys, built.fetches = ["loss"] + fetch_keys, [total] + fetches
        self._built, self.optimizer, self.backend = built, optimizer, backend
        self._config = _CompileConfig(optimizer, tuple(losses), tuple(metrics), backend)
        self._functions = {}

    def _require_compiled(self, what: str) -> None:
        if self._config is None:
            raise RuntimeError(f"{what}: call model.compile(optimizer, loss) first")

    def _function(self, kind: str) -> Function:
        """The compiled train / eval / predict function, built on first use and then reused."""
        if kind not in self._functions:
            b = self._built
            if kind == "train":
                fn = compile_function(b.fetches, updates=b.updates, backend=self.backend)
            elif kind == "eval":
                fn = compile_function(b.fetches, backend=self.backend, training=False)
            else:
                fn = compile_function(b.outputs, backend=self.backend, training=False)
            self._functions[kind] = fn
        return self._functions[kind]

    @property
    def train_function(self) -> Function:
        """The compiled training step (loss, metrics and every update in one function)."""
        self._require_compiled("train_function")
        return self._function("train")

    # ---- input checks -------------------------------------------------------------------
    def _check_x(self, x: Any, what: str = "x") -> list[np.ndarray]:
        items = _per_tensor(x, self.inputs, self._multi_in, what)
        arrays = []
        for t, node, value in zip(self.inputs, self._built.inputs, items):
            label = f"{what} (input '{t.layer.name}')" if self._multi_in else what
            arr = objectives.as_numbers(value, label)
            want = node.shape[1:]
            if arr.ndim != node.ndim or arr.shape[1:] != want:
                detail = (f" (feature width {arr.shape[-1]}, the model expects {want[-1]})"
                          if arr.ndim == node.ndim and arr.ndim >= 2 else "")
                raise ValueError(f"{label}: expected shape {shape_str(node.shape)}, got {shape_str(arr.shape)}{detail}")
            objectives.check_finite(arr, label)
            arrays.append(np.ascontiguousarray(arr, dtype=node.dtype))
        _same_length(arrays, what)
        return arrays

    def _check_y(self, y: Any, n: int, what: str = "y") -> list[np.ndarray]:
        items = _per_tensor(y, self.outputs, self._multi_out, what)
        arrays = []
        for t, out, item, value in zip(self.outputs, self._built.outputs, self._config.losses, items):
            label = f"{what} (output '{t.layer.name}')" if self._multi_out else what
            arrays.append(objectives.check_targets(value, item, out, label))
        for arr in arrays:
            if len(arr) != n:
                raise ValueError(f"{what} has {len(arr)} samples but x has {n}")
        return arrays

    def _feeds(self, xs: list[np.ndarray], ys: list[np.ndarray] | None, idx: Any) -> dict[str, np.ndarray]:
        feeds = {t.layer.name: arr[idx] for t, arr in zip(self.inputs, xs)}
        for t, arr in zip(self.outputs, ys or []):
            feeds[f"{t.layer.name}/target"] = arr[idx]
        return feeds

    # ---- training -----------------------------------------------------------------------
    def fit(self, x: Any, y: Any, batch_size: int = 32, epochs: int = 1, verbose: int = 1,
            validation_split: float = 0.0, validation_data: tuple | None = None, shuffle: bool = True,
            callbacks: Sequence[Callback] | None = None, initial_epoch: int = 0) -> History:
        """Train for `epochs` (counting from `initial_epoch`) with mini-batches; returns the History.

        Epoch e's shuffle depends only on (model seed, e), so a fit resumed from a saved model with
        `initial_epoch` replays the uninterrupted run exactly.
        """
        self._require_compiled("fit")
        _positive_int(batch_size, "batch_size")
        if not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
        xs = self._check_x(x)
        n = len(xs[0])
        ys = self._check_y(y, n)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (list, tuple)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (x_val, y_val)")
            vx = self._check_x(validation_data[0], "validation x")
            val = (vx, self._check_y(validation_data[1], len(vx[0]), "validation y"))
        elif validation_split:
            split = int(n * (1 - validation_split))
            if split == 0 or split == n:
                raise ValueError(f"validation_split={validation_split} of {n} samples leaves an empty training or "
                                 f"validation set")
            val = ([a[split:] for a in xs], [a[split:] for a in ys])
            xs, ys, n = [a[:split] for a in xs], [a[:split] for a in ys], split
        if n == 0:
            raise ValueError("fit: x is empty")
        steps = math.ceil(n / batch_size)
        train = self._function("train")
        if val is not None:
            self._function("eval")

        self.history = History()
        params = {"epochs": epochs, "steps": steps, "batch_size": batch_size, "samples": n, "verbose": verbose}
        extra = [ProgressLogger(verbose)] if verbose else []
        cbs = CallbackList(list(callbacks or []) + extra + [self.history], self, params)
        self.stop_training = False
        cbs.on_train_begin({})
        for epoch in range(initial_epoch, epochs):
            cbs.on_epoch_begin(epoch, {})
            if shuffle:  # one gather per epoch; the batches are then contiguous views
                order = np.random.default_rng([self.seed, epoch]).permutation(n)
                epoch_x, epoch_y = [a[order] for a in xs], [a[order] for a in ys]
            else:
                epoch_x, epoch_y = xs, ys
            sums = dict.fromkeys(self._built.fetch_keys, 0.0)
            seen = 0
            for step in range(steps):
                batch = slice(step * batch_size, (step + 1) * batch_size)
                cbs.on_batch_begin(step, {})
                values = train(**self._feeds(epoch_x, epoch_y, batch))
                size = min(n, batch.stop) - batch.start
                seen += size
                for key, v in zip(self._built.fetch_keys, values):
                    sums[key] += float(v) * size
                cbs.on_batch_end(step, {k: s / seen for k, s in sums.items()})
            logs = {k: s / seen for k, s in sums.items()}
            if val is not None:
                logs.update({f"val_{k}": v for k, v in self._evaluate_arrays(*val, batch_size).items()})
            cbs.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cbs.on_train_end({})
        return self.history

    def _evaluate_arrays(self, xs: list[np.ndarray], ys: list[np.ndarray], batch_size: int) -> dict[str, float]:
        fn = self._function("eval")
        n = len(xs[0])
        sums = dict.fromkeys(self._built.fetch_keys, 0.0)
        for start in range(0, n, batch_size):
            idx = slice(start, start + batch_size)
            for key, v in zip(self._built.fetch_keys, fn(**self._feeds(xs, ys, idx))):
                sums[key] += float(v) * (min(n, start + batch_size) - start)
        return {k: s / n for k, s in sums.items()}

    def evaluate(self, x: Any, y: Any, batch_size: int = 32, return_dict: bool = False) -> Any:
        """Mean loss (and metrics) over the data, dropout off: a float, a list [loss, *metrics], or a dict."""
        self._require_compiled("evaluate")
        _positive_int(batch_size, "batch_size")
        xs = self._check_x(x)
        if len(xs[0]) == 0:
            raise ValueError("evaluate: x is empty")
        result = self._evaluate_arrays(xs, self._check_y(y, len(xs[0])), batch_size)
        if return_dict:
            return result
        values = list(result.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x: Any, batch_size: int = 32) -> np.ndarray | list[np.ndarray]:
        """The outputs for `x`, computed in batches with dropout off."""
        _positive_int(batch_size, "batch_size")
        xs = self._check_x(x)
        n = len(xs[0])
        if n == 0:
            raise ValueError("predict: x is empty")
        fn = self._function("predict")
        parts = [fn(**self._feeds(xs, None, slice(s, s + batch_size))) for s in range(0, n, batch_size)]
        outs = [np.concatenate([p[i] for p in parts]) for i in range(len(self.outputs))]
        return outs if self._multi_out else outs[0]

    # ---- description --------------------------------------------------------------------
    def summary(self, print_fn: Callable[[str], None] | None = print) -> str:
        """A table of layers, output shapes and parameter counts; printed with `print_fn` and returned."""
        rows = [("Layer (type)", "Output shape", "Params")]
        for layer in self.layers:
            rows.append((f"{layer.name} ({type(layer).__name__})", shape_str(layer.output.shape),
                         f"{layer.count_params():,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        rule = "-" * (sum(widths) + 4)
        lines = [f'Model "{self.name}"', rule]
        for i, r in enumerate(rows):
            lines.append(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}")
            if i == 0:
                lines.append(rule)
        total = sum(int(np.prod(w.shape)) for w in self.weights)
        trainable = sum(int(np.prod(w.shape)) for w in self.trainable_weights)
        lines += [rule, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {total - trainable:,}"]
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    # ---- whole-model checkpoints --------------------------------------------------------
    def get_config(self) -> dict:
        """The architecture (and compile settings) as JSON-ready data; ValueError for Python callables."""
        layers = [{"class": type(layer).__name__, "config": layer.get_config(),
                   "inbound": [t.layer.name for t in layer.output.inbound]} for layer in self.layers]
        config = {"format": FORMAT, "name": self.name, "layers": layers, "seed": self.seed,
                  "inputs": [t.layer.name for t in self.inputs], "outputs": [t.layer.name for t in self.outputs],
                  "multi_input": self._multi_in, "multi_output": self._multi_out, "compile": None}
        if self._config is not None:
            c = self._config
            for item in c.losses + c.metrics:
                if callable(item):
                    raise ValueError(f"model.save: {getattr(item, '__name__', item)!r} is a Python callable and "
                                     f"cannot be stored; use save_weights")
            config["compile"] = {"optimizer": _optimizer_config(c.optimizer), "loss": list(c.losses),
                                 "metrics": list(c.metrics), "backend": c.backend}
        return config

    def save(self, path: str | os.PathLike) -> None:
        """Write architecture, weights, optimizer state and the dropout step to one .npz, atomically."""
        arrays = {"config": np.array(json.dumps(self.get_config()))}
        arrays.update({f"weights/{name}": w.value for name, w in self._built.weights.items()})
        if self.optimizer is not None:
            arrays.update({f"optimizer/{v.name}": v.value for v in self.optimizer.variables()})
        if RNG_STEP in self.graph.variables:
            arrays["state/rng_step"] = self.graph.variables[RNG_STEP].value
        save_npz(path, arrays)


class Sequential(Model):
    """A stack of layers, each fed by the previous one; the first item is an `Input(shape)`."""

    def __init__(self, layers: Sequence[Any], name: str | None = None):
        layers = list(layers)
        if not layers or not isinstance(layers[0], SymbolicTensor) or not isinstance(layers[0].layer, InputLayer):
            raise ValueError("Sequential([...]) needs gn.layers.Input(shape) as its first item")
        x = inputs = layers[0]
        for layer in layers[1:]:
            if not isinstance(layer, Layer) or isinstance(layer, InputLayer):
                raise ValueError(f"Sequential items after the Input must be layers, got {layer!r}")
            x = layer(x)
        super().__init__(inputs, x, name=name or "sequential")


def load_model(path: str | os.PathLike) -> Model:
    """Rebuild a model written by `Model.save`: architecture, weights, compile settings, optimizer
    state and dropout step, so that `fit(..., initial_epoch=k)` continues the saved run exactly.

    A malformed file raises ValueError naming the file and what is wrong; the config is checked
    (structure, layer arguments, connections, weight shapes against the stored weights, the
    parameter count against `checkpoint.MAX_ELEMENTS`) before any weight is allocated."""
    where = os.fspath(path)
    data = load_npz(path)
    config = _read_config(data, where)
    tensors = _layers_from_config(config, where)
    _check_weights(tensors, data, where)
    inputs, outputs = (_ends(config, tensors, key, where) for key in ("inputs", "outputs"))
    try:
        model = Model(inputs if config["multi_input"] else inputs[0],
                      outputs if config["multi_output"] else outputs[0], name=config["name"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: invalid model config: {e}") from None
    model.seed = config["seed"]
    c = config.get("compile")
    if c is not None:
        try:
            model.compile(_optimizer_from_config(c["optimizer"]), c["loss"], c["metrics"], c["backend"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: invalid compile settings in the model config: {e}") from None
        _restore_optimizer(model.optimizer, data, where)
    model.load_weights(path)
    if "state/rng_step" in data and RNG_STEP in model.graph.variables:
        _assign_stored(model.graph.variables[RNG_STEP], data["state/rng_step"], "state/rng_step", where)
    return model


# ---- reading a model config -----------------------------------------------------------------
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}
_CONFIG_KEYS = {"name": str, "layers": list, "seed": int, "inputs": list, "outputs": list,
                "multi_input": bool, "multi_output": bool}
_LAYER_KEYS = {"class": str, "config": dict, "inbound": list}
_COMPILE_KEYS = {"optimizer": dict, "loss": list, "metrics": list, "backend": str}


def _read_config(data: dict[str, np.ndarray], where: str) -> dict:
    """The model config, checked for the keys and types `load_model` relies on."""
    if "config" not in data:
        raise ValueError(f"{where} holds no model config (was it written by save_weights?)")
    text = data["config"]
    if text.shape != () or text.dtype.kind != "U":
        raise ValueError(f"{where}: the model config is a {text.dtype} array of shape {text.shape}, not JSON text")
    try:
        config = json.loads(str(text))
    except ValueError as e:
        raise ValueError(f"{where}: the model config is not valid JSON: {e}") from None
    _require(config, {}, "the config", where)
    if config.get("format") != FORMAT:
        raise ValueError(f"{where}: unknown model format {config.get('format')!r}")
    _require(config, _CONFIG_KEYS, "the config", where)
    if config["seed"] < 0:
        raise ValueError(f"{where}: invalid model config: seed {config['seed']} is negative")
    for i, spec in enumerate(config["layers"]):
        _require(spec, _LAYER_KEYS, f"layers[{i}]", where)
    for key in ("inputs", "outputs"):
        if not config[key] or not all(isinstance(n, str) for n in config[key]):
            raise ValueError(f"{where}: invalid model config: '{key}' must be a non-empty list of layer names")
        if not config[f"multi_{key[:-1]}"] and len(config[key]) != 1:
            raise ValueError(f"{where}: invalid model config: {len(config[key])} {key} for a single-{key[:-1]} model")
    if config.get("compile") is not None:
        _require(config["compile"], _COMPILE_KEYS, "the compile settings", where)
        _require(config["compile"]["optimizer"], {"class": str, "config": dict}, "the optimizer", where)
    return config


def _require(value: Any, keys: dict[str, type], what: str, where: str) -> None:
    """`value` is a JSON object holding each of `keys` with a value of its type."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: invalid model config: {what} is {_JSON_TYPES.get(type(value), 'invalid')}, "
                         f"not an object")
    for key, kind in keys.items():
        if key not in value:
            raise ValueError(f"{where}: invalid model config: {what} lacks '{key}'")
        item = value[key]
        if not isinstance(item, kind) or (kind is int and isinstance(item, bool)):
            raise ValueError(f"{where}: invalid model config: {what}'s '{key}' must be {_JSON_TYPES[kind]}, "
                             f"got {_JSON_TYPES.get(type(item), 'invalid')} {item!r}")


def _layers_from_config(config: dict, where: str) -> dict[str, SymbolicTensor]:
    """Layer name -> its output, each layer built from its config and called on earlier layers."""
    tensors: dict[str, SymbolicTensor] = {}
    for i, spec in enumerate(config["layers"]):
        name = spec["config"].get("name")
        label = f"layer {name!r} (layers[{i}])" if isinstance(name, str) else f"layers[{i}]"
        if not isinstance(name, str) or name in tensors:
            problem = "a layer without a name" if not isinstance(name, str) else "a second layer of that name"
            raise ValueError(f"{where}: invalid model config: {label} is {problem}")
        dangling = [n for n in spec["inbound"] if not isinstance(n, str) or n not in tensors]
        if dangling:
            raise ValueError(f"{where}: invalid model config: {label} takes input from "
                             f"{', '.join(map(repr, dangling))}, which no earlier layer is named")
        try:
            layer = from_config(spec["class"], spec["config"])
            if isinstance(layer, InputLayer):
                if spec["inbound"]:
                    raise ValueError("an input layer takes no inbound layers")
                tensors[name] = layer.output
            else:
                tensors[name] = layer([tensors[n] for n in spec["inbound"]])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: invalid model config: {label}: {e}") from None
    return tensors


def _check_weights(tensors: dict[str, SymbolicTensor], data: dict[str, np.ndarray], where: str) -> None:
    """The config's weights, from the layers' shapes alone: at most MAX_ELEMENTS parameters in all,
    and exactly the names and shapes of the stored weights (so building the model allocates no
    more than the file holds)."""
    shapes = {}
    for name, t in tensors.items():
        for slot, shape in t.layer.weight_shapes([x.shape for x in t.inbound]).items():
            shapes[f"{name}/{slot}"] = shape
    total = sum(math.prod(s) for s in shapes.values())
    if total > MAX_ELEMENTS:
        largest = max(shapes, key=lambda n: math.prod(shapes[n]))
        raise ValueError(f"{where}: the model config asks for {total:,} parameters, more than the limit of "
                         f"{MAX_ELEMENTS:,} a loaded model may have (largest: '{largest}' of shape "
                         f"{shape_str(shapes[largest])}, {math.prod(shapes[largest]):,} elements)")
    stored = {k[len("weights/"):]: v for k, v in data.items() if k.startswith("weights/")}
    missing = [n for n in shapes if n not in stored]
    extra = [n for n in stored if n not in shapes]
    if missing or extra:
        raise ValueError(f"{where}: the model config and the stored weights disagree: missing weight(s) "
                         f"{missing}, unexpected weight(s) {extra}")
    for name, shape in shapes.items():
        if stored[name].shape != shape:
            raise ValueError(f"{where}: weight '{name}' has shape {shape_str(shape)} in the model config but "
                             f"{shape_str(stored[name].shape)} in the stored weights")


def _ends(config: dict, tensors: dict[str, SymbolicTensor], key: str, where: str) -> list[SymbolicTensor]:
    """The model's input or output tensors named in the config."""
    unknown = [n for n in config[key] if n not in tensors]
    if unknown:
        raise ValueError(f"{where}: invalid model config: {key} {', '.join(map(repr, unknown))} name no layer")
    return [tensors[n] for n in config[key]]


# ---- helpers ------------------------------------------------------------------------------
def _restore_optimizer(optimizer: Any, data: dict[str, np.ndarray], path: str) -> None:
    """Assign the stored state slots, step and learning rate (a rate the user supplied as a
    variable was stored as a number, so the rebuilt optimizer's own rate takes the config value)."""
    own = {v.name: v for v in optimizer.variables()}
    stored = {k[len("optimizer/"):]: v for k, v in data.items() if k.startswith("optimizer/")}
    missing = [n for n in own if n not in stored and n != optimizer.lr.name]
    extra = [n for n in stored if n not in own]
    if missing or extra:
        raise ValueError(f"{path}: optimizer state does not match the model's optimizer "
                         f"(missing {missing}, unexpected {extra})")
    for name, value in stored.items():
        _check_stored(own[name], value, f"optimizer/{name}", path)
    for name, value in stored.items():
        own[name].assign(value)


def _check_stored(var: Node, value: np.ndarray, key: str, path: str) -> None:
    if value.shape != var.shape or value.dtype.kind not in "fiub":
        raise ValueError(f"{path}: '{key}' is a {value.dtype} array of shape {shape_str(value.shape)}; the model "
                         f"needs {var.dtype} of shape {shape_str(var.shape)}")


def _assign_stored(var: Node, value: np.ndarray, key: str, path: str) -> None:
    _check_stored(var, value, key, path)
    var.assign(value)


def _tensors(value: Any, what: str) -> list[SymbolicTensor]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError(f"model {what} are empty")
    for t in items:
        if not isinstance(t, SymbolicTensor):
            raise TypeError(f"model {what} must be layer outputs (gn.layers.Input(...), Dense(...)(x), ...), "
                            f"got {type(t).__name__}")
    return items


def _collect_layers(inputs: list[SymbolicTensor], outputs: list[SymbolicTensor]) -> list[Layer]:
    """The layers between inputs and outputs in creation (hence topological) order."""
    input_layers = {t.layer for t in inputs}
    seen = set(input_layers)
    stack = list(outputs)
    while stack:
        t = stack.pop()
        if t.layer in seen:
            continue
        if isinstance(t.layer, InputLayer):
            raise ValueError(f"an output depends on an Input created at {t.source} that is not among the model's "
                             f"inputs")
        seen.add(t.layer)
        stack.extend(t.inbound)
    return sorted(seen, key=lambda layer: layer.output.order)


def _name_layers(layers: list[Layer]) -> None:
    """Give unnamed layers model-local names (dense, dense_1, ...) so identical architectures built
    anywhere share weight names; explicit names must be unique."""
    taken = [layer.name for layer in layers if layer.name is not None]
    dupes = sorted({n for n in taken if taken.count(n) > 1})
    if dupes:
        raise ValueError(f"layer names must be unique in a model: {', '.join(dupes)} repeated")
    used = set(taken)
    for layer in layers:
        if layer.name is None:
            base, k = layer.kind, 0
            while (name := base if k == 0 else f"{base}_{k}") in used:
                k += 1
            layer.name = name
            used.add(name)


def _per_tensor(value: Any, tensors: list[SymbolicTensor], multi: bool, what: str) -> list[Any]:
    if isinstance(value, dict):
        names = [t.layer.name for t in tensors]
        missing = [n for n in names if n not in value]
        extra = [k for k in value if k not in names]
        if missing or extra:
            raise ValueError(f"{what}: expected keys {names}; missing {missing}, unexpected {extra}")
        return [value[n] for n in names]
    if multi:
        if not isinstance(value, (list, tuple)) or len(value) != len(tensors):
            raise ValueError(f"{what}: the model has {len(tensors)} of these; pass a list of {len(tensors)} arrays "
                             f"or a dict by layer name")
        return list(value)
    return [value]


def _same_length(arrays: list[np.ndarray], what: str) -> None:
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        raise ValueError(f"{what}: arrays have different numbers of samples {sorted(lengths)}")


def _positive_int(value: Any, what: str) -> None:
    if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


def _make_optimizer(optimizer: Any) -> Any:
    from . import optim
    return optim.get(optimizer)


def _optimizer_config(optimizer: Any) -> dict:
    """The optimizer's class and constructor arguments, read back from its same-named attributes."""
    params = [p for p in inspect.signature(type(optimizer).__init__).parameters if p != "self"]
    config = {}
    for p in params:
        value = getattr(optimizer, p)
        config[p] = float(value.value) if isinstance(value, Node) else value
    return {"class": type(optimizer).__name__, "config": config}


def _optimizer_from_config(config: dict) -> Any:
    from . import optim
    cls = getattr(optim, config["class"], None)
    if not isinstance(cls, type) or not issubclass(cls, optim.Optimizer):
        raise ValueError(f"unknown optimizer class {config['class']!r} in the model config")
    try:
        return cls(**config["config"])
    except TypeError as e:  # an unknown or missing argument
        raise ValueError(f"optimizer {config['class']}: {e}") from None
