"""Compile jobs in forked worker processes: LLVM holds a global lock, so parallel compilation is by process.

A job is a function returning bytes (an object file) and the seconds it spent by phase. `run_jobs`
splits a list of jobs over this process and up to `workers() - 1` forked children (longest first,
each to the least loaded), which send their results back through a pipe; a child that fails, dies
or takes longer than `CHILD_TIMEOUT` seconds is a fallback, not an error: its jobs run here. The
results are the same bytes in the same order whichever process ran each job (LLVM is deterministic).

Forking is safe only where no other thread might hold a lock the child needs (one Python thread;
libgomp's pool is not Python's and the child never enters it) and where the process allows it (Linux,
none of `FORK_AVERSE` imported: an MPI job, or JAX, whose runtime warns that a fork may deadlock it). `GRAPHNET_COMPILE_WORKERS` sets the number of processes (1: serial); the default is
the CPUs this process may run on, at most `MAX_WORKERS`.
"""
from __future__ import annotations

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
    """Each job's result, in order; the jobs run in up to `processes` (default `workers()`) processes."""
    processes = min(len(jobs), workers() if processes is None else processes)
    if processes <= 1:
        return [job() for job in jobs]
    groups = [g for g in assign(costs, processes) if g]
    results: list = [None] * len(jobs)
    children = []
    try:
        for group in groups[1:]:
            children.append((_fork(jobs, group), group))
        for i in groups[0]:
            results[i] = jobs[i]()
        for (pid, fd), group in children:
            received = _collect(pid, fd, len(group))
            for i, result in zip(group, received or [job() for job in (jobs[i] for i in group)]):
                results[i] = result
        children = []
    finally:
        for (pid, fd), _ in children:  # an exception here: no child outlives the call
            _reap(pid, fd, kill=True)
    return results


def _fork(jobs: list[Job], group: list[int]) -> tuple[int, int]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run the group, write its results, exit without running Python's exit handlers
        status = 1
        try:
            os.close(read)
            parts = []
            for i in group:
                data, seconds = jobs[i]()
                timing = ",".join(f"{k}={v!r}" for k, v in seconds.items()).encode()
                parts += [struct.pack("<QQ", len(data), len(timing)), data, timing]
            with os.fdopen(write, "wb") as f:
                f.write(b"".join(parts))
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    return pid, read


def _collect(pid: int, fd: int, count: int) -> list[tuple[bytes, dict]] | None:
    """The child's results, or None where it failed or timed out (its jobs then run here)."""
    chunks, deadline = [], time.monotonic() + CHILD_TIMEOUT
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                _reap(pid, fd, kill=True)
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        _reap(pid, fd, kill=True)
        return None
    if _reap(pid, fd) != 0:
        return None
    return _decode(b"".join(chunks), count)


def _decode(data: bytes, count: int) -> list[tuple[bytes, dict]] | None:
    out, at = [], 0
    try:
        for _ in range(count):
            size, tsize = struct.unpack_from("<QQ", data, at)
            at += 16
            obj, timing = data[at:at + size], data[at + size:at + size + tsize].decode()
            at += size + tsize
            if len(obj) != size:
                return None
            seconds = {k: float(v) for k, v in (kv.split("=") for kv in timing.split(",") if kv)}
            out.append((obj, seconds))
    except (struct.error, ValueError, UnicodeDecodeError):
        return None
    return out if at == len(data) else None


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
