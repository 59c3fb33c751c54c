"""Composite expansion: softmax, log_softmax, one_hot... become their primitive graph ops."""
from __future__ import annotations

import numpy as np

from .. import ops
from ..graph import Node
from ..program import Program


def expand_composites(prog: Program) -> Program:
    """Replace every composite op by its `expand()` (what the loop lowering can fuse)."""
    def rule(node: Node, inputs: list) -> Node | None:
        if node.op.kind != "composite":
            return None
        graph = inputs[0].graph
        new = graph.apply(node.op, inputs, node.attrs, source=node.source)
        out = node.op.expand(new)
        if out.shape != new.shape:  # a batch the composite fixed (TF1's rule) that its primitives broadcast
            out = _fixed_extents(out, new.shape)
        return out
    return prog.rebuild(rule)


def _fixed_extents(out: Node, shape: tuple) -> Node:
    """`out`, whose axes of extent N (the batch) are static extents k in `shape` because the composite
    fixed N == k, with those axes made static: each taken at 0 .. k-1 (the whole axis, as N == k when it
    runs): a reshape cannot, where two axes are N, turn N x N into N x k."""
    for axis, (got, want) in enumerate(zip(out.shape, shape)):
        if got is None and want is not None:
            out = ops.take(out, np.arange(want), axis)
    return out if out.shape == shape else ops.reshape(out, shape)
