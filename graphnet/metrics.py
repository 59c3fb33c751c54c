"""What a model is trained and measured against: loss and metric names -> graph nodes, and the
check of target arrays before any training step.

Losses and metrics follow Keras: a callable is called as `fn(y_true, y_pred)` and may return one value
per sample (averaged) or a scalar; names and `gn.losses` loss objects (`BinaryCrossentropy(from_logits=
True)`, ...) select graphnet's stable forms. graphnet's own prediction-first functions
(`gn.losses.mse`, `binary_cross_entropy`, `softmax_cross_entropy`) passed as a callable are called in
their own order. A sigmoid or softmax output trained with a cross-entropy loss uses the pre-activation
logits (the activation node's input) so the loss takes its stable from-logits form.

Policy for labels: non-finite values (NaN, inf) are rejected with a ValueError, as are binary and
categorical labels outside [0, 1] and sparse class ids that are not integers in [0, classes); nothing
is trained then.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import losses as loss_fns
from . import ops
from .datacheck import within
from .graph import Graph, Node, shape_str

LOSSES = ("mse", "mae", "binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy", "huber",
          "hinge", "kl_divergence")
ALIASES = {"mean_squared_error": "mse", "mean_absolute_error": "mae", "kld": "kl_divergence",
           "kullback_leibler_divergence": "kl_divergence"}
PER_SAMPLE_LOSSES = ("huber", "hinge", "kl_divergence")  # the per-sample values of their gn.losses class
METRICS = ("accuracy", "acc", "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy", "mae",
           "mse")
METRIC_ALIASES = {"mean_absolute_error": "mae", "mean_squared_error": "mse"}
PROB_EPS = 1e-7  # probabilities are clipped into [eps, 1] before a log when no logits are at hand
CROSS_ENTROPIES = ("binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy")

@dataclass(frozen=True)
class LossSpec:
    """One output's loss: a compile name (None for a user callable), whether the output holds logits,
    and the callable itself."""

    name: str | None
    from_logits: bool = False
    fn: Callable | None = None
    source: Any = None  # what the user passed (for the saved config)


def loss_spec(loss: Any) -> LossSpec:
    """A name, a `gn.losses.Loss` object or a callable as a LossSpec; ValueError for an unknown name."""
    if isinstance(loss, LossSpec):
        return loss
    if isinstance(loss, loss_fns.Loss):
        if loss.reduction not in ("sum_over_batch_size", "auto"):
            raise ValueError(f"{loss!r}: compile averages the per-sample losses over the batch; reduction="
                             f"{loss.reduction!r} is only for calling the loss directly")
        return LossSpec(loss.key, loss.from_logits, None, loss)
    if callable(loss):
        return LossSpec(None, False, loss, loss)
    if not isinstance(loss, str) or ALIASES.get(loss, loss) not in LOSSES:
        raise ValueError(f"unknown loss {loss!r} (choose from {', '.join(LOSSES)}, a gn.losses loss object or a "
                         f"callable loss(y_true, y_pred))")
    return LossSpec(ALIASES.get(loss, loss), False, None, loss)


def loss_name(loss: Any) -> str | None:
    """The canonical name of a named loss, None for a callable; ValueError for an unknown name."""
    return loss_spec(loss).name


def check_metric(metric: str | Callable) -> str:
    """The history key of a metric; ValueError for an unknown name."""
    if callable(metric):
        return getattr(metric, "name", None) or getattr(metric, "__name__", "metric")
    if not isinstance(metric, str) or METRIC_ALIASES.get(metric, metric) not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)} or pass a callable "
                         f"metric(y_true, y_pred))")
    return metric


def is_sparse(spec: LossSpec) -> bool:
    return spec.name == "sparse_categorical_crossentropy"


def target_placeholder(graph: Graph, name: str, spec: LossSpec, output: Node) -> Node:
    """The placeholder fed with an output's targets: class ids for sparse losses, else output-shaped."""
    if is_sparse(spec):
        if output.ndim != 2 or output.shape[1] < 2:
            raise ValueError(f"sparse_categorical_crossentropy needs a (batch, classes) output with 2+ classes, "
                             f"got {shape_str(output.shape)}")
        return ops.placeholder(name, (None,), np.int32, graph=graph)
    if spec.name in CROSS_ENTROPIES and output.dtype.kind != "f":
        raise ValueError(f"{spec.name} needs a floating-point output, got {output.dtype}")
    return ops.placeholder(name, output.shape, output.dtype, graph=graph)


