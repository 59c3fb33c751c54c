"""Numeric stabilisation: rewrite expressions that overflow or lose precision into stable forms.

log(sigmoid(z)) -> -softplus(-z);  log(1 - sigmoid(z)) -> -softplus(z);  log(softmax(z)) ->
log_softmax(z). Probabilities clipped before the log (how cross-entropy on probabilities is
written) are seen through, which turns sigmoid/softmax + cross-entropy into the from-logits form.
"""
from __future__ import annotations

from .. import ops
from ..graph import Node
from ..program import Program


def _unclip(x: Node) -> Node:
    return x.inputs[0] if x.op.name == "clip" else x


def _one_minus(x: Node) -> Node | None:
    """Return s when x is (1 - s)."""
    if x.op.name == "subtract" and x.inputs[0].op.name == "constant":
        arr = x.inputs[0].attrs["value"].array
        if arr.size == 1 and float(arr.reshape(())) == 1.0:
            return x.inputs[1]
    return None


def stabilize_node(node: Node, inputs: list[Node]) -> Node | None:
    if node.op.name != "log":
        return None
    arg = _unclip(inputs[0])
    if arg.op.name == "sigmoid" and arg.shape == node.shape:
        return -ops.softplus(-arg.inputs[0])
    if arg.op.name == "softmax" and arg.shape == node.shape:
        return ops.log_softmax(arg.inputs[0], arg.attrs["axis"])
    inner = _one_minus(arg)
    if inner is not None:
        inner = _unclip(inner)
        if inner.op.name == "sigmoid" and arg.shape == node.shape:
            return -ops.softplus(inner.inputs[0])
    return None


def stabilize(prog: Program) -> Program:
    return prog.rebuild(stabilize_node)
