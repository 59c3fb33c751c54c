"""Matrix multiplication (2-D operands), the op the GEMM kernels implement."""
from __future__ import annotations

import numpy as np

from . import api as ops
from ..errors import ShapeError
from ..graph import shape_str
from .base import Example, Op, register, require_float, same_dtype


@register
class MatMul(Op):
    name = "matmul"
    kind = "matmul"
    examples = (Example([(None, 3), (3, 4)]), Example([(3, None), (None, 4)]), Example([(2, 5), (5, 1)]))

    def infer(self, inputs, attrs):
        a, b = inputs
        if a.ndim != 2 or b.ndim != 2:
            raise ShapeError(f"operands must be 2-D, got {shape_str(a.shape)} @ {shape_str(b.shape)}")
        if a.shape[1] != b.shape[0]:
            raise ShapeError(f"inner dimensions differ: {shape_str(a.shape)} @ {shape_str(b.shape)}")
        dtype = same_dtype(inputs)
        require_float(a, "matmul operand")
        return (a.shape[0], b.shape[1]), dtype

    def numpy(self, a, b):
        return np.matmul(a, b)

    def grad(self, node, g):
        a, b = node.inputs
        return [ops.matmul(g, ops.transpose(b)), ops.matmul(ops.transpose(a), g)]
