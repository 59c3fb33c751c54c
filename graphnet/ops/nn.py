"""Composite neural-network ops. Each keeps its own node (so passes can recognise it and the
numpy reference is direct) and `expand`s into primitive ops before native lowering."""
from __future__ import annotations

import numpy as np

from . import api as ops
from ..errors import ShapeError
from .base import Example, Op, register, require_float


class AxisOp(Op):
    kind = "composite"
    examples = (Example([(None, 5)], {"axis": 1}), Example([(None, 5)], {"axis": 0}))

    def infer(self, inputs, attrs):
        (x,) = inputs
        require_float(x)
        if not 0 <= attrs["axis"] < x.ndim:
            raise ShapeError(f"axis {attrs['axis']} out of range for rank {x.ndim}")
        return x.shape, x.dtype


@register
class Softmax(AxisOp):
    name = "softmax"

    def numpy(self, x, axis):
        e = np.exp(x - np.max(x, axis=axis, keepdims=True, initial=-np.inf))  # initial: an empty axis
        return e / np.sum(e, axis=axis, keepdims=True)

    def grad(self, node, g):
        y, axis = node, node.attrs["axis"]
        return [y * (g - ops.sum(g * y, axis, keepdims=True))]

    def expand(self, node):
        x, axis = node.inputs[0], node.attrs["axis"]
        e = ops.exp(x - ops.stop_gradient(ops.max(x, axis, keepdims=True)))
        return e / ops.sum(e, axis, keepdims=True)


@register
class LogSoftmax(AxisOp):
    name = "log_softmax"

    def numpy(self, x, axis):
        z = x - np.max(x, axis=axis, keepdims=True, initial=-np.inf)  # initial: an empty axis,
        with np.errstate(divide="ignore"):  # whose sum, 0, has log -inf (a sum over others is at least 1)
            return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))

    def grad(self, node, g):
        axis = node.attrs["axis"]
        return [g - ops.exp(node) * ops.sum(g, axis, keepdims=True)]

    def expand(self, node):
        x, axis = node.inputs[0], node.attrs["axis"]
        z = x - ops.stop_gradient(ops.max(x, axis, keepdims=True))
        return z - ops.log(ops.sum(ops.exp(z), axis, keepdims=True))


@register
class OneHot(Op):
    """One-hot rows from integer class ids; ids outside [0, depth) give all-zero rows."""

    name = "one_hot"
    kind = "composite"
    differentiable = False
    examples = (Example([(None,)], {"depth": 4, "dtype": np.dtype(np.float32)}, int_inputs={0: (np.int64, 4)}),)

    def infer(self, inputs, attrs):
        (labels,) = inputs
        if labels.dtype.kind not in "iu":
            raise ShapeError(f"labels must be integers, got {labels.dtype}")
        return labels.shape + (attrs["depth"],), attrs["dtype"]

    def numpy(self, labels, depth, dtype):
        return (labels[..., None] == np.arange(depth)).astype(dtype)

    def grad(self, node, g):
        return [None]

    def expand(self, node):
        labels, depth = node.inputs[0], node.attrs["depth"]
        ids = ops.constant(np.arange(depth, dtype=labels.dtype), graph=labels.graph)
        column = ops.reshape(labels, labels.shape + (1,))
        return ops.cast(ops.equal(column, ids), node.attrs["dtype"])
