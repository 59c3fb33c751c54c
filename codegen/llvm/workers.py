"""Compile jobs in forked worker processes: LLVM holds a global lock, so parallel compilation is by process.

A job is data: a function and its arguments, pickled to the worker that runs it (a function defined at
a module's top level, or a method of a picklable object such as `jit.Compiler`), whose result is bytes
(an object file) and the seconds it spent by phase. `Workers.start` forks the worker processes, which
run the jobs they are sent until the compiling process has none left for them. `Workers.run` sends
each idle worker the costliest job left, so a worker on a busy core, or whose jobs took longer than
their costs said, takes fewer, and returns the results in order. A worker that fails, dies or takes
longer than `CHILD_TIMEOUT` seconds for a job is a fallback, not an error: the jobs it did not return
run in the compiling process. The results are the same bytes whichever process ran each job (LLVM is
deterministic).

A process's first compile starts its workers before its graph passes (`early`): one worker is forked
and pays a process's one-time costs (imports llvmlite.binding and loads LLVM, makes the target
machine, compiles a small module once), then forks the others, which inherit what it loaded and die
with it. The warm-up runs beside the compiling process's graph passes, lowering and IR rendering,
and the compiling process itself does not load LLVM where the step becomes a shared object. A later
compile loads LLVM in the compiling process (once), and `run_jobs` forks its workers when the jobs
are ready: they inherit it, and a single job runs in the compiling process.

Forking is safe only where no other thread might hold a lock the child needs (one Python thread;
libgomp's pool is not Python's and the child never enters it) and where the process allows it (Linux,
none of `FORK_AVERSE` imported: an MPI job, or JAX, whose runtime warns that a fork may deadlock it).
`GRAPHNET_COMPILE_WORKERS` sets the number of processes (1: serial, in the compiling process); the
default is the CPUs this process may run on, at most `MAX_WORKERS`.
"""
from __future__ import annotations

import contextlib
import contextvars
import fcntl
import os
import pickle
import select
import signal
import struct
import sys
import threading
import time
from typing import Any, Callable, Iterator

Result = "tuple[bytes, dict[str, float]]"
Job = "tuple[Callable[..., Result], tuple]"  # a function and its arguments, both picklable
MAX_WORKERS = 4
FORK_AVERSE = ("mpi4py", "jax")  # modules whose presence makes compiles serial
CHILD_TIMEOUT = 300.0  # seconds a worker may take for one job; past it, it is killed and the job runs here


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


def llvm_loaded() -> bool:
    """Whether this process has loaded LLVM (then workers forked late inherit it, warm)."""
    return "llvmlite.binding" in sys.modules


_EARLY: contextvars.ContextVar["Workers | None"] = contextvars.ContextVar("graphnet_early_workers", default=None)


_started_early = False  # whether a compile in this process has started workers early


@contextlib.contextmanager
def early(warm: Callable[[], Any] | None = None) -> Iterator[None]:
    """For a process's first compile: workers started now (`Workers.start` with `warm`) for the next
    `run_jobs` in this context (the compile's, once its IR is rendered); those still running when the
    context ends are killed. For a later compile, `warm` runs in this process where LLVM is not loaded
    yet, once, so that the workers it forks when its jobs are ready inherit LLVM (a fresh warm-up for
    every compile would cost a process that compiles many small steps more than it saves). Nothing
    where LLVM is loaded here already or one process compiles."""
    global _started_early
    pool = None
    if workers() > 1 and not llvm_loaded():
        if not _started_early:
            _started_early = True
            pool = Workers.start(warm=warm)
        elif warm is not None:
            warm()
    token = _EARLY.set(pool)
    try:
        yield
    finally:
        _EARLY.reset(token)
        if pool is not None:
            pool.close()


def run_jobs(jobs: list[Job], costs: list[float], processes: int | None = None) -> list[Result]:
    """Each job's result, in order: on the workers `early` started where there are some, else on up
    to `processes` (default `workers()`) workers forked now, or in this process where that is one."""
    pool = _EARLY.get()
    if pool is not None and not pool.used:
        return pool.run(jobs, costs)
    processes = min(len(jobs), workers() if processes is None else processes)
    if processes <= 1:
        return [_call(job) for job in jobs]
    pool = Workers.start(processes)
    try:
        return pool.run(jobs, costs)
    finally:
        pool.close()


_exiting: list[int] = []  # workers that had the end of their jobs and exit on their own


