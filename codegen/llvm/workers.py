"""Compile jobs in forked worker processes: LLVM holds a global lock, so parallel compilation is by process.

A job is a function returning bytes (an object file) and the seconds it spent by phase. `run_jobs`
runs a list of jobs in this process and up to `workers() - 1` forked children, which take them from
one queue, longest first, each process its next job when it finishes one (so a process on a busy
core, or whose jobs took longer than their costs said, takes fewer), and send their results back
through a pipe each; a child that fails, dies or takes longer than `CHILD_TIMEOUT` seconds is a
fallback, not an error: the jobs it did not return run here. The results are the same bytes in the
same order whichever process ran each job (LLVM is deterministic).

Forking is safe only where no other thread might hold a lock the child needs (one Python thread;
libgomp's pool is not Python's and the child never enters it) and where the process allows it (Linux,
none of `FORK_AVERSE` imported: an MPI job, or JAX, whose runtime warns that a fork may deadlock it). `GRAPHNET_COMPILE_WORKERS` sets the number of processes (1: serial); the default is
the CPUs this process may run on, at most `MAX_WORKERS`.
"""
from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import sys
import threading
import time
from typing import Callable

Job = Callable[[], "tuple[bytes, dict[str, float]]"]
MAX_WORKERS = 4
FORK_AVERSE = ("mpi4py", "jax")  # modules whose presence makes compiles serial
CHILD_TIMEOUT = 300.0  # seconds; a child past it is killed and its jobs run in this process


def workers() -> int:
    """How many processes may compile at once here (1 where forking is unavailable or unsafe)."""
    text = os.environ.get("GRAPHNET_COMPILE_WORKERS", "")
    try:
        wanted = int(text) if text else None
    except ValueError:
        raise ValueError(f"GRAPHNET_COMPILE_WORKERS must be a number of processes, got {text!r}") from None
    if wanted is not None and wanted <= 1:
        return 1
    if not sys.platform.startswith("linux") or threading.active_count() != 1 \
            or any(name in sys.modules for name in FORK_AVERSE):
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_WORKERS if wanted is None else wanted, cpus))


def assign(costs: list[float], bins: int) -> list[list[int]]:
    """Job indices per process: longest first, each to the least loaded (ties: the lowest process)."""
    loads, out = [0.0] * bins, [[] for _ in range(bins)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        b = min(range(bins), key=lambda b: (loads[b], b))
        out[b].append(i)
        loads[b] += costs[i]
    return out


def run_jobs(jobs: list[Job], costs: list[float], processes: int | None = None) -> list[tuple[bytes, dict]]:
    """Each job's result, in order; the jobs run in up to `processes` (default `workers()`) processes,
    which take them from one queue in order of decreasing cost."""
    processes = min(len(jobs), workers() if processes is None else processes)
    if processes <= 1:
        return [job() for job in jobs]
    queue = _queue(sorted(range(len(jobs)), key=lambda i: (-costs[i], i)))
    results: list = [None] * len(jobs)
    children: list[_Child] = []
    try:
        for _ in range(processes - 1):
            children.append(_fork(jobs, queue))
        while (i := _take(queue)) is not None:
            results[i] = jobs[i]()
            for child in children:
                child.drain()
        for child in children:
            for i, result in child.collect().items():
                results[i] = result
        children = []
        for i in range(len(jobs)):  # those a failed child took
            if results[i] is None:
                results[i] = jobs[i]()
    finally:
        os.close(queue)
        for child in children:  # an exception here: no child outlives the call
            _reap(child.pid, child.fd, kill=True)
    return results


_INDEX = struct.Struct("<I")
_RECORD = struct.Struct("<IQQ")  # job index, object bytes, timing bytes
_PIPE_BYTES = 1 << 20  # a child's results pipe holds this much, so a child rarely waits for the parent to read
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _queue(order: list[int]) -> int:
    """A pipe's read end holding the job indices in `order`, its write end closed: every process that
    reads a record takes that job, and an empty queue reads as its end."""
    read, write = os.pipe()
    try:
        fcntl.fcntl(write, _F_SETPIPE_SZ, max(4096, _INDEX.size * len(order)))
    except OSError:
        pass  # the default size (64 KiB) holds 16384 jobs
    os.write(write, b"".join(_INDEX.pack(i) for i in order))
    os.close(write)
    return read


def _take(queue: int) -> int | None:
    """The next job's index from the queue, or None when it is empty (a pipe read of one record of
    a few bytes is not split between readers)."""
    data = os.read(queue, _INDEX.size)
    return _INDEX.unpack(data)[0] if len(data) == _INDEX.size else None


class _Child:
    """A forked worker: its pid and results pipe, and what the parent has read of it so far."""

    def __init__(self, pid: int, fd: int):
        self.pid, self.fd, self.chunks, self.closed = pid, fd, [], False

    def drain(self) -> None:
        """Read what the child has written so far without waiting."""
        while not self.closed and select.select([self.fd], [], [], 0)[0]:
            if not self._read():
                break

    def _read(self) -> bool:
        chunk = os.read(self.fd, 1 << 20)
        if chunk:
            self.chunks.append(chunk)
        else:
            self.closed = True
        return bool(chunk)

    def collect(self) -> dict[int, tuple[bytes, dict]]:
        """The child's results by job index once it has exited; none where it failed or timed out (the
        jobs it took then run in the parent)."""
        deadline = time.monotonic() + CHILD_TIMEOUT
        try:
            while not self.closed:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    _reap(self.pid, self.fd, kill=True)
                    return {}
                self._read()
        except OSError:
            _reap(self.pid, self.fd, kill=True)
            return {}
        if _reap(self.pid, self.fd) != 0:
            return {}
        return _decode(b"".join(self.chunks))


def _fork(jobs: list[Job], queue: int) -> _Child:
    read, write = os.pipe()
    try:
        fcntl.fcntl(write, _F_SETPIPE_SZ, _PIPE_BYTES)
    except OSError:
        pass  # a smaller pipe: the child waits for the parent to read, nothing else changes
    pid = os.fork()
    if pid == 0:  # the child: jobs from the queue until it is empty, each result written; no exit handlers
        status = 1
        try:
            os.close(read)
            with os.fdopen(write, "wb", buffering=0) as out:
                while (i := _take(queue)) is not None:
                    data, seconds = jobs[i]()
                    timing = ",".join(f"{k}={v!r}" for k, v in seconds.items()).encode()
                    out.write(_RECORD.pack(i, len(data), len(timing)) + data + timing)
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    return _Child(pid, read)


def _decode(data: bytes) -> dict[int, tuple[bytes, dict]]:
    """The records a child wrote, by job index; none where the data is not whole records."""
    out, at = {}, 0
    try:
        while at < len(data):
            index, size, tsize = _RECORD.unpack_from(data, at)
            at += _RECORD.size
            obj, timing = data[at:at + size], data[at + size:at + size + tsize].decode()
            at += size + tsize
            if at > len(data):
                return {}
            out[index] = (obj, {k: float(v) for k, v in (kv.split("=") for kv in timing.split(",") if kv)})
    except (struct.error, ValueError, UnicodeDecodeError):
        return {}
    return out


def _reap(pid: int, fd: int, kill: bool = False) -> int:
    """Close the pipe and wait for the child (killed first if `kill`); its exit status."""
    try:
        os.close(fd)
    except OSError:
        pass
    if kill:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return -1
    return os.waitstatus_to_exitcode(status)
