"""Common-subexpression elimination: structurally equal nodes become one."""
from ..program import Program


def cse(prog: Program) -> Program:
    """Rebuild into an interning graph: the same op on the same inputs and attrs is one node."""
    return prog.rebuild(intern=True)
