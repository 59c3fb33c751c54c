"""Algebraic simplification: identities that hold for every value, NaN and Inf included.

x*1, 1*x, x/1, x+0, 0+x, x-0, x**1 -> x; x**2 -> x*x; --x -> x; transpose(transpose(x)) and
reshape(reshape(x)) collapse; no-op reshapes, broadcasts and casts vanish. Never x*0 -> 0.
"""
from __future__ import annotations

import numpy as np

from .. import ops
from ..graph import Node
from ..program import Program


def _is_const(node: Node, value: float) -> bool:
    if node.op.name != "constant":
        return False
    arr = node.attrs["value"].array
    return arr.size > 0 and bool(np.all(arr == value))


def _same(node: Node, x: Node) -> bool:
    return x.shape == node.shape and x.dtype == node.dtype


def simplify_node(node: Node, inputs: list[Node]) -> Node | None:
    name = node.op.name
    if name in ("multiply", "add", "subtract", "divide", "power"):
        a, b = inputs
        unit = {"multiply": 1, "add": 0, "subtract": 0, "divide": 1, "power": 1}[name]
        if _is_const(b, unit) and _same(node, a):
            return a
        if name in ("multiply", "add") and _is_const(a, unit) and _same(node, b):
            return b
        if name == "power" and _is_const(b, 2) and _same(node, a):
            return a * a
    if name == "negative" and inputs[0].op.name == "negative":
        return inputs[0].inputs[0]
    if name == "transpose":
        x, perm = inputs[0], node.attrs["perm"]
        if perm == tuple(range(len(perm))):
            return x
        if x.op.name == "transpose":
            composed = tuple(x.attrs["perm"][p] for p in perm)
            return x.inputs[0] if composed == tuple(range(len(perm))) else ops.transpose(x.inputs[0], composed)
    if name in ("reshape", "broadcast_to", "cast") and _same(node, inputs[0]):
        return inputs[0]
    if name == "reshape" and inputs[0].op.name == "reshape":
        return ops.reshape(inputs[0].inputs[0], node.shape)
    return None


def simplify(prog: Program) -> Program:
    return prog.rebuild(simplify_node)
