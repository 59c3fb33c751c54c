"""Composite expansion: softmax, log_softmax, one_hot... become their primitive graph ops."""
from __future__ import annotations

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
            out = ops.reshape(out, new.shape)
        return out
    return prog.rebuild(rule)
