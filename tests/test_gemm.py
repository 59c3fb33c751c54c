"""The generated GEMM against a float64 numpy reference: every transpose combination, runtime
extents and a small static M, edge sizes, column ranges, and the AVX2 and scalar code paths (run
on this host through target machines with those features)."""
from __future__ import annotations

import ctypes
import itertools

import llvmlite.binding as llvm
import numpy as np
import pytest
from llvmlite import ir

from codegen.llvm.gemm import SMALL_M, Blocking, GemmSpec, default_blocking, emit_gemm, specialised_m, workspace_bytes
from codegen.llvm.target import AVX2, SCALAR, TargetInfo

HOST = TargetInfo.host()
SSE = TargetInfo.from_features("x86-64", "+sse2")
TARGETS = {"host": HOST, "avx2": AVX2, "sse": SSE, "scalar": SCALAR}
SIZES = [(1, 1, 1), (3, 17, 5), (17, 3, 63), (65, 63, 129), (129, 65, 17), (2, 130, 300), (0, 5, 3), (4, 6, 0),
         (200, 300, 260)]  # the last one packs an untransposed B (too big and read by too many row blocks
                           # to be read in place, gemm.B_IN_PLACE_MAX); the others read it in place
GUARD = 64  # elements after C and after the workspace that must stay untouched


def small_blocking(spec: GemmSpec, target: TargetInfo) -> Blocking:
    """Tiny cache blocks so that small sizes run several K, M and N blocks."""
    blk = default_blocking(spec, target)
    return Blocking(mr=blk.mr, nr=blk.nr, kc=8, mc=2 * blk.mr, nc=2 * blk.nr, pack_a=blk.pack_a)


class Jit:
    """Compile a module with a target machine matching `target`, look up functions by name."""

    def __init__(self, module: ir.Module, target: TargetInfo) -> None:
        if target.vector_bits == 512 and target != HOST:
            raise ValueError("only the host may use 512-bit vectors")
        module.triple = llvm.get_process_triple()
        parsed = llvm.parse_assembly(str(module))
        parsed.verify()
        self.engine = llvm.create_mcjit_compiler(parsed, target.target_machine(opt=3))
        self.engine.finalize_object()

    def function(self, name: str, extra: int = 0):
        signature = ctypes.CFUNCTYPE(None, *[ctypes.c_int64] * 3, *[ctypes.c_void_p] * 4,
                                     *[ctypes.c_int64] * extra)
        fn = signature(self.engine.get_function_address(name))
        fn.jit = self  # the machine code lives as long as the engine
        return fn


def operands(spec: GemmSpec, m: int, n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if spec.trans_a else (m, k)).astype(spec.dtype)
    b = rng.standard_normal((n, k) if spec.trans_b else (k, n)).astype(spec.dtype)
    c = np.full(m * n + GUARD, 7.0, spec.dtype)  # C followed by a guard
    c[: m * n] = rng.standard_normal(m * n)
    return a, b, c


