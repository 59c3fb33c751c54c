"""Dead-code elimination: keep only what the fetches and updates need."""
from ..program import Program


def dce(prog: Program) -> Program:
    """Rebuilding copies only the nodes reachable from the outputs."""
    return prog.rebuild()
