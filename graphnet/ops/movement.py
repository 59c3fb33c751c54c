"""Ops that move or replicate data without arithmetic: transpose, reshape, broadcast_to."""
from __future__ import annotations

import math

import numpy as np

from . import api as ops
from ..errors import ShapeError
from ..batchdim import fix_batch
from ..graph import shape_str
from .base import Example, Op, broadcast_shapes, register


class Movement(Op):
    kind = "movement"


@register
class Transpose(Movement):
    name = "transpose"
    examples = (Example([(None, 3)], {"perm": (1, 0)}), Example([(2, 3, 4)], {"perm": (2, 0, 1)}))

    def infer(self, inputs, attrs):
        (x,), perm = inputs, attrs["perm"]
        if sorted(perm) != list(range(x.ndim)):
            raise ShapeError(f"perm {perm} is not a permutation of the {x.ndim} axes of {shape_str(x.shape)}")
        return tuple(x.shape[p] for p in perm), x.dtype

    def numpy(self, x, perm):
        return np.ascontiguousarray(np.transpose(x, perm))

    def grad(self, node, g):
        return [ops.transpose(g, tuple(int(i) for i in np.argsort(node.attrs["perm"])))]


def resolve_reshape(old: tuple, new: tuple) -> tuple:
    """Resolve -1 in `new` and check that element counts agree. A shape holds static * N**k elements
    (k: its None axes), so both the static product and k must match; -1 takes whichever is left.
    Without -1, a reshape between a shape holding N once and a static one fixes N (batchdim.py)."""
    new = tuple(None if d is None else int(d) for d in new)
    if sum(d == -1 for d in new) > 1 or any(d is not None and d < -1 for d in new):
        raise ShapeError(f"invalid target shape {new}")
    static_old, batch_old = math.prod(d for d in old if d is not None), sum(d is None for d in old)
    rest, batch_new = math.prod(d for d in new if d not in (None, -1)), sum(d is None for d in new)
    if -1 in new:
        if batch_old == batch_new + 1 and static_old == rest:
            fill = None
        elif batch_old != batch_new or rest == 0 or static_old % rest:
            raise ShapeError(f"cannot reshape {shape_str(old)} to {new}")
        else:
            fill = static_old // rest
        new = tuple(fill if d == -1 else d for d in new)
    static_new, batch_new = math.prod(d for d in new if d is not None), sum(d is None for d in new)
    if (batch_new, static_new) == (batch_old, static_old) or _fixes_batch(static_old, batch_old, static_new, batch_new):
        return new
    raise ShapeError(f"cannot reshape {shape_str(old)} to {shape_str(new)}")


def _fixes_batch(static_old: int, batch_old: int, static_new: int, batch_new: int) -> bool:
    """Whether N * one static product == the other, N >= 1, where only one side holds N (once); if so
    N is fixed to that quotient."""
    if {batch_old, batch_new} != {0, 1}:
        return False
    per_row, total = (static_old, static_new) if batch_old else (static_new, static_old)
    if per_row == 0 or total % per_row or total < per_row:
        return False
    fix_batch(total // per_row)
    return True


@register
class Reshape(Movement):
    name = "reshape"
    examples = (Example([(None, 6)], {"shape": (None, 2, 3)}), Example([(2, 3, 4)], {"shape": (4, 6)}),
                Example([(None, 6)], {"shape": (-1, 3, 2)}))

    needs_out_shape = True

    def infer(self, inputs, attrs):
        return resolve_reshape(inputs[0].shape, attrs["shape"]), inputs[0].dtype

    def numpy(self, x, shape, out_shape):
        return np.reshape(x, out_shape)

    def grad(self, node, g):
        return [ops.reshape(g, node.inputs[0].shape)]


@register
class BroadcastTo(Movement):
    name = "broadcast_to"
    examples = (Example([(3,)], {"shape": (None, 3)}), Example([(None, 1)], {"shape": (None, 4)}),
                Example([()], {"shape": (2, 3)}))

    def infer(self, inputs, attrs):
        x, shape = inputs[0], tuple(attrs["shape"])
        if any(d is not None and (not isinstance(d, (int, np.integer)) or d < 0) for d in shape):
            raise ShapeError(f"cannot broadcast to {shape}: sizes must be non-negative integers or None")
        if broadcast_shapes(x.shape, shape) != shape:
            raise ShapeError(f"cannot broadcast {shape_str(x.shape)} to {shape_str(shape)}")
        return shape, x.dtype

    needs_out_shape = True

    def numpy(self, x, shape, out_shape):
        return np.broadcast_to(x, out_shape)

    def grad(self, node, g):
        return [ops.sum_to(g, node.inputs[0].shape)]