def reference(spec: GemmSpec, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact-ish result and an error bound per element (float64)."""
    op_a = (a.T if spec.trans_a else a).astype(np.float64)
    op_b = (b.T if spec.trans_b else b).astype(np.float64)
    ref = op_a @ op_b
    eps = np.finfo(spec.dtype).eps
    bound = (op_a.shape[1] + 2) * eps * (np.abs(op_a) @ np.abs(op_b))
    return ref, bound + 1e-30


def call_and_check(fn, spec: GemmSpec, target: TargetInfo, m: int, n: int, k: int, blocking=None) -> np.ndarray:
    """C (filled with noise first) is overwritten with op(A) @ op(B); nothing past C or the workspace is written."""
    a, b, c = operands(spec, m, n, k)
    size = workspace_bytes(spec, target, blocking)
    ws = np.zeros(size // 8 + 8 + GUARD, np.float64)
    base = (ws.ctypes.data + 63) // 64 * 64
    fn(m, n, k, a.ctypes.data, b.ctypes.data, c.ctypes.data, base)
    result = c[: m * n].reshape(m, n)
    ref, bound = reference(spec, a, b)
    assert np.all(np.abs(result - ref) <= bound), f"max error {np.abs(result - ref).max()}"
    assert np.all(c[m * n:] == 7.0), "wrote past C"
    offset = (base - ws.ctypes.data) // 8 + -(-size // 8)
    assert not ws[offset:].any(), "wrote past the workspace"
    return result


def runtime_specs(dtype: str) -> list[GemmSpec]:
    return [GemmSpec(dtype, ta, tb) for ta, tb in itertools.product([False, True], repeat=2)]


@pytest.fixture(scope="module")
def runtime_kernels():
    """All transposes x dtype, one module per target; small cache blocks everywhere and the default
    blocking on the host too."""
    compiled = {}
    for label, target in TARGETS.items():
        module = ir.Module(label)
        entries = []
        for dtype in ("float32", "float64"):
            for i, spec in enumerate(runtime_specs(dtype)):
                for blocked in ((False, True) if target == HOST else (True,)):
                    blk = small_blocking(spec, target) if blocked else None
                    name = f"g_{dtype}_{i}_{int(blocked)}"
                    emit_gemm(module, name, spec, target, blocking=blk)
                    entries.append((name, spec, blk))
        jit = Jit(module, target)
        compiled[label] = (jit, target, [(jit.function(name), spec, blk) for name, spec, blk in entries])
    return compiled


@pytest.mark.parametrize("label", list(TARGETS))
def test_runtime_extents(runtime_kernels, label):
    _, target, entries = runtime_kernels[label]
    for fn, spec, blk in entries:
        for m, n, k in SIZES:
            call_and_check(fn, spec, target, m, n, k, blk)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_specialised_small_m(dtype):
    """A static M below SMALL_M (runtime N and K, as the backend compiles them) is split into equal
    register tiles, and every transpose gives the right result at sizes with N and K edges."""
    module = ir.Module("small_m")
    cases = []
    for i, (m, (ta, tb)) in enumerate(itertools.product([1, 5, 10, 13, 31], [(0, 0), (1, 0), (0, 1), (1, 1)])):
        spec = GemmSpec(dtype, bool(ta), bool(tb), specialised_m(m))
        emit_gemm(module, f"m{i}", spec, HOST)
        cases.append((f"m{i}", spec))
    jit = Jit(module, HOST)
    for name, spec in cases:
        for n, k in [(1, 1), (70, 33), (130, 300)]:
            call_and_check(jit.function(name), spec, HOST, spec.m, n, k)
    ten = default_blocking(GemmSpec("float32", False, False, 10), HOST)
    assert ten.mr * -(-10 // ten.mr) == 10  # no edge tile
    assert specialised_m(SMALL_M) is None and specialised_m(None) is None


def test_a_static_m_ignores_the_m_argument():
    spec = GemmSpec("float32", False, False, 9)
    module = ir.Module("ignore")
    emit_gemm(module, "g", spec, HOST)
    fn = Jit(module, HOST).function("g")
    a, b, c = operands(spec, 9, 33, 20)
    ws = np.zeros(workspace_bytes(spec, HOST) // 4 + 16, np.float32)
    fn(1, 33, 20, a.ctypes.data, b.ctypes.data, c.ctypes.data, (ws.ctypes.data + 63) // 64 * 64)
    np.testing.assert_allclose(c[: 9 * 33].reshape(9, 33), a @ b, rtol=1e-4, atol=1e-4)


def test_column_ranges_cover_the_result():
    """`columns=True` routines (one per thread in a parallel GEMM) each write only C's columns
    [begin, end); ranges past N are clipped."""
    module = ir.Module("columns")
    specs = [GemmSpec("float32", ta, tb) for ta, tb in [(False, False), (True, True)]]
    for i, spec in enumerate(specs):
        emit_gemm(module, f"p{i}", spec, HOST, columns=True)
    jit = Jit(module, HOST)
    m, n, k = 45, 70, 33
    for i, spec in enumerate(specs):
        fn = jit.function(f"p{i}", extra=2)
        a, b, c = operands(spec, m, n, k)
        ref, bound = reference(spec, a, b)
        for begin, end in [(0, 7), (7, 30), (30, n + 5)]:
            before = c[: m * n].reshape(m, n).copy()
            ws = np.zeros(workspace_bytes(spec, HOST) // 8 + 8)
            fn(m, n, k, a.ctypes.data, b.ctypes.data, c.ctypes.data, (ws.ctypes.data + 63) // 64 * 64, begin, end)
            after = c[: m * n].reshape(m, n)
            np.testing.assert_array_equal(np.delete(after, np.s_[begin:end], axis=1),
                                          np.delete(before, np.s_[begin:end], axis=1))
        assert np.all(np.abs(c[: m * n].reshape(m, n) - ref) <= bound)
        assert np.all(c[m * n:] == 7.0)


def test_target_info_from_features():
    assert TargetInfo.from_features("x", "+avx512f,+avx2,+fma").lanes("float32") == 16
    avx2 = TargetInfo.from_features("x", "+avx2,-avx512f,+fma")
    assert (avx2.lanes("float32"), avx2.lanes("float64"), avx2.has_fma) == (8, 4, True)
    assert TargetInfo.from_features("x", "+sse2,-fma").lanes("float64") == 2
    assert SCALAR.lanes("float32") == 1 and not SCALAR.has_fma
    host = llvm.get_host_cpu_features().flatten()
    assert HOST.has_fma == ("+fma" in host.split(","))


def test_workspace_shrinks_with_a_small_static_m():
    """A specialised M packs at most M rows of A; every workspace size keeps 64-byte alignment."""
    small, runtime = GemmSpec("float32", True, True, 8), GemmSpec("float32", True, True)
    assert workspace_bytes(small, HOST) < workspace_bytes(runtime, HOST)
    assert workspace_bytes(small, HOST) % 64 == 0 and workspace_bytes(runtime, HOST) % 64 == 0


def test_transposed_pack_emits_one_block_transpose():
    """A transposed B's packing transposes one w x w block per loop trip: the routine's shuffles do not
    grow with the register tile's width (nr / w blocks), which keeps its compile time down."""
    def shuffles(spec: GemmSpec, nr_vectors: int) -> int:
        module = ir.Module("count")
        w = AVX2.lanes(spec.dtype)
        blk = Blocking(mr=4, nr=nr_vectors * w, kc=64, mc=8, nc=nr_vectors * w * 2, pack_a=False)
        emit_gemm(module, "g", spec, AVX2, blocking=blk)
        return str(module).count("shufflevector")

    for dtype in ("float32", "float64"):
        transposed, plain = GemmSpec(dtype, False, True), GemmSpec(dtype, False, False)
        extra = [shuffles(transposed, n) - shuffles(plain, n) for n in (1, 2, 4)]
        w = AVX2.lanes(dtype)
        assert extra == [w * (w.bit_length() - 1)] * 3, extra  # log2(w) stages of w shuffles, once


def test_static_m_in_whole_tiles_emits_no_m_edge_kernels():
    """A static M that default_blocking splits into whole tiles (10 rows as 5 + 5) never runs an M edge,
    so its routine holds no edge micro-kernels; one with a partial tile (13 rows as 5 + 5 + 3) and a
    runtime M do (test_specialised_small_m checks all three give the right results)."""
    def edge_blocks(m: int | None) -> int:
        module = ir.Module("edges")
        emit_gemm(module, "g", GemmSpec("float32", True, False, specialised_m(m)), HOST)
        return str(module).count("edge.merge")

    assert default_blocking(GemmSpec("float32", True, False, 10), HOST).mr == 5
    assert edge_blocks(10) == 0 and edge_blocks(5) == 0
    assert edge_blocks(13) > 0 and edge_blocks(None) > 0
