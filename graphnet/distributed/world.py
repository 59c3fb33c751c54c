"""The MPI world of a data-parallel job: who we are, the hooks that make training data-parallel,
host-side collectives with deadlines, and the rule that one failing rank ends the whole job.

`runtime.init()` (idempotent) duplicates MPI_COMM_WORLD (graphnet's messages never mix with the user's),
then installs:
- the gradient reduction every optimizer applies from then on (`graphnet.optim.base.GRADIENT_REDUCTION`):
  each gradient becomes sum_r(n_r g_r) / sum_r(n_r) over the ranks, n_r a rank's batch size, which is
  the gradient of the mean loss over the global batch (equal to a single process's on that batch); a
  world of one rank installs the identity, so its step is the single process's step (no calls);
- the numpy reference's allreduce (`graphnet.ops.collective.HOST_ALLREDUCE`);
- the native runtime of the LLVM step (`codegen.collectives.RUNTIME`: the C functions of
  native/collectives.c, and a check that every rank compiled the same step, see `digest.py`);
- an excepthook: an uncaught exception on any rank prints its traceback and calls MPI_Abort, so the
  other ranks do not wait for it forever. Every wait here and in the native step has a deadline
  (`timeout`, default $GRAPHNET_MPI_TIMEOUT or 300 s) after which the job is aborted with a message.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any, Sequence

import numpy as np

from .. import ops
from ..graph import Node
from ..ops import collective
from ..ops.sources import batch_size

DEFAULT_TIMEOUT = float(os.environ.get("GRAPHNET_MPI_TIMEOUT", "300"))


class DistributedError(RuntimeError):
    """A data-parallel job cannot go on (a rank is gone, or ranks disagree)."""


class World:
    """The ranks of the job (`rank`, `size`) and graphnet's communicator among them."""

    def __init__(self, comm: Any, timeout: float):
        self.comm, self.timeout = comm, timeout
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.native: Any = None  # the loaded runtime (native.py), once a native step needs it

    # ---- host-side collectives, each with a deadline ------------------------------------
    def wait(self, request: Any, what: str) -> None:
        """Wait for `request`; past the deadline, abort the job naming `what`."""
        deadline = time.monotonic() + self.timeout
        polls = 0
        while not request.Test():
            polls += 1
            if polls > 1000:
                time.sleep(0.0002)  # the first polls spin: small messages complete in microseconds
            if time.monotonic() > deadline:
                self.abort(f"rank {self.rank} waited {self.timeout:.0f} s for {what}; a peer died or stalls")

    def allreduce(self, x: np.ndarray, what: str = "an allreduce") -> np.ndarray:
        """The elementwise sum of `x` over the ranks."""
        from mpi4py import MPI
        x = np.ascontiguousarray(x)
        out = np.empty_like(x)
        self.wait(self.comm.Iallreduce(x, out, MPI.SUM), what)
        return out

    def allgather(self, x: np.ndarray, what: str) -> np.ndarray:
        """Every rank's `x` (a fixed-size array), stacked in rank order."""
        x = np.ascontiguousarray(x)
        out = np.empty((self.size,) + x.shape, x.dtype)
        self.wait(self.comm.Iallgather(x, out), what)
        return out

    def broadcast(self, x: np.ndarray, what: str, root: int = 0) -> np.ndarray:
        """Rank `root`'s `x` on every rank (same shape and dtype everywhere)."""
        buf = np.array(x, copy=True, order="C")
        self.wait(self.comm.Ibcast(buf, root=root), what)
        return buf

    def abort(self, message: str, code: int = 1) -> None:
        sys.stderr.write(f"graphnet.distributed: {message}. Aborting the job.\n")
        sys.stderr.flush()
        self.comm.Abort(code)

    # ---- what init installs ---------------------------------------------------------------
    def reduce_gradients(self, pairs: Sequence[tuple[Node, Node]]) -> list[tuple[Node, Node]]:
        """Each (gradient, parameter) with the gradient averaged over the global batch; a world of
        one rank leaves them as they are (its batch is the global batch: the step has no collectives)."""
        if self.size == 1:
            return list(pairs)
        reduced = []
        for g, p in pairs:
            n = ops.cast(batch_size(g, g.dtype), g.dtype)
            reduced.append((collective.allreduce(g * n) / collective.allreduce(n), p))
        return reduced

    def excepthook(self, kind: type, value: BaseException, tb: Any) -> None:
        traceback.print_exception(kind, value, tb)
        self.abort(f"rank {self.rank} raised {kind.__name__}: {value}")


_WORLD: World | None = None  # set by runtime.init


def join(w: World) -> None:
    """Record the world runtime.init joined (once its hooks are installed)."""
    global _WORLD
    _WORLD = w


def world() -> World:
    """The world `init()` joined; a RuntimeError before it."""
    if _WORLD is None:
        raise RuntimeError("graphnet.distributed.init() has not been called")
    return _WORLD


def is_initialized() -> bool:
    return _WORLD is not None


def rank() -> int:
    """This process's rank (0 outside an MPI world)."""
    return _WORLD.rank if _WORLD is not None else 0


def size() -> int:
    """The number of ranks (1 outside an MPI world)."""
    return _WORLD.size if _WORLD is not None else 1


def broadcast_variables(variables: Sequence[Node], root: int = 0) -> None:
    """Give every rank rank `root`'s values of `variables` (same names and shapes on every rank; in
    name order, so the ranks' lists may be in any order)."""
    w = world()
    for v in sorted(variables, key=lambda v: v.attrs["name"]):
        v.assign(w.broadcast(v.value, f"the initial value of {v.attrs['name']}", root))
