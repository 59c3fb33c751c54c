"""Training-mode specialisation: outside training dropout is the identity and `in_training(a, b)` is b."""
from __future__ import annotations

from ..program import Program


def strip_dropout(prog: Program) -> Program:
    return prog.rebuild(lambda node, inputs: INFERENCE_VALUE[node.op.name](inputs)
                        if node.op.name in INFERENCE_VALUE else None)


INFERENCE_VALUE = {"dropout": lambda inputs: inputs[0], "in_training": lambda inputs: inputs[1]}
