"""Threads in generated code: parallel GEMM vs OpenBLAS, parallel-region cost, idle-pool interference.

    python benchmarks/parallel_bench.py [--repeats 7] [--config large wide] [--sections gemm region
                                          threshold spin]

- gemm: the three GEMMs of every dense layer of the large and wide grid configurations (X@W,
  X^T@dY, dY@W^T), generated code (codegen/llvm/parallel.py over gemm.py) on 1 and 2 threads
  against numpy's OpenBLAS on 1 and 2 threads (threadpoolctl), interleaved per shape.
- region: an empty parallel region run back to back in native code, and once after an idle gap.
- threshold: 1 vs 2 threads on small GEMMs, to place PARALLEL_MIN_FLOPS.
- spin: per libgomp wait setting (each in a fresh process, since libgomp reads it when loaded),
  OpenBLAS right after a region, generated code right after OpenBLAS, and the two alternating.

Medians of the repeats; ratios are against a peer timed in the same loop.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from codegen.llvm import parallel  # noqa: E402
from codegen.llvm.gemm import GemmSpec  # noqa: E402
from codegen.llvm.target import TargetInfo  # noqa: E402

CONFIGS = {"large": (256, [784, 1024, 1024, 10]), "wide": (512, [1024, 4096, 1024])}
SPIN_SETTINGS = {"passive": {"OMP_WAIT_POLICY": "passive"}, "spin 10k (default here)": {},
                 "spin 300k (libgomp default)": {"GOMP_SPINCOUNT": "300000"},
                 "active": {"OMP_WAIT_POLICY": "active"}}
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

    def __init__(self, trans_a: bool, trans_b: bool, m: int, n: int, k: int, threads: list[int],
                 min_flops: int = 0) -> None:
        spec = GemmSpec("float32", trans_a, trans_b, None, None, None, False)
        module = ir.Module("parallel_bench")
        for t in threads:
            parallel.emit_parallel_gemm(module, f"gemm{t}", spec, HOST, t, min_flops=min_flops)
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


def bench_gemm(configs: list[str], repeats: int) -> None:
    print("## GEMM (float32), median ms; ratio = numpy time / generated time at the same thread count\n")
    print("| config | GEMM | M x N x K | gen 1T | gen 2T | numpy 1T | numpy 2T | gen 2T/1T speedup "
          "| gen/numpy 1T | gen/numpy 2T |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in configs:
        batch, sizes = CONFIGS[name]
        for n_in, n_out in zip(sizes, sizes[1:]):
            for label, ta, tb, m, n, k in layer_gemms(batch, n_in, n_out):
                g = Gemms(ta, tb, m, n, k, [1, 2])
                t = {}
                for _ in range(repeats):  # interleave the four systems, one repeat at a time
                    for t_count in (1, 2):
                        t.setdefault(f"gen{t_count}", []).append(median_ms(g.calls[t_count], 1))
                        with threadpool_limits(t_count, user_api="blas"):
                            t.setdefault(f"np{t_count}", []).append(median_ms(g.numpy, 1))
                med = {key: statistics.median(v) for key, v in t.items()}
                print(f"| {name} | {label} | {m}x{n}x{k} | {med['gen1']:.2f} | {med['gen2']:.2f} | "
                      f"{med['np1']:.2f} | {med['np2']:.2f} | {med['gen1'] / med['gen2']:.2f} | "
                      f"{med['np1'] / med['gen1']:.2f} | {med['np2'] / med['gen2']:.2f} |", flush=True)


def region_engine(threads: int):
    """`regions(reps)`: `reps` empty parallel regions in a native loop."""
    module = ir.Module("regions")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [_I64]), "regions")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    pre = b.block
    head, body, done = (b.append_basic_block(n) for n in ("head", "body", "done"))
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(_I64)
    i.add_incoming(ir.Constant(_I64, 0), pre)
    b.cbranch(b.icmp_signed("<", i, fn.args[0]), body, done)
    b.position_at_end(body)
    parallel.emit_parallel_for(module, b, "empty", ir.Constant(_I64, threads), lambda *args: None, [], threads)
    i.add_incoming(b.add(i, ir.Constant(_I64, 1)), b.block)
    b.branch(head)
    b.position_at_end(done)
    b.ret_void()
    engine = jit(module)
    regions = _REPS(engine.get_function_address("regions"))
    regions.engine = engine  # the machine code lives as long as the engine
    return regions


def region_costs(repeats: int, threads: int = 2) -> dict[str, float]:
    """Microseconds per empty region: back to back, and the first one after a 20 ms idle gap."""
    regions = region_engine(threads)
    reps = 20_000
    hot = median_ms(lambda: regions(reps), repeats) * 1e3 / reps
    after_gap = []
    for _ in range(repeats):
        time.sleep(0.02)
        start = time.perf_counter()
        regions(1)
        after_gap.append(1e6 * (time.perf_counter() - start))
    serial = region_engine(1)
    call = median_ms(lambda: serial(1), repeats, inner=1000) * 1e3
    return {"hot_us": hot, "after_gap_us": statistics.median(after_gap) - call, "ctypes_call_us": call}


def bench_region(repeats: int) -> None:
    print("\n## Empty parallel region (2 threads)\n")
    r = region_costs(repeats)
    print(f"back to back: {r['hot_us']:.2f} us; first after a 20 ms idle gap: {r['after_gap_us']:.1f} us "
          f"(ctypes call overhead {r['ctypes_call_us']:.2f} us subtracted)")


def bench_threshold(repeats: int) -> None:
    print("\n## Threshold: 1 vs 2 threads on small GEMMs (X@W layout), median us\n")
    print("| M x N x K | MFLOP | 1T | 2T | 2T speedup |")
    print("|---|---|---|---|---|")
    for m, n, k in [(32, 128, 64), (64, 128, 64), (64, 128, 128), (64, 256, 128), (128, 256, 256),
                    (128, 256, 784), (256, 256, 256), (256, 512, 784)]:
        g = Gemms(False, False, m, n, k, [1, 2])
        one, two = [], []
        inner = max(1, int(2e7 // (2 * m * n * k)))
        for _ in range(repeats):
            one.append(median_ms(g.calls[1], 1, inner))
            two.append(median_ms(g.calls[2], 1, inner))
        t1, t2 = statistics.median(one) * 1e3, statistics.median(two) * 1e3
        print(f"| {m}x{n}x{k} | {2 * m * n * k / 1e6:.1f} | {t1:.1f} | {t2:.1f} | {t1 / t2:.2f} |", flush=True)


def spin_worker(repeats: int) -> dict[str, float]:
    """One wait setting: interference between libgomp's and OpenBLAS's idle threads (2 each)."""
    g = Gemms(False, False, 256, 1024, 784, [2])
    regions = region_engine(2)
    out = {}
    with threadpool_limits(2, user_api="blas"):
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
    print("\n## Idle pools: libgomp wait setting vs OpenBLAS (256x1024x784 sgemm, 2 threads each), median\n")
    print("| libgomp setting | numpy alone ms | numpy right after a region | gen alone ms | "
          "gen right after numpy | gen+numpy alternating ms | region back to back us | region after 20 ms gap us |")
    print("|---|---|---|---|---|---|---|---|")
    for label, env in SPIN_SETTINGS.items():
        environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        done = subprocess.run([sys.executable, __file__, "--spin-worker", "--repeats", str(repeats)],
                              env={**environ, **env}, capture_output=True, text=True, timeout=600)
        if done.returncode:
            print(f"| {label} | failed: {done.stderr.strip().splitlines()[-1:]} |")
            continue
        r = json.loads(done.stdout)
        print(f"| {label} | {r['numpy_alone_ms']:.2f} | {r['numpy_after_region_ms']:.2f} | {r['gen_alone_ms']:.2f} | "
              f"{r['gen_after_numpy_ms']:.2f} | {r['alternating_pair_ms']:.2f} | {r['hot_us']:.2f} | "
              f"{r['after_gap_us']:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--config", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--sections", nargs="+", default=["gemm", "region", "threshold", "spin"],
                    choices=["gemm", "region", "threshold", "spin"])
    ap.add_argument("--spin-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not parallel.load_runtime():
        sys.exit(parallel.runtime_failure())
    if args.spin_worker:
        print(json.dumps(spin_worker(args.repeats)))
        return
    print(f"CPU {HOST.cpu}, {len(os.sched_getaffinity(0))} usable cores, load average "
          f"{os.getloadavg()[0]:.1f}; numpy {np.__version__}; GOMP_SPINCOUNT "
          f"{os.environ.get('GOMP_SPINCOUNT')}, OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY')}\n")
    for section in args.sections:
        {"gemm": lambda: bench_gemm(args.config, args.repeats), "region": lambda: bench_region(args.repeats),
         "threshold": lambda: bench_threshold(args.repeats), "spin": lambda: bench_spin(args.repeats)}[section]()


if __name__ == "__main__":
    main()
