"""Constant folding: evaluate ops whose inputs are all constants, at compile time."""
from __future__ import annotations

import numpy as np

from .. import ops
from ..graph import Node
from ..program import Program

MAX_FOLDED_ELEMENTS = 4096  # never materialise a large broadcast as a constant


def fold_constants(prog: Program) -> Program:
    def rule(node: Node, inputs: list[Node]) -> Node | None:
        if node.op.kind in ("source", "collective") or not inputs or any(x.op.name != "constant" for x in inputs):
            return None
        if None in node.shape or int(np.prod(node.shape)) > MAX_FOLDED_ELEMENTS:
            return None
        if node.op.name == "dropout":
            return None
        args = [x.attrs["value"].array for x in inputs]
        attrs = dict(node.attrs)
        if node.op.needs_out_shape:
            attrs["out_shape"] = node.shape
        value = np.asarray(node.op.numpy(*args, **attrs), node.dtype)
        return ops.constant(value, node.dtype, graph=inputs[0].graph)
    return prog.rebuild(rule)