def _logits(output: Node, activation: str) -> Node | None:
    if output.op.name != activation:
        return None
    if activation == "softmax" and output.attrs["axis"] != output.ndim - 1:
        return None
    return output.inputs[0]


def check_output(spec: LossSpec, output: Node, where: str) -> None:
    """Warn about an output layer that does not fit its cross-entropy: probabilities given as logits
    apply the activation twice, and an unbounded output read as probabilities is clipped (and stops
    learning) wherever it leaves [0, 1]."""
    if spec.name not in CROSS_ENTROPIES:
        return
    activation = "sigmoid" if spec.name == "binary_crossentropy" else "softmax"
    if spec.from_logits and output.op.name in ("sigmoid", "softmax"):
        warnings.warn(f"{where}: {spec.name} with from_logits=True, but the output is a {output.op.name}: the loss "
                      f"applies {activation} again; remove the output activation or use from_logits=False",
                      stacklevel=3)
    elif not spec.from_logits and output.op.name in ("add", "matmul", "subtract"):
        warnings.warn(f"{where}: {spec.name} reads the output as probabilities, but it is a linear layer (no "
                      f"activation): give it activation='{activation}', or use "
                      f"gn.losses.{_class_of(spec.name)}(from_logits=True)", stacklevel=3)


def _class_of(name: str) -> str:
    return {cls.key: n for n, cls in loss_fns.LOSS_CLASSES.items()}[name]


def loss_node(spec: LossSpec, output: Node, target: Node) -> Node:
    """One output's loss as a scalar node (the batch mean)."""
    if spec.fn is not None:
        return _scalar(_call_user(spec.fn, output, target, "loss"), spec.fn, "loss")
    if spec.name in PER_SAMPLE_LOSSES:
        return ops.mean(sample_loss_node(spec, output, target))
    if spec.name == "mse":
        return loss_fns.mse(output, target)
    if spec.name == "mae":
        return ops.mean(ops.abs(output - target))
    if spec.name == "binary_crossentropy":
        logits = output if spec.from_logits else _logits(output, "sigmoid")
        if logits is not None:
            return loss_fns.binary_cross_entropy(logits, target, from_logits=True)
        return loss_fns.binary_cross_entropy(output, target, from_logits=False)
    return loss_fns.softmax_cross_entropy(_class_logits(spec, output), target)


def sample_loss_node(spec: LossSpec, output: Node, target: Node) -> Node:
    """One output's loss per sample, shape (N,): what sample weights multiply."""
    if spec.fn is not None:
        value = _call_user(spec.fn, output, target, "loss")
        if not isinstance(value, Node) or value.ndim == 0 or value.shape[0] is not None:
            raise ValueError(f"loss {_name(spec.fn)!r} returns {_shape_of(value)}: to use sample_weight or "
                             f"class_weight, a custom loss must return one value per sample (no mean over the batch)")
        return value if value.ndim == 1 else ops.mean(value, tuple(range(1, value.ndim)))
    if spec.name in PER_SAMPLE_LOSSES:  # a loss object keeps its options (Huber's delta)
        loss = spec.source if isinstance(spec.source, loss_fns.Loss) else loss_fns.LOSS_BY_KEY[spec.name]()
        per = loss.per_sample(target, output)
    elif spec.name in ("mse", "mae"):
        d = output - target
        per = d * d if spec.name == "mse" else ops.abs(d)
    elif spec.name == "binary_crossentropy":
        logits = output if spec.from_logits else _logits(output, "sigmoid")
        per = (loss_fns.binary_cross_entropy(logits, target, from_logits=True, reduction="none") if logits is not None
               else loss_fns.binary_cross_entropy(output, target, from_logits=False, reduction="none"))
    else:
        per = loss_fns.softmax_cross_entropy(_class_logits(spec, output), target, reduction="none")
    return per if per.ndim == 1 else ops.mean(per, tuple(range(1, per.ndim)))


