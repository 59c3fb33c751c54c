"""Loss functions in numerically stable forms (PyTorch's definitions; see REFERENCE.md).

Each returns the mean over the batch by default; `reduction="sum"` sums and `"none"` keeps one
value per element (per row for softmax cross-entropy). Targets of another dtype are cast to the
prediction's dtype.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import ops
from .errors import ShapeError
from .graph import Node, shape_str
from .source import user_location

EPSILON = 1e-7  # how far probabilities are clipped away from 0 and 1 before the log


def mse(pred: Any, target: Any, reduction: str = "mean") -> Node:
    """Mean squared error over all elements."""
    pred, target = _pair("mse", pred, target)
    d = pred - target
    return _reduce(d * d, reduction)


def binary_cross_entropy(z_or_p: Any, y: Any, from_logits: bool = False, reduction: str = "mean") -> Node:
    """Binary cross-entropy of targets `y` in [0, 1] against logits z or probabilities p.

    From logits: softplus(z) - z*y, i.e. max(z, 0) - z*y + log(1 + exp(-|z|)), finite for any z and
    with gradient exactly sigmoid(z) - y (also at z = 0). From probabilities: p is clipped to
    [eps, 1-eps] and the loss written as -(y*log(p) + (1-y)*log(1-p)), which the stabilize pass
    rewrites to the from-logits form when p is sigmoid(z).
    """
    x, y = _pair("binary_cross_entropy", z_or_p, y)
    if from_logits:
        return _reduce(ops.softplus(x) - x * y, reduction)
    p = ops.clip(x, EPSILON, 1 - EPSILON)
    return _reduce(-(y * ops.log(p) + (1 - y) * ops.log(1 - p)), reduction)


def softmax_cross_entropy(logits: Any, labels: Any, reduction: str = "mean") -> Node:
    """-sum_k y_k log_softmax(z)_k per row; labels are one-hot (float, logits' shape) or integer
    class ids (logits' shape without the last axis)."""
    (logits,) = ops.promote([logits])
    if logits.ndim < 1 or logits.dtype.kind != "f":
        raise ShapeError(f"softmax_cross_entropy: logits must be float with a class axis, got {logits.dtype} "
                         f"{shape_str(logits.shape)} (at {user_location()})")
    (labels,) = ops.promote([labels]) if isinstance(labels, Node) else [ops.constant(labels, graph=logits.graph)]
    if labels.dtype.kind in "iu":
        if labels.shape != logits.shape[:-1]:
            raise ShapeError(f"softmax_cross_entropy: integer labels {shape_str(labels.shape)} must have the "
                             f"logits' shape without the class axis {shape_str(logits.shape[:-1])} "
                             f"(at {user_location()})")
        labels = ops.one_hot(labels, logits.shape[-1], logits.dtype)
    else:
        logits, labels = _pair("softmax_cross_entropy", logits, labels)
    return _reduce(-ops.sum(labels * ops.log_softmax(logits, -1), -1), reduction)


def _pair(name: str, pred: Any, target: Any) -> tuple[Node, Node]:
    (pred,) = ops.promote([pred])
    if pred.dtype.kind != "f":
        raise ShapeError(f"{name}: predictions must be float, got {pred.dtype} (at {user_location()})")
    target = target if isinstance(target, Node) else ops.constant(np.asarray(target), graph=pred.graph)
    target = ops.cast(target, pred.dtype)
    if target.shape != pred.shape:
        raise ShapeError(f"{name}: prediction {shape_str(pred.shape)} and target {shape_str(target.shape)} "
                         f"differ in shape (at {user_location()})")
    return pred, target


def _reduce(values: Node, reduction: str) -> Node:
    if reduction == "mean":
        return ops.mean(values)
    if reduction == "sum":
        return ops.sum(values)
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