def reap_exited(wait: bool = False) -> None:
    """Reap the workers that have exited on their own (with `wait`, wait for each of them)."""
    for pid in list(_exiting):
        try:
            done = os.waitpid(pid, 0 if wait else os.WNOHANG)[0]
        except ChildProcessError:
            done = pid
        if done:
            _exiting.remove(pid)


def _call(job: Job) -> Result:
    function, args = job
    return function(*args)


_HEADER = struct.Struct("<IQ")  # a job's or a result's index, then its pickle's bytes
_PIPE_BYTES = 1 << 20  # a pipe holds this much, so that neither end usually waits for the other to read
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Workers:
    """Forked worker processes, used for one list of jobs (`run`)."""

    def __init__(self, children: list[_Worker]):
        self.children, self.used, self.dropped = children, False, False

    @classmethod
    def start(cls, processes: int | None = None, warm: Callable[[], Any] | None = None) -> "Workers":
        """`processes` (default `workers()`) workers. With `warm`, one is forked now, runs `warm` and
        then forks the others, which inherit what it loaded (one warm-up for all, its CPU time spent
        once); without, each is forked now from this process."""
        reap_exited()
        pipes = [_Pipes() for _ in range(workers() if processes is None else processes)]
        if warm is not None:
            first = _fork(pipes[0], pipes[1:], warm)
            return cls([first] + [_Worker(None, p) for p in pipes[1:]])
        return cls([_fork(p, [q for q in pipes if q is not p]) for p in pipes])  # (closed ends: -1)

    def run(self, jobs: list[Job], costs: list[float]) -> list[Result]:
        """Each job's result, in order; the workers take the costliest job left each time they are idle,
        and a job a worker did not return runs in this process at once (so its exception, if it raises
        here too, is raised without waiting for the other workers)."""
        self.used = True
        order = sorted(range(len(jobs)), key=lambda i: (-costs[i], i))
        results: list = [None] * len(jobs)
        busy: dict[_Worker, int] = {}

        def here(i: int) -> None:  # a job a worker did not return
            results[i] = _call(jobs[i])

        def dispatch(child: _Worker) -> None:  # its next job, or the end of its jobs
            if not order:
                return child.finish()
            i = order.pop(0)
            if child.send(i, pickle.dumps(jobs[i], protocol=pickle.HIGHEST_PROTOCOL)):
                busy[child] = i
            else:
                self._drop(child)
                here(i)

        try:
            for child in list(self.children):
                dispatch(child)
            while busy:
                deadline = min(child.sent for child in busy) + CHILD_TIMEOUT
                ready = select.select([child.results for child in busy], [], [], max(0.0, deadline - time.monotonic()))[0]
                if not ready:  # the oldest job's worker is past its time
                    late = min(busy, key=lambda child: child.sent)
                    self._drop(late)
                    here(busy.pop(late))
                    continue
                for child in [c for c in busy if c.results in ready]:
                    done = child.receive()
                    if done is None:  # it died or sent what is not a result
                        self._drop(child)
                        here(busy.pop(child))
                    elif done:
                        results[busy.pop(child)] = done[1]
                        dispatch(child)
            for i in sorted(order):  # no worker left to run them
                here(i)
            if not self.dropped:  # each has had the end of its jobs: it exits (a warm one once those it forked have)
                for child in self.children:
                    child.reap()
                self.children = []
        finally:
            self.close()
        return results

    def _drop(self, child: _Worker) -> None:
        """Kill a worker that failed (one a worker forked dies with that one: all are killed at the end)."""
        child.reap(kill=True)
        self.children.remove(child)
        self.dropped = True

    def close(self) -> None:
        """Kill and reap the workers still running (the workers a worker forked die with it)."""
        for child in self.children:
            child.reap(kill=True)
        self.children = []


class _Pipes:
    """A worker's two pipes: its jobs go down one, its results come up the other. Each process closes
    the ends it does not use (`close`); a closed end reads as -1."""

    def __init__(self) -> None:
        self.jobs_read, self.jobs_write = os.pipe()
        self.results_read, self.results_write = os.pipe()
        for fd in (self.jobs_write, self.results_write):
            try:
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
            except OSError:
                pass  # a smaller pipe: one end waits for the other to read, nothing else changes

    def worker_ends(self) -> tuple[int, int]:
        return self.jobs_read, self.results_write

    def parent_ends(self) -> tuple[int, int]:
        return self.jobs_write, self.results_read

    def close(self, worker: bool = True, parent: bool = True) -> None:
        """Close the worker's ends and/or the compiling process's ends, where still open here."""
        if worker:
            for fd in self.worker_ends():
                if fd >= 0:
                    os.close(fd)
            self.jobs_read = self.results_write = -1
        if parent:
            for fd in self.parent_ends():
                if fd >= 0:
                    os.close(fd)
            self.jobs_write = self.results_read = -1


