"""Training-step benchmark of the LLVM backend on the grid of BENCHMARKS.md (Adam).

For each configuration, interleaved in one process: median per-step time of the LLVM step, the numpy
backend's step and a hand-written numpy step; cold (empty cache) and warm (cached) compile times;
and for the tiny model the per-call overhead against bare ctypes calls of an empty native function
with the same number of array arguments (feeds only, and every array the step touches).

    python -m graphnet.bench.micro.step [tiny small medium ...] [--repeats 7]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import tempfile
import time

import llvmlite.binding as llvm
import numpy as np

from codegen.llvm.parallel import load_runtime, num_threads

from ..grid import build_grid_model
from ..peers import GRID, blas_threads, grid_data, numpy_peer


def per_step(fn, repeats: int, budget: float = 0.2) -> tuple[float, float, float]:
    """(median, min, max) seconds per call over `repeats` timed loops of about `budget` seconds."""
    fn()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < budget / 4:
        fn()
        n += 1
    loops = max(1, int(n * 4 * budget / max(time.perf_counter() - start, 1e-9) / 4))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - t) / loops)
    return statistics.median(times), min(times), max(times)


def compile_times(name: str) -> tuple[float, float]:
    """Seconds for gn.compile of the step with an empty cache, then with the cache filled."""
    with tempfile.TemporaryDirectory() as d:
        old = os.environ.get("GRAPHNET_CACHE_DIR")
        os.environ["GRAPHNET_CACHE_DIR"] = d
        try:
            t = time.perf_counter()
            build_grid_model(name)
            cold = time.perf_counter() - t
            t = time.perf_counter()
            model = build_grid_model(name)
            warm = time.perf_counter() - t
            assert model.step.executable.cache_hit
        finally:
            if old is None:
                del os.environ["GRAPHNET_CACHE_DIR"]
            else:
                os.environ["GRAPHNET_CACHE_DIR"] = old
    return cold, warm


def empty_native_function(n_args: int):
    """A ctypes function pointer to `void f(ptr, ..., ptr)` that returns at once."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    args = ", ".join(["ptr"] * n_args)
    module = llvm.parse_assembly(f"define void @f({args}) {{\n  ret void\n}}\n")
    tm = llvm.Target.from_default_triple().create_target_machine()
    engine = llvm.create_mcjit_compiler(module, tm)
    engine.finalize_object()
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * n_args)(engine.get_function_address("f"))
    return fn, engine


def bare_call(arrays: list[np.ndarray], repeats: int) -> float:
    """A bare ctypes call passing each array's data pointer (read per call, as for new arrays)."""
    fn, engine = empty_native_function(len(arrays))
    return per_step(lambda: fn(*[a.ctypes.data for a in arrays]), repeats)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=list(GRID))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    threads = num_threads() if load_runtime() else 1
    print(f"llvmlite {llvm.llvm_version_info}, host {llvm.get_host_cpu_name()}, numpy {np.__version__} "
          f"({blas_threads()}), graphnet GEMM threads {threads}")
    print(f"{'config':<8} {'llvm ms':>9} {'np-backend':>10} {'np-hand':>9} {'x hand':>7} {'GFLOP/s':>8} "
          f"{'cold s':>7} {'warm s':>7}")
    for name in args.configs:
        config = GRID[name]
        x, y = grid_data(config)
        llvm_model = build_grid_model(name, backend="llvm")
        numpy_model = build_grid_model(name, backend="numpy")
        hand = numpy_peer(config)
        runs = {"llvm": lambda: llvm_model.step(x=x, y=y), "numpy": lambda: numpy_model.step(x=x, y=y),
                "hand": hand.step}
        medians: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(3):  # interleaved rounds, so drift hits every system alike
            for key, fn in runs.items():
                medians[key].append(per_step(fn, args.repeats)[0])
        t = {k: statistics.median(v) for k, v in medians.items()}
        cold, warm = compile_times(name)
        print(f"{name:<8} {t['llvm'] * 1e3:9.3f} {t['numpy'] * 1e3:10.3f} {t['hand'] * 1e3:9.3f} "
              f"{t['hand'] / t['llvm']:7.2f} {config.flops / t['llvm'] / 1e9:8.2f} {cold:7.3f} {warm:7.3f}")
        if name == "tiny":
            backend = llvm_model.step.executable
            native = per_step(lambda: backend.step(config.batch, backend.slots_address), args.repeats)[0]
            touched = [a for a in backend.keep.values()] + [x, y]
            feeds_only = bare_call([x, y], args.repeats)
            all_arrays = bare_call(touched, args.repeats)
            print(f"  tiny per call: step {t['llvm'] * 1e6:.2f} us, of which native code {native * 1e6:.2f} us; "
                  f"bare ctypes call with 2 array args {feeds_only * 1e6:.2f} us "
                  f"(ratio {t['llvm'] / feeds_only:.2f}), with {len(touched)} array args "
                  f"{all_arrays * 1e6:.2f} us (ratio {t['llvm'] / all_arrays:.2f})")


if __name__ == "__main__":
    main()
