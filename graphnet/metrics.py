"""What a model is trained and measured against: loss and metric names -> graph nodes, and the
check of target arrays before any training step.

A sigmoid or softmax output trained with a cross-entropy loss uses the pre-activation logits (the
activation node's input) so the loss takes its stable from-logits form.

Policy for labels: non-finite values (NaN, inf) are rejected with a ValueError, as are binary labels
outside [0, 1] and sparse class ids that are not integers in [0, classes); nothing is trained then.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import ops
from .graph import Graph, Node, shape_str

LOSSES = ("mse", "binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy")
ALIASES = {"mean_squared_error": "mse"}
METRICS = ("accuracy", "acc", "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy", "mae")
PROB_EPS = 1e-7  # probabilities are clipped into [eps, 1] before a log when no logits are at hand

LossArg = str | Callable[[Node, Node], Node]


def loss_name(loss: LossArg) -> str | None:
    """The canonical name of a named loss, None for a callable; ValueError for an unknown name."""
    if callable(loss):
        return None
    if not isinstance(loss, str) or ALIASES.get(loss, loss) not in LOSSES:
        raise ValueError(f"unknown loss {loss!r} (choose from {', '.join(LOSSES)} or pass a callable)")
    return ALIASES.get(loss, loss)


def check_metric(metric: str | Callable) -> str:
    """The history key of a metric; ValueError for an unknown name."""
    if callable(metric):
        return getattr(metric, "__name__", "metric")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)} or pass a callable)")
    return metric


def is_sparse(loss: LossArg) -> bool:
    return loss == "sparse_categorical_crossentropy"


def target_placeholder(graph: Graph, name: str, loss: LossArg, output: Node) -> Node:
    """The placeholder fed with an output's targets: class ids for sparse losses, else output-shaped."""
    if is_sparse(loss):
        if output.ndim != 2 or output.shape[1] < 2:
            raise ValueError(f"sparse_categorical_crossentropy needs a (batch, classes) output with 2+ classes, "
                             f"got {shape_str(output.shape)}")
        return ops.placeholder(name, (None,), np.int32, graph=graph)
    if loss in ("binary_crossentropy", "categorical_crossentropy") and output.dtype.kind != "f":
        raise ValueError(f"{loss} needs a floating-point output, got {output.dtype}")
    return ops.placeholder(name, output.shape, output.dtype, graph=graph)


def _logits(output: Node, activation: str) -> Node | None:
    if output.op.name != activation:
        return None
    if activation == "softmax" and output.attrs["axis"] != output.ndim - 1:
        return None
    return output.inputs[0]


def loss_node(loss: LossArg, output: Node, target: Node) -> Node:
    from . import losses
    if callable(loss):
        value = loss(output, target)
        if not isinstance(value, Node) or value.shape != ():
            raise ValueError(f"loss {getattr(loss, '__name__', loss)!r} must return a scalar graph node, got {value!r}")
        return value
    name = loss_name(loss)
    if name == "mse":
        return losses.mse(output, target)
    if name == "binary_crossentropy":
        logits = _logits(output, "sigmoid")
        if logits is not None:
            return losses.binary_cross_entropy(logits, target, from_logits=True)
        return losses.binary_cross_entropy(output, target, from_logits=False)
    logits = _logits(output, "softmax")
    if logits is None:  # log of (clipped) probabilities: log_softmax of it renormalises, as Keras does
        logits = ops.log(ops.clip(output, PROB_EPS, 1.0))
    return losses.softmax_cross_entropy(logits, target)


def accuracy_kind(loss: LossArg, output: Node) -> str:
    if is_sparse(loss):
        return "sparse_categorical_accuracy"
    if loss == "categorical_crossentropy" or output.shape[-1] > 1:
        return "categorical_accuracy"
    return "binary_accuracy"


def metric_node(metric: str | Callable, loss: LossArg, output: Node, target: Node) -> Node:
    if callable(metric):
        return metric(output, target)
    if metric in ("accuracy", "acc"):
        metric = accuracy_kind(loss, output)
    if metric == "mae":
        if is_sparse(loss):
            raise ValueError("mae needs targets shaped like the output, not sparse class ids")
        return ops.mean(ops.abs(output - target))
    if metric == "binary_accuracy":
        if is_sparse(loss):
            raise ValueError("binary_accuracy needs targets shaped like the output, not sparse class ids")
        return ops.mean(ops.cast(ops.equal(ops.cast(output > 0.5, output.dtype), target), output.dtype))
    if output.ndim != 2:
        raise ValueError(f"{metric} needs a (batch, classes) output, got {shape_str(output.shape)}")
    if metric == "sparse_categorical_accuracy":
        if not is_sparse(loss):
            raise ValueError("sparse_categorical_accuracy needs a sparse_categorical_crossentropy loss")
        target = ops.one_hot(target, output.shape[1], output.dtype)
    elif is_sparse(loss):
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
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        row = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise ValueError(f"{what}: contains NaN or inf (first at row {row}){note}")


def check_targets(y: object, loss: LossArg, output: Node, what: str) -> np.ndarray:
    """Validate one output's target array and return it in the placeholder's dtype and shape."""
    arr = as_numbers(y, what)
    check_finite(arr, what, "; graphnet rejects non-finite labels")
    if is_sparse(loss):
        classes = output.shape[1]
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise ValueError(f"{what}: sparse labels must be class ids of shape (N,), got {shape_str(arr.shape)}")
        if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
            raise ValueError(f"{what}: sparse labels must be integer class ids, got non-integral values")
        if arr.size and (arr.min() < 0 or arr.max() >= classes):
            bad = arr[(arr < 0) | (arr >= classes)][0]
            raise ValueError(f"{what}: class id {bad} out of range [0, {classes}) for the {classes}-class output")
        return np.ascontiguousarray(arr, dtype=np.int32)
    want = output.shape[1:]
    if arr.shape[1:] != want and arr.ndim == output.ndim - 1 and want[-1] == 1 and arr.shape[1:] == want[:-1]:
        arr = arr.reshape(arr.shape + (1,))
    if arr.ndim != output.ndim or arr.shape[1:] != want:
        raise ValueError(f"{what}: expected shape {shape_str((None,) + want)} to match the output, "
                         f"got {shape_str(arr.shape)}")
    if loss == "binary_crossentropy" and arr.size and (arr.min() < 0 or arr.max() > 1):
        raise ValueError(f"{what}: binary_crossentropy labels must lie in [0, 1], got values in "
                         f"[{arr.min()}, {arr.max()}]")
    return np.ascontiguousarray(arr, dtype=output.dtype)
