"""The one visible pass pipeline: runs passes in order, verifies and records the graph after each."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from ..program import Program
from .cse import cse
from .dce import dce
from .expand import expand_composites
from .fold import fold_constants
from .fuse_optimizer import fuse_optimizer
from .simplify import simplify
from .stabilize import stabilize
from .training import strip_dropout

Pass = Callable[[Program], Program]

DEFAULT_PASSES: list[Pass] = [stabilize, simplify, fold_constants, simplify, expand_composites, cse, dce,
                              fuse_optimizer]


@dataclass
class PassRecord:
    name: str
    nodes: int  # the graph's nodes (a loop program: its kernels)
    seconds: float
    snapshot: str | None  # the text when the pass ran; None: the program's, printed when first asked for
    program: Any  # the Program after this pass (dumps draw it); loop passes rewrite one LoopProgram
    #               in place, so they take snapshots

    @property
    def text(self) -> str:
        if self.snapshot is None:
            self.snapshot = self.program.to_text()
        return self.snapshot


IR = TypeVar("IR")


def run_passes(ir: IR, passes: Sequence[Callable[[IR], IR]], verify: Callable[[IR, IR], None] | None,
               size: Callable[[IR], int], first: str = "input", snapshot: bool = True) -> tuple[IR, list[PassRecord]]:
    """Run `passes` in order on a graph or loop program, checking each result with `verify(new, old)`
    and recording it; the first record (named `first`) is the input. `snapshot=False` where no pass
    changes the program it is given: a record prints its program's text only when asked (dumps,
    reports), which a compile does not."""
    def text(program: IR) -> str | None:
        return program.to_text() if snapshot else None

    records = [PassRecord(first, size(ir), 0.0, text(ir), ir)]
    for p in passes:
        start = time.perf_counter()
        new = p(ir)
        if verify is not None:
            verify(new, None if new is ir else ir)
        ir = new
        records.append(PassRecord(p.__name__, size(ir), time.perf_counter() - start, text(ir), ir))
    return ir, records


def verify(prog: Program, before: Program | None = None) -> None:
    """Check the graph is acyclic, every node re-infers its shape/dtype, and outputs kept theirs."""
    nodes = prog.nodes()
    ordered = set(nodes)  # `ancestors` orders no node on a cycle, nor any node depending on one
    if not all(out in ordered for out in prog.outputs):
        raise AssertionError("pass produced a cycle")
    for n in nodes:
        shape, dtype = n.op.infer(n.inputs, n.attrs)
        if tuple(shape) != n.shape or dtype != n.dtype:
            raise AssertionError(f"{n.name}: recorded {n.shape} {n.dtype}, rule gives {shape} {dtype}")
    if before is not None:
        for old, new in zip(before.outputs, prog.outputs):
            if (old.shape, old.dtype) != (new.shape, new.dtype):
                raise AssertionError(f"output {old.name} changed from {old.shape} {old.dtype} to {new.shape} {new.dtype}")


def default_passes(training: bool = True, fuse_optimizer: bool = True) -> list[Pass]:
    """DEFAULT_PASSES, after strip_dropout outside training, without fuse_optimizer if asked."""
    passes = list(DEFAULT_PASSES) if training else [strip_dropout] + list(DEFAULT_PASSES)
    return passes if fuse_optimizer else [p for p in passes if p.__name__ != "fuse_optimizer"]


def run_pipeline(prog: Program, passes: Sequence[Pass] | None = None, training: bool = True,
                 check: bool = True, fuse_optimizer: bool = True) -> tuple[Program, list[PassRecord]]:
    """Run `passes` (default: `default_passes(training, fuse_optimizer)`) on a graph program. The
    default passes return new programs (`Program.rebuild`, `dataclasses.replace`), so their records
    print text lazily; a custom pass list's records are snapshots."""
    default = passes is None
    if default:
        passes = default_passes(training, fuse_optimizer)
    return run_passes(prog, passes, verify if check else None, lambda p: len(p.nodes()), snapshot=not default)
