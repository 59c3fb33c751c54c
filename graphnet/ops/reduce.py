"""Reductions over axes (sum, max, min, prod), with numpy's keepdims semantics."""
from __future__ import annotations

import numpy as np

from . import api as ops
from ..errors import ShapeError
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
