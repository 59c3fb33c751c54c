"""Matrix multiplication: 2-D operands (the op the GEMM kernels implement) and N-D batched operands
with numpy's broadcasting of the batch dimensions (a composite: a broadcast product summed over K,
which lowering fuses into one reduction kernel without materialising the product)."""
from __future__ import annotations

import numpy as np

from . import api as ops
from ..batchdim import unify_extents
from ..errors import ShapeError
from ..graph import shape_str
from .base import Example, Op, broadcast_shapes, register, require_float, same_dtype


def _check_operands(a, b) -> None:
    """The inner dimensions agree (N meeting a static K fixes N == K) and the operands are float."""
    try:
        unify_extents(a.shape[-1], b.shape[-2])
    except ShapeError:
        raise ShapeError(f"inner dimensions differ: {shape_str(a.shape)} @ {shape_str(b.shape)}") from None
    require_float(a, "matmul operand")


@register
class MatMul(Op):
    name = "matmul"
    kind = "matmul"
    examples = (Example([(None, 3), (3, 4)]), Example([(3, None), (None, 4)]), Example([(2, 5), (5, 1)]))

    def infer(self, inputs, attrs):
        a, b = inputs
        if a.ndim != 2 or b.ndim != 2:
            raise ShapeError(f"operands must be 2-D, got {shape_str(a.shape)} @ {shape_str(b.shape)}")
        dtype = same_dtype(inputs)
        _check_operands(a, b)
        return (a.shape[0], b.shape[1]), dtype

    def numpy(self, a, b):
        return np.matmul(a, b)

    def grad(self, node, g):
        a, b = node.inputs
        return [ops.matmul(g, ops.transpose(b)), ops.matmul(ops.transpose(a), g)]


@register
class BatchMatMul(Op):
    """(..., M, K) @ (..., K, N) -> (..., M, N), batch dimensions broadcast as numpy's matmul."""

    name = "batch_matmul"
    kind = "composite"
    examples = (Example([(2, 3, 4), (4, 5)]), Example([(None, 2, 3), (1, 3, 4)]),
                Example([(2, 1, 3, 4), (5, 4, 2)]), Example([(3, 4), (2, 4, 3)]))

    def infer(self, inputs, attrs):
        a, b = inputs
        if a.ndim < 2 or b.ndim < 2:
            raise ShapeError(f"operands must be at least 2-D, got {shape_str(a.shape)} @ {shape_str(b.shape)}")
        dtype = same_dtype(inputs)
        _check_operands(a, b)
        try:
            batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ShapeError:
            raise ShapeError(f"batch dimensions do not broadcast: {shape_str(a.shape)} @ {shape_str(b.shape)}") from None
        return batch + (a.shape[-2], b.shape[-1]), dtype

    def numpy(self, a, b):
        return np.matmul(a, b)

    def grad(self, node, g):
        """The full broadcast products; gradients() sums them back to each operand's shape."""
        a, b = node.inputs
        return [ops.matmul(g, _swap_last(b)), ops.matmul(_swap_last(a), g)]

    def expand(self, node):
        a, b = node.inputs
        product = ops.reshape(a, a.shape + (1,)) * ops.reshape(b, b.shape[:-2] + (1,) + b.shape[-2:])
        return ops.sum(product, -2)


def _swap_last(x):
    perm = list(range(x.ndim))
    perm[-2:] = perm[-1], perm[-2]
    return ops.transpose(x, perm)
