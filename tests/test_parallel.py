"""The parallel-for runtime: slices cover the range on grain boundaries, parallel GEMMs equal the
serial one, small work and GRAPHNET_NUM_THREADS=1 stay serial, and a missing libgomp falls back."""
from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import llvmlite.binding as llvm
import numpy as np
import pytest
from llvmlite import ir

from codegen.llvm import parallel, runtime
from codegen.llvm.gemm import GemmSpec, emit_gemm, workspace_bytes
from codegen.llvm.loops import for_range
from codegen.llvm.target import TargetInfo

HOST = TargetInfo.host()
I64, PTR = ir.IntType(64), ir.PointerType()
GEMM = ctypes.CFUNCTYPE(None, *[ctypes.c_int64] * 3, *[ctypes.c_void_p] * 4)
GUARD = 256
FILL = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)

needs_runtime = pytest.mark.skipif(not parallel.load_runtime(), reason=str(parallel.runtime_failure()))


class Jit:
    """MCJIT for one module; the runtime is loaded (by the emitters) before finalizing."""

    def __init__(self, module: ir.Module) -> None:
        module.triple = llvm.get_process_triple()
        parsed = llvm.parse_assembly(str(module))
        parsed.verify()
        self.text = str(module)
        self.engine = llvm.create_mcjit_compiler(parsed, HOST.target_machine(opt=2))
        self.engine.finalize_object()

    def function(self, name: str, signature):
        fn = signature(self.engine.get_function_address(name))
        fn.jit = self  # the machine code lives as long as the engine
        return fn


def fill_module(threads: int, grain: int, min_work: int) -> Jit:
    """`fill(total, work, out)`: out[i] = index of the slice that ran i (slices over [0, total))."""
    module = ir.Module("fill")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, I64, PTR]), "fill")
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    def body(b: ir.IRBuilder, slice_, begin, end, captured) -> None:
        with for_range(b, begin, end) as i:
            b.store(slice_, b.gep(captured[0], [i], source_etype=I64))

    parallel.emit_parallel_for(module, b, "fill", fn.args[0], body, [fn.args[2]], threads, grain=grain,
                               work=fn.args[1], min_work=min_work)
    b.ret_void()
    return Jit(module)


def run_fill(jit: Jit, total: int, work: int) -> np.ndarray:
    out = np.full(total + 8, -1, np.int64)
    jit.function("fill", FILL)(total, work, out.ctypes.data)
    assert np.all(out[total:] == -1), "wrote past the range"
    return out[:total]


@needs_runtime
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("total,grain", [(1000, 1), (1000, 64), (130, 64), (65, 16)])
def test_slices_cover_range_on_grain_boundaries(threads, total, grain):
    jit = fill_module(threads, grain, min_work=0)
    assert "GOMP_parallel" in jit.text
    owner = run_fill(jit, total, work=0)
    grains = -(-total // grain)
    used = min(threads, grains)
    assert set(owner.tolist()) == set(range(used)), "every slice runs, each on its own thread index"
    starts = np.flatnonzero(np.diff(owner)) + 1
    assert np.all(np.diff(owner) >= 0) and np.all(starts % grain == 0)


@needs_runtime
def test_small_work_and_single_grain_stay_serial():
    jit = fill_module(2, 16, min_work=1000)
    assert np.all(run_fill(jit, 512, work=999) == 0)
    assert set(run_fill(jit, 512, work=1000).tolist()) == {0, 1}
    assert np.all(run_fill(jit, 16, work=10**6) == 0), "one grain: no team"
    assert run_fill(jit, 0, work=10**6).size == 0


@needs_runtime
def test_regions_inside_a_loop_reuse_one_frame():
    """`count(reps, total, out)` runs `reps` regions from inside a loop, each adding 1 to out[0:total]."""
    module = ir.Module("count")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, I64, PTR]), "count")
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    def body(b: ir.IRBuilder, slice_, begin, end, captured) -> None:
        with for_range(b, begin, end) as i:
            cell = b.gep(captured[0], [i], source_etype=I64)
            b.store(b.add(b.load(cell, typ=I64), ir.Constant(I64, 1)), cell)

    with for_range(b, 0, fn.args[0], name="rep"):
        parallel.emit_parallel_for(module, b, "count", fn.args[1], body, [fn.args[2]], 2, grain=8)
    b.ret_void()
    jit = Jit(module)
    assert jit.text.count("alloca") == 1 and "entry:\n  %\"parallel_frame\" = alloca" in jit.text
    out = np.zeros(1000, np.int64)
    jit.function("count", ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p))(
        50, 1000, out.ctypes.data)
    assert np.all(out == 50)


