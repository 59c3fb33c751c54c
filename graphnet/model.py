"""Keras-style models: a DAG of layer calls replayed into a graph the model owns, trained by `fit`.

`compile` builds the loss, metrics and optimizer updates as graph nodes; the training step, the
evaluation step and the prediction function are each compiled once (lazily, on first use) with the
batch dimension left open, so the short last batch reuses them. Sample and class weights use a second
objective in the same graph (built and compiled the first time they are given), so a model trained
without them runs exactly the unweighted step. Every array the user passes is checked before the
first step, so bad input raises ValueError with the model unchanged.

Layers may be shared (called several times) and models used as layers; a layer's weights belong to
the layer, so every model built from it trains and reads the same values.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from . import metrics as objectives
from .callbacks import Callback, CallbackList, History, ProgressLogger, format_logs
from .checkpoint import MAX_ELEMENTS, load_npz, save_npz
from .function import BACKENDS, Function, compile as compile_function
from .graph import Graph, Node, shape_str
from .layers import Input, InputLayer, Layer, SymbolicTensor, from_config, weight_prefix
from .losses import LOSS_CLASSES, Loss
from .metrics import LossSpec
from .ops import RNG_STEP, placeholder
from .random import numpy_rng
from .shuffle import epoch_order
from .source import source_of

FORMAT = "graphnet.model/1"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
_IGNORED_COMPILE_OPTIONS = ("run_eagerly", "steps_per_execution", "jit_compile")  # always compiled, one step a call
_CHUNK_SECONDS = 0.1  # while a progress bar shows, fit runs the steps in chunks of about this long


@dataclass
class _Objective:
    """What one compiled training or evaluation step fetches and updates."""

    fetches: list[Node]
    updates: list


@dataclass
class _Built:
    """One instantiation of the layer DAG in a fresh graph (plus, once compiled, its objectives)."""

    graph: Graph
    inputs: list[Node]
    outputs: list[Node]
    weights: dict[str, Node]  # "layer/slot" -> variable node
    targets: list[Node | None] = field(default_factory=list)  # per output; None: no loss and no metric
    state_updates: list = field(default_factory=list)  # (variable, value) of layers' non-trainable state
    fetch_keys: list[str] = field(default_factory=list)
    loss_keys: dict[str, int | None] = field(default_factory=dict)  # "loss" -> None, "<out>_loss" -> output index
    plain: _Objective | None = None
    weighted: _Objective | None = None  # built on the first use of sample or class weights
    feed_positions: dict[str, tuple[int, int]] | None = None  # Model._feed_positions
    targeted: list[int] | None = None  # Model._targeted

    @property
    def fetches(self) -> list[Node]:
        return self.plain.fetches if self.plain else []

    @property
    def updates(self) -> list:
        return self.plain.updates if self.plain else []


@dataclass(frozen=True)
class _CompileConfig:
    optimizer: Any
    losses: tuple  # LossSpec | None per output
    metrics: tuple  # a tuple of metrics per output
    loss_weights: tuple  # float per output
    backend: str


class Model:
    """A functional model from `Input` tensors to layer outputs (one or several of each)."""

    _default_name = "model"
    _native_fit = True  # fit, evaluate and predict run batches through Function.run_steps where they can
    #                     (False: batch by batch, as with a callback's batch-level hook)

    def __init__(self, inputs: SymbolicTensor | Sequence[SymbolicTensor] | None = None,
                 outputs: SymbolicTensor | Sequence[SymbolicTensor] | None = None, name: str | None = None):
        if inputs is None or outputs is None:
            raise TypeError("gn.Model(inputs, outputs) builds a functional model from Input(...) tensors to layer "
                            "outputs (subclassed models with a call() method are not supported); or use "
                            "gn.Sequential([...])")
        self._init_state(name)
        self._setup(inputs, outputs)

    def _init_state(self, name: str | None) -> None:
        self._explicit_name = name
        self.name = name or self._default_name
        self.seed = int(numpy_rng().integers(2 ** 31))  # keys the per-epoch shuffles, so resumed fits replay
        self.stop_training = False
        self.optimizer: Any = None
        self.backend = "llvm"  # compile(backend=...) sets it; predict on an uncompiled model uses it too
        self.history: History | None = None
        self._config: _CompileConfig | None = None
        self._functions: dict[str, Function] = {}
        # per function: where each placeholder's array sits in fit's checked arrays (`_checked_datasets`)
        self._feed_layouts: weakref.WeakKeyDictionary[Function, tuple] = weakref.WeakKeyDictionary()
        self._built: _Built | None = None
        self._layer: ModelLayer | None = None

    def _setup(self, inputs: Any, outputs: Any) -> None:
        """Take the DAG from `inputs` to `outputs` and build it into a graph."""
        self._multi_in = isinstance(inputs, (list, tuple))
        self._multi_out = isinstance(outputs, (list, tuple))
        self.inputs = _tensors(inputs, "inputs")
        self.outputs = _tensors(outputs, "outputs")
        for t in self.inputs:
            if not isinstance(t.layer, InputLayer):
                raise ValueError(f"model inputs must come from Input(...), got {t!r}")
        self._tensors = _collect(self.inputs, self.outputs)
        self._layers = list(dict.fromkeys(t.layer for t in self._tensors))
        _name_layers(self._layers)
        self._config, self._functions = None, {}
        self._built = self._instantiate()

    # ---- graph --------------------------------------------------------------------------
    def _instantiate(self) -> _Built:
        """Build the layer calls into a fresh graph (the weights are the layers' own), carrying over
        the dropout step."""
        graph = Graph()
        nodes: dict[SymbolicTensor, Node] = {}
        weights: dict[str, Node] = {}
        state_updates: list = []
        for t in self._tensors:
            layer = t.layer
            layer.call_index = t.index
            with graph, source_of(t.source):
                nodes[t] = layer.build(graph, [nodes[x] for x in t.inbound])
            weights.update({f"{layer.name}/{slot}": w for slot, w in layer.graph_weights().items()})
            state_updates += layer.pop_state_updates()
        _check_single_use(weights, self.name)
        built = _Built(graph, [nodes[t] for t in self.inputs], [nodes[t] for t in self.outputs], weights,
                       state_updates=state_updates)
        old = self._built
        if old is not None and RNG_STEP in old.graph.variables and RNG_STEP in graph.variables:
            graph.variables[RNG_STEP].assign(old.graph.variables[RNG_STEP].value)
        return built

    def _require_built(self, what: str) -> _Built:
        if self._built is None:
            raise ValueError(f"{what}: the model has not been built yet: its input shape is unknown. Give the first "
                             f"layer input_shape=..., start with gn.layers.Input(shape), call model.build((None, "
                             f"features)), or call fit/predict first")
        return self._built

    @property
    def graph(self) -> Graph:
        """The graph this model's nodes live in (rebuilt by each `compile`)."""
        return self._require_built("graph").graph

    @property
    def input_nodes(self) -> list[Node]:
        return list(self._require_built("input_nodes").inputs)

    @property
    def output_nodes(self) -> list[Node]:
        return list(self._require_built("output_nodes").outputs)

    @property
    def loss(self) -> Node:
        """The total training loss node (after `compile`)."""
        self._require_compiled("loss")
        return self._built.fetches[0]

    # ---- structure (Keras's accessors) ---------------------------------------------------
    @property
    def layers(self) -> list[Any]:
        """The model's layers in call order (a sub-model appears as the model it is)."""
        return [_public(layer) for layer in self._layers]

    def get_layer(self, name: str | None = None, index: int | None = None) -> Any:
        """A layer by name or by index into `layers`."""
        layers = self.layers
        if index is not None:
            if not -len(layers) <= index < len(layers):
                raise ValueError(f"get_layer: index {index} out of range: the model has {len(layers)} layers")
            return layers[index]
        for layer in layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r} in model {self.name!r} (layers: "
                         f"{', '.join(str(layer.name) for layer in layers)})")

    @property
    def input(self) -> SymbolicTensor | list[SymbolicTensor]:
        self._require_built("input")
        return list(self.inputs) if self._multi_in else self.inputs[0]

    @property
    def output(self) -> SymbolicTensor | list[SymbolicTensor]:
        self._require_built("output")
        return list(self.outputs) if self._multi_out else self.outputs[0]

    @property
    def input_shape(self) -> tuple | list[tuple]:
        """(None, features...): None is the batch, as Keras shows it."""
        self._require_built("input_shape")
        shapes = [t.shape for t in self.inputs]
        return shapes if self._multi_in else shapes[0]

    @property
    def output_shape(self) -> tuple | list[tuple]:
        self._require_built("output_shape")
        shapes = [t.shape for t in self.outputs]
        return shapes if self._multi_out else shapes[0]

    @property
    def metrics_names(self) -> list[str]:
        """The names of what evaluate returns: ["loss", ...metrics] (empty before compile)."""
        return list(self._built.fetch_keys) if self._config is not None else []

    def count_params(self) -> int:
        return sum(int(np.prod(w.shape)) for w in self._require_built("count_params").weights.values())

    @property
    def trainable(self) -> bool:
        return all(layer.trainable for layer in self._layers)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        """Freeze (False) or unfreeze every layer; compile again for it to take effect (as in Keras)."""
        for layer in self._layers:
            layer.trainable = value

    # ---- weights ------------------------------------------------------------------------
    @property
    def weights(self) -> list[Node]:
        return list(self._require_built("weights").weights.values())

    @property
    def trainable_weights(self) -> list[Node]:
        return [w for w in self.weights if w.trainable]

    @property
    def non_trainable_weights(self) -> list[Node]:
        return [w for w in self.weights if not w.trainable]

    def get_weights(self) -> list[np.ndarray]:
        return [w.value for w in self.weights]

    def set_weights(self, values: Sequence[np.ndarray]) -> None:
        names = list(self._require_built("set_weights").weights)
        if len(values) != len(names):
            raise ValueError(f"set_weights: model has {len(names)} weights, got {len(values)} arrays")
        self._assign_weights(dict(zip(names, values)), "set_weights")

    def _assign_weights(self, values: dict[str, Any], what: str) -> None:
        """Check every name and shape first, then assign: a mismatch leaves the model unchanged."""
        own = self._require_built(what).weights
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

    def save_weights(self, filepath: str | os.PathLike, overwrite: bool = True) -> None:
        """Write the layer weights to an .npz archive atomically (see `save` for the file name)."""
        path = _save_path(filepath, overwrite, "save_weights")
        save_npz(path, {name: w.value for name, w in self._require_built("save_weights").weights.items()})

    def load_weights(self, filepath: str | os.PathLike) -> None:
        """Read weights saved by `save_weights` (or `save`); ValueError naming any mismatched weight."""
        data = load_npz(filepath)
        if "config" in data:
            data = {k[len("weights/"):]: v for k, v in data.items() if k.startswith("weights/")}
        self._assign_weights(data, f"load_weights({os.fspath(filepath)!r})")

    # ---- compile ------------------------------------------------------------------------
    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, metrics: Any = None, loss_weights: Any = None,
                backend: str = "llvm", *, weighted_metrics: Any = None, **options: Any) -> None:
        """Set the optimizer (object or name), the loss (a name, a `gn.losses` loss object or a callable
        `loss(y_true, y_pred)`; one for all outputs, a list, or a dict by output name), metrics (a list for
        every output, a list of lists, or a dict by output name), `loss_weights` (list or dict) and the
        backend. `run_eagerly`, `jit_compile` and `steps_per_execution` are accepted and change nothing:
        the step is always compiled."""
        unknown = [k for k in options if k not in _IGNORED_COMPILE_OPTIONS]
        if unknown:
            raise TypeError(f"compile() got unexpected argument(s) {', '.join(unknown)}")
        if weighted_metrics:
            raise ValueError("compile: weighted_metrics are not supported (metrics are unweighted; the loss takes "
                             "sample_weight and class_weight)")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
        if loss is None:
            raise ValueError("compile: a loss is required (e.g. 'mse' or 'binary_crossentropy')")
        if self._built is None:  # an unbuilt Sequential: check the names now, build and compile on first use
            _check_names(optimizer, loss, metrics)
            self._pending_compile = dict(optimizer=optimizer, loss=loss, metrics=metrics, loss_weights=loss_weights,
                                         backend=backend)
            return
        names = [t.layer.name for t in self.outputs]
        specs = _per_output(loss, names, self._multi_out, "loss", lambda item: None if item is None else
                            objectives.loss_spec(item))
        if all(s is None for s in specs):
            raise ValueError("compile: a loss is required for at least one output")
        metric_lists = _metrics_per_output(metrics, names, self._multi_out)
        weights = _loss_weights(loss_weights, names, self._multi_out)
        optimizer = _make_optimizer(optimizer)
        built = self._instantiate()
        total, fetches = None, []
        with built.graph:
            for k, (t, out) in enumerate(zip(self.outputs, built.outputs)):
                spec, mlist = specs[k], metric_lists[k]
                if spec is None and not mlist:
                    built.targets.append(None)
                    continue
                prefix = f"{t.layer.name}_" if self._multi_out else ""
                target = objectives.target_placeholder(built.graph, f"{t.layer.name}/target", spec or LossSpec(None),
                                                       out)
                built.targets.append(target)
                with source_of(t.source):
                    if spec is not None:
                        objectives.check_output(spec, out, f"output '{t.layer.name}'")
                        value = objectives.loss_node(spec, out, target)
                        scaled = value if weights[k] == 1.0 else value * weights[k]
                        total = scaled if total is None else total + scaled
                        if self._multi_out:
                            built.loss_keys[prefix + "loss"] = k
                            built.fetch_keys.append(prefix + "loss")
                            fetches.append(value)
                    for metric in mlist:
                        built.fetch_keys.append(prefix + objectives.check_metric(metric))
                        fetches.append(objectives.metric_node(metric, spec or LossSpec(None), out, target))
            updates = _minimize(optimizer, total, built)
        built.plain = _Objective([total] + fetches, updates)
        built.fetch_keys.insert(0, "loss")
        built.loss_keys["loss"] = None
        self._built, self.optimizer, self.backend = built, optimizer, backend
        self._config = _CompileConfig(optimizer, tuple(specs), tuple(tuple(m) for m in metric_lists), tuple(weights),
                                      backend)
        self._functions = {}

    def _require_compiled(self, what: str) -> None:
        if self._config is None:
            raise RuntimeError(f"{what}: call model.compile(optimizer, loss) first")

    def _weighted_objective(self) -> _Objective:
        """The objective with a per-sample weight placeholder per output ("<output>/sample_weight"):
        each output's loss is mean(weight * per-sample loss), as Keras weighs them."""
        b = self._built
        if b.weighted is None:
            c = self._config
            values: dict[int, Node] = {}
            total = None
            with b.graph:
                for k, (t, out, target) in enumerate(zip(self.outputs, b.outputs, b.targets)):
                    if c.losses[k] is None:
                        continue
                    w = placeholder(f"{t.layer.name}/sample_weight", (None,), out.dtype, graph=b.graph)
                    with source_of(t.source):
                        values[k] = (w * objectives.sample_loss_node(c.losses[k], out, target)).mean()
                        scaled = values[k] if c.loss_weights[k] == 1.0 else values[k] * c.loss_weights[k]
                        total = scaled if total is None else total + scaled
                updates = _minimize(self.optimizer, total, b)
            fetches = [total if b.loss_keys.get(key, -1) is None else values[b.loss_keys[key]] if key in b.loss_keys
                       else node for key, node in zip(b.fetch_keys, b.fetches)]
            b.weighted = _Objective(fetches, updates)
        return b.weighted

    def _function(self, kind: str) -> Function:
        """The compiled train / eval / predict function (and the weighted train and eval), built on first
        use and then reused."""
        if kind not in self._functions:
            b = self._built
            if kind in ("train", "train_weighted"):
                objective = b.plain if kind == "train" else self._weighted_objective()
                fn = compile_function(objective.fetches, updates=objective.updates, backend=self.backend)
            elif kind in ("eval", "eval_weighted"):
                objective = b.plain if kind == "eval" else self._weighted_objective()
                fn = compile_function(objective.fetches, backend=self.backend, training=False)
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
    def _ensure_built(self, x: Any) -> None:
        """Build a model whose input shape was left open from the first data it sees."""

    def _check_x(self, x: Any, what: str = "x") -> list[np.ndarray]:
        if x is None:
            raise ValueError(f"{what}: expected arrays, got None (graphnet trains on numpy arrays)")
        built = self._require_built(what)
        multi = self._multi_in
        items = _per_tensor(x, self.inputs, multi, what) if multi or type(x) is not np.ndarray else (x,)
        arrays = []
        for t, node, value in zip(self.inputs, built.inputs, items):
            label = f"{what} (input '{t.layer.name}')" if multi else what
            arr = objectives.as_numbers(value, label)
            shape = node.shape
            if arr.ndim != len(shape) or arr.shape[1:] != shape[1:]:
                detail = (f" (feature width {arr.shape[-1]}, the model expects {shape[-1]})"
                          if arr.ndim == len(shape) and arr.ndim >= 2 else "")
                raise ValueError(f"{label}: expected shape {shape}, got {shape_str(arr.shape)}{detail}")
            objectives.check_finite(arr, label)
            arrays.append(np.ascontiguousarray(arr, dtype=node.dtype))
        if multi:
            _same_length(arrays, what)
        return arrays

    def _check_y(self, y: Any, n: int, what: str = "y") -> list[np.ndarray | None]:
        """Per-output target arrays (None for an output with neither loss nor metric): `y` is one array,
        a list (one per output, or one per output that takes targets) or a dict by output name."""
        if y is None:
            raise ValueError(f"{what}: the targets are missing (fit and evaluate take x and y arrays)")
        targeted = self._targeted()
        wanted = [self.outputs[k] for k in targeted]
        if isinstance(y, dict):
            y = {k: v for k, v in y.items() if k not in {t.layer.name for t in self.outputs} - {t.layer.name
                                                                                                   for t in wanted}}
        elif isinstance(y, (list, tuple)) and self._multi_out and len(y) == len(self.outputs) != len(wanted):
            y = [v for t, v in zip(self.outputs, y) if t in wanted]
        arrays: list[np.ndarray | None] = [None] * len(self.outputs)
        for k, item in zip(targeted, _per_tensor(y, wanted, len(wanted) > 1, what)):
            label = f"{what} (output '{self.outputs[k].layer.name}')" if self._multi_out else what
            spec = self._config.losses[k] or LossSpec(None)
            arr = objectives.check_targets(item, spec, self._built.outputs[k], label)
            if len(arr) != n:
                raise ValueError(f"{what} has {len(arr)} samples but x has {n}")
            arrays[k] = arr
        return arrays

    def _targeted(self) -> list[int]:
        """The outputs that take targets (those with a loss or a metric), by index; made once per
        compiled graph."""
        b = self._built
        if b.targeted is None:
            b.targeted = [k for k, target in enumerate(b.targets) if target is not None]
        return b.targeted

    def _check_weights(self, sample_weight: Any, class_weight: Any, ys: list[np.ndarray | None], n: int,
                       what: str = "sample_weight") -> list[np.ndarray | None] | None:
        """Per-output sample weights (sample_weight times the class weight of each sample's class), or
        None when neither is given."""
        if sample_weight is None and class_weight is None:
            return None
        weights: list[np.ndarray | None] = [None if y is None else np.ones(n) for y in ys]
        if sample_weight is not None:
            lossy = [t for t, spec in zip(self.outputs, self._config.losses) if spec is not None]
            items = _per_tensor(sample_weight, lossy, len(lossy) > 1 or isinstance(sample_weight, dict), what)
            for t, item in zip(lossy, items):
                k = self.outputs.index(t)
                arr = objectives.as_numbers(item, what)
                if arr.ndim == 2 and arr.shape[1] == 1:
                    arr = arr[:, 0]
                if arr.shape != (n,):
                    raise ValueError(f"{what}: expected one weight per sample, shape ({n},), got "
                                     f"{shape_str(arr.shape)}")
                objectives.check_finite(arr, what)
                if arr.size and arr.min() < 0:
                    raise ValueError(f"{what}: weights must be >= 0, got {arr.min()}")
                weights[k] = weights[k] * arr
        if class_weight is not None:
            weights = self._apply_class_weight(class_weight, ys, weights)
        return [None if w is None or self._config.losses[k] is None else
                np.ascontiguousarray(w, dtype=self._built.outputs[k].dtype) for k, w in enumerate(weights)]

    def _apply_class_weight(self, class_weight: Any, ys: list, weights: list) -> list:
        lossy = [k for k, spec in enumerate(self._config.losses) if spec is not None]
        if len(lossy) != 1:
            raise ValueError("class_weight is for models with one output trained by a loss; pass sample_weight "
                             "per output instead")
        if not isinstance(class_weight, dict):
            raise ValueError(f"class_weight must be a dict {{class: weight}}, got {type(class_weight).__name__}")
        (k,) = lossy
        ids = objectives.class_ids(ys[k], self._config.losses[k])
        table = {}
        for key, value in class_weight.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"class_weight[{key!r}] must be a finite number >= 0, got {value!r}")
            table[int(key)] = float(value)
        missing = sorted(set(np.unique(ids).tolist()) - set(table))
        if missing:
            raise ValueError(f"class_weight has no weight for class(es) {missing} present in y")
        weights[k] = weights[k] * np.array([table[int(c)] for c in ids])
        return weights

    def _feeds(self, xs: list[np.ndarray], ys: list[np.ndarray | None] | None, idx: Any,
               sw: list[np.ndarray | None] | None = None) -> dict[str, np.ndarray]:
        return {name: arr[idx] for name, arr in self._named(xs, ys, sw).items()}

    def _named(self, xs: list[np.ndarray], ys: list[np.ndarray | None] | None = None,
               sw: list[np.ndarray | None] | None = None) -> dict[str, np.ndarray]:
        """The arrays by the name of the placeholder each feeds (inputs, targets, sample weights)."""
        groups = (xs, ys or (), sw or ())
        return {name: groups[g][i] for name, (g, i) in self._feed_positions().items()
                if i < len(groups[g]) and groups[g][i] is not None}

    def _feed_positions(self) -> dict[str, tuple[int, int]]:
        """Where the array each placeholder takes sits, by the placeholder's name: (0, i) input i,
        (1, k) output k's targets, (2, k) output k's sample weights (in `xs`, `ys`, `sw`); made once
        per built graph, whose placeholders took these names."""
        b = self._built
        if b.feed_positions is None:
            positions = {t.layer.name: (0, i) for i, t in enumerate(self.inputs)}
            positions.update({f"{t.layer.name}/target": (1, k) for k, t in enumerate(self.outputs)})
            positions.update({f"{t.layer.name}/sample_weight": (2, k) for k, t in enumerate(self.outputs)})
            b.feed_positions = positions
        return b.feed_positions

    # ---- training -----------------------------------------------------------------------
    def fit(self, x: Any = None, y: Any = None, batch_size: int | None = None, epochs: int = 1,
            verbose: int | str = "auto", callbacks: Sequence[Callback] | None = None, validation_split: float = 0.0,
            validation_data: tuple | None = None, shuffle: bool = True, class_weight: dict | None = None,
            sample_weight: Any = None, initial_epoch: int = 0, steps_per_epoch: int | None = None,
            validation_steps: int | None = None, validation_batch_size: int | None = None,
            validation_freq: int | Sequence[int] = 1) -> History:
        """Train for `epochs` (counting from `initial_epoch`) with mini-batches; returns the History.

        Keras's arguments and order. `steps_per_epoch` runs that many batches per epoch, taken in turn
        from the epoch's (shuffled) batches and starting over when they run out; `validation_freq`
        validates every k-th epoch (an int) or at the listed 1-based epochs. Epoch e's shuffle depends
        only on (model seed, e), so a fit resumed from a saved model with `initial_epoch` replays the
        uninterrupted run exactly. Validation (`validation_split` takes the last samples, before
        shuffling) is unweighted unless validation_data holds sample weights (x, y, weights).
        """
        self._ensure_built(x)
        self._require_compiled("fit")
        batch_size = 32 if batch_size is None else batch_size
        _positive_int(batch_size, "batch_size")
        verbose = _verbosity(verbose, 1)
        if not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
        if steps_per_epoch is not None:
            _positive_int(steps_per_epoch, "steps_per_epoch")
        due = _validation_schedule(validation_freq)
        xs = self._check_x(x)
        n = len(xs[0])
        ys = self._check_y(y, n)
        sw = self._check_weights(sample_weight, class_weight, ys, n)
        val = None
        if validation_data is not None:
            val = self._validation_arrays(validation_data)
        elif validation_split:
            split = int(n * (1 - validation_split))
            if split == 0 or split == n:
                raise ValueError(f"validation_split={validation_split} of {n} samples leaves an empty training or "
                                 f"validation set")
            val = ([a[split:] for a in xs], [None if a is None else a[split:] for a in ys], None)
            xs, ys, n = [a[:split] for a in xs], [None if a is None else a[:split] for a in ys], split
            sw = None if sw is None else [None if a is None else a[:split] for a in sw]
        if n == 0:
            raise ValueError("fit: x is empty")
        shards = _distributed_fit().fit_shards(self, batch_size)  # under MPI: this rank's part of each global batch
        batches = shards.steps(n) if shards else math.ceil(n / batch_size)
        offsets = shards.row_offsets(n) if shards else None  # where each shard starts in its global batch
        steps = steps_per_epoch or batches
        if shards:
            verbose, callbacks = shards.verbose(verbose), shards.callbacks(callbacks)
        train = self._function("train" if sw is None else "train_weighted")
        if shards:
            _distributed_fit().require_reduction(train)
        val_batch = validation_batch_size or batch_size
        if val is not None:
            if validation_steps is not None:  # only the first `validation_steps` batches
                _positive_int(validation_steps, "validation_steps")
                val = tuple(_head(part, validation_steps * val_batch) for part in val)
            self._function("eval" if val[2] is None else "eval_weighted")

        self.history = History()
        params = {"epochs": epochs, "steps": steps, "batch_size": batch_size, "samples": n, "verbose": verbose}
        self.history.params = params
        extra = [ProgressLogger(verbose)] if verbose else []
        cbs = CallbackList(list(callbacks or []) + extra + [self.history], self, params)
        self.stop_training = False
        keys = self._built.fetch_keys
        datasets = self._fit_datasets(train, xs, ys, sw, cbs)
        loggers = [cb for cb in cbs.callbacks if type(cb) is ProgressLogger]  # a live bar is served in chunks
        cbs.on_train_begin({})
        for epoch in range(initial_epoch, epochs):
            cbs.on_epoch_begin(epoch, {})
            order = epoch_order(self.seed, epoch, n) if shuffle else None
            rows, local_n, local_batch = order, n, batch_size
            if shards:
                (rows, local_n), local_batch = shards.local(order, n), shards.batch
                rows = np.ascontiguousarray(rows, dtype=np.int64)
            if datasets is not None:
                live = bool(loggers) and any(cb.bar is not None for cb in loggers)
                sums, seen = self._fit_epoch(train, datasets, rows, local_n, local_batch, steps, cbs, offsets, live)
            else:
                sums, seen = self._fit_epoch_by_batch(train, (xs, ys, sw), rows, local_n, local_batch, steps, cbs,
                                                      offsets)
            logs = shards.mean(keys, sums, seen) if shards else {k: s / seen for k, s in zip(keys, sums)}
            if val is not None and due(epoch):
                logs.update({f"val_{k}": v for k, v in self._evaluate_arrays(*val, val_batch).items()})
            cbs.on_epoch_end(epoch, logs)
            if shards:
                self.stop_training = shards.agree_to_stop(self.stop_training)
            if self.stop_training:
                break
        cbs.on_train_end({})
        return self.history

    # An epoch's loss and metrics are means over its samples: each batch's value times its size, summed
    # in step order in double precision (both loops below add the same terms in the same order).
    def _fit_epoch_by_batch(self, train: Function, data: tuple, order: np.ndarray | None, n: int, batch_size: int,
                            steps: int, cbs: CallbackList,
                            offsets: np.ndarray | None = None) -> tuple[list[float], int]:
        """One epoch, one call of the step per batch, every batch-level hook called: the sum of each
        fetch times its batch size, and the samples seen. `offsets`: each batch's dropout row offset."""
        epoch_x, epoch_y, epoch_w = (_take(a, order) for a in data)
        batches = math.ceil(n / batch_size)
        keys = self._built.fetch_keys
        sums = [0.0] * len(keys)
        seen = 0
        for step in range(steps):
            start = (step % batches) * batch_size
            batch = slice(start, start + batch_size)
            cbs.on_train_batch_begin(step, {})
            self._set_row_offset(offsets, step % batches, 1)
            values = train(**self._feeds(epoch_x, epoch_y, batch, epoch_w))
            size = min(n, batch.stop) - batch.start
            seen += size
            sums = [s + float(v) * size for s, v in zip(sums, values)]
            cbs.on_train_batch_end(step, {k: s / seen for k, s in zip(keys, sums)})
            if self.stop_training:
                break
        return sums, seen

    def _fit_datasets(self, train: Function, xs: list, ys: list, sw: list | None,
                      cbs: CallbackList) -> tuple[np.ndarray, ...] | None:
        """The whole training set as `train.run_steps` takes it, one array per placeholder in placeholder
        order, or None where fit goes batch by batch: a callback with a batch-level hook (other than the
        progress bar, which `_fit_epoch` serves after each chunk). The arrays are `_check_x`'s,
        `_check_y`'s and `_check_weights`' (the placeholders' dtypes and row shapes, C-contiguous), so
        run_steps' checks are made once per function (`_feed_layouts`)."""
        if not self._native_fit or _batch_hooked(cbs, ("on_train_batch_begin", "on_train_batch_end")):
            return None
        return self._checked_datasets(train, xs, ys, sw)

    def _checked_datasets(self, fn: Function, xs: list, ys: list | None = None,
                          sw: list | None = None) -> tuple[np.ndarray, ...]:
        """Checked arrays (`_check_x`, `_check_y`, `_check_weights`: the placeholders' dtypes and row
        shapes, C-contiguous, not empty) as `fn._run_checked_steps` takes them, one per placeholder in
        placeholder order: run_steps' checks, which they pass whenever they pass once, are made on the
        first call for each function, which records where each placeholder's array sits
        (`_feed_layouts`; the same for every call, as the model and the function fix it)."""
        layout = self._feed_layouts.get(fn)
        if layout is None:
            named = self._named(xs, ys, sw)
            fn._datasets({name: named[name] for name in fn.feeds.names if name in named})
            positions = self._feed_positions()
            layout = self._feed_layouts[fn] = tuple(positions[name] for name in fn.feeds.names)
        groups = (xs, ys, sw)
        return tuple([groups[g][i] for g, i in layout])

    def _datasets(self, fn: Function, xs: list, ys: list | None = None, sw: list | None = None) -> dict[str, np.ndarray]:
        """Whole arrays as `fn.run_steps` takes them: the checked arrays (`_check_x`, `_check_y`,
        `_check_weights`: the placeholders' dtypes, C-contiguous) of the placeholders `fn` reads, which
        run_steps checks against them."""
        index = fn.feeds.index
        return {name: arr for name, arr in self._named(xs, ys, sw).items() if name in index}

    def _fit_epoch(self, train: Function, datasets: tuple[np.ndarray, ...], order: np.ndarray | None, n: int,
                   batch_size: int, steps: int, cbs: CallbackList, offsets: np.ndarray | None = None,
                   live: bool = False) -> tuple[list[float], int]:
        """One epoch through `train.run_steps` (on `_fit_datasets`' arrays and the epoch's order, a
        permutation of the samples or under MPI this rank's rows of it, which pass its checks by
        construction: `_run_checked_steps`): all steps in one call or, while a progress bar shows
        (`live`), in chunks of about `_CHUNK_SECONDS`, after each of which the bar gets each batch's end;
        a call also ends before the short last batch (the native loop sums a stretch of full batches or
        the short one: `_sum_checked_steps`) and where the dropout row offset changes (under MPI).
        Returns what `_fit_epoch_by_batch` returns."""
        full, batches = n // batch_size, -(-n // batch_size)
        keys = self._built.fetch_keys
        sums = [0.0] * len(keys)
        seen, step, chunk = 0, 0, 1 if live else steps
        while step < steps:
            first = step % batches
            # a chunk does not wrap around, and the short batch is a chunk of its own
            count = min(chunk, steps - step, (full if first < full else batches) - first)
            if offsets is not None:
                count = self._set_row_offset(offsets, first, count)
            if not live:  # the steps' sums: added up in the native loop, else from their stacked values
                summed = train._sum_checked_steps(datasets, int(batch_size), order, count, first, sums)
                sums = summed if summed is not None else _final_sums(
                    sums, train._run_checked_steps(datasets, int(batch_size), order, count, start=first),
                    _batch_sizes(n, batch_size, first, count))
            else:
                started = time.perf_counter()
                values = train._run_checked_steps(datasets, int(batch_size), order, count, start=first)
                elapsed = time.perf_counter() - started
                sizes = _batch_sizes(n, batch_size, first, count)
                running = _running_sums(sums, values, sizes)
                counts = seen + np.cumsum(np.broadcast_to(sizes, (count,))).astype(np.int64)
                for i in range(count):
                    cbs.on_train_batch_end(step + i, {k: float(r[i]) / int(counts[i]) for k, r in zip(keys, running)})
                chunk = max(1, int(count * _CHUNK_SECONDS / max(elapsed, 1e-9)))
                sums = [float(r[-1]) for r in running]
            seen += count * batch_size if first + count < batches else n - first * batch_size
            step += count
        return sums, seen

    def _set_row_offset(self, offsets: np.ndarray | None, batch: int, count: int) -> int:
        """Sets dropout's row offset for `batch` (None: leaves it); returns how many of the `count`
        batches from it share that offset, so one `run_steps` call may take them."""
        if offsets is None:
            return count
        from .distributed.sampler import set_row_offset
        set_row_offset(int(offsets[batch]), self.graph)
        same = offsets[batch:batch + count] == offsets[batch]
        return count if same.all() else int(np.argmin(same))

    def _validation_arrays(self, data: Any) -> tuple:
        if not isinstance(data, (list, tuple)) or len(data) not in (2, 3):
            raise ValueError("validation_data must be (x_val, y_val) or (x_val, y_val, sample_weight_val)")
        vx = self._check_x(data[0], "validation x")
        vy = self._check_y(data[1], len(vx[0]), "validation y")
        vw = self._check_weights(data[2], None, vy, len(vx[0]), "validation sample_weight") if len(data) == 3 else None
        return vx, vy, vw

    def _evaluate_arrays(self, xs: list[np.ndarray], ys: list, sw: list | None, batch_size: int,
                         cbs: CallbackList | None = None) -> dict[str, float]:
        """Mean loss and metrics over the data: all batches in one `run_steps` call, or batch by batch
        where a callback has a test-batch hook."""
        fn = self._function("eval" if sw is None else "eval_weighted")
        n = len(xs[0])
        keys = self._built.fetch_keys
        if self._native_fit and not _batch_hooked(cbs, ("on_test_batch_begin", "on_test_batch_end")):
            values = (fn._run_checked_steps(self._checked_datasets(fn, xs, ys, sw), int(batch_size)) if n else
                      fn.run_steps(self._datasets(fn, xs, ys, sw), batch_size))  # (empty: run_steps explains)
            sizes = _batch_sizes(n, batch_size, 0, math.ceil(n / batch_size))
            sums = _final_sums([0.0] * len(keys), values, sizes)
        else:
            sums = self._evaluate_by_batch(fn, xs, ys, sw, batch_size, cbs)
        return {k: s / n for k, s in zip(keys, sums)}

    def _evaluate_by_batch(self, fn: Function, xs: list[np.ndarray], ys: list, sw: list | None, batch_size: int,
                           cbs: CallbackList | None) -> list[float]:
        """Each fetch's sum over the batches of its value times the batch's size, every test-batch hook called."""
        n = len(xs[0])
        keys = self._built.fetch_keys
        sums = [0.0] * len(keys)
        for i, start in enumerate(range(0, n, batch_size)):
            idx = slice(start, start + batch_size)
            if cbs is not None:
                cbs.on_test_batch_begin(i, {})
            sums = [s + float(v) * (min(n, start + batch_size) - start)
                    for s, v in zip(sums, fn(**self._feeds(xs, ys, idx, sw)))]
            if cbs is not None:
                cbs.on_test_batch_end(i, {k: s / min(n, start + batch_size) for k, s in zip(keys, sums)})
        return sums

    def evaluate(self, x: Any = None, y: Any = None, batch_size: int | None = None, verbose: int | str = 0,
                 sample_weight: Any = None, steps: int | None = None, callbacks: Sequence[Callback] | None = None,
                 return_dict: bool = False) -> Any:
        """Mean loss (and metrics) over the data, dropout off: a float, a list [loss, *metrics], or a dict.
        Quiet by default; verbose=1 prints one line."""
        self._ensure_built(x)
        self._require_compiled("evaluate")
        batch_size = 32 if batch_size is None else batch_size
        _positive_int(batch_size, "batch_size")
        xs = self._check_x(x)
        n = len(xs[0])
        if n == 0:
            raise ValueError("evaluate: x is empty")
        ys = self._check_y(y, n)
        sw = self._check_weights(sample_weight, None, ys, n)
        if steps is not None:  # only the first `steps` batches
            _positive_int(steps, "steps")
            n = min(n, steps * batch_size)
            xs, ys, sw = (_head(a, n) for a in (xs, ys, sw))
        started = time.perf_counter()
        cbs = CallbackList(list(callbacks or []), self, {"steps": math.ceil(n / batch_size), "verbose": verbose})
        cbs.on_test_begin({})
        result = self._evaluate_arrays(xs, ys, sw, batch_size, cbs)
        cbs.on_test_end(dict(result))
        if _verbosity(verbose, 0):
            print(f"{math.ceil(n / batch_size)}/{math.ceil(n / batch_size)} - {time.perf_counter() - started:.2f}s - "
                  f"{format_logs(result)}", flush=True)
        if return_dict:
            return result
        values = list(result.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x: Any, batch_size: int | None = None, verbose: int | str = 0, steps: int | None = None,
                callbacks: Sequence[Callback] | None = None) -> np.ndarray | list[np.ndarray]:
        """The outputs for `x`, computed in batches with dropout off. Quiet by default."""
        self._ensure_built(x)
        batch_size = 32 if batch_size is None else batch_size
        _positive_int(batch_size, "batch_size")
        xs = self._check_x(x)
        n = len(xs[0])
        if n == 0:
            raise ValueError("predict: x is empty")
        if steps is not None:
            _positive_int(steps, "steps")
            n = min(n, steps * batch_size)
        started = time.perf_counter()
        fn = self._function("predict")
        batches = math.ceil(n / batch_size)
        cbs = CallbackList(list(callbacks or []), self, {"steps": batches, "verbose": verbose})
        cbs.on_predict_begin({})
        if self._native_fit and not _batch_hooked(cbs, ("on_predict_batch_begin", "on_predict_batch_end")):
            outs = list(fn._run_checked_steps(self._checked_datasets(fn, _head(xs, n)), int(batch_size)))
        else:
            outs = self._predict_by_batch(fn, xs, n, batch_size, cbs)
        cbs.on_predict_end({})
        if _verbosity(verbose, 0):
            print(f"{batches}/{batches} - {time.perf_counter() - started:.2f}s", flush=True)
        return outs if self._multi_out else outs[0]

    def _predict_by_batch(self, fn: Function, xs: list[np.ndarray], n: int, batch_size: int,
                          cbs: CallbackList) -> list[np.ndarray]:
        """The outputs for the first n samples, one call per batch, every predict-batch hook called."""
        parts = []
        for i, s in enumerate(range(0, n, batch_size)):
            cbs.on_predict_batch_begin(i, {})
            parts.append(fn(**self._feeds(xs, None, slice(s, min(s + batch_size, n)))))
            cbs.on_predict_batch_end(i, {"outputs": parts[-1]})
        return [np.concatenate([p[i] for p in parts]) for i in range(len(self.outputs))]

    def train_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None, class_weight: dict | None = None,
                       return_dict: bool = False) -> Any:
        """One training step on exactly these samples; the loss (and metrics) of the step."""
        values = self._on_batch("train_on_batch", x, y, sample_weight, class_weight, "train")
        return _results(self._built.fetch_keys, values, return_dict)

    def test_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None, return_dict: bool = False) -> Any:
        """The loss (and metrics) on exactly these samples, dropout off, nothing updated."""
        values = self._on_batch("test_on_batch", x, y, sample_weight, None, "eval")
        return _results(self._built.fetch_keys, values, return_dict)

    def _on_batch(self, caller: str, x: Any, y: Any, sample_weight: Any, class_weight: dict | None,
                  function: str) -> Any:
        """Run `function` (or its weighted twin when weights are given) once on exactly these samples."""
        self._ensure_built(x)
        self._require_compiled(caller)
        xs = self._check_x(x)
        n = len(xs[0])
        ys = self._check_y(y, n)
        sw = self._check_weights(sample_weight, class_weight, ys, n)
        return self._function(function if sw is None else function + "_weighted")(**self._feeds(xs, ys, slice(None), sw))

    def predict_on_batch(self, x: Any) -> np.ndarray | list[np.ndarray]:
        self._ensure_built(x)
        outs = self._function("predict")(**self._feeds(self._check_x(x), None, slice(None)))
        return list(outs) if self._multi_out else outs[0]

    def __call__(self, inputs: Any, training: bool | None = None) -> Any:
        """On layer outputs: the model used as a layer (its weights shared). On arrays: its outputs."""
        symbolic = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if symbolic and all(isinstance(t, SymbolicTensor) for t in symbolic):
            self._ensure_symbolic(symbolic)
            return self._as_layer()(inputs)
        if training:
            raise ValueError("model(x, training=True) on arrays is not supported: dropout runs only inside fit")
        x = inputs
        n = len(np.asarray(inputs if not isinstance(inputs, (list, tuple, dict)) else
                           list(inputs.values() if isinstance(inputs, dict) else inputs)[0]))
        return self.predict(x, batch_size=max(n, 1))

    def _ensure_symbolic(self, tensors: list[SymbolicTensor]) -> None:
        """Build a model whose input shape was left open from the tensors it is called on."""

    def _as_layer(self) -> "ModelLayer":
        if self._layer is None:
            self._require_built("calling the model on layer outputs")
            self._layer = ModelLayer(self.inputs, self.outputs, name=self._explicit_name, model=self,
                                     model_class=_class_name(self))
        return self._layer

    def build(self, input_shape: Any = None) -> None:
        """Keras's explicit build: a functional model is built from its inputs already."""

    # ---- description --------------------------------------------------------------------
    def summary(self, line_length: int | None = None, positions: Any = None,
                print_fn: Callable[[str], None] | None = None, **_: Any) -> None:
        """Print the layers, their output shapes (None for the batch) and parameter counts, as Keras does
        (`print_fn` receives each line; default print). Returns None."""
        for line in self._summary_lines(line_length or 65):
            (print_fn or print)(line)

    def _summary_lines(self, width: int) -> list[str]:
        self._require_built("summary")
        columns = [int(width * 0.45), int(width * 0.85), width]
        rows = [("Layer (type)", "Output Shape", "Param #")]
        tensors = {}
        for t in self._tensors:
            tensors.setdefault(t.layer, t)
        for layer in self._visible_layers():
            rows.append((f"{layer.name} ({_type_name(layer)})", str(tensors[layer].shape),
                         str(layer.count_params())))
        total = self.count_params()
        trainable = sum(int(np.prod(w.shape)) for w in self.trainable_weights)
        lines = [f'Model: "{self.name}"', "_" * width]
        for i, (a, b, c) in enumerate(rows):
            text = f" {a}".ljust(columns[0]) + f" {b}".ljust(columns[1] - columns[0]) + f" {c}"
            lines.append(text.ljust(width))
            lines.append("=" * width if i == 0 else "")
        lines[-1] = "=" * width
        lines += [f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {total - trainable:,}", "_" * width]
        return lines

    def _visible_layers(self) -> list[Layer]:
        return list(self._layers)

    # ---- whole-model checkpoints --------------------------------------------------------
    def get_config(self) -> dict:
        """The architecture (and compile settings) as JSON-ready data; ValueError for Python callables."""
        self._require_built("get_config")
        config = {"format": FORMAT, "class": _class_name(self), "name": self.name, "seed": self.seed,
                  **_dag_config(self.inputs, self.outputs), "multi_input": self._multi_in,
                  "multi_output": self._multi_out, "compile": None}
        if self._config is not None:
            config["compile"] = _compile_config(self._config, [t.layer.name for t in self.outputs])
        return config

    def save(self, filepath: str | os.PathLike, overwrite: bool = True, **_: Any) -> None:
        """Write architecture, weights, optimizer state and the dropout step to one .npz archive,
        atomically, under exactly the name given. A `.keras`/`.h5` name gets graphnet's archive too
        (with a warning: Keras cannot read it; `gn.load_model` can)."""
        path = _save_path(filepath, overwrite, "save")
        arrays = {"config": np.array(json.dumps(self.get_config()))}
        arrays.update({f"weights/{name}": w.value for name, w in self._built.weights.items()})
        if self.optimizer is not None:
            arrays.update({f"optimizer/{v.name}": v.value for v in self.optimizer.variables()})
        if RNG_STEP in self.graph.variables:
            arrays["state/rng_step"] = self.graph.variables[RNG_STEP].value
        save_npz(path, arrays)


def _minimize(optimizer: Any, total: Node, built: _Built) -> list:
    """The optimizer's updates for the trainable weights (none for a model without any: all frozen, or
    no weights at all, which Keras trains as a no-op too), then the layers' state updates."""
    trainable = [w for w in built.weights.values() if w.trainable]
    return (optimizer.minimize(total, trainable) if trainable else []) + built.state_updates


class Sequential(Model):
    """A stack of layers, each fed by the previous one.

    The input comes from a first `Input(shape)` item, from `input_shape=` on the first layer, from
    `build((None, features))`, or from the first arrays given to fit/evaluate/predict (then `compile`
    may come before it). `add(layer)` appends a layer (drop the compile settings: compile again).
    """

    _default_name = "sequential"

    def __init__(self, layers: Sequence[Any] | None = None, name: str | None = None):
        self._init_state(name)
        self._stack: list[Layer] = []
        self._input: SymbolicTensor | None = None
        self._top: SymbolicTensor | None = None
        self._pending_compile: dict | None = None
        for item in list(layers or []):
            self._push(item)
        if self._input is not None:
            self._setup(self._input, self._top)

    @property
    def layers(self) -> list[Any]:
        """The stacked layers (no input layer, as in Keras)."""
        return [_public(layer) for layer in self._stack]

    def _visible_layers(self) -> list[Layer]:
        return list(self._stack)

    def add(self, layer: Any) -> None:
        """Append a layer (or a model, used as a layer); the first may be an Input."""
        self._push(layer)
        if self._input is not None:
            self._setup(self._input, self._top)

    def _push(self, item: Any) -> None:
        if isinstance(item, InputLayer):
            item = item.output
        if isinstance(item, SymbolicTensor):
            if not isinstance(item.layer, InputLayer) or self._input is not None or self._stack:
                raise ValueError("Sequential: an Input(shape) can only be the first item")
            self._input = self._top = item
            return
        if isinstance(item, Model):
            item = item._as_layer()
        if not isinstance(item, Layer):
            raise TypeError(f"Sequential items must be layers (or a first Input(shape)), got {type(item).__name__}")
        if self._input is None and not self._stack and item.input_shape_hint is not None:
            self._input = self._top = Input(item.input_shape_hint)
        self._stack.append(item)
        if self._input is not None:
            self._top = item(self._top)

    def build(self, input_shape: Any = None) -> None:
        """Give the model its input: `input_shape` includes the batch dimension, e.g. (None, 784)."""
        if self._input is not None:
            return
        if input_shape is None:
            raise ValueError("Sequential.build needs input_shape, e.g. (None, 784)")
        shape = tuple(input_shape)
        self._input = self._top = Input(shape[1:])
        for layer in self._stack:
            self._top = layer(self._top)
        self._setup(self._input, self._top)

    def _setup(self, inputs: Any, outputs: Any) -> None:
        super()._setup(inputs, outputs)
        if self._pending_compile is not None:  # a compile that waited for the input shape
            pending, self._pending_compile = self._pending_compile, None
            self.compile(**pending)

    def _ensure_built(self, x: Any) -> None:
        if self._built is not None or x is None:
            return
        first = x[0] if isinstance(x, (list, tuple)) and len(x) == 1 else x
        arr = np.asarray(first)
        if arr.ndim < 2:
            raise ValueError(f"x: expected (samples, features...) arrays to build the model from, got shape "
                             f"{shape_str(arr.shape)}")
        self.build((None,) + arr.shape[1:])

    def _ensure_symbolic(self, tensors: list[SymbolicTensor]) -> None:
        if self._built is None and len(tensors) == 1:
            self.build(tensors[0].shape)

    def _adopt(self, input_tensor: SymbolicTensor, output: SymbolicTensor, stack: list[Layer]) -> None:
        """Take an already connected stack (a loaded model)."""
        self._input, self._top, self._stack = input_tensor, output, list(stack)
        self._setup(input_tensor, output)


class ModelLayer(Layer):
    """A model called on layer outputs: its layer calls replayed on new inputs, with the model's own
    weights (named `<this layer>/<inner layer>/<slot>` in the outer graph). One output."""

    def __init__(self, inputs: list[SymbolicTensor], outputs: list[SymbolicTensor], name: str | None = None,
                 model: Model | None = None, model_class: str = "Model"):
        super().__init__(name)
        if len(outputs) != 1:
            raise ValueError(f"a model with {len(outputs)} outputs cannot be used as a layer yet (one output only)")
        self.inner_inputs, self.inner_outputs = list(inputs), list(outputs)
        self.tensors = _collect(self.inner_inputs, self.inner_outputs)
        self.inner_layers = [layer for layer in dict.fromkeys(t.layer for t in self.tensors)
                             if not isinstance(layer, InputLayer)]
        self.model, self.model_class = model, model_class
        if len(self.inner_inputs) == 1:  # the first layer of a Sequential needs no Input before it
            self.input_shape_hint = self.inner_inputs[0].shape[1:]

    @property
    def kind(self) -> str:
        return self.model_class.lower()

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        want = [t.shape for t in self.inner_inputs]
        if list(input_shapes) != want:
            raise ValueError(f"model {self.name or ''} takes inputs of shape {', '.join(map(shape_str, want))}, "
                             f"got {', '.join(map(shape_str, input_shapes))}")
        return self.inner_outputs[0].shape

    def weight_shapes(self, input_shapes: list[tuple]) -> dict[str, tuple]:
        shapes: dict[str, tuple] = {}
        for t in self.tensors:
            if t in self.inner_inputs:
                continue
            for slot, shape in t.layer.weight_shapes([x.shape for x in t.inbound]).items():
                shapes[f"{t.layer.name}/{slot}"] = shape
        return shapes

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        nodes = dict(zip(self.inner_inputs, inputs))
        self._nodes = {}
        with weight_prefix(f"{self.name}/"):
            for t in self.tensors:
                if t in nodes:
                    continue
                t.layer.call_index = t.index + len(t.layer.calls) * self.call_index
                with source_of(t.source):
                    nodes[t] = t.layer.build(graph, [nodes[x] for x in t.inbound])
                self._nodes.update({f"{t.layer.name}/{slot}": w for slot, w in t.layer.graph_weights().items()})
        return nodes[self.inner_outputs[0]]

    @property
    def trainable(self) -> bool:
        return all(layer.trainable for layer in self.inner_layers)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        for layer in getattr(self, "inner_layers", []):
            layer.trainable = value
        self._trainable = bool(value)

    def get_weights(self) -> list[np.ndarray]:
        return [w for layer in self.inner_layers for w in layer.get_weights()]

    def set_weights(self, values: Sequence[np.ndarray]) -> None:
        values = list(values)
        counts = [len(layer.get_weights()) for layer in self.inner_layers]
        if len(values) != sum(counts):
            raise ValueError(f"set_weights: model {self.name} has {sum(counts)} weights, got {len(values)} arrays")
        for layer, count in zip(self.inner_layers, counts):
            layer.set_weights(values[:count])
            values = values[count:]

    def count_params(self) -> int:
        return sum(layer.count_params() for layer in self.inner_layers)

    def as_model(self) -> Model:
        """The model this layer runs (rebuilt from the layer calls for a loaded model), sharing its weights."""
        if self.model is None:
            if self.model_class == "Sequential":
                model = Sequential(name=self.name)
                model._adopt(self.inner_inputs[0], self.inner_outputs[0], self.inner_layers)
            else:
                model = Model(self.inner_inputs, self.inner_outputs[0], name=self.name)
            model._layer = self
            self.model = model
        return self.model

    def get_config(self) -> dict:
        return {"name": self.name, "model": _dag_config(self.inner_inputs, self.inner_outputs)}


def load_model(filepath: str | os.PathLike, custom_objects: dict | None = None, compile: bool = True) -> Model:
    """Rebuild a model written by `Model.save`: architecture (a Sequential comes back as one), weights,
    compile settings, optimizer state and dropout step, so that `fit(..., initial_epoch=k)` continues
    the saved run exactly. `compile=False` skips the compile settings; `custom_objects` is accepted for
    Keras's signature (a saved model never holds Python callables).

    A malformed file raises ValueError naming the file and what is wrong; the config is checked
    (structure, layer arguments, connections, weight shapes against the stored weights, the
    parameter count against `checkpoint.MAX_ELEMENTS`) before any weight is allocated."""
    where = os.fspath(filepath)
    data = load_npz(filepath)
    config = _read_config(data, where)
    graph = _graph_from_config(config, where)
    _check_weights(graph, data, where)
    inputs, outputs = (graph.ends(config, key) for key in ("inputs", "outputs"))
    try:
        if config.get("class") == "Sequential" and len(inputs) == 1 and len(outputs) == 1:
            model: Model = Sequential(name=config["name"])
            model._adopt(inputs[0], outputs[0], [layer for layer in graph.layers if not isinstance(layer, InputLayer)])
        else:
            model = Model(inputs if config["multi_input"] else inputs[0],
                          outputs if config["multi_output"] else outputs[0], name=config["name"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: invalid model config: {e}") from None
    model.seed = config["seed"]
    c = config.get("compile")
    if c is not None and compile:
        try:
            model.compile(_optimizer_from_config(c["optimizer"]), _losses_from_config(c["loss"]), c["metrics"],
                          c.get("loss_weights"), backend=c["backend"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: invalid compile settings in the model config: {e}") from None
        _restore_optimizer(model.optimizer, data, where)
    model.load_weights(filepath)
    if "state/rng_step" in data and RNG_STEP in model.graph.variables:
        _assign_stored(model.graph.variables[RNG_STEP], data["state/rng_step"], "state/rng_step", where)
    return model


# ---- writing a model config -----------------------------------------------------------------
def _dag_config(inputs: list[SymbolicTensor], outputs: list[SymbolicTensor]) -> dict:
    """Layers (each with its first call's inbound layer names), inputs and outputs; and, where a layer
    is called more than once, every call in order as [layer, [[inbound layer, call number], ...]]
    (call numbers count the layer's calls within this DAG)."""
    tensors = _collect(inputs, outputs)
    number: dict[SymbolicTensor, int] = {}
    seen: dict[Layer, int] = {}
    for t in tensors:
        number[t] = seen.get(t.layer, 0)
        seen[t.layer] = number[t] + 1
    firsts = [t for t in tensors if number[t] == 0]
    layers = [{"class": _class_name(t.layer), "config": t.layer.get_config(),
               "inbound": [x.layer.name for x in t.inbound]} for t in firsts]
    shared = any(count > 1 for count in seen.values())

    def ref(t: SymbolicTensor) -> Any:
        return [t.layer.name, number[t]] if shared else t.layer.name
    config = {"layers": layers, "inputs": [ref(t) for t in inputs], "outputs": [ref(t) for t in outputs]}
    if shared:
        config["calls"] = [[t.layer.name, [ref(x) for x in t.inbound]] for t in tensors if t.inbound]
    return config


def _class_name(obj: Any) -> str:
    if isinstance(obj, ModelLayer):
        return obj.model_class
    return "Sequential" if isinstance(obj, Sequential) else "Model" if isinstance(obj, Model) else type(obj).__name__


def _compile_config(c: _CompileConfig, names: list[str]) -> dict:
    losses = []
    for spec in c.losses:
        if spec is None:
            losses.append(None)
        elif isinstance(spec.source, Loss):
            losses.append({"class": type(spec.source).__name__, "config": spec.source.get_config()})
        elif spec.fn is not None:
            raise ValueError(f"model.save: the loss {getattr(spec.fn, '__name__', spec.fn)!r} is a Python callable "
                             f"and cannot be stored; use save_weights")
        else:
            losses.append(spec.source)
    for metric in (m for ms in c.metrics for m in ms):
        if callable(metric):
            raise ValueError(f"model.save: the metric {getattr(metric, '__name__', metric)!r} is a Python callable "
                             f"and cannot be stored; use save_weights")
    same = all(ms == c.metrics[0] for ms in c.metrics)
    metrics: Any = list(c.metrics[0]) if same else {n: list(ms) for n, ms in zip(names, c.metrics) if ms}
    config = {"optimizer": _optimizer_config(c.optimizer), "loss": losses, "metrics": metrics, "backend": c.backend}
    if any(w != 1.0 for w in c.loss_weights):
        config["loss_weights"] = list(c.loss_weights)
    return config


# ---- reading a model config -----------------------------------------------------------------
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}
_CONFIG_KEYS = {"name": str, "layers": list, "seed": int, "inputs": list, "outputs": list,
                "multi_input": bool, "multi_output": bool}
_LAYER_KEYS = {"class": str, "config": dict, "inbound": list}
_COMPILE_KEYS = {"optimizer": dict, "loss": list, "backend": str}


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
    if config.get("class", "Model") not in ("Model", "Sequential"):
        raise ValueError(f"{where}: invalid model config: unknown model class {config.get('class')!r}")
    _check_dag(config, where)
    for key in ("inputs", "outputs"):
        if not config[f"multi_{key[:-1]}"] and len(config[key]) != 1:
            raise ValueError(f"{where}: invalid model config: {len(config[key])} {key} for a single-{key[:-1]} model")
    if config.get("compile") is not None:
        c = config["compile"]
        _require(c, _COMPILE_KEYS, "the compile settings", where)
        _require(c["optimizer"], {"class": str, "config": dict}, "the optimizer", where)
        if not isinstance(c.get("metrics", []), (list, dict)):
            raise ValueError(f"{where}: invalid model config: the compile settings' 'metrics' must be a list or an "
                             f"object")
    return config


def _check_dag(config: dict, where: str) -> None:
    """The layer list, inputs, outputs and (optional) calls of a model or sub-model config."""
    for i, spec in enumerate(config["layers"]):
        _require(spec, _LAYER_KEYS, f"layers[{i}]", where)
    for key in ("inputs", "outputs"):
        if not config[key] or not all(_is_ref(n) for n in config[key]):
            raise ValueError(f"{where}: invalid model config: '{key}' must be a non-empty list of layer names")
    calls = config.get("calls")
    if calls is not None and (not isinstance(calls, list) or not all(
            isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and isinstance(c[1], list) and
            all(_is_ref(r) for r in c[1]) for c in calls)):
        raise ValueError(f"{where}: invalid model config: 'calls' must be a list of [layer name, [inputs]]")


def _is_ref(value: Any) -> bool:
    """A tensor reference: a layer name (its first call) or [layer name, call number]."""
    return isinstance(value, str) or (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
                                      and isinstance(value[1], int) and not isinstance(value[1], bool)
                                      and value[1] >= 0)


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


class _ConfigGraph:
    """The layers of a config, called as it says: `tensors[(name, k)]` is call k of layer `name`."""

    def __init__(self, where: str):
        self.where = where
        self.layers: list[Layer] = []
        self.by_name: dict[str, Layer] = {}
        self.tensors: dict[tuple[str, int], SymbolicTensor] = {}

    def tensor(self, ref: Any, label: str) -> SymbolicTensor:
        key = (ref, 0) if isinstance(ref, str) else tuple(ref)
        if key not in self.tensors:
            shown = repr(ref if isinstance(ref, str) else f"{ref[0]}#{ref[1]}")
            raise ValueError(f"{self.where}: invalid model config: {label} takes input from {shown}, which no earlier "
                             f"layer is named")
        return self.tensors[key]

    def call(self, layer: Layer, inbound: list[SymbolicTensor]) -> None:
        out = layer.output if isinstance(layer, InputLayer) else layer(inbound)
        count = sum(1 for (n, _) in self.tensors if n == layer.name)
        self.tensors[(layer.name, count)] = out

    def ends(self, config: dict, key: str) -> list[SymbolicTensor]:
        """The model's input or output tensors named in the config."""
        try:
            return [self.tensor(ref, key) for ref in config[key]]
        except ValueError:
            unknown = [r for r in config[key] if ((r, 0) if isinstance(r, str) else tuple(r)) not in self.tensors]
            raise ValueError(f"{self.where}: invalid model config: {key} {', '.join(map(repr, unknown))} name no "
                             f"layer") from None


def _graph_from_config(config: dict, where: str) -> _ConfigGraph:
    """Every layer built from its config and called as the config says (no weight is allocated)."""
    graph = _ConfigGraph(where)
    calls = config.get("calls")
    for i, spec in enumerate(config["layers"]):
        name = spec["config"].get("name")
        label = f"layer {name!r} (layers[{i}])" if isinstance(name, str) else f"layers[{i}]"
        if not isinstance(name, str) or name in graph.by_name:
            problem = "a layer without a name" if not isinstance(name, str) else "a second layer of that name"
            raise ValueError(f"{where}: invalid model config: {label} is {problem}")
        try:
            layer = _layer_from_config(spec, where)
            if isinstance(layer, InputLayer) and spec["inbound"]:
                raise ValueError("an input layer takes no inbound layers")
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: invalid model config: {label}: {e}") from None
        graph.layers.append(layer)
        graph.by_name[name] = layer
        if calls is None or isinstance(layer, InputLayer):
            inbound = [graph.tensor(n, label) for n in spec["inbound"]]
            try:
                graph.call(layer, inbound)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: invalid model config: {label}: {e}") from None
    for name, refs in calls or []:
        label = f"the call of layer {name!r}"
        if name not in graph.by_name:
            raise ValueError(f"{where}: invalid model config: 'calls' names layer {name!r}, which is not defined")
        inbound = [graph.tensor(r, label) for r in refs]
        try:
            graph.call(graph.by_name[name], inbound)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: invalid model config: {label}: {e}") from None
    return graph


def _layer_from_config(spec: dict, where: str) -> Layer:
    if spec["class"] not in ("Model", "Sequential"):
        return from_config(spec["class"], spec["config"])
    sub = spec["config"]
    _require(sub, {"name": str, "model": dict}, f"sub-model {sub.get('name')!r}", where)
    _require(sub["model"], {"layers": list, "inputs": list, "outputs": list}, f"sub-model {sub['name']!r}", where)
    _check_dag(sub["model"], where)
    inner = _graph_from_config(sub["model"], where)
    inputs, outputs = inner.ends(sub["model"], "inputs"), inner.ends(sub["model"], "outputs")
    return ModelLayer(inputs, outputs, name=sub["name"], model_class=spec["class"])


def _check_weights(graph: _ConfigGraph, data: dict[str, np.ndarray], where: str) -> None:
    """The config's weights, from the layers' shapes alone: at most MAX_ELEMENTS parameters in all,
    and exactly the names and shapes of the stored weights (so building the model allocates no
    more than the file holds)."""
    shapes = {}
    for (name, k), t in graph.tensors.items():
        if k == 0:
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


def _losses_from_config(items: list) -> list:
    """Stored losses: names, None, or {"class": <gn.losses class>, "config": {...}}."""
    out = []
    for item in items:
        if isinstance(item, dict):
            cls = LOSS_CLASSES.get(item.get("class"))
            if cls is None or not isinstance(item.get("config"), dict):
                raise ValueError(f"unknown loss {item!r}")
            out.append(cls(**item["config"]))
        else:
            out.append(item)
    return out


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


def _save_path(filepath: str | os.PathLike, overwrite: bool, what: str) -> str:
    """The file to write: exactly the name given. A Keras suffix gets graphnet's .npz archive, with a
    warning (Keras cannot read it; gn.load_model and load_weights can)."""
    path = os.fspath(filepath)
    if path.lower().endswith(KERAS_SUFFIXES):
        warnings.warn(f"{what}({path!r}): graphnet writes its own .npz archive under this name, not Keras's "
                      f"{os.path.splitext(path)[1]} format: gn.load_model / load_weights read it, Keras cannot",
                      stacklevel=3)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{what}: {path} exists and overwrite=False")
    return path


def _tensors(value: Any, what: str) -> list[SymbolicTensor]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError(f"model {what} are empty")
    for t in items:
        if not isinstance(t, SymbolicTensor):
            raise TypeError(f"model {what} must be layer outputs (gn.layers.Input(...), Dense(...)(x), ...), "
                            f"got {type(t).__name__}")
    return items


def _collect(inputs: list[SymbolicTensor], outputs: list[SymbolicTensor]) -> list[SymbolicTensor]:
    """The layer calls between inputs and outputs (inputs included) in creation, hence topological, order."""
    seen = set(inputs)
    stack = list(outputs)
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        if isinstance(t.layer, InputLayer):
            raise ValueError(f"an output depends on an Input created at {t.source} that is not among the model's "
                             f"inputs")
        seen.add(t)
        stack.extend(t.inbound)
    return sorted(seen, key=lambda t: t.order)


def _check_single_use(weights: dict[str, Node], model: str) -> None:
    """One storage per weight name: a layer used both directly and inside a sub-model would be
    updated twice per step."""
    first: dict[int, str] = {}
    for name, node in weights.items():
        other = first.setdefault(id(node.attrs["var"]), name)
        if other != name:
            raise ValueError(f"model {model!r} uses one layer's weights under two names ('{other}' and '{name}'): a "
                             f"layer used both directly and inside a sub-model is not supported")


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


def _public(layer: Layer) -> Any:
    """What `model.layers` shows: a sub-model as its model."""
    return layer.as_model() if isinstance(layer, ModelLayer) else layer


def _type_name(layer: Layer) -> str:
    return layer.model_class if isinstance(layer, ModelLayer) else type(layer).__name__


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


def _per_output(value: Any, names: list[str], multi: bool, what: str, convert: Callable[[Any], Any]) -> list[Any]:
    """One item per output from one item for all, a list, or a dict by output name (missing: None)."""
    if isinstance(value, dict):
        extra = [k for k in value if k not in names]
        if extra:
            raise ValueError(f"compile: {what} names unknown output(s) {extra} (outputs: {names})")
        return [convert(value.get(n)) for n in names]
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise ValueError(f"compile: {len(value)} {what}es for {len(names)} outputs")
        return [convert(v) for v in value]
    return [convert(value)] * len(names)


def _metrics_per_output(metrics: Any, names: list[str], multi: bool) -> list[list[Any]]:
    """Keras's forms: one metric or a list (for every output), a list of lists, or a dict by output."""
    def as_list(item: Any) -> list[Any]:
        items = [] if item is None else [item] if isinstance(item, str) or callable(item) else list(item)
        for m in items:
            objectives.check_metric(m)
        return items
    if isinstance(metrics, dict):
        extra = [k for k in metrics if k not in names]
        if extra:
            raise ValueError(f"compile: metrics name unknown output(s) {extra} (outputs: {names})")
        return [as_list(metrics.get(n)) for n in names]
    if isinstance(metrics, (list, tuple)) and metrics and all(isinstance(m, (list, tuple)) for m in metrics):
        if len(metrics) != len(names):
            raise ValueError(f"compile: {len(metrics)} metric lists for {len(names)} outputs")
        return [as_list(m) for m in metrics]
    return [as_list(metrics) for _ in names]


def _loss_weights(value: Any, names: list[str], multi: bool) -> list[float]:
    if value is None:
        return [1.0] * len(names)
    weights = _per_output(value, names, multi, "loss weight", lambda v: 1.0 if v is None else v)
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float, np.integer, np.floating)) or not math.isfinite(w):
            raise ValueError(f"compile: loss_weights must be finite numbers, got {w!r}")
    return [float(w) for w in weights]


def _check_names(optimizer: Any, loss: Any, metrics: Any) -> None:
    """The names in a compile that waits for the model's input shape (so a typo fails at compile)."""
    if isinstance(optimizer, str):
        _make_optimizer(optimizer)
    items = loss.values() if isinstance(loss, dict) else loss if isinstance(loss, (list, tuple)) else [loss]
    for item in items:
        if item is not None:
            objectives.loss_spec(item)
    for item in (metrics.values() if isinstance(metrics, dict) else [metrics]):
        _metrics_per_output(item, ["output"], False)


_DISTRIBUTED_FIT: Any = None


def _distributed_fit() -> Any:
    """graphnet.distributed.fit, fit's hook under MPI: imported by the first fit (it imports codegen,
    which imports the core), then kept (an import statement per fit costs more than a small model's step)."""
    global _DISTRIBUTED_FIT
    if _DISTRIBUTED_FIT is None:
        from .distributed import fit
        _DISTRIBUTED_FIT = fit
    return _DISTRIBUTED_FIT


def _same_length(arrays: list[np.ndarray], what: str) -> None:
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        raise ValueError(f"{what}: arrays have different numbers of samples {sorted(lengths)}")


def _take(arrays: list | None, order: np.ndarray | None) -> list | None:
    """The epoch's arrays in shuffled order (one gather per epoch; batches are then contiguous views)."""
    if arrays is None or order is None:
        return arrays
    return [None if a is None else a[order] for a in arrays]


def _batch_hooked(cbs: CallbackList | None, hooks: Sequence[str]) -> bool:
    """Whether a callback needs these batch-level hooks called batch by batch (the progress bar's
    batch end is served after each chunk of a native loop instead)."""
    users = cbs.users if cbs is not None else {}
    for hook in hooks:
        for cb in users.get(hook, ()):
            if not (type(cb) is ProgressLogger and hook == "on_train_batch_end"):
                return True
    return False


def _batch_sizes(n: int, batch_size: int, first: int, count: int) -> float | np.ndarray:
    """The sizes of batches first .. first + count - 1 of n samples, as float64 factors of the sums:
    one number where they are all full, else one per batch (the last batch of n is short)."""
    last = n - (first + count - 1) * batch_size  # the size of the last of them
    if last >= batch_size:
        return float(batch_size)
    sizes = np.full(count, float(batch_size))
    sizes[-1] = last
    return sizes


def _running_sums(sums: list[float], values: Sequence[np.ndarray], sizes: float | np.ndarray) -> list[np.ndarray]:
    """Each fetch's running sum of value times batch size, continuing from `sums`: the batch loops'
    float64 additions in their order (s + v0*size0, then + v1*size1, ...: accumulate adds
    sequentially), so both loops agree bit for bit."""
    running = []
    for s, v in zip(sums, values):
        terms = v.astype(np.float64)  # a copy, of one value per step
        terms *= sizes
        terms[0] += s
        running.append(np.add.accumulate(terms, out=terms))
    return running


_PYTHON_SUM_STEPS = 64  # up to this many steps, Python floats add them sooner than numpy's calls set up


def _final_sums(sums: list[float], values: Sequence[np.ndarray], sizes: float | np.ndarray) -> list[float]:
    """The last of `_running_sums`' running sums: the same float64 products and additions in the same
    order, in Python floats for a few steps (tolist gives each value's exact float64)."""
    if len(values) and len(values[0]) > _PYTHON_SUM_STEPS:
        return [float(r[-1]) for r in _running_sums(sums, values, sizes)]
    out = []
    for s, v in zip(sums, values):
        if type(sizes) is float:
            for value in v.tolist():
                s += value * sizes
        else:
            for value, size in zip(v.tolist(), sizes.tolist()):
                s += value * size
        out.append(s)
    return out


def _head(arrays: list | None, n: int) -> list | None:
    """The first n samples of each array (None entries stay None)."""
    return None if arrays is None else [None if a is None else a[:n] for a in arrays]


def _results(keys: list[str], values: Sequence[Any], return_dict: bool) -> Any:
    result = {k: float(v) for k, v in zip(keys, values)}
    if return_dict:
        return result
    return result["loss"] if len(result) == 1 else list(result.values())


def _verbosity(verbose: Any, auto: int) -> int:
    if verbose == "auto":
        return auto
    if isinstance(verbose, bool) or not isinstance(verbose, (int, np.integer)) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
    return int(verbose)


def _validation_schedule(freq: Any) -> Callable[[int], bool]:
    """validation_freq as a test on the 0-based epoch: every k-th epoch, or the listed 1-based epochs."""
    if isinstance(freq, (int, np.integer)) and not isinstance(freq, bool):
        _positive_int(freq, "validation_freq")
        return lambda epoch: (epoch + 1) % int(freq) == 0
    if isinstance(freq, (list, tuple, set, range)):
        epochs = {int(e) for e in freq}
        return lambda epoch: epoch + 1 in epochs
    raise ValueError(f"validation_freq must be a positive integer or a list of epochs, got {freq!r}")


def _positive_int(value: Any, what: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


def _make_optimizer(optimizer: Any) -> Any:
    from . import optim
    return optim.get(optimizer)


def _optimizer_config(optimizer: Any) -> dict:
    """The optimizer's class and constructor arguments (its positional-or-keyword parameters; the
    keyword-only Keras spellings are aliases), read back from its same-named attributes."""
    signature = inspect.signature(type(optimizer).__init__)
    params = [p.name for p in signature.parameters.values()
              if p.name != "self" and p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD]
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
