"""Every rank must compile the same step: checked when a communicating program is compiled.

Ranks that built different models, fed different shapes or chose different hyper-parameters would
pair up collectives of different sizes (undefined behaviour in MPI: wrong sums or a hang). Before
such a step runs, the ranks exchange digests of three parts of its loop program, and every rank
raises `MismatchError` naming the first part that differs and its first differing line.
"""
from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from .world import DistributedError

if TYPE_CHECKING:  # the core imports graphnet.distributed; codegen imports the core
    from codegen.loopir import LoopProgram

_CONSTANT = re.compile(r"[^\s(),\[\]]+(?=:(?:float|int|uint|bool))")

PARTS = ("feeds and variables (names, shapes, dtypes)", "graph", "constants (hyper-parameters such as the "
         "optimizer's betas and eps, loss weights)")


class MismatchError(DistributedError, ValueError):
    """The ranks compiled different steps."""


def program_parts(lp: LoopProgram) -> dict[str, str]:
    """The three texts compared: non-temporary buffers, kernels with constants masked, the constants."""
    kernels = "\n".join(k.to_text(sources=False) for k in lp.kernels)
    constants = _CONSTANT.findall(kernels)
    constants += [f"b{b}: {hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}"
                  for b, a in sorted(lp.storage.items()) if lp.buffers[b].kind == "constant"]
    texts = ["\n".join(str(b) for b in lp.buffers if b.kind != "temp"), _CONSTANT.sub("c", kernels),
             "\n".join(constants)]
    return dict(zip(PARTS, texts))


def check_same_program(world: Any, lp: LoopProgram) -> None:
    parts = program_parts(lp)
    mine = np.frombuffer(b"".join(hashlib.sha256(t.encode()).digest() for t in parts.values()), np.uint8)
    every = world.allgather(mine, "the other ranks to compile the same step").reshape(world.size, len(parts), 32)
    for i, (name, text) in enumerate(parts.items()):
        differ = [r for r in range(world.size) if not np.array_equal(every[r, i], every[0, i])]
        if differ:
            raise MismatchError(_message(world, name, text, differ))


def _message(world: Any, part: str, text: str, differ: list[int]) -> str:
    """Name the part and, on a rank that differs, its first line unlike rank 0's."""
    reference = world.comm.bcast(text if world.rank == 0 else None, root=0)  # every rank is here: no hang
    head = f"ranks {differ} compiled a different training step than rank 0: its {part} differ"
    if world.rank not in differ:
        return head
    ours, theirs = text.splitlines(), reference.splitlines()
    for k, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            return f"{head}; line {k + 1}: rank 0 has '{b.strip()}', rank {world.rank} has '{a.strip()}'"
    return f"{head}; rank 0 has {len(theirs)} lines, rank {world.rank} has {len(ours)}"
