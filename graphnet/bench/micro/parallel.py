"""Threads in generated code: parallel GEMM vs OpenBLAS, parallel-region cost, idle-pool interference.

    python -m graphnet.bench.micro.parallel [--repeats 7] [--config large wide] [--sections gemm region
                                              threshold spin]

- gemm: the three GEMMs of every dense layer of the large and wide grid configurations (X@W,
  X^T@dY, dY@W^T), generated code (codegen/llvm/parallel.py over gemm.py) on 1 and 2 threads
  against numpy's OpenBLAS on 1 and 2 threads, interleaved per shape (numpy's threads set with
  threadpoolctl; without it, one process per thread count with OPENBLAS_NUM_THREADS).
- region: an empty parallel region back to back in native code, after a 50 us busy gap and after
  a 20 ms idle gap.
- threshold: 1 vs 2 threads on small GEMMs, to place PARALLEL_MIN_FLOPS.
- spin: per libgomp wait setting (each in a fresh process, since libgomp reads it when loaded),
  OpenBLAS right after a region, generated code right after OpenBLAS, and the two alternating.

Medians of the repeats; ratios are against a peer timed in the same loop.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # numpy's thread count then comes from OPENBLAS_NUM_THREADS, one process per count
    threadpool_limits = None

from codegen.llvm import parallel
from codegen.llvm.gemm import GemmSpec
from codegen.llvm.loops import for_range
from codegen.llvm.target import TargetInfo

MODULE = "graphnet.bench.micro.parallel"  # the worker processes run this module again
CONFIGS = {"large": (256, [784, 1024, 1024, 10]), "wide": (512, [1024, 4096, 1024])}
SPIN_SETTINGS = {f"GOMP_SPINCOUNT={parallel.SPIN_COUNT} (graphnet default)": {},
                 "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"}, "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
                 "300000 (libgomp default)": {"GOMP_SPINCOUNT": "300000"}, "active": {"OMP_WAIT_POLICY": "active"}}
SETTLE_S = 0.15
"""Pause before timing each system: OpenBLAS's idle threads keep yielding in a loop for about 2**28
cycles (~0.1 s) after a call, taking the cores from the system timed next."""
_GEMM = ctypes.CFUNCTYPE(None, *[ctypes.c_int64] * 3, *[ctypes.c_void_p] * 4)
_REPS = ctypes.CFUNCTYPE(None, ctypes.c_int64)
_I64 = ir.IntType(64)
HOST = TargetInfo.host()


def median_ms(fn, repeats: int, inner: int = 1) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return 1e3 * statistics.median(times)


def jit(module: ir.Module) -> llvm.ExecutionEngine:
    module.triple = llvm.get_process_triple()
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(str(module)), HOST.target_machine(opt=3))
    engine.finalize_object()
    return engine


class Gemms:
    """Generated GEMMs of one layout on 1..max(threads) threads, sharing operands and a workspace."""

    def __init__(self, trans_a: bool, trans_b: bool, m: int, n: int, k: int, threads: list[int]) -> None:
        spec = GemmSpec("float32", trans_a, trans_b)
        module = ir.Module("parallel_bench")
        for t in threads:  # min_flops=0: `t` threads at every size, so the threshold can be placed
            parallel.emit_parallel_gemm(module, f"gemm{t}", spec, HOST, t, min_flops=0)
        self.engine = jit(module)
        rng = np.random.default_rng(0)
        self.a = rng.standard_normal((k, m) if trans_a else (m, k), dtype=np.float32)
        self.b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
        self.c = np.zeros((m, n), np.float32)
        self.ws = np.zeros(parallel.parallel_workspace_bytes(spec, HOST, max(threads)) + 64, np.uint8)
        ws = (self.ws.ctypes.data + 63) // 64 * 64
        args = (m, n, k, self.a.ctypes.data, self.b.ctypes.data, self.c.ctypes.data, ws)
        self.calls = {}
        for t in threads:
            fn = _GEMM(self.engine.get_function_address(f"gemm{t}"))
            self.calls[t] = lambda fn=fn: fn(*args)
        op_a, op_b = (self.a.T if trans_a else self.a), (self.b.T if trans_b else self.b)
        self.numpy = lambda: np.matmul(op_a, op_b, out=self.c)


def layer_gemms(batch: int, n_in: int, n_out: int) -> list[tuple[str, bool, bool, int, int, int]]:
    return [("X@W", False, False, batch, n_out, n_in),
            ("X^T@dY", True, False, n_in, n_out, batch),
            ("dY@W^T", False, True, batch, n_in, n_out)]


def blas_threads(n: int):
    """OpenBLAS limited to n threads: threadpoolctl, else the OPENBLAS_NUM_THREADS this process
    was started with (main() then runs one process per thread count)."""
    if threadpool_limits is not None:
        return threadpool_limits(n, user_api="blas")
    if os.environ.get("OPENBLAS_NUM_THREADS") != str(n):
        raise RuntimeError(f"without threadpoolctl, run with OPENBLAS_NUM_THREADS={n}")
    return contextlib.nullcontext()


def bench_gemm(configs: list[str], repeats: int, threads: list[int]) -> None:
    print("## GEMM (float32), median ms; numpy/gen > 1 means the generated code is faster\n")
    heads = [h for t in threads for h in (f"gen {t}T", f"numpy {t}T", f"numpy/gen {t}T")]
    if threads == [1, 2]:
        heads.append("gen 2T/1T speedup")
    print("| config | GEMM | M x N x K | " + " | ".join(heads) + " |")
    print("|---|---|---|" + "---|" * len(heads))
    for name in configs:
        batch, sizes = CONFIGS[name]
        for n_in, n_out in zip(sizes, sizes[1:]):
            for label, ta, tb, m, n, k in layer_gemms(batch, n_in, n_out):
                g = Gemms(ta, tb, m, n, k, threads)
                times: dict[str, list[float]] = {}
                for _ in range(repeats):  # interleaved: one repeat of every system at a time
                    for t in threads:
                        time.sleep(SETTLE_S)
                        times.setdefault(f"gen{t}", []).append(median_ms(g.calls[t], 1))
                        with blas_threads(t):
                            time.sleep(SETTLE_S)
                            times.setdefault(f"np{t}", []).append(median_ms(g.numpy, 1))
                med = {key: statistics.median(v) for key, v in times.items()}
                cells = [f"{v:.2f}" for t in threads for v in (med[f"gen{t}"], med[f"np{t}"],
                                                                 med[f"np{t}"] / med[f"gen{t}"])]
                if threads == [1, 2]:
                    cells.append(f"{med['gen1'] / med['gen2']:.2f}")
                print(f"| {name} | {label} | {m}x{n}x{k} | " + " | ".join(cells) + " |", flush=True)


def region_engine(threads: int):
    """`regions(reps)`: `reps` empty parallel regions in a native loop."""
    module = ir.Module("regions")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [_I64]), "regions")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    with for_range(b, 0, fn.args[0]):
        parallel.emit_parallel_for(module, b, "empty", ir.Constant(_I64, threads), lambda *args: None, [], threads)
    b.ret_void()
    engine = jit(module)
    regions = _REPS(engine.get_function_address("regions"))
    regions.engine = engine  # the machine code lives as long as the engine
    return regions


def region_costs(repeats: int, threads: int = 2) -> dict[str, float]:
    """Microseconds per empty region: back to back in native code, and the first one after a 50 us
    busy gap (about one elementwise kernel between two GEMMs) or a 20 ms idle gap (between steps)."""
    regions = region_engine(threads)
    reps = 20_000
    out = {"hot_us": median_ms(lambda: regions(reps), repeats) * 1e3 / reps}
    serial = region_engine(1)
    call = median_ms(lambda: serial(1), repeats, inner=1000) * 1e3
    for label, gap in (("busy_50us", 50e-6), ("idle_20ms", 0.02)):
        times = []
        for _ in range(max(repeats, 15)):
            if gap < 1e-3:
                end = time.perf_counter() + gap
                while time.perf_counter() < end:
                    pass
            else:
                time.sleep(gap)
            start = time.perf_counter()
            regions(1)
            times.append(1e6 * (time.perf_counter() - start) - call)
        out[f"after_{label}_us"] = statistics.median(times)
    return out


def bench_region(repeats: int) -> None:
    print("\n## Empty parallel region (2 threads), median us (a ctypes call's overhead subtracted)\n")
    r = region_costs(repeats)
    print(f"back to back: {r['hot_us']:.2f}; after a 50 us busy gap: {r['after_busy_50us_us']:.1f}; "
          f"after a 20 ms idle gap: {r['after_idle_20ms_us']:.1f}")


def bench_threshold(repeats: int) -> None:
    print("\n## Threshold: 1 vs 2 threads on small GEMMs (X@W layout), us: median (min)\n")
    print("| M x N x K | MFLOP | 1T | 2T | 2T speedup, medians | 2T speedup, minima |")
    print("|---|---|---|---|---|---|")
    for m, n, k in [(32, 128, 64), (64, 128, 128), (64, 256, 128), (64, 256, 256), (128, 256, 128),
                    (96, 256, 256), (128, 256, 256), (128, 512, 256), (256, 512, 784)]:
        g = Gemms(False, False, m, n, k, [1, 2])
        one, two = [], []
        inner = max(1, int(2e7 // (2 * m * n * k)))
        for _ in range(repeats):
            one.append(1e3 * median_ms(g.calls[1], 1, inner))
            two.append(1e3 * median_ms(g.calls[2], 1, inner))
        t1, t2 = statistics.median(one), statistics.median(two)
        print(f"| {m}x{n}x{k} | {2 * m * n * k / 1e6:.1f} | {t1:.1f} ({min(one):.1f}) | {t2:.1f} ({min(two):.1f}) | "
              f"{t1 / t2:.2f} | {min(one) / min(two):.2f} |", flush=True)


def spin_worker(repeats: int) -> dict[str, float]:
    """One wait setting: interference between libgomp's and OpenBLAS's idle threads (2 each)."""
    g = Gemms(False, False, 256, 1024, 784, [2])
    regions = region_engine(2)
    out = {}
    with blas_threads(2):
        def after(first, second, settle: float) -> float:
            times = []
            for _ in range(repeats):
                first()
                if settle:
                    time.sleep(settle)
                start = time.perf_counter()
                second()
                times.append(time.perf_counter() - start)
            return 1e3 * statistics.median(times)

        out["numpy_alone_ms"] = after(g.numpy, g.numpy, 0.3)
        out["numpy_after_region_ms"] = after(lambda: regions(1), g.numpy, 0)
        out["gen_alone_ms"] = after(g.calls[2], g.calls[2], 0.3)
        out["gen_after_numpy_ms"] = after(g.numpy, g.calls[2], 0)
        out["alternating_pair_ms"] = median_ms(lambda: (g.calls[2](), g.numpy()), repeats)
        out.update(region_costs(repeats))
    return out


def bench_spin(repeats: int) -> None:
    print("\n## Idle pools: libgomp wait setting vs OpenBLAS (256x1024x784 sgemm, 2 threads each), medians\n")
    print("| libgomp setting | numpy alone ms | numpy right after a region ms | gen alone ms | gen right after "
          "numpy ms | gen+numpy alternating ms | region back to back us | after 50 us busy | after 20 ms idle |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, env in SPIN_SETTINGS.items():
        environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        done = subprocess.run([sys.executable, "-m", MODULE, "--spin-worker", "--repeats", str(repeats)],
                              env={**environ, "OPENBLAS_NUM_THREADS": "2", **env}, capture_output=True, text=True, timeout=600)
        if done.returncode:
            print(f"| {label} | failed: {done.stderr.strip().splitlines()[-1:]} |")
            continue
        r = json.loads(done.stdout)
        print(f"| {label} | {r['numpy_alone_ms']:.2f} | {r['numpy_after_region_ms']:.2f} | {r['gen_alone_ms']:.2f} | "
              f"{r['gen_after_numpy_ms']:.2f} | {r['alternating_pair_ms']:.2f} | {r['hot_us']:.2f} | "
              f"{r['after_busy_50us_us']:.1f} | {r['after_idle_20ms_us']:.1f} |", flush=True)


def gemm_section(configs: list[str], repeats: int) -> None:
    if threadpool_limits is not None:
        bench_gemm(configs, repeats, [1, 2])
        return
    print("(threadpoolctl not installed: one process per thread count, OPENBLAS_NUM_THREADS set)\n")
    for t in (1, 2):
        subprocess.run([sys.executable, "-m", MODULE, "--gemm-threads", str(t), "--repeats", str(repeats),
                        "--config", *configs], env={**os.environ, "OPENBLAS_NUM_THREADS": str(t)}, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--config", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--sections", nargs="+", default=["gemm", "region", "threshold", "spin"],
                    choices=["gemm", "region", "threshold", "spin"])
    ap.add_argument("--spin-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--gemm-threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not parallel.load_runtime():
        sys.exit(parallel.runtime_failure())
    if args.spin_worker:
        print(json.dumps(spin_worker(args.repeats)))
        return
    if args.gemm_threads:
        bench_gemm(args.config, args.repeats, [args.gemm_threads])
        return
    spin = {k: os.environ[k] for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY") if k in os.environ}
    print(f"CPU {HOST.cpu}, {len(os.sched_getaffinity(0))} usable cores, load average "
          f"{os.getloadavg()[0]:.1f}; numpy {np.__version__}; libgomp wait setting "
          f"{spin or f'GOMP_SPINCOUNT={parallel.SPIN_COUNT} (graphnet default)'}\n")
    for section in args.sections:
        {"gemm": lambda: gemm_section(args.config, args.repeats), "region": lambda: bench_region(args.repeats),
         "threshold": lambda: bench_threshold(args.repeats), "spin": lambda: bench_spin(args.repeats)}[section]()


if __name__ == "__main__":
    main()