def chunk_module(threads: int, grain: int, chunks: int, min_chunk: int) -> Jit:
    """`chunk(total, out, seen)`: out[i] = the slice (thread) that ran i, seen[i] += 1, and seen[total + s]
    counts the pieces thread s ran, over [0, total) in chunks the threads claim."""
    module = ir.Module("chunk")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, PTR, PTR]), "chunk")
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    def body(b: ir.IRBuilder, slice_, begin, end, captured) -> None:
        out, seen = captured
        with for_range(b, begin, end) as i:
            b.store(slice_, b.gep(out, [i], source_etype=I64))
            cell = b.gep(seen, [i], source_etype=I64)
            b.store(b.add(b.load(cell, typ=I64), ir.Constant(I64, 1)), cell)
        pieces = b.gep(seen, [b.add(b.load(b.gep(seen, [ir.Constant(I64, -1)], source_etype=I64), typ=I64), slice_)],
                       source_etype=I64)
        b.atomic_rmw("add", pieces, ir.Constant(I64, 1), "monotonic")

    parallel.emit_parallel_for(module, b, "chunk", fn.args[0], body, [fn.args[1], fn.args[2]], threads,
                               grain=grain, chunks=chunks, min_chunk=min_chunk)
    b.ret_void()
    return Jit(module)


