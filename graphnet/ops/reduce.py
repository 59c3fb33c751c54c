"""Reductions over axes (sum, max, min, prod), with numpy's keepdims semantics; cumsum (a scan);
argmax and argmin (composites)."""
from __future__ import annotations

import numpy as np

from . import api as ops
from ..errors import NotDifferentiableError, ShapeError
from .base import Example, Op, register
from .scalar import REDUCTIONS


class Reduce(Op):
    kind = "reduce"
    examples = (Example([(None, 3)], {"axes": (1,), "keepdims": False}),
                Example([(None, 3)], {"axes": (0,), "keepdims": True}),
                Example([(None, 3)], {"axes": (0, 1), "keepdims": False}),
                Example([(2, 3, 4)], {"axes": (0, 2), "keepdims": True}))

    def infer(self, inputs, attrs):
        (x,) = inputs
        if x.dtype.kind == "b":
            raise ShapeError("cannot reduce a bool tensor (cast first)")
        axes, keep = attrs["axes"], attrs["keepdims"]
        if any(not 0 <= a < x.ndim for a in axes):
            raise ShapeError(f"axes {axes} out of range for shape {x.shape}")
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keep else \
            tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return shape, x.dtype


    def numpy(self, x, axes, keepdims):
        """The reduction's definition in graphnet.ops.scalar.REDUCTIONS (the one the backends render)."""
        return np.asarray(REDUCTIONS[self.name].numpy(x, axes, keepdims), x.dtype)


def keepdims_shape(x, axes) -> tuple:
    return tuple(1 if i in axes else d for i, d in enumerate(x.shape))


@register
class Sum(Reduce):
    name = "sum"


    def grad(self, node, g):
        x = node.inputs[0]
        return [ops.broadcast_to(ops.reshape(g, keepdims_shape(x, node.attrs["axes"])), x.shape)]


@register
class Max(Reduce):
    name = "max"
    examples = tuple(Example(e.shapes, e.attrs, smooth=False) for e in Reduce.examples)


    def grad(self, node, g):
        return [_extremum_grad(node, g)]


@register
class Min(Reduce):
    name = "min"
    examples = Max.examples

    def grad(self, node, g):
        return [_extremum_grad(node, g)]


def _extremum_grad(node, g):
    """max / min: the elements equal to the result share its gradient evenly (torch.amax's and
    torch.amin's convention at ties)."""
    x, axes = node.inputs[0], node.attrs["axes"]
    keep = keepdims_shape(x, axes)
    hit = ops.cast(ops.equal(x, ops.reshape(node, keep)), x.dtype)
    share = hit / ops.sum(hit, axes, keepdims=True)
    return share * ops.reshape(g, keep)


@register
class Prod(Reduce):
    name = "prod"

    def grad(self, node, g):
        x, axes = node.inputs[0], node.attrs["axes"]
        return [_product_of_others(x, axes) * ops.reshape(g, keepdims_shape(x, axes))]


def _product_of_others(x, axes):
    """d prod / d x_i = the product of the other elements of x_i's slice, exact at zeros (prod / x
    is 0 / 0 there): with no zero in the slice it is P / x_i (P the product of the nonzero elements);
    with exactly one zero it is P at the zero and 0 elsewhere; with two or more it is 0 (as torch)."""
    is_zero = ops.equal(x, 0)
    nonzero = ops.where(is_zero, 1, x)
    product = ops.prod(nonzero, axes, keepdims=True)
    zeros = ops.sum(ops.cast(is_zero, x.dtype), axes, keepdims=True)
    return ops.where(is_zero, ops.where(ops.equal(zeros, 1), product, 0),
                     ops.where(ops.equal(zeros, 0), product / nonzero, 0))


@register
class Cumsum(Op):
    """The running sum along `axis` (backwards when `reverse`: element i sums i and after), a scan in
    the loop IR: linear in the axis length. Its gradient is the cumsum of g the other way."""

    name = "cumsum"
    kind = "scan"
    examples = (Example([(None, 5)], {"axis": 1, "reverse": False}),
                Example([(None, 3)], {"axis": 0, "reverse": False}),
                Example([(2, 3, 4)], {"axis": 1, "reverse": True}))

    def infer(self, inputs, attrs):
        (x,) = inputs
        if x.dtype.kind == "b":
            raise ShapeError("cannot cumsum a bool tensor (cast first)")
        if not 0 <= attrs["axis"] < x.ndim:
            raise ShapeError(f"axis {attrs['axis']} out of range for shape {x.shape}")
        return x.shape, x.dtype

    def numpy(self, x, axis, reverse):
        if reverse:
            return np.flip(np.cumsum(np.flip(x, axis), axis, dtype=x.dtype), axis)
        return np.cumsum(x, axis, dtype=x.dtype)

    def grad(self, node, g):
        return [ops.cumsum(g, node.attrs["axis"], reverse=not node.attrs["reverse"])]


class ArgReduce(Op):
    """The int64 index of the first maximum (minimum) along `axis`, or of the first NaN if the slice
    holds one (numpy's rule). A composite: the extremum, then the least index where x equals it."""

    kind = "composite"
    differentiable = False
    extremum = ""
    examples = (Example([(None, 5)], {"axis": 1}), Example([(None, 3)], {"axis": 0}),
                Example([(2, 3, 4)], {"axis": 2}), Example([(None, 4)], {"axis": 1}, int_inputs={0: (np.int32, 3)}))

    def infer(self, inputs, attrs):
        (x,) = inputs
        if x.dtype.kind == "b":
            raise ShapeError(f"cannot {self.name} a bool tensor (cast first)")
        if not 0 <= attrs["axis"] < x.ndim:
            raise ShapeError(f"axis {attrs['axis']} out of range for shape {x.shape}")
        if x.shape[attrs["axis"]] == 0:
            raise ShapeError(f"{self.name} of an empty axis (shape {x.shape}, axis {attrs['axis']})")
        return tuple(d for i, d in enumerate(x.shape) if i != attrs["axis"]), np.dtype(np.int64)

    def numpy(self, x, axis):
        return np.asarray(getattr(np, self.name)(x, axis))

    def grad(self, node, g):
        raise NotDifferentiableError(f"{self.name} has no gradient: its result is an integer index (at {node.source})")

    def expand(self, node):
        x, axis = node.inputs[0], node.attrs["axis"]
        top = getattr(ops, self.extremum)(x, axis, keepdims=True)
        positions = _positions(x, axis)
        past_end = np.iinfo(np.int64).max if x.shape[axis] is None else x.shape[axis]
        hits = ops.where(ops.equal(x, top), positions, past_end)
        if x.dtype.kind == "f":  # the extremum is NaN exactly when the slice holds a NaN: then the NaNs are the hits
            hits = ops.where(ops.not_equal(x, x), positions, hits)
        return ops.min(hits, axis)


def _positions(x, axis: int):
    """Each element's int64 index along `axis`, broadcastable against x: a constant for a static
    axis, a cumsum of ones along the batch axis."""
    n = x.shape[axis]
    if n is None:
        return ops.cumsum(ops.broadcast_to(ops.constant(1, np.int64, graph=x.graph), x.shape), axis) - 1
    shape = (n,) + (1,) * (x.ndim - axis - 1)
    return ops.constant(np.arange(n, dtype=np.int64).reshape(shape), graph=x.graph)


@register
class ArgMax(ArgReduce):
    name, extremum = "argmax", "max"


@register
class ArgMin(ArgReduce):
    name, extremum = "argmin", "min"
