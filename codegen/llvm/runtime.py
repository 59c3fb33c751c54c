"""libgomp in this process: loading it, the thread count, the serial flag a forked child sets.

Apart from the emitters (`parallel.py`, which re-exports these names), so that a process that only
loads compiled code (a compiled-function cache hit) imports no llvmlite.

libgomp must be loaded with RTLD_GLOBAL before JIT code that references it is finalized: MCJIT
resolves symbols from the process's global scope and otherwise jumps to address 0 (a segfault, no
Python error). `load_runtime()` does that and is called by `parallel.emit_parallel_for`; an engine
that loads a cached object must call it itself before `finalize_object()`.

Fork: libgomp's pool does not survive fork (a child's first region waits forever for workers that
were not copied). `load_runtime` registers a fork handler that sets the process-global flag
`graphnet_parallel_serial` (an i32 every region reads, bound with `llvm.add_symbol`), so a forked
child runs every region on its calling thread.

Idle workers: after a region libgomp's workers spin GOMP_SPINCOUNT iterations of `pause` (300,000
when neither it nor OMP_WAIT_POLICY is set; 0 with OMP_WAIT_POLICY=passive), then sleep on a futex;
the calling thread spins the same way at the region's closing barrier. Both extremes cost: a long
spin holds a core that the thread it waits for (or OpenBLAS's threads, or another process) needs,
so on a machine with as many threads as cores a region after an idle gap can cost as long as the
whole spin; no spin puts every worker to sleep between the regions of one step, and waking a
sleeping thread costs more than the serial kernels between two regions. So `load_runtime` loads
libgomp with GOMP_SPINCOUNT=`SPIN_COUNT`, a spin about as long as the gaps between a step's
regions, unless the user set either variable; the setting is restored afterwards (libgomp reads it
once, when it is loaded) so that other OpenMP runtimes loaded later, such as PyTorch's, are not
affected. `graphnet/bench/micro/parallel.py` (section "spin") measures the settings.
"""
from __future__ import annotations

import ctypes
import os
import sys

SPIN_COUNT = 1000
"""GOMP_SPINCOUNT for graphnet's libgomp: spin across the gaps between a step's regions, then sleep
(the module docstring says why)."""

MAX_DEFAULT_THREADS = 8
"""Cap on the default thread count: every thread of a column-split GEMM re-packs all of A, so the
gain per thread shrinks as threads are added ($GRAPHNET_NUM_THREADS overrides it)."""

SERIAL_FLAG = "graphnet_parallel_serial"
"""The i32 every parallel region reads: nonzero in a forked child, whose regions then run on its
calling thread."""

_LIBRARY = "libgomp.so.1"
_runtime: ctypes.CDLL | None = None
_failure: str | None = None
_serial = ctypes.c_int32(0)
_flag_bound = False
serial_flags: list[ctypes.c_int32] = []  # shared objects' own copies of the flag, set with it in a forked child


def load_runtime() -> bool:
    """Load libgomp into the process's global symbol scope (once); False if it cannot be loaded.

    The reason for a failure is `runtime_failure()`; callers then emit serial code.
    """
    global _runtime, _failure
    if _runtime is not None:
        if not _flag_bound and "llvmlite.binding" in sys.modules:
            _bind_flag()
        return True
    if _failure is not None:
        return False
    default_spin = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    if default_spin:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    try:
        _runtime = ctypes.CDLL(_LIBRARY, mode=os.RTLD_GLOBAL)
    except OSError as e:
        _failure = f"{_LIBRARY} could not be loaded ({e}); generated code runs on one thread"
        return False
    finally:
        if default_spin:
            del os.environ["GOMP_SPINCOUNT"]
    os.register_at_fork(after_in_child=_run_serially)
    if "llvmlite.binding" in sys.modules:
        _bind_flag()
    return True


def _bind_flag() -> None:
    """Bind the serial flag for MCJIT engines (where LLVM is loaded: a process loading only shared
    objects, `jit.SharedLibrary`, gives each its own copy, which `serial_flags` lists)."""
    global _flag_bound
    import llvmlite.binding as llvm
    llvm.add_symbol(SERIAL_FLAG, ctypes.addressof(_serial))
    _flag_bound = True


def bind_for_jit() -> None:
    """Bind the serial flag for MCJIT where libgomp was loaded before llvmlite.binding was (jit.Library)."""
    if _runtime is not None and not _flag_bound:
        _bind_flag()


def _run_serially() -> None:
    _serial.value = 1
    for flag in serial_flags:
        flag.value = 1


def serial_flag() -> int:
    """The process's serial flag (1 in a forked child), for a shared object's own copy to start from."""
    return _serial.value


def runtime_failure() -> str | None:
    """Why `load_runtime()` failed, or None."""
    return _failure


def num_threads() -> int:
    """Threads for generated code: $GRAPHNET_NUM_THREADS, else the CPUs this process may use
    (at most MAX_DEFAULT_THREADS)."""
    env = os.environ.get("GRAPHNET_NUM_THREADS")
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"GRAPHNET_NUM_THREADS must be a positive integer, not {env!r}")
        return value
    return max(1, min(MAX_DEFAULT_THREADS, len(os.sched_getaffinity(0))))
