"""`init()`: join the MPI job and install the hooks that make training data-parallel (world.py lists
them), with the native runtime the LLVM step calls (native.py) and the same-step check (digest.py)."""
from __future__ import annotations

import sys
from typing import Any

from ..ops import collective
from ..optim import base
from . import digest, native
from .world import DEFAULT_TIMEOUT, World, is_initialized, join, world as joined


class NativeRuntime:
    """codegen.collectives.Runtime for the LLVM backend: the C runtime, loaded on first use."""

    def __init__(self, world: World):
        self.world, self.library = world, None

    def prepare(self, lp: Any) -> None:
        if self.library is None:
            self.library = native.load(self.world)
        digest.check_same_program(self.world, lp)

    def waited_seconds(self) -> float:
        """Time the native step has spent waiting for allreduces, in this process so far."""
        return 0.0 if self.library is None else self.library.graphnet_collectives_waited()


def init(timeout: float | None = None) -> World:
    """Join the MPI job this process was started in (`mpirun -n N python script.py`, or any launcher
    Open MPI supports; a process started alone is a world of one) and make training data-parallel.
    Call it before building the model's optimizer. Returns the world; a second call returns it too."""
    if is_initialized():
        return joined()
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("graphnet.distributed needs mpi4py and an MPI library: pip install 'graphnet[mpi]' "
                          "(mpi4py and the Open MPI wheel)") from e
    from codegen import collectives  # (here: every first fit imports this package, and needs no compiler)
    world = World(MPI.COMM_WORLD.Dup(), DEFAULT_TIMEOUT if timeout is None else float(timeout))
    base.GRADIENT_REDUCTION = world.reduce_gradients
    collective.HOST_ALLREDUCE = lambda x: world.allreduce(x, "an allreduce in the numpy step")
    collectives.RUNTIME = NativeRuntime(world)
    sys.excepthook = world.excepthook
    join(world)
    return world
