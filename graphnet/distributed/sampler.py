"""Which rows each rank trains on: disjoint, contiguous shards of every global batch.

An epoch's order (a permutation of the samples, reshuffled per epoch from the model's seed, the same
on every rank) is cut into global batches of `global_batch` rows; rank r takes rows
[r*b, (r+1)*b) of each, b = global_batch / size. The last, shorter global batch of L rows is split
as evenly as possible (the first L % size ranks get one more row), so every rank runs the same
number of steps and the ranks together see every sample once; one shorter than the number of ranks
cannot give every rank a row and is left out (`shard_order` says how many rows that drops).

Dropout keys its masks by the global row: before a step, a rank sets the graph's row offset to
where its shard starts in the global batch (`shard_offsets`, `set_row_offset`), and draws exactly
the masks one process training on the whole global batch draws for those rows.
"""
from __future__ import annotations

import numpy as np

from ..graph import Graph, get_default_graph
from ..ops import RNG_OFFSET


def shard_order(order: np.ndarray, global_batch: int, rank: int, size: int) -> tuple[np.ndarray, int]:
    """This rank's rows of the epoch, in step order, and how many rows of the epoch no rank trains on."""
    _require_divisible(global_batch, size)
    b, n = global_batch // size, len(order)
    full = n // global_batch
    body = order[:full * global_batch].reshape(full, size, b)[:, rank].reshape(-1)
    rest = order[full * global_batch:]
    if len(rest) < size:
        return body, len(rest)
    cuts = _cuts(len(rest), size)
    return np.concatenate([body, rest[cuts[rank]:cuts[rank + 1]]]), 0


def shard_offsets(n: int, global_batch: int, rank: int, size: int) -> np.ndarray:
    """For each of this rank's batches of an n-sample epoch (as `shard_order` cuts them), the index of
    its first row in its global batch: what dropout's row offset must be for that step."""
    _require_divisible(global_batch, size)
    full, rest = divmod(n, global_batch)
    offsets = [rank * (global_batch // size)] * full
    return np.array(offsets + ([_cuts(rest, size)[rank]] if rest >= size else []), np.int64)


def set_row_offset(offset: int, graph: Graph | None = None) -> None:
    """Dropout in the next training calls draws the masks of global rows offset, offset + 1, ...: a
    rank calling its step on its shard of a global batch sets the shard's first row (`shard_offsets`;
    `Model.fit` does it). No-op for a graph without dropout."""
    variable = (graph or get_default_graph()).variables.get(RNG_OFFSET)
    if variable is not None:
        variable.assign(np.int32(offset))


def _cuts(rows: int, size: int) -> np.ndarray:
    """Where each rank's part of a global batch of `rows` rows starts (and, last, its end): as even
    as possible, the first rows % size ranks one row longer."""
    return np.cumsum([0] + [rows // size + (r < rows % size) for r in range(size)])


def _require_divisible(global_batch: int, size: int) -> None:
    if global_batch % size:
        raise ValueError(f"batch_size {global_batch} is the global batch and must be a multiple of the number of "
                         f"ranks ({size})")
