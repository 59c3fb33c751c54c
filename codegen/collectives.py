"""Collectives in the loop IR: placing and bucketing allreduce calls, and the runtime that runs them.

Lowering emits one blocking `allreduce` call kernel per allreduce node (a gradient, in data-parallel
training). `overlap_collectives` rewrites them as buckets, as PyTorch DDP does: gradients in the
order the backward pass produces them, grouped up to `bucket_bytes`; each bucket starts right after
the kernel producing its last gradient and is waited for right before the first kernel reading a
reduced value (the fused optimizer update), so the kernels in between overlap the communication.
To make that overlap possible and the reduction cheap, the pass also
- reduces in place: a gradient that only its allreduce reads is written by its kernel straight into
  the allreduce's result (no copy; the 1/N of the average stays folded into the update);
- orders the kernels after the last gradient by the bucket they wait for (the updates of the first
  buckets run while the last ones are still in flight), as far as their buffers allow;
- calls `allreduce_progress` after every kernel that runs while a bucket is in flight (`PROGRESS`):
  MPI moves a message only inside MPI calls, and kernels make none.
Every rank runs the same program, so every rank issues the same collectives in the same order.

The runtime (`RUNTIME`, installed by `graphnet.distributed.init`) provides the native symbols the
rendered calls use and checks, when a program is compiled, that every rank compiled the same one.
"""
from __future__ import annotations

import dataclasses
import heapq
from typing import Protocol

import numpy as np

from .loop_passes import LoopPass, add_buffer, rewrite_kernel
from .loopir import Collective, Expr, Kernel, Load, LoadAt, LoopProgram

BUCKET_BYTES = 1 << 20  # see graphnet/bench/micro/distributed.py for the measurement behind it
REQUEST_BYTES = 64  # room for the runtime's handle of a bucket in flight
PROGRESS = True  # progress calls between the kernels while a bucket is in flight (the benchmark measures both)


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


def overlap_collectives(bucket_bytes: int | None = None) -> LoopPass:
    """The loop pass placing each allreduce's start and wait, in buckets of up to `bucket_bytes`
    (None: `BUCKET_BYTES`), reducing in place, ordering the updates and calling for progress (see
    the module's text)."""
    limit = BUCKET_BYTES if bucket_bytes is None else bucket_bytes

    def overlap_collectives(lp: LoopProgram) -> LoopProgram:
        if not any(k.call is not None and k.call.op == "allreduce" for k in lp.kernels):
            return lp
        for k in lp.kernels:
            if k.call is not None and k.call.op == "allreduce":
                _reduce_in_place(lp, k)
        kernels, at = [], {}  # the other kernels; each call's position among them, where lowering put it
        for k in lp.kernels:
            if k.call is not None and k.call.op == "allreduce":
                at[k.call] = len(kernels)
            else:
                kernels.append(k)
        calls = list(at)
        ready = {c: _ready(kernels[:at[c]], c) for c in calls}
        needed = {c: _needed(kernels, c) for c in calls}
        buckets = _buckets(lp, sorted(calls, key=lambda c: ready[c]), ready, needed, limit)
        last = max(ready.values())  # the kernels from here on produce no gradient: order them by bucket
        kernels = kernels[:last] + _in_bucket_order(kernels[last:], buckets)
        starts: dict[int, list[Kernel]] = {}
        waits: dict[int, list[Kernel]] = {}
        for bucket in buckets:
            start, wait = _bucket_calls(lp, bucket)
            starts.setdefault(max(ready[c] for c in bucket), []).append(start)
            waits.setdefault(min(_needed(kernels, c) for c in bucket), []).append(wait)
        placed = []
        for i in range(len(kernels) + 1):
            placed += starts.get(i, []) + waits.get(i, [])
            placed += kernels[i:i + 1]
        lp.kernels = _with_progress(placed) if PROGRESS else placed
        return lp
    return overlap_collectives


