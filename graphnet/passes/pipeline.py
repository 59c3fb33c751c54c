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
from .strided_grads import split_strided_input_grads
from .training import strip_dropout

Pass = Callable[[Program], Program]

DEFAULT_PASSES: list[Pass] = [stabilize, simplify, fold_constants, simplify, split_strided_input_grads,
                              expand_composites, cse, dce, fuse_optimizer]


@dataclass
class PassRecord:
    name: str
    nodes: int  # the graph's nodes (a loop program: its kernels)
    seconds: float
    snapshot: str | None  # the text when the pass ran; None: the program's, printed when first asked for
    program: Any  # the Program after this pass (dumps draw it); None where the record has no text.
    #               Loop passes rewrite one LoopProgram in place, so their text is a snapshot or none

    @property
    def text(self) -> str:
        if self.snapshot is None:
            if self.program is None:
                raise ValueError(f"the record of pass {self.name} was made without its text")
            self.snapshot = self.program.to_text()
        return self.snapshot


IR = TypeVar("IR")


def run_passes(ir: IR, passes: Sequence[Callable[[IR], IR]], verify: Callable[[IR, IR], None] | None,
               size: Callable[[IR], int], first: str = "input", text: str = "snapshot"
               ) -> tuple[IR, list[PassRecord]]:
    """Run `passes` in order on a graph or loop program, checking each result with `verify(new, old)`
    and recording it; the first record (named `first`) is the input. Each record's `text`: "snapshot"
    prints it after the pass; "lazy" when first read (dumps, reports; a compile reads none), where no
    pass changes the program it is given; "none" keeps only names, sizes and times."""
    if text not in ("snapshot", "lazy", "none"):
        raise ValueError(f"text must be 'snapshot', 'lazy' or 'none', not {text!r}")

    def record(name: str, program: IR, seconds: float) -> PassRecord:
        return PassRecord(name, size(program), seconds, program.to_text() if text == "snapshot" else None,
                          None if text == "none" else program)

    records = [record(first, ir, 0.0)]
    for p in passes:
        start = time.perf_counter()
        new = p(ir)
        if verify is not None:
            verify(new, None if new is ir else ir)
        ir = new
        records.append(record(p.__name__, ir, time.perf_counter() - start))
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
    return run_passes(prog, passes, verify if check else None, lambda p: len(p.nodes()),
                      text="lazy" if default else "snapshot")