def _class_logits(spec: LossSpec, output: Node) -> Node:
    if spec.from_logits:
        return output
    logits = _logits(output, "softmax")
    if logits is None:  # log of (clipped) probabilities: log_softmax of it renormalises, as Keras does
        logits = ops.log(ops.clip(output, PROB_EPS, 1.0))
    return logits


def _call_user(fn: Callable, output: Node, target: Node, what: str) -> Any:
    """A user's loss or metric: Keras's order fn(y_true, y_pred), graphnet's own losses their own."""
    if fn in loss_fns.PREDICTION_FIRST:
        return fn(output, target)
    return fn(target, output)


def _scalar(value: Any, fn: Callable, what: str) -> Node:
    """A user loss or metric value as a scalar: per-sample values are averaged, as Keras does."""
    if not isinstance(value, Node):
        raise ValueError(f"{what} {_name(fn)!r} must return a graph node, got {value!r}")
    if value.dtype.kind != "f":
        value = ops.cast(value, np.float32)
    return value if value.shape == () else ops.mean(value)


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _shape_of(value: Any) -> str:
    return f"shape {shape_str(value.shape)}" if isinstance(value, Node) else repr(value)


def accuracy_kind(spec: LossSpec, output: Node) -> str:
    if is_sparse(spec):
        return "sparse_categorical_accuracy"
    if spec.name == "categorical_crossentropy" or output.shape[-1] > 1:
        return "categorical_accuracy"
    return "binary_accuracy"


def metric_node(metric: str | Callable, spec: LossSpec, output: Node, target: Node) -> Node:
    if callable(metric):
        return _scalar(_call_user(metric, output, target, "metric"), metric, "metric")
    metric = METRIC_ALIASES.get(metric, metric)
    if metric in ("accuracy", "acc"):
        metric = accuracy_kind(spec, output)
    if metric in ("mae", "mse"):
        if is_sparse(spec):
            raise ValueError(f"{metric} needs targets shaped like the output, not sparse class ids")
        d = output - target
        return ops.mean(ops.abs(d) if metric == "mae" else d * d)
    if metric == "binary_accuracy":
        if is_sparse(spec):
            raise ValueError("binary_accuracy needs targets shaped like the output, not sparse class ids")
        threshold = 0.0 if spec.from_logits else 0.5  # logits: sigmoid(z) > 0.5 exactly when z > 0
        return ops.mean(ops.cast(ops.equal(ops.cast(output > threshold, output.dtype), target), output.dtype))
    if output.ndim != 2:
        raise ValueError(f"{metric} needs a (batch, classes) output, got {shape_str(output.shape)}")
    if metric == "sparse_categorical_accuracy":
        if not is_sparse(spec):
            raise ValueError("sparse_categorical_accuracy needs a sparse_categorical_crossentropy loss")
        target = ops.one_hot(target, output.shape[1], output.dtype)
    elif is_sparse(spec):
        raise ValueError("categorical_accuracy needs one-hot targets; use sparse_categorical_accuracy")
    return _argmax_hits(output, target)


def _argmax_hits(output: Node, one_hot: Node) -> Node:
    """Mean of argmax(output) == argmax(one_hot) with numpy's tie rule (the first maximum wins),
    in graph ops: a row is a hit when no class scores above the true class and no earlier class ties it."""
    dtype = output.dtype
    ids = ops.constant(np.arange(output.shape[1], dtype=dtype), graph=output.graph)
    label = ops.sum(one_hot * ids, -1, keepdims=True)
    true_score = ops.sum(output * one_hot, -1, keepdims=True)
    earlier = ops.cast(ids < label, dtype)
    beaten = ops.cast(output > true_score, dtype) + ops.cast(ops.equal(output, true_score), dtype) * earlier
    return ops.mean(ops.cast(ops.equal(ops.sum(beaten, -1), 0.0), dtype))


# ndarray.all/min/max without their Python wrappers (numpy's _methods), on 1-d views where that costs
# no copy (numpy reduces a 1-d array without setting up its iterator): a tiny model's fit checks its
# data on every call
_all, _min, _max = np.logical_and.reduce, np.minimum.reduce, np.maximum.reduce