class _Worker:
    """A worker as the compiling process sees it: its pid (None for one a worker forked, which dies
    with that worker), the pipe its jobs go down and the pipe its results come up."""

    def __init__(self, pid: int | None, pipes: _Pipes):
        self.pid, (self.jobs, self.results) = pid, pipes.parent_ends()
        self.buffer, self.sent = bytearray(), 0.0
        pipes.close(parent=False)

    def send(self, index: int, payload: bytes) -> bool:
        """Write a job (False where the worker is gone)."""
        data = memoryview(_HEADER.pack(index, len(payload)) + payload)
        try:
            while data:
                data = data[os.write(self.jobs, data):]
        except OSError:
            return False
        self.sent = time.monotonic()
        return True

    def finish(self) -> None:
        """No more jobs: the worker exits once it has sent its last result."""
        if self.jobs >= 0:
            os.close(self.jobs)
            self.jobs = -1

    def receive(self) -> tuple[int, Result] | tuple | None:
        """What the results pipe holds now: a whole result (its index and value), `()` where it is not
        whole yet, None where the worker has closed the pipe or sent what is not a result."""
        try:
            chunk = os.read(self.results, 1 << 20)
        except OSError:
            return None
        if not chunk:
            return None
        self.buffer += chunk
        if len(self.buffer) < _HEADER.size:
            return ()
        index, size = _HEADER.unpack_from(self.buffer)
        end = _HEADER.size + size
        if len(self.buffer) < end:
            return ()
        try:
            result = pickle.loads(self.buffer[_HEADER.size:end])
        except Exception:
            return None
        del self.buffer[:end]
        return index, result

    def reap(self, kill: bool = False) -> None:
        """Close the pipes; where the worker is this process's child, kill it and wait for it if `kill`,
        else let it exit on its own (it has its last job's end) and reap it later (`reap_exited`): a
        process that loaded LLVM takes milliseconds to tear down."""
        self.finish()
        with contextlib.suppress(OSError):
            os.close(self.results)
        if self.pid is None:
            return
        if not kill:
            _exiting.append(self.pid)
            return
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _fork(own: _Pipes, others: list[_Pipes], warm: Callable[[], Any] | None = None) -> _Worker:
    """A worker serving `own`'s pipes. Without `warm`, it closes the `others`' (the other workers': a
    worker sees the end of its jobs only when every copy of its jobs pipe's write end is closed). With
    `warm`, it runs `warm`, then forks a worker for each of `others`, which inherits what `warm` loaded
    and dies with it."""
    pid = os.fork()
    if pid == 0:  # the child: no exit handlers, no return into the parent's code
        status = 1
        try:
            own.close(worker=False)
            for pipes in others:
                pipes.close(worker=warm is None)
            if warm is not None:
                with contextlib.suppress(Exception):  # a failed warm-up is not the jobs' failure
                    warm()
                spawned = [_spawn(pipes, [own, *others]) for pipes in others]
            _serve(*own.worker_ends())
            if warm is not None:
                for child in spawned:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(child, 0)
            status = 0
        finally:
            os._exit(status)
    return _Worker(pid, own)


def _spawn(own: _Pipes, every: list[_Pipes]) -> int:
    """In a warm worker: a worker serving `own`'s worker ends, killed when the warm worker dies (`every`:
    all the workers' pipes, whose other ends it closes); its pid."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            _die_with(parent)
            for pipes in every:
                if pipes is not own:
                    pipes.close()
            _serve(*own.worker_ends())
            status = 0
        finally:
            os._exit(status)
    own.close()
    return pid


def _die_with(parent: int) -> None:
    """Ask Linux for SIGKILL when the forking process dies (PR_SET_PDEATHSIG), and exit where it already has."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def _serve(jobs: int, results: int) -> None:
    """A worker's jobs: each read, run and its result written, until the jobs pipe closes."""
    with os.fdopen(jobs, "rb") as into, os.fdopen(results, "wb") as out:
        while len(header := into.read(_HEADER.size)) == _HEADER.size:
            index, size = _HEADER.unpack(header)
            payload = into.read(size)
            if len(payload) != size:
                return
            data = pickle.dumps(_call(pickle.loads(payload)), protocol=pickle.HIGHEST_PROTOCOL)
            out.write(_HEADER.pack(index, len(data)) + data)
            out.flush()
