"""Native reference points for `graphnet bench`, built with the system C compiler at bench time.

- `ctypes-call`: a no-op with the step's array arguments; the floor of any step called from Python.
- `c-step`: the grid's training step written by hand in plain C (native/train_step.c), one thread,
  called through ctypes like graphnet's own steps: what graphnet's generated code should approach.
- `fma-peak`: the machine's float32 FMA throughput on the allowed cores (native/fma_peak.c); its
  per-step time is the FLOPs a step must do (`GridConfig.needed_flops`: BENCHMARKS.md's count less the
  input layer's input gradient) at that rate, a time no step can beat.

A missing or failing compiler shows as a failed system in the tables, never as a failed benchmark.
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .peers import GridConfig, Peer, PeerUnavailable, grid_data, grid_params

NATIVE = Path(__file__).with_name("native")
# No -ffast-math: the float arithmetic runs as written. -fno-math-errno only drops errno for sqrt of a
# negative number (Adam's v never is), which lets the compiler vectorise sqrtf.
CFLAGS = ["-O3", "-march=native", "-fno-math-errno"]
C_STEP_MAX_FLOPS = 5e9  # wide (25.8 GFLOP) takes the plain C loops over 2 s a step: too long for a default run
FMA_CALL_SECONDS = 0.005  # one timed call of the FMA kernel lasts about this long


@dataclass
class Ceiling(Peer):
    """A reference point; one call of `step` does `work` steps' worth of the configuration's work."""

    work: float = 1.0


def compiler() -> str:
    return os.environ.get("CC", "cc")


def compile_c(source: str, flags: list[str], libraries: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Compile C source text to a shared library in a temporary directory and load it."""
    with tempfile.TemporaryDirectory(prefix="graphnet-ceiling-") as directory:
        path, library = Path(directory, "source.c"), Path(directory, "library.so")
        path.write_text(source)
        command = [compiler(), *flags, "-shared", "-fPIC", str(path), "-o", str(library), *libraries]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)
        except FileNotFoundError as e:
            raise PeerUnavailable(f"no C compiler ({compiler()} not found)") from e
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"{compiler()} {' '.join(flags)} failed: {e.stderr.strip()[:300]}") from e
        return ctypes.CDLL(str(library))  # stays mapped after the file is gone


def compiler_version() -> str:
    try:
        done = subprocess.run([compiler(), "--version"], capture_output=True, text=True)
    except FileNotFoundError:
        return "?"
    return (done.stdout.splitlines() or ["?"])[0]


