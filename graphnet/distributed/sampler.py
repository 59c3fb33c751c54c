"""Which rows each rank trains on: disjoint, contiguous shards of every global batch.

An epoch's order (a permutation of the samples, reshuffled per epoch from the model's seed, the same
on every rank) is cut into global batches of `global_batch` rows; rank r takes rows
[r*b, (r+1)*b) of each, b = global_batch / size. The last, shorter global batch of L rows is split
as evenly as possible (the first L % size ranks get one more row), so every rank runs the same
number of steps and the ranks together see every sample once; one shorter than the number of ranks
cannot give every rank a row and is left out (`shard_order` says how many rows that drops).
"""
from __future__ import annotations

import numpy as np


def shard_order(order: np.ndarray, global_batch: int, rank: int, size: int) -> tuple[np.ndarray, int]:
    """This rank's rows of the epoch, in step order, and how many rows of the epoch no rank trains on."""
    if global_batch % size:
        raise ValueError(f"batch_size {global_batch} is the global batch and must be a multiple of the number of "
                         f"ranks ({size})")
    b, n = global_batch // size, len(order)
    full = n // global_batch
    body = order[:full * global_batch].reshape(full, size, b)[:, rank].reshape(-1)
    rest = order[full * global_batch:]
    if len(rest) < size:
        return body, len(rest)
    cuts = np.cumsum([0] + [len(rest) // size + (r < len(rest) % size) for r in range(size)])
    return np.concatenate([body, rest[cuts[rank]:cuts[rank + 1]]]), 0
