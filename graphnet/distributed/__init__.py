"""Data-parallel training over MPI: one compiled step per rank, gradients allreduced inside it.

    import graphnet as gn, graphnet.distributed as dist
    dist.init()                      # before building the optimizer; `mpirun -n N python train.py`
    model.compile(optimizer="adam", loss=...)
    model.fit(x, y, batch_size=256)  # 256 is the global batch: each of N ranks takes 256 / N rows

See world.py (init, hooks, faults), sampler.py (each rank's rows), fit.py (Model.fit under MPI),
digest.py (every rank compiles the same step) and codegen/collectives.py (the allreduce in the step).
"""
from .digest import MismatchError
from .runtime import init
from .sampler import set_row_offset, shard_offsets, shard_order
from .world import DistributedError, World, broadcast_variables, is_initialized, rank, size, world

__all__ = ["init", "world", "rank", "size", "is_initialized", "broadcast_variables", "shard_order", "shard_offsets",
           "set_row_offset", "World", "DistributedError", "MismatchError"]
