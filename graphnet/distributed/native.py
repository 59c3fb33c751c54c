"""The native runtime of data-parallel LLVM steps: native/collectives.c, compiled with mpicc against
the MPI library mpi4py loaded, cached like compiled kernels, loaded into the process and registered
with LLVM so that a step's call kernels resolve `graphnet_allreduce_start` / `_wait` / `_progress` to it."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from typing import Any

from codegen import cache

SOURCE = os.path.join(os.path.dirname(__file__), "native", "collectives.c")
BUILD_FLAGS = ("-O3", "-shared", "-fPIC", "-pthread")  # -O3: the reduction's loops vectorised
LIBRARIES = cache.DiskCache("mpi", ".so")


def progress_thread_microseconds() -> float:
    """$GRAPHNET_MPI_PROGRESS_THREAD: the runtime's progress thread advances the buckets in flight every
    that many microseconds (unset or 0: no thread; the step's progress calls alone)."""
    text = os.environ.get("GRAPHNET_MPI_PROGRESS_THREAD", "0")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"GRAPHNET_MPI_PROGRESS_THREAD must be a number of microseconds >= 0, got {text!r}")
    return value


def load(world: Any) -> ctypes.CDLL:
    """Build (or find in the cache), load and configure the runtime for `world`'s communicator."""
    import llvmlite.binding as llvm  # (here: every first fit imports this package, which needs LLVM only under MPI)
    from mpi4py import MPI

    from codegen.llvm.render import RUNTIME_CALLS
    thread = progress_thread_microseconds()
    if thread and MPI.Query_thread() != MPI.THREAD_MULTIPLE:
        raise RuntimeError("GRAPHNET_MPI_PROGRESS_THREAD needs MPI initialised with MPI_THREAD_MULTIPLE "
                           "(mpi4py's default: mpi4py.rc.thread_level = 'multiple')")
    lib = _open(_shared_object())
    lib.graphnet_collectives_configure.argtypes = [ctypes.c_ssize_t, ctypes.c_double, ctypes.c_double]
    lib.graphnet_collectives_configure.restype = ctypes.c_int
    lib.graphnet_collectives_waited.restype = ctypes.c_double
    lib.graphnet_collectives_use_mpi.argtypes = [ctypes.c_int]
    if lib.graphnet_collectives_configure(MPI._handleof(world.comm), world.timeout, thread) != 0:
        raise RuntimeError("graphnet.distributed: the MPI runtime's progress thread could not start")
    for name in RUNTIME_CALLS:
        llvm.add_symbol(f"graphnet_{name}", ctypes.cast(getattr(lib, f"graphnet_{name}"), ctypes.c_void_p).value)
    return lib


def _mpicc() -> str:
    found = shutil.which("mpicc")
    if found is None:
        raise RuntimeError("graphnet.distributed: mpicc not found, needed to build the MPI runtime of the "
                           "LLVM step: pip install 'graphnet[mpi]' (the Open MPI wheel has it)")
    return found


def _shared_object() -> bytes:
    mpicc = _mpicc()
    with open(SOURCE) as f:
        source = f.read()
    flags = subprocess.run([mpicc, "-show"], capture_output=True, text=True).stdout
    key = cache.cache_key("collectives", source, flags, " ".join(BUILD_FLAGS))
    payload = LIBRARIES.load(key)
    if payload is None:
        with tempfile.TemporaryDirectory(prefix="graphnet-mpi-") as d:
            out = os.path.join(d, "collectives.so")
            done = subprocess.run([mpicc, *BUILD_FLAGS, SOURCE, "-o", out], capture_output=True,
                                  text=True)
            if done.returncode != 0:
                raise RuntimeError(f"graphnet.distributed: mpicc failed to build {SOURCE}:\n{done.stderr}")
            with open(out, "rb") as f:
                payload = f.read()
        LIBRARIES.store(key, payload)
    return payload


def _open(payload: bytes) -> ctypes.CDLL:
    """Load a shared object from bytes (through a private temporary file, removed once loaded)."""
    with tempfile.TemporaryDirectory(prefix="graphnet-mpi-") as d:
        path = os.path.join(d, "collectives.so")
        with open(path, "wb") as f:
            f.write(payload)
        return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
