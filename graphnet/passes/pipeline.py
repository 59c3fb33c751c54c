"""The one visible pass pipeline: runs passes in order, verifies and records the graph after each."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import networkx as nx

from ..program import Program
from .cse import cse
from .dce import dce
from .fold import fold_constants
from .fuse_optimizer import fuse_optimizer
from .simplify import simplify
from .stabilize import stabilize
from .training import strip_dropout

Pass = Callable[[Program], Program]

DEFAULT_PASSES: list[Pass] = [stabilize, simplify, fold_constants, simplify, cse, dce, fuse_optimizer]


@dataclass
class PassRecord:
    name: str
    nodes: int
    seconds: float
    text: str
    program: Program  # the graph after this pass (dumps draw it)


def verify(prog: Program, before: Program | None = None) -> None:
    """Check the graph is acyclic, every node re-infers its shape/dtype, and outputs kept theirs."""
    nodes = prog.nodes()
    g = nodes[0].graph.to_networkx(prog.outputs) if nodes else nx.DiGraph()
    if not nx.is_directed_acyclic_graph(g):
        raise AssertionError("pass produced a cycle")
    for n in nodes:
        shape, dtype = n.op.infer(n.inputs, n.attrs)
        if tuple(shape) != n.shape or dtype != n.dtype:
            raise AssertionError(f"{n.name}: recorded {n.shape} {n.dtype}, rule gives {shape} {dtype}")
    if before is not None:
        for old, new in zip(before.outputs, prog.outputs):
            if (old.shape, old.dtype) != (new.shape, new.dtype):
                raise AssertionError(f"output {old.name} changed from {old.shape} {old.dtype} to {new.shape} {new.dtype}")


def run_pipeline(prog: Program, passes: Sequence[Pass] | None = None, training: bool = True,
                 check: bool = True) -> tuple[Program, list[PassRecord]]:
    """Run `passes` (default: DEFAULT_PASSES, after strip_dropout outside training)."""
    if passes is None:
        passes = list(DEFAULT_PASSES) if training else [strip_dropout] + list(DEFAULT_PASSES)
    records = [PassRecord("input", len(prog.nodes()), 0.0, prog.to_text(), prog)]
    for p in passes:
        start = time.perf_counter()
        new = p(prog)
        if check:
            verify(new, prog)
        prog = new
        records.append(PassRecord(p.__name__, len(prog.nodes()), time.perf_counter() - start, prog.to_text(), prog))
    return prog, records
