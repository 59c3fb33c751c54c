"""Training-mode specialisation: dropout is the identity outside training."""
from __future__ import annotations

from ..program import Program


def strip_dropout(prog: Program) -> Program:
    return prog.rebuild(lambda node, inputs: inputs[0] if node.op.name == "dropout" else None)