def _function(library: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Any:
    """A CFUNCTYPE wrapper of an exported function: the cheapest ctypes call, as graphnet's backend makes."""
    address = ctypes.cast(getattr(library, name), ctypes.c_void_p).value
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


# ---------------------------------------------------------------------------------------------- ctypes-call

@functools.cache
def _noop_library(n_args: int) -> ctypes.CDLL:
    params = ", ".join(f"void *a{i}" for i in range(n_args))
    return compile_c(f"void noop({params}) {{}}\n", ["-O2"])


def ctypes_call(config: GridConfig) -> Ceiling:
    """A native no-op with the step's number of array arguments, called via CFUNCTYPE with cached ints."""
    n_params = 2 * (len(config.layers) - 1)
    n_args = 3 + 3 * n_params  # feeds, loss, and each parameter with its two Adam moments
    fn = _function(_noop_library(n_args), "noop", None, *[ctypes.c_void_p] * n_args)
    arrays = [np.zeros(16, np.float32) for _ in range(n_args)]
    args = [a.ctypes.data for a in arrays]

    def step():
        fn(*args)

    return Ceiling("ctypes-call", f"CPython {platform.python_version()}", "1", step,
                   f"no-op C function, {n_args} pointer arguments")


# ---------------------------------------------------------------------------------------------- c-step

class _Param(ctypes.Structure):
    _fields_ = [("value", ctypes.c_void_p), ("m", ctypes.c_void_p), ("v", ctypes.c_void_p)]


_LOSSES = {"bce_logits": "LOSS_BCE_LOGITS", "softmax_ce": "LOSS_SOFTMAX_CE", "mse": "LOSS_MSE"}


class CStep:
    """native/train_step.c compiled for one configuration, on the grid's data and initial weights.

    `params` (W1, b1, W2, b2, ...) are numpy arrays the C code updates in place; each instance loads
    its own copy of the library, since the C keeps its scratch and Adam step count in static storage.
    """

    def __init__(self, config: GridConfig, seed: int = 0):
        layers = list(zip(config.layers, config.layers[1:]))
        defines = {"LAYERS": len(layers), "BATCH": config.batch, "DIMS": ",".join(map(str, config.layers)),
                   "MAX_WIDTH": max(config.layers), "MAX_WEIGHTS": max(a * b for a, b in layers),
                   "HIDDEN_TANH": int(config.activation == "tanh"), "LOSS": _LOSSES[config.loss]}
        flags = CFLAGS + [f"-D{name}={value}" for name, value in defines.items()]
        library = compile_c((NATIVE / "train_step.c").read_text(), flags, ("-lm",))
        self.x, self.y = grid_data(config, seed)
        self.params = [a.copy() for pair in grid_params(config, seed) for a in pair]
        self.moments = [(np.zeros_like(p), np.zeros_like(p)) for p in self.params]
        self._table = (_Param * len(self.params))(*[_Param(p.ctypes.data, m.ctypes.data, v.ctypes.data)
                                                    for p, (m, v) in zip(self.params, self.moments)])
        fn = _function(library, "train_step", ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
        args = (self.x.ctypes.data, self.y.ctypes.data, ctypes.addressof(self._table))
        # One step, returning the loss: no attribute look-ups in the timed call; the unused default
        # keeps this object, and so the arrays behind the cached addresses, alive as long as `step`.
        self.step: Callable[[], float] = lambda owner=self: fn(*args)


def c_step(config: GridConfig) -> Ceiling:
    """The hand-written C step as a bench system; skipped above C_STEP_MAX_FLOPS per step."""
    if config.flops > C_STEP_MAX_FLOPS:
        raise PeerUnavailable(f"{config.flops / 1e9:.3g} GFLOP per step: the naive C loops would take "
                              f"too long (runs up to {C_STEP_MAX_FLOPS / 1e9:g} GFLOP)")
    model = CStep(config)
    return Ceiling("c-step", compiler_version(), "1", model.step,
                   f"hand-written C forward, backward and Adam (native/train_step.c), single-threaded, sizes as "
                   f"compile-time constants, {' '.join(CFLAGS)}, called through ctypes; run up to "
                   f"{C_STEP_MAX_FLOPS / 1e9:g} GFLOP per step")


# ---------------------------------------------------------------------------------------------- fma-peak

@functools.cache
def fma_library() -> ctypes.CDLL:
    return compile_c((NATIVE / "fma_peak.c").read_text(), CFLAGS + ["-fopenmp"])


def allowed_cores() -> int:
    """The cores this process may run on: the bench worker pins it to its thread setting's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class FmaPeak:
    """Runs `iterations` x chains vector FMAs on each of `threads` OpenMP threads per call."""

    def __init__(self, iterations: int, threads: int):
        library = fma_library()
        self.lanes, self.chains = library.fma_lanes(), library.fma_chains()
        self.iterations, self.threads = iterations, threads
        self.flops = 2 * self.lanes * self.chains * iterations * threads
        run = _function(library, "fma_run", ctypes.c_float, ctypes.c_long, ctypes.c_int)
        self.run = lambda: run(iterations, threads)

    def seconds(self) -> float:
        start = time.perf_counter()
        self.run()
        return time.perf_counter() - start

    def gflops(self) -> float:
        """The throughput of one call."""
        return self.flops / self.seconds() / 1e9

    @classmethod
    def calibrated(cls, threads: int, seconds: float = FMA_CALL_SECONDS) -> "FmaPeak":
        """A kernel whose call lasts about `seconds`: sized on one thread (doubled until its quickest of
        three calls lasts that long), so that neither the call's overhead nor, on a loaded machine, the
        wait for a busy core's time slice at the threads' join decides the size."""
        kernel = cls(1 << 12, 1)
        while min(kernel.seconds() for _ in range(3)) < seconds:
            kernel = cls(2 * kernel.iterations, 1)
        return cls(kernel.iterations, threads)


def fma_peak(config: GridConfig) -> Ceiling:
    """The FMA kernel as a bench system: one call does as many FLOPs as `work` steps of the configuration.

    The bench divides the timed call by `work`, so the per-step time is the step's FLOPs at peak rate.
    """
    kernel = FmaPeak.calibrated(allowed_cores())
    isa = "AVX-512" if kernel.lanes == 16 else "AVX2"
    return Ceiling("fma-peak", compiler_version(), str(kernel.threads), kernel.run,
                   f"{kernel.chains} chains of {isa} FMAs per thread on registers ({' '.join(CFLAGS)} -fopenmp), "
                   "one OpenMP thread per allowed core; per-step time = the FLOPs a step must do (BENCHMARKS.md's "
                   "count less the input layer's input gradient) / this peak",
                   kernel.flops / config.needed_flops)
