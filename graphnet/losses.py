"""Loss functions in numerically stable forms (PyTorch's definitions; see REFERENCE.md).

Two orders, each under its own names, as in the libraries they come from:
- graphnet's (PyTorch's) prediction-first functions: `mse(pred, target)`, `mae`, `huber`, `hinge`,
  `kl_divergence`, `binary_cross_entropy(z_or_p, y)`, `softmax_cross_entropy(logits, labels)`. Each
  returns the mean over the batch by default; `reduction="sum"` sums and `"none"` keeps one value per
  element (per row for softmax cross-entropy and kl_divergence). `sample_weight=` multiplies the
  values before the reduction (see `_weigh`); "mean" is then sum(w * loss) / count, Keras's
  sum_over_batch_size.
- Keras's target-first functions and classes: `binary_crossentropy(y_true, y_pred)`,
  `categorical_crossentropy`, `sparse_categorical_crossentropy`, `mean_squared_error`,
  `mean_absolute_error` (one value per sample, as Keras returns), and `BinaryCrossentropy(from_logits=...)`,
  `Huber(delta)`, `Hinge`, `KLDivergence` and friends (called as `loss(y_true, y_pred, sample_weight=None)`,
  the batch mean), which `Model.compile` accepts.

A swapped pair is an error wherever it can be seen: a cross-entropy whose target depends on trainable
variables while its prediction does not, and constant cross-entropy targets outside [0, 1] (which
make the loss unbounded below). Targets of another dtype are cast to the prediction's dtype.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import ops
from .batchdim import unify_shapes
from .errors import ShapeError
from .graph import Node, ancestors, shape_str
from .ops.base import broadcast_shapes
from .source import user_location

EPSILON = 1e-7  # how far probabilities are clipped away from 0 and 1 before the log


# ---- graphnet's order: prediction first -------------------------------------------------------------
def mse(pred: Any, target: Any, reduction: str = "mean", sample_weight: Any = None) -> Node:
    """Mean squared error over all elements (symmetric, so either order trains the same)."""
    pred, target = _pair("mse", pred, target)
    d = pred - target
    return _reduce(d * d, reduction, sample_weight, "mse")


def mae(pred: Any, target: Any, reduction: str = "mean", sample_weight: Any = None) -> Node:
    """Mean absolute error |pred - target| over all elements (torch's l1_loss; symmetric)."""
    pred, target = _pair("mae", pred, target)
    return _reduce(ops.abs(pred - target), reduction, sample_weight, "mae")


def huber(pred: Any, target: Any, delta: float = 1.0, reduction: str = "mean", sample_weight: Any = None) -> Node:
    """Huber loss of d = pred - target: d^2 / 2 where |d| <= delta, delta (|d| - delta / 2) beyond
    (torch's huber_loss, Keras's Huber; symmetric)."""
    if not delta > 0:
        raise ValueError(f"huber: delta must be positive, got {delta}")
    pred, target = _pair("huber", pred, target)
    d = ops.abs(pred - target)
    quadratic = ops.minimum(d, float(delta))  # the part of |d| inside delta
    return _reduce(0.5 * quadratic * quadratic + float(delta) * (d - quadratic), reduction, sample_weight, "huber")


def hinge(pred: Any, target: Any, reduction: str = "mean", sample_weight: Any = None) -> Node:
    """max(1 - y * pred, 0) with labels y in {-1, 1}; as Keras, when every label in the target is 0 or
    1 the labels are read as binary and mapped to 2 y - 1 (checked on the whole target at run time)."""
    _check_order("hinge", ("pred", "target"), pred, target, "Hinge()")
    pred, target = _pair("hinge", pred, target)
    return _reduce(ops.relu(1 - _signed_labels(target) * pred), reduction, sample_weight, "hinge")


def kl_divergence(pred: Any, target: Any, reduction: str = "mean", sample_weight: Any = None) -> Node:
    """KL(target || pred) = sum(y log(y / p)) over the last axis, one value per row, both clipped into
    [eps, 1] first as Keras does (so a zero target contributes ~0, as torch's kl_div gives exactly 0);
    "mean" averages the rows (torch's reduction="batchmean")."""
    _check_order("kl_divergence", ("pred", "target"), pred, target, "KLDivergence()")
    pred, target = _pair("kl_divergence", pred, target)
    _check_probabilities("kl_divergence", "target", target)
    y, p = ops.clip(target, EPSILON, 1.0), ops.clip(pred, EPSILON, 1.0)
    return _reduce(ops.sum(y * ops.log(y / p), -1), reduction, sample_weight, "kl_divergence")


def binary_cross_entropy(z_or_p: Any, y: Any, from_logits: bool = False, reduction: str = "mean",
                         sample_weight: Any = None) -> Node:
    """Binary cross-entropy of targets `y` in [0, 1] against logits z or probabilities p.

    From logits: softplus(z) - z*y, i.e. max(z, 0) - z*y + log(1 + exp(-|z|)), finite for any z and
    with gradient exactly sigmoid(z) - y (also at z = 0). From probabilities: p is clipped to
    [eps, 1-eps] and the loss written as -(y*log(p) + (1-y)*log(1-p)), which the stabilize pass
    rewrites to the from-logits form when p is sigmoid(z).
    """
    _check_order("binary_cross_entropy", ("z_or_p", "y"), z_or_p, y, "binary_crossentropy")
    x, y = _pair("binary_cross_entropy", z_or_p, y)
    _check_probabilities("binary_cross_entropy", "y", y)
    if from_logits:
        return _reduce(ops.softplus(x) - x * y, reduction, sample_weight, "binary_cross_entropy")
    p = ops.clip(x, EPSILON, 1 - EPSILON)
    return _reduce(-(y * ops.log(p) + (1 - y) * ops.log(1 - p)), reduction, sample_weight, "binary_cross_entropy")


def softmax_cross_entropy(logits: Any, labels: Any, reduction: str = "mean", sample_weight: Any = None) -> Node:
    """-sum_k y_k log_softmax(z)_k per row; labels are one-hot (float, logits' shape) or integer
    class ids (logits' shape without the last axis)."""
    _check_order("softmax_cross_entropy", ("logits", "labels"), logits, labels, "categorical_crossentropy")
    (logits,) = ops.promote([logits])
    if logits.ndim < 1 or logits.dtype.kind != "f":
        raise ShapeError(f"softmax_cross_entropy: logits must be float with a class axis, got {logits.dtype} "
                         f"{shape_str(logits.shape)} (at {user_location()}); the order is "
                         f"softmax_cross_entropy(logits, labels)")
    (labels,) = ops.promote([labels]) if isinstance(labels, Node) else [ops.constant(labels, graph=logits.graph)]
    if labels.dtype.kind in "iu":
        if not _agree(labels.shape, logits.shape[:-1]):
            raise ShapeError(f"softmax_cross_entropy: integer labels {shape_str(labels.shape)} must have the "
                             f"logits' shape without the class axis {shape_str(logits.shape[:-1])} "
                             f"(at {user_location()})")
        labels = ops.one_hot(labels, logits.shape[-1], logits.dtype)
    else:
        logits, labels = _pair("softmax_cross_entropy", logits, labels)
        _check_probabilities("softmax_cross_entropy", "labels", labels)
    values = -ops.sum(labels * ops.log_softmax(logits, -1), -1)
    return _reduce(values, reduction, sample_weight, "softmax_cross_entropy")


# ---- Keras's order: y_true first, one value per sample ----------------------------------------------
def mean_squared_error(y_true: Any, y_pred: Any) -> Node:
    """Keras's `mean_squared_error(y_true, y_pred)`: the mean over the last axis, per sample."""
    y_pred, y_true = _pair("mean_squared_error", y_pred, y_true)
    d = y_pred - y_true
    return _per_sample(d * d)


def mean_absolute_error(y_true: Any, y_pred: Any) -> Node:
    """Keras's `mean_absolute_error(y_true, y_pred)`: the mean over the last axis, per sample."""
    y_pred, y_true = _pair("mean_absolute_error", y_pred, y_true)
    return _per_sample(ops.abs(y_pred - y_true))


def binary_crossentropy(y_true: Any, y_pred: Any, from_logits: bool = False) -> Node:
    """Keras's `binary_crossentropy(y_true, y_pred)`: the mean over the last axis, per sample."""
    _check_order("binary_crossentropy", ("y_pred", "y_true"), y_pred, y_true, None)
    return _per_sample(binary_cross_entropy(y_pred, y_true, from_logits=from_logits, reduction="none"))


def categorical_crossentropy(y_true: Any, y_pred: Any, from_logits: bool = False) -> Node:
    """Keras's `categorical_crossentropy(y_true, y_pred)` with one-hot (or soft) targets, per sample.

    Probabilities are clipped into [eps, 1] and renormalised by the log-softmax of their log, as Keras
    renormalises them; the stabilize pass turns log(softmax(z)) into log_softmax(z)."""
    _check_order("categorical_crossentropy", ("y_pred", "y_true"), y_pred, y_true, None)
    logits = y_pred if from_logits else ops.log(ops.clip(y_pred, EPSILON, 1.0))
    return softmax_cross_entropy(logits, y_true, reduction="none")


def sparse_categorical_crossentropy(y_true: Any, y_pred: Any, from_logits: bool = False) -> Node:
    """Keras's `sparse_categorical_crossentropy(y_true, y_pred)` with integer class ids, per sample."""
    _check_order("sparse_categorical_crossentropy", ("y_pred", "y_true"), y_pred, y_true, None)
    (y_true,) = ops.promote([y_true])
    if y_true.ndim == 2 and y_true.shape[-1] == 1:  # (N, 1) ids, as Keras accepts
        y_true = ops.reshape(y_true, y_true.shape[:-1])
    if y_true.dtype.kind == "f":
        y_true = ops.cast(y_true, np.int32)
    logits = y_pred if from_logits else ops.log(ops.clip(y_pred, EPSILON, 1.0))
    return softmax_cross_entropy(logits, y_true, reduction="none")


class Loss:
    """A Keras loss object: `loss(y_true, y_pred)` is the batch mean of the per-sample values.

    `Model.compile` reads `key` (the loss's compile name) and `from_logits`, so a loss object trains
    exactly as its name does (`from_logits=True`: the output layer's values are logits)."""

    key = ""

    def __init__(self, from_logits: bool = False, name: str | None = None, reduction: str = "sum_over_batch_size"):
        if reduction not in ("sum_over_batch_size", "auto", "sum", "none"):
            raise ValueError(f"{type(self).__name__}: reduction must be 'sum_over_batch_size', 'sum' or 'none', "
                             f"got {reduction!r}")
        self.from_logits, self.reduction = bool(from_logits), reduction
        self.name = name or self.key

    def per_sample(self, y_true: Any, y_pred: Any) -> Node:
        raise NotImplementedError

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Node:
        values = _weigh(self.per_sample(y_true, y_pred), sample_weight, type(self).__name__)
        if self.reduction == "none":
            return values
        return ops.sum(values) if self.reduction == "sum" else ops.mean(values)

    def get_config(self) -> dict:
        return {"from_logits": self.from_logits}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(from_logits={self.from_logits})"


class MeanSquaredError(Loss):
    key = "mse"

    def __init__(self, name: str | None = None, reduction: str = "sum_over_batch_size"):
        super().__init__(False, name, reduction)

    def per_sample(self, y_true, y_pred):
        return mean_squared_error(y_true, y_pred)

    def get_config(self) -> dict:
        return {}


class MeanAbsoluteError(MeanSquaredError):
    key = "mae"

    def per_sample(self, y_true, y_pred):
        return mean_absolute_error(y_true, y_pred)


class Huber(MeanSquaredError):
    key = "huber"

    def __init__(self, delta: float = 1.0, name: str | None = None, reduction: str = "sum_over_batch_size"):
        super().__init__(name, reduction)
        if not delta > 0:
            raise ValueError(f"Huber: delta must be positive, got {delta}")
        self.delta = float(delta)

    def per_sample(self, y_true, y_pred):
        return _per_sample(huber(y_pred, y_true, self.delta, reduction="none"))

    def get_config(self) -> dict:
        return {"delta": self.delta}


class Hinge(MeanSquaredError):
    key = "hinge"

    def per_sample(self, y_true, y_pred):
        return _per_sample(hinge(y_pred, y_true, reduction="none"))


class KLDivergence(MeanSquaredError):
    key = "kl_divergence"

    def per_sample(self, y_true, y_pred):
        return kl_divergence(y_pred, y_true, reduction="none")


class BinaryCrossentropy(Loss):
    key = "binary_crossentropy"

    def per_sample(self, y_true, y_pred):
        return binary_crossentropy(y_true, y_pred, self.from_logits)


class CategoricalCrossentropy(Loss):
    key = "categorical_crossentropy"

    def per_sample(self, y_true, y_pred):
        return categorical_crossentropy(y_true, y_pred, self.from_logits)


class SparseCategoricalCrossentropy(Loss):
    key = "sparse_categorical_crossentropy"

    def per_sample(self, y_true, y_pred):
        return sparse_categorical_crossentropy(y_true, y_pred, self.from_logits)


LOSS_CLASSES = {cls.__name__: cls for cls in (MeanSquaredError, MeanAbsoluteError, BinaryCrossentropy,
                                              CategoricalCrossentropy, SparseCategoricalCrossentropy, Huber, Hinge,
                                              KLDivergence)}
LOSS_BY_KEY = {cls.key: cls for cls in LOSS_CLASSES.values()}
# what compile calls (output, target)
PREDICTION_FIRST = (mse, mae, huber, hinge, kl_divergence, binary_cross_entropy, softmax_cross_entropy)


# ---- checks -----------------------------------------------------------------------------------------
def _trainable(value: Any) -> bool:
    """Whether a value is a node that depends on a trainable variable."""
    if not isinstance(value, Node):
        return False
    return any(n.op.name == "variable" and n.trainable for n in ancestors([value]))


def _describe(value: Any) -> str:
    if isinstance(value, Node):
        return f"'{value.name}' {shape_str(value.shape)} created at {value.source}"
    return f"a constant {type(value).__name__}"


def _check_order(name: str, params: tuple[str, str], pred: Any, target: Any, other: str | None) -> None:
    """A target that depends on trainable variables while the prediction does not is a swapped pair
    (training would fit the model's output to the data instead of the other way round)."""
    if _trainable(target) and not _trainable(pred):
        first, second = params
        hint = (f"; Keras's target-first order is gn.losses.{other}(y_true, y_pred)" if other else
                f"; graphnet's prediction-first functions are gn.losses.binary_cross_entropy(z_or_p, y) and "
                f"softmax_cross_entropy(logits, labels)")
        raise ValueError(f"{name}: the arguments look swapped: {second}={_describe(target)} depends on trainable "
                         f"variables but {first}={_describe(pred)} does not. The order is {name}({first}, "
                         f"{second}) with {first} the model's prediction{hint} (at {user_location()})")


def _check_probabilities(name: str, param: str, target: Node) -> None:
    """Constant cross-entropy targets must lie in [0, 1]: outside it the loss has no lower bound.
    (Fed targets are checked by Model.fit; the low-level API cannot see them before they run.)"""
    if target.op.name == "cast":
        target = target.inputs[0]
    if target.op.name != "constant":
        return
    values = target.attrs["value"].array
    if values.size and (values.min() < 0 or values.max() > 1):
        raise ValueError(f"{name}: {param} must hold probabilities in [0, 1] (a cross-entropy with other targets "
                         f"is unbounded below), got values in [{values.min()}, {values.max()}] (at {user_location()})")


def _pair(name: str, pred: Any, target: Any) -> tuple[Node, Node]:
    (pred,) = ops.promote([pred])
    if pred.dtype.kind != "f":
        raise ShapeError(f"{name}: predictions must be float, got {pred.dtype} (at {user_location()})")
    target = target if isinstance(target, Node) else ops.constant(np.asarray(target), graph=pred.graph)
    target = ops.cast(target, pred.dtype)
    if not _agree(target.shape, pred.shape):
        raise ShapeError(f"{name}: prediction {shape_str(pred.shape)} and target {shape_str(target.shape)} "
                         f"differ in shape (at {user_location()})")
    return pred, target


def _agree(a: tuple, b: tuple) -> bool:
    """Whether two shapes that must be equal are: N meeting a static extent k agrees (the ops then
    built on both fix N == k, batchdim.py)."""
    try:
        unify_shapes(a, b)
    except ShapeError:
        return False
    return True


def _per_sample(values: Node) -> Node:
    """Keras's per-sample loss: the mean over the last axis (a rank-1 value is already per sample)."""
    return values if values.ndim <= 1 else ops.mean(values, -1)


def _signed_labels(y: Node) -> Node:
    """Hinge labels: y itself, or 2 y - 1 when every label is 0 or 1 (Keras's rule, on the whole target)."""
    other = ops.cast(ops.not_equal(y, 0), y.dtype) * ops.cast(ops.not_equal(y, 1), y.dtype)
    return ops.where(ops.equal(ops.sum(other), 0), 2 * y - 1, y)


def _weigh(values: Node, sample_weight: Any, name: str) -> Node:
    """values * sample_weight. A 1-D weight as long as the values' first axis weighs samples (it is
    aligned with that axis, as Keras's sample_weight); any other weight broadcasts against the values
    with numpy's rules, and must not change their shape."""
    if sample_weight is None:
        return values
    w = sample_weight if isinstance(sample_weight, Node) else \
        ops.constant(np.asarray(sample_weight), graph=values.graph)
    w = ops.cast(w, values.dtype)
    if w.ndim == 1 and values.ndim > 1 and _agree(w.shape, values.shape[:1]):
        w = ops.reshape(w, w.shape + (1,) * (values.ndim - 1))
    try:
        shape = broadcast_shapes(values.shape, w.shape)
    except ShapeError:
        shape = None
    if shape is None or not _agree(shape, values.shape):
        raise ShapeError(f"{name}: sample_weight {shape_str(w.shape)} does not broadcast to the loss values "
                         f"{shape_str(values.shape)} (give one weight per sample, shape (N,)) (at {user_location()})")
    return values * w


def _reduce(values: Node, reduction: str, sample_weight: Any = None, name: str = "loss") -> Node:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    values = _weigh(values, sample_weight, name)
    if reduction == "mean":
        return ops.mean(values)
    return ops.sum(values) if reduction == "sum" else values