def _reduced(reduce: Any, arr: np.ndarray) -> Any:
    """`reduce(arr, axis=None)`."""
    return reduce(arr.ravel()) if arr.flags.c_contiguous else reduce(arr, axis=None)


def as_numbers(value: object, what: str) -> np.ndarray:
    """`value` as a numeric array, or a ValueError naming `what`."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: cannot convert to an array: {e}") from None
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{what}: expected numbers, got dtype {arr.dtype}")
    return arr


def check_finite(arr: np.ndarray, what: str, note: str = "") -> None:
    """The NaN policy of fit/evaluate: non-finite data is rejected, naming its first row."""
    if arr.dtype.kind == "f" and not within(arr, -math.inf, math.inf) and not _all(np.isfinite(arr).ravel()):
        row = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise ValueError(f"{what}: contains NaN or inf (first at row {row}){note}")


_UNIT_LABELS = ("binary_crossentropy", "categorical_crossentropy")  # labels in [0, 1]


def _label_range(spec: LossSpec, output: Node) -> tuple[float, float]:
    """The values `check_targets` admits: [0, 1] for binary and categorical labels, the class ids for
    sparse ones (whole numbers), any finite number otherwise."""
    if is_sparse(spec):
        return 0.0, float(output.shape[1] - 1)
    return (0.0, 1.0) if spec.name in _UNIT_LABELS else (-math.inf, math.inf)


def check_targets(y: object, spec: LossSpec, output: Node, what: str) -> np.ndarray:
    """Validate one output's target array and return it in the placeholder's dtype and shape. Where
    one pass (`datacheck.within`) shows every value admitted, only the shape is left to check; else
    numpy's checks find the first problem."""
    arr = as_numbers(y, what)
    bounded = spec.name in _UNIT_LABELS
    admitted = within(arr, *_label_range(spec, output), is_sparse(spec))
    ranged = not admitted and arr.size > 0 and (bounded or is_sparse(spec))  # labels whose range is checked below
    low, high = (_reduced(_min, arr), _reduced(_max, arr)) if ranged else (0, 0)
    # (NaN and inf show in the extremes)
    if not admitted and (not ranged or not (math.isfinite(low) and math.isfinite(high))):
        check_finite(arr, what, "; graphnet rejects non-finite labels")
    if is_sparse(spec):
        classes = output.shape[1]
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise ValueError(f"{what}: sparse labels must be class ids of shape (N,), got {shape_str(arr.shape)}")
        if not admitted and arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
            raise ValueError(f"{what}: sparse labels must be integer class ids, got non-integral values")
        if ranged and (low < 0 or high >= classes):
            bad = arr[(arr < 0) | (arr >= classes)][0]
            raise ValueError(f"{what}: class id {bad} out of range [0, {classes}) for the {classes}-class output")
        return np.ascontiguousarray(arr, dtype=np.int32)
    want = output.shape[1:]
    if arr.shape[1:] != want and arr.ndim == output.ndim - 1 and want[-1] == 1 and arr.shape[1:] == want[:-1]:
        arr = arr.reshape(arr.shape + (1,))
    if arr.ndim != output.ndim or arr.shape[1:] != want:
        hint = (" (integer class ids need loss='sparse_categorical_crossentropy')"
                if spec.name == "categorical_crossentropy" and arr.ndim == output.ndim - 1 else "")
        raise ValueError(f"{what}: expected shape {shape_str((None,) + want)} to match the output, "
                         f"got {shape_str(arr.shape)}{hint}")
    if bounded and ranged and (low < 0 or high > 1):
        raise ValueError(f"{what}: {spec.name} labels must lie in [0, 1] (outside it the loss is unbounded below), "
                         f"got values in [{low}, {high}]")
    return np.ascontiguousarray(arr, dtype=output.dtype)


def class_ids(y: np.ndarray, spec: LossSpec) -> np.ndarray:
    """Each sample's class, as `class_weight` keys it: the id (sparse), the argmax (one-hot), or the
    rounded label (a single binary column)."""
    if is_sparse(spec) or y.ndim == 1:
        return np.rint(y).astype(np.int64)
    if y.shape[-1] == 1:
        return np.rint(y.reshape(len(y), -1)[:, 0]).astype(np.int64)
    return y.reshape(len(y), -1).argmax(-1)
