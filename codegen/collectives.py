"""Collectives in the loop IR: placing and bucketing allreduce calls, and the runtime that runs them.

Lowering emits one blocking `allreduce` call kernel per allreduce node (a gradient, in data-parallel
training). `overlap_collectives` rewrites them as buckets, as PyTorch DDP does: gradients in the
order the backward pass produces them, grouped up to `bucket_bytes`; each bucket starts right after
the kernel producing its last gradient and is waited for right before the first kernel reading a
reduced value (the fused optimizer update), so the kernels in between overlap the communication.
Every rank runs the same program, so every rank issues the same collectives in the same order.

The runtime (`RUNTIME`, installed by `graphnet.distributed.init`) provides the native symbols the
rendered calls use and checks, when a program is compiled, that every rank compiled the same one.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from .loop_passes import LoopPass, add_buffer
from .loopir import Collective, Kernel, LoopProgram

BUCKET_BYTES = 1 << 20  # see graphnet/bench/micro/distributed.py for the measurement behind it
REQUEST_BYTES = 64  # room for one MPI_Request (a pointer in Open MPI, an int in MPICH)


class Runtime(Protocol):
    def prepare(self, lp: LoopProgram) -> None:
        """Make the call kernels' symbols resolvable and check that every rank compiled `lp`."""


RUNTIME: Runtime | None = None


def uses_collectives(lp: LoopProgram) -> bool:
    return any(k.call is not None for k in lp.kernels)


def prepare_collectives(lp: LoopProgram) -> None:
    """Before a backend loads a program that communicates: the runtime must exist and agree."""
    if not uses_collectives(lp):
        return
    if RUNTIME is None:
        raise RuntimeError("this step communicates (allreduce) but no MPI world is initialised: call "
                           "graphnet.distributed.init() before compiling it")
    RUNTIME.prepare(lp)


def overlap_collectives(bucket_bytes: int = BUCKET_BYTES) -> LoopPass:
    """The loop pass placing each allreduce's start and wait, in buckets of up to `bucket_bytes`."""
    def overlap_collectives(lp: LoopProgram) -> LoopProgram:
        calls = [k.call for k in lp.kernels if k.call is not None and k.call.op == "allreduce"]
        if not calls:
            return lp
        kernels = [k for k in lp.kernels if k.call is None or k.call.op != "allreduce"]
        ready = {c: _ready(kernels, c) for c in calls}
        needed = {c: _needed(kernels, c) for c in calls}
        starts: dict[int, list[Kernel]] = {}
        waits: dict[int, list[Kernel]] = {}
        for bucket in _buckets(lp, sorted(calls, key=lambda c: ready[c]), ready, needed, bucket_bytes):
            start, wait = _bucket_calls(lp, bucket)
            starts.setdefault(max(ready[c] for c in bucket), []).append(start)
            waits.setdefault(min(needed[c] for c in bucket), []).append(wait)
        placed = []
        for i in range(len(kernels) + 1):
            placed += starts.get(i, []) + waits.get(i, [])
            placed += kernels[i:i + 1]
        lp.kernels = placed
        return lp
    return overlap_collectives


def _ready(kernels: list[Kernel], c: Collective) -> int:
    """The position right after the last kernel writing one of `c`'s sources."""
    written = [i + 1 for i, k in enumerate(kernels) if any(s.buffer in c.srcs for s in k.stores)]
    return max(written, default=0)


def _needed(kernels: list[Kernel], c: Collective) -> int:
    """The position of the first kernel reading one of `c`'s results (the end if none does)."""
    for i, k in enumerate(kernels):
        reads = {ld.buffer for ld in k.loads()} | set(k.call.reads() if k.call is not None else ())
        if reads & set(c.dsts):
            return i
    return len(kernels)


def _buckets(lp: LoopProgram, calls: list[Collective], ready: dict, needed: dict, limit: int) -> list[list]:
    """Consecutive calls of one dtype up to `limit` bytes, each bucket startable before it is needed."""
    buckets: list[list[Collective]] = []
    for c in calls:
        last = buckets[-1] if buckets else None
        if last is not None and _dtype(lp, last[0]) == _dtype(lp, c) and \
                _nbytes(lp, last) + _nbytes(lp, [c]) <= limit and \
                max(ready[x] for x in last + [c]) <= min(needed[x] for x in last + [c]):
            last.append(c)
        else:
            buckets.append([c])
    return buckets


def _dtype(lp: LoopProgram, c: Collective) -> np.dtype:
    return lp.buffers[c.srcs[0]].dtype


def _nbytes(lp: LoopProgram, calls: list[Collective]) -> int:
    return sum(lp.buffers[s].elements(0) * lp.buffers[s].dtype.itemsize for c in calls for s in c.srcs)


def _bucket_calls(lp: LoopProgram, bucket: list[Collective]) -> tuple[Kernel, Kernel]:
    srcs = tuple(s for c in bucket for s in c.srcs)
    dsts = tuple(d for c in bucket for d in c.dsts)
    dtype = _dtype(lp, bucket[0])
    staging = None
    if len(srcs) > 1:  # one message: the bucket's buffers packed one after another
        staging = add_buffer(lp, "allreduce_bucket", (sum(lp.buffers[s].elements(0) for s in srcs),), dtype)
    request = add_buffer(lp, "allreduce_request", (REQUEST_BYTES,), np.uint8)
    return tuple(Kernel(op, (), [], call=Collective(op, srcs, dsts, staging, request))
                 for op in ("allreduce_start", "allreduce_wait"))


DTYPE_CODES = {np.dtype(np.float32): 0, np.dtype(np.float64): 1}


def call_descriptor(lp: LoopProgram, call: Collective) -> list[int]:
    """The constant int64 array a rendered call passes to the runtime (graphnet/distributed/native/
    collectives.c reads it): dtype code, buffer count, staging buffer (-1: none), request buffer, then
    (src, dst, elements) per buffer; buffers are indices into the step's pointer array."""
    desc = [DTYPE_CODES[lp.buffers[call.srcs[0]].dtype], len(call.srcs),
            -1 if call.staging is None else call.staging, call.request]
    for s, d in zip(call.srcs, call.dsts):
        desc += [s, d, lp.buffers[s].elements(0)]
    return desc
