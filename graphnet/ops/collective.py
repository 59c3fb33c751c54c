"""Collective ops: values combined across the processes of a data-parallel job (graphnet.distributed).

`allreduce(x)` is the elementwise sum of `x` over every rank, the same on all of them. It is its own
adjoint (each rank's output depends on every rank's input with weight 1), so its gradient is the
allreduce of the output gradient. Native backends lower it to a collective step of the loop IR
(`Kernel.call`); the numpy reference calls `HOST_ALLREDUCE`, which `graphnet.distributed.init`
sets. Nothing folds it: its value depends on the other processes.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import ShapeError
from ..graph import Node
from .base import FLOATS, Op, apply, register

HOST_ALLREDUCE: Callable[[np.ndarray], np.ndarray] | None = None  # set by graphnet.distributed.init


@register
class AllReduce(Op):
    name = "allreduce"
    kind = "collective"

    def infer(self, inputs, attrs):
        (x,) = inputs
        if x.dtype not in FLOATS:
            raise ShapeError(f"allreduce sums float32 or float64 tensors, got {x.dtype}")
        if None in x.shape:
            raise ShapeError(f"allreduce needs a static shape (the ranks' batch sizes may differ), got {x.shape}")
        return x.shape, x.dtype

    def numpy(self, x):
        if HOST_ALLREDUCE is None:
            raise RuntimeError("allreduce: no MPI world; call graphnet.distributed.init() first")
        return HOST_ALLREDUCE(np.ascontiguousarray(x))

    def grad(self, node: Node, g: Node) -> list:
        return [allreduce(g)]


def allreduce(x: Node) -> Node:
    """The sum of `x` over every rank of the MPI world (graphnet.distributed)."""
    return apply("allreduce", [x])