def _reduce_in_place(lp: LoopProgram, k: Kernel) -> None:
    """Make the allreduce kernel `k` reduce in its result: the one kernel writing its source (a
    temporary nothing else reads, not fetched) writes the result instead."""
    (src,), (dst,) = k.call.srcs, k.call.dsts
    if lp.buffers[src].kind != "temp" or src in lp.fetches:
        return
    writers = [w for w in lp.kernels if any(s.buffer == src for s in w.stores)]
    readers = [r for r in lp.kernels if r is not k and src in r.buffers()]
    if len(writers) != 1 or any(r is not writers[0] for r in readers):
        return
    writer = writers[0]
    for s in writer.stores:
        s.buffer = dst if s.buffer == src else s.buffer

    def renamed(e: Expr) -> Expr:
        if isinstance(e, (Load, LoadAt)) and e.buffer == src:
            return dataclasses.replace(e, buffer=dst)
        return e
    rewrite_kernel(writer, renamed)
    k.call = Collective("allreduce", (dst,), (dst,))


def _in_bucket_order(tail: list[Kernel], buckets: list[list[Collective]]) -> list[Kernel]:
    """`tail` (kernels after the last gradient) with those reading an earlier bucket's results first:
    a stable list schedule by the latest bucket each reads (none: first) that keeps every pair of
    kernels touching a buffer one of them writes in its order."""
    bucket_of = {d: i for i, b in enumerate(buckets) for c in b for d in c.dsts}
    keys, after, blocking = [], [[] for _ in tail], []
    last_writer: dict[int, int] = {}
    readers: dict[int, list[int]] = {}
    for j, k in enumerate(tail):
        touched = set(k.buffers())
        written = {s.buffer for s in k.stores} | set(k.call.writes() if k.call is not None else ())
        if k.reduce is not None:
            written |= {b for b in (k.reduce.scratch, k.reduce.workspace) if b is not None}
        before = {last_writer[b] for b in touched if b in last_writer}
        before |= {i for b in written for i in readers.get(b, ())}
        before.discard(j)
        for i in before:
            after[i].append(j)
        blocking.append(len(before))
        for b in touched - written:
            readers.setdefault(b, []).append(j)
        for b in written:
            last_writer[b], readers[b] = j, []
        keys.append(max((bucket_of[b] for b in touched if b in bucket_of), default=-1))
    heap = [(keys[j], j) for j in range(len(tail)) if blocking[j] == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        _, j = heapq.heappop(heap)
        order.append(tail[j])
        for i in after[j]:
            blocking[i] -= 1
            if blocking[i] == 0:
                heapq.heappush(heap, (keys[i], i))
    assert len(order) == len(tail), "the kernels' dependencies have a cycle"
    return order


def _with_progress(kernels: list[Kernel]) -> list[Kernel]:
    """A progress call after each compute kernel that runs while a bucket is in flight (a start or
    wait next makes one itself)."""
    placed, flying = [], set()
    for i, k in enumerate(kernels):
        placed.append(k)
        if k.call is not None:
            if k.call.op == "allreduce_start":
                flying.add(k.call.request)
            elif k.call.op == "allreduce_wait":
                flying.discard(k.call.request)
            continue
        following = kernels[i + 1] if i + 1 < len(kernels) else None
        if flying and (following is None or following.call is None):
            placed.append(Kernel("allreduce_progress", (), [], call=Collective("allreduce_progress", (), ())))
    return placed


def _ready(kernels: list[Kernel], c: Collective) -> int:
    """The position right after the last of `kernels` (those before the call) writing one of `c`'s
    sources (a later one overwrites a source the call has read: an optimizer updating in place a
    variable whose value is reduced)."""
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
    collectives.c reads it): dtype code, buffer count, staging buffer (-1: none), request buffer (-1:
    none, a progress call), then (src, dst, elements) per buffer; buffers are indices into the step's
    pointer array."""
    if not call.srcs:
        return [0, 0, -1, -1]
    desc = [DTYPE_CODES[lp.buffers[call.srcs[0]].dtype], len(call.srcs),
            -1 if call.staging is None else call.staging, call.request]
    for s, d in zip(call.srcs, call.dsts):
        desc += [s, d, lp.buffers[s].elements(0)]
    return desc