def run_chunks(jit: Jit, total: int, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(owner of each index, times each index ran, pieces each thread ran)."""
    out = np.full(total, -1, np.int64)
    seen = np.zeros(1 + total + threads + 8, np.int64)
    seen[0] = total  # seen[-1] as the body reads it: where the per-thread piece counts start
    jit.function("chunk", ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p))(
        total, out.ctypes.data, seen[1:].ctypes.data)
    assert np.all(seen[1 + total + threads:] == 0), "wrote past the range"
    return out, seen[1:1 + total], seen[1 + total:1 + total + threads]


@needs_runtime
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("total,grain", [(1000, 1), (1000, 14), (130, 64), (65, 16), (1, 1)])
def test_chunks_cover_range_once_on_grain_boundaries(threads, total, grain):
    """Every index runs exactly once, pieces start on grain multiples, each on a thread of the team."""
    jit = chunk_module(threads, grain, chunks=4, min_chunk=1)
    assert "GOMP_parallel" in jit.text and "atomicrmw add" in jit.text
    owner, seen, pieces = run_chunks(jit, total, threads)
    assert np.all(seen == 1) and set(owner.tolist()) <= set(range(threads))
    grains = -(-total // grain)
    team = min(threads, grains)
    share, size = -(-grains // team), -(-grains // (team * 4))
    lengths = [min(share, grains - t * share) for t in range(team)]
    assert pieces.sum() == sum(-(-n // size) for n in lengths), "each share cut into chunks of `size` grains"
    starts = np.flatnonzero(np.diff(owner)) + 1
    assert np.all(starts % grain == 0)


@needs_runtime
def test_chunks_hold_min_chunk_or_a_thread_share():
    """A chunk holds at least min_chunk indices, unless that exceeds a thread's even share (a short
    range then splits as the static slices do, one piece per thread)."""
    jit = chunk_module(2, 8, chunks=8, min_chunk=200)
    _, seen, pieces = run_chunks(jit, 2000, 2)
    assert np.all(seen == 1) and pieces.sum() == 10, "chunks of 25 grains (200), not of 2000 / 16"
    _, seen, pieces = run_chunks(jit, 160, 2)
    assert np.all(seen == 1) and pieces.sum() == 2, "a thread's share (80) below min_chunk: two pieces"


def test_chunks_refuse_a_body_meeting_a_barrier():
    module = ir.Module("bad")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64]), "bad")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    with pytest.raises(ValueError, match="barrier"):
        parallel.emit_parallel_for(module, b, "bad", fn.args[0], lambda *a: None, [], 2, every_thread=True, chunks=2)


def gemm_module(spec: GemmSpec, threads: int) -> Jit:
    """`serial` and `parallel` (a team at every size: min_flops=0) versions of one GEMM."""
    module = ir.Module("gemm")
    emit_gemm(module, "serial", spec, HOST)
    parallel.emit_parallel_gemm(module, "parallel", spec, HOST, threads, min_flops=0)
    return Jit(module)


def aligned_workspace(nbytes: int) -> tuple[np.ndarray, int]:
    """A 64-byte aligned workspace followed by GUARD bytes of 0xAB (the bytes after `nbytes`)."""
    raw = np.full(nbytes + 64 + GUARD, 0xAB, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + nbytes + GUARD], raw.ctypes.data + start


def compare(jit: Jit, spec: GemmSpec, m: int, n: int, k: int, threads: int) -> None:
    rng = np.random.default_rng(m * 7919 + n * 31 + k)
    a = rng.standard_normal((k, m) if spec.trans_a else (m, k)).astype(spec.dtype)
    b = rng.standard_normal((n, k) if spec.trans_b else (k, n)).astype(spec.dtype)
    c0 = rng.standard_normal((m, n)).astype(spec.dtype)  # noise the GEMM overwrites
    results = []
    for name, ws_bytes in (("serial", workspace_bytes(spec, HOST)),
                           ("parallel", parallel.parallel_workspace_bytes(spec, HOST, threads))):
        c = c0.copy()
        raw, ws = aligned_workspace(ws_bytes)
        jit.function(name, GEMM)(m, n, k, a.ctypes.data, b.ctypes.data, c.ctypes.data, ws)
        assert np.all(raw[ws_bytes:] == 0xAB), f"{name} wrote past its workspace"
        results.append(c)
    # the same kernel over the same K blocks: the columns of C come out bit for bit the same
    np.testing.assert_array_equal(results[1], results[0])
    op_a, op_b = (a.T if spec.trans_a else a), (b.T if spec.trans_b else b)
    expected = op_a.astype(np.float64) @ op_b
    np.testing.assert_allclose(results[0], expected, rtol=1e-3, atol=1e-3 * np.sqrt(k + 1))


@needs_runtime
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True)])
def test_parallel_gemm_equals_serial(threads, trans_a, trans_b):
    spec = GemmSpec("float32", trans_a, trans_b)
    jit = gemm_module(spec, threads)
    assert ("GOMP_parallel" in jit.text) == (threads > 1)
    for m, n, k in [(1, 1, 1), (5, 200, 3), (37, 129, 70), (64, 300, 257), (128, 1000, 16), (3, 64, 0)]:
        compare(jit, spec, m, n, k, threads)


@needs_runtime
def test_parallel_gemm_float64_with_a_static_m():
    spec = GemmSpec("float64", False, False, 13)
    compare(gemm_module(spec, 2), spec, 13, 250, 41, 2)


def test_num_threads_env(monkeypatch):
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "1")
    assert parallel.num_threads() == 1
    spec = GemmSpec("float32", False, False)
    jit = gemm_module(spec, parallel.num_threads())
    assert "GOMP" not in jit.text and "omp_get" not in jit.text
    compare(jit, spec, 40, 300, 50, 1)
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "3")
    assert parallel.num_threads() == 3
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="GRAPHNET_NUM_THREADS"):
        parallel.num_threads()
    monkeypatch.delenv("GRAPHNET_NUM_THREADS")
    assert 1 <= parallel.num_threads() <= parallel.MAX_DEFAULT_THREADS


def test_missing_runtime_falls_back_to_serial(monkeypatch):
    monkeypatch.setattr(runtime, "_LIBRARY", "libgomp-that-does-not-exist.so.9")
    monkeypatch.setattr(runtime, "_runtime", None)
    monkeypatch.setattr(runtime, "_failure", None)
    assert parallel.load_runtime() is False
    assert "libgomp-that-does-not-exist" in parallel.runtime_failure()
    jit = fill_module(2, 1, min_work=0)
    assert "GOMP" not in jit.text and "omp_get" not in jit.text
    assert np.all(run_fill(jit, 100, work=0) == 0)
    spec = GemmSpec("float32", False, True)
    jit = gemm_module(spec, 2)
    assert "GOMP" not in jit.text
    compare(jit, spec, 20, 150, 30, 2)


@needs_runtime
def test_forked_child_runs_serially_and_processes_exit_cleanly():
    """libgomp's pool does not survive fork: the child must not wait for the parent's workers.
    The pool outlives the engine; exit with workers still spinning must not crash."""
    script = textwrap.dedent("""
        import os
        from tests.test_parallel import fill_module, run_fill
        jit = fill_module(2, 1, min_work=0)
        assert "GOMP_SPINCOUNT" not in os.environ, "the spin setting is for graphnet's libgomp only"
        assert set(run_fill(jit, 1000, work=0).tolist()) == {0, 1}
        pid = os.fork()
        if pid == 0:
            os._exit(0 if set(run_fill(jit, 1000, work=0).tolist()) == {0} else 3)
        assert os.waitpid(pid, 0)[1] == 0, "child failed"
        assert set(run_fill(jit, 1000, work=0).tolist()) == {0, 1}, "the parent stays parallel"
        del jit
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@needs_runtime
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reductions_into_a_register_split_over_threads_equal_numpy(dtype, monkeypatch, tmp_path):
    """Pooling maxima, row sums (blocked float32 sums inside the split loop), a libm reduction and a
    tiling max-pool gradient, every split taken (minimum work patched to one element: an empty cache,
    since the compiled-function cache's key does not hold compiler constants), at partial batches."""
    import graphnet as gn
    from codegen.llvm import schedule
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "2")
    monkeypatch.setattr(schedule, "PARALLEL_MIN_FAST", 1)
    monkeypatch.setattr(schedule, "PARALLEL_MIN_SLOW", 1)
    x = gn.placeholder("x", (None, 6, 4, 3), dtype)
    rows = gn.placeholder("rows", (None, 3000), dtype)
    pooled = gn.max_pool2d(x, 2)
    fetches = [pooled, gn.max_pool2d(x, (3, 2), strides=1), gn.sum(rows, 1), gn.max(rows, 1),
               gn.sum(gn.abs(rows) ** 1.5, 1), gn.gradients(gn.sum(pooled * pooled), x)]
    fn = gn.compile(fetches, backend="llvm")
    split = [k for k in fn.executable.lp.kernels if k.reduce is not None and k.schedule.parallel is not None]
    assert len(split) >= 4 and not fn.from_cache
    ref = gn.compile(fetches, backend="numpy")
    rng = np.random.default_rng(5)
    for batch in (7, 1, 2):
        feeds = {"x": rng.integers(-3, 4, (batch, 6, 4, 3)).astype(dtype),
                 "rows": rng.normal(size=(batch, 3000)).astype(dtype)}
        for got, want in zip(fn(**feeds), ref(**feeds)):
            np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12)
