"""Generated GEMM vs numpy's matmul (OpenBLAS), one thread each, at the benchmark grid's shapes.

For every dense layer (in -> out) of the small, medium, large and wide configurations it times the
three GEMMs of a training step: X@W (batch,in)@(in,out), X^T@dY (in,batch)@(batch,out) and
dY@W^T (batch,out)@(out,in). Each runs as the LLVM backend runs it: the routine for its transposes
with runtime N and K (a static M only below gemm.SMALL_M), and a product the backend computes
transposed (`gemm_schedule.narrow_columns`) as its transpose (marked "^T" after the label). Median of
the repeats, GFLOP/s and the ratio to numpy's matmul of the same product.

    python -m graphnet.bench.micro.gemm [--repeats 7] [--dtype float32] [--config large ...]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir

from codegen.llvm.gemm import GemmSpec, emit_gemm, specialised_m, workspace_bytes
from codegen.llvm.gemm_schedule import narrow_columns
from codegen.llvm.target import TargetInfo

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # numpy's thread count then comes from OPENBLAS_NUM_THREADS, read when numpy loads
    threadpool_limits = None

CONFIGS = {
    "small": (64, [64, 128, 10]),
    "medium": (128, [784, 256, 256, 10]),
    "large": (256, [784, 1024, 1024, 10]),
    "wide": (512, [1024, 4096, 1024]),
}
_SIGNATURE = ctypes.CFUNCTYPE(None, *[ctypes.c_int64] * 3, *[ctypes.c_void_p] * 4)


def layer_gemms(batch: int, n_in: int, n_out: int) -> list[tuple[str, bool, bool, int, int, int]]:
    """(label, trans_a, trans_b, M, N, K) of the three GEMMs of one dense layer."""
    return [("X@W", False, False, batch, n_out, n_in),
            ("X^T@dY", True, False, n_in, n_out, batch),
            ("dY@W^T", False, True, batch, n_in, n_out)]


class Compiled:
    """One generated GEMM, JIT-compiled (codegen at O3 of the unoptimised IR)."""

    def __init__(self, spec: GemmSpec, target: TargetInfo) -> None:
        start = time.perf_counter()
        module = ir.Module("gemm_bench")
        module.triple = llvm.get_process_triple()
        emit_gemm(module, "gemm", spec, target)
        parsed = llvm.parse_assembly(str(module))
        self.engine = llvm.create_mcjit_compiler(parsed, target.target_machine(opt=3))
        self.engine.finalize_object()
        self.compile_ms = 1e3 * (time.perf_counter() - start)
        self.fn = _SIGNATURE(self.engine.get_function_address("gemm"))
        self.workspace = np.zeros(workspace_bytes(spec, target) // 8 + 8)
        self.ws_ptr = (self.workspace.ctypes.data + 63) // 64 * 64


def best_loop(fn, seconds: float = 0.02) -> int:
    """How many calls make one timed loop of about `seconds`."""
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    return max(1, int(seconds / once))


def time_pair(ours, theirs, repeats: int) -> tuple[list[float], list[float]]:
    """Per-call times of both, interleaved repeat by repeat so drift hits both alike."""
    loops = best_loop(theirs)
    times_ours, times_theirs = [], []
    for _ in range(repeats):
        for fn, out in ((ours, times_ours), (theirs, times_theirs)):
            start = time.perf_counter()
            for _ in range(loops):
                fn()
            out.append((time.perf_counter() - start) / loops)
    return times_ours, times_theirs


def bench_one(label: str, ta: bool, tb: bool, m: int, n: int, k: int, dtype: str, target: TargetInfo,
              repeats: int) -> dict:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    op_a, op_b = (a.T if ta else a), (b.T if tb else b)
    ref = np.empty((m, n), dtype)
    narrow = narrow_columns((m, n, k))  # the LLVM backend's rule
    if narrow:  # C^T = op(B)^T @ op(A)^T: B's storage read as the transposed product's A, and A's as its B
        label, a, b, ta, tb, m, n = label + "^T", b, a, not tb, not ta, n, m
    c = np.empty((m, n), dtype)
    compiled = Compiled(GemmSpec(dtype, ta, tb, specialised_m(m)), target)
    args = (m, n, k, a.ctypes.data, b.ctypes.data, c.ctypes.data, compiled.ws_ptr)

    def ours() -> None:
        compiled.fn(*args)

    def theirs() -> None:
        np.matmul(op_a, op_b, out=ref)

    ours()
    theirs()
    error = float(np.abs((c.T if narrow else c) - ref).max() / max(1e-30, np.abs(ref).max()))
    t_ours, t_np = time_pair(ours, theirs, repeats)
    flops = 2.0 * m * n * k
    med_ours, med_np = statistics.median(t_ours), statistics.median(t_np)
    return dict(label=label, m=m, n=n, k=k, ours=flops / med_ours / 1e9, numpy=flops / med_np / 1e9,
                ratio=med_np / med_ours, compile_ms=compiled.compile_ms, error=error,
                spread=(min(t_ours) / med_ours, max(t_ours) / med_ours))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--config", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    if threadpool_limits is None and os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        sys.exit("without threadpoolctl, run with OPENBLAS_NUM_THREADS=1")
    target = TargetInfo.host()
    print(f"host {target.cpu}, {target.vector_bits}-bit vectors, fma={target.has_fma}; "
          f"numpy {np.__version__}, 1 thread ({'threadpoolctl' if threadpool_limits else 'env'}); "
          f"{args.dtype}, median of {args.repeats}")
    print(f"{'config':7} {'gemm':8} {'M':>5} {'N':>5} {'K':>5} {'ours GF/s':>10} {'numpy GF/s':>10} "
          f"{'% numpy':>8} {'compile ms':>10} {'rel err':>8}")
    limits = threadpool_limits(1) if threadpool_limits else None
    try:
        for config in args.config:
            batch, sizes = CONFIGS[config]
            for n_in, n_out in zip(sizes, sizes[1:]):
                for gemm in layer_gemms(batch, n_in, n_out):
                    r = bench_one(*gemm, args.dtype, target, args.repeats)
                    print(f"{config:7} {r['label']:8} {r['m']:5} {r['n']:5} {r['k']:5} {r['ours']:10.1f} "
                          f"{r['numpy']:10.1f} {100 * r['ratio']:7.0f}% {r['compile_ms']:10.0f} "
                          f"{r['error']:8.1e}", flush=True)
    finally:
        if limits is not None:
            limits.restore_original_limits()


if __name__ == "__main__":
    main()
