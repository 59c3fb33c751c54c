"""Model.fit under MPI (the hook `fit_shards` returns; None outside an MPI world).

Conventions (those of Keras's tf.distribute strategies): `batch_size` is the global batch, split
evenly over the ranks (sampler.py); the model's weights, optimizer state and shuffle seed come from
rank 0 when fit starts; an epoch's loss and metrics are means over every rank's samples; validation
runs on every rank over the whole validation set (the weights are the same everywhere, so are the
results); progress prints and ModelCheckpoint writes on rank 0 only; the ranks stop together when any
rank's callbacks ask to stop (EarlyStopping decides alike anyway: its inputs are the same).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

from ..callbacks import Callback, ModelCheckpoint
from .world import broadcast_variables, is_initialized, world
from .sampler import shard_offsets, shard_order

RANK0_ONLY = (ModelCheckpoint,)  # callbacks that write files: one writer per job


class FitShards:
    def __init__(self, model: Any, global_batch: int):
        self.world = world()
        self.global_batch = global_batch
        if global_batch % self.world.size:
            raise ValueError(f"fit: batch_size={global_batch} is the global batch and must be a multiple of the "
                             f"number of ranks ({self.world.size})")
        self.batch = global_batch // self.world.size
        self._warned = False
        self._share_state(model)

    def _share_state(self, model: Any) -> None:
        """Rank 0's weights, optimizer state, dropout step and shuffle seed on every rank."""
        broadcast_variables(list(model.graph.variables.values()))
        model.seed = int(self.world.broadcast(np.array(model.seed, np.int64), "the model's shuffle seed"))

    def verbose(self, verbose: int) -> int:
        return verbose if self.world.rank == 0 else 0

    def callbacks(self, callbacks: Sequence[Callback] | None) -> list[Callback]:
        keep = self.world.rank == 0
        return [cb for cb in callbacks or [] if keep or not isinstance(cb, RANK0_ONLY)]

    def local(self, order: np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
        """This rank's rows of the epoch (indices into the training set) and their number."""
        rows, dropped = shard_order(np.arange(n) if order is None else order, self.global_batch,
                                    self.world.rank, self.world.size)
        if dropped and not self._warned and self.world.rank == 0:
            warnings.warn(f"fit: the last global batch has {dropped} samples, fewer than the {self.world.size} "
                          f"ranks; each epoch leaves it out", stacklevel=3)
        self._warned = True
        return rows, len(rows)

    def row_offsets(self, n: int) -> np.ndarray:
        """Dropout's row offset for each of this rank's batches of an epoch: where its shard starts in
        the global batch (the same for every full batch; another for a short last one)."""
        return shard_offsets(n, self.global_batch, self.world.rank, self.world.size)

    def steps(self, n: int) -> int:
        """Steps per epoch (the same on every rank)."""
        return math.ceil(self.local(None, n)[1] / self.batch)

    def mean(self, keys: Sequence[str], sums: Sequence[float], seen: int) -> dict[str, float]:
        """The epoch's loss and metrics over every rank's samples."""
        total = self.world.allreduce(np.array(list(sums) + [seen], np.float64), "the epoch's metrics")
        return {k: float(s / total[-1]) for k, s in zip(keys, total[:-1])}

    def agree_to_stop(self, stop: bool) -> bool:
        return bool(self.world.allreduce(np.array([int(stop)], np.int64), "the decision to stop")[0])


def require_reduction(train: Any) -> None:
    """A training step that does not reduce its gradients would let the ranks drift apart silently."""
    if is_initialized() and world().size == 1:
        return  # one rank reduces nothing (World.reduce_gradients)
    if not any(n.op.kind == "collective" for n in train.program.nodes()):
        raise RuntimeError("fit under MPI: this model was compiled before graphnet.distributed.init(), so its "
                           "optimizer does not average gradients over the ranks; call init() before model.compile")


def fit_shards(model: Any, global_batch: int) -> FitShards | None:
    """The data-parallel plan of one fit call, or None outside an MPI world (graphnet.distributed.init)."""
    return FitShards(model, global_batch) if is_initialized() else None
