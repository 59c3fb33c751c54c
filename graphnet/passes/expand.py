"""Composite expansion: softmax, log_softmax, one_hot... become their primitive graph ops."""
from __future__ import annotations

from ..graph import Node
from ..program import Program


def expand_composites(prog: Program) -> Program:
    """Replace every composite op by its `expand()` (what the loop lowering can fuse)."""
    def rule(node: Node, inputs: list) -> Node | None:
        if node.op.kind != "composite":
            return None
        graph = inputs[0].graph
        return node.op.expand(graph.apply(node.op, inputs, node.attrs, source=node.source))
    return prog.rebuild(rule)
