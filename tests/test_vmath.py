"""Inline exp/log/log1p/tanh (codegen/llvm/vmath.py) against numpy: ulp error sweeps and special values."""
from __future__ import annotations

import ctypes
import re

import numpy as np
import pytest
from llvmlite import ir

import graphnet as gn
from codegen.llvm import vmath
from codegen.llvm.jit import Compiler, Library, host_target
from codegen.llvm.loops import for_range
from codegen.llvm.target import SCALAR

I64, PTR = ir.IntType(64), ir.PointerType()
FUNCTIONS = ("exp", "log", "log1p", "tanh")
ARITY = {"pow": 2}
# max ulp error allowed (measured on the sweeps with FMA: exp, log, log1p <= 1.13, tanh <= 1.7, pow 0.5;
# without FMA tanh's correction step is inexact: <= 2.2)
TOLERANCE = {"exp": 1.5, "log": 1.5, "log1p": 1.5, "tanh": 2.0, "pow": 1.0}


def _elem(dtype: np.dtype) -> ir.Type:
    return ir.FloatType() if dtype == np.float32 else ir.DoubleType()


def build(dtype, lanes: int = 0, target=None):
    """{name: f(*xs) -> y}: one JIT-compiled loop per function over scalars (left to the loop
    vectorizer) or over explicit `<lanes x T>` vectors, for the host or `target`."""
    compiler = Compiler(target or host_target())
    module = ir.Module("vmath_test")
    module.triple, module.data_layout = compiler.triple, compiler.data_layout
    t = ir.VectorType(_elem(np.dtype(dtype)), lanes) if lanes else _elem(np.dtype(dtype))
    align = np.dtype(dtype).itemsize  # numpy guarantees no more, also for vectors
    names = [n for n in vmath.FUNCTIONS if vmath.provides(n, np.dtype(dtype))]
    for name in names:
        arity = ARITY.get(name, 1)
        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64] + [PTR] * (arity + 1)), name)
        for a in fn.args[1:]:
            a.add_attribute("noalias")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        with for_range(b, 0, fn.args[0]) as i:
            xs = [b.load(b.gep(p, [i], source_etype=t), typ=t, align=align) for p in fn.args[1:-1]]
            b.store(vmath.emit(b, name, *xs), b.gep(fn.args[-1], [i], source_etype=t), align=align)
        b.ret_void()
    library = Library(compiler, [compiler.object_code(str(module))])

    def wrap(address, arity):
        proto = ctypes.CFUNCTYPE(None, ctypes.c_int64, *[ctypes.c_void_p] * (arity + 1))

        def call(*xs):
            xs = [np.ascontiguousarray(x, dtype) for x in np.broadcast_arrays(*xs)]
            y = np.empty_like(xs[0])
            proto(address)(y.size // max(lanes, 1), *[x.ctypes.data for x in xs], y.ctypes.data)
            return y
        return call
    functions = {name: wrap(library.address(name), ARITY.get(name, 1)) for name in names}
    functions["_library"] = library  # keeps the code alive
    return functions


@pytest.fixture(scope="module")
def kernels():
    return {np.float32: build(np.float32), np.float64: build(np.float64)}


def max_ulp(y: np.ndarray, reference: np.ndarray) -> float:
    """Largest |y - reference| in units of the spacing of y's type at the reference value."""
    with np.errstate(over="ignore"):
        rounded = reference.astype(y.dtype)
    finite = np.isfinite(rounded)
    assert np.array_equal(np.isfinite(y), finite) and np.array_equal(np.isnan(y), np.isnan(reference))
    spacing = np.spacing(np.abs(rounded[finite])).astype(reference.dtype)
    return float(np.max(np.abs(y[finite].astype(reference.dtype) - reference[finite]) / spacing))


def float32_sweep() -> np.ndarray:
    """About 4M float32 values spread over every exponent and sign (every 1021st bit pattern)."""
    x = np.arange(0, 2 ** 32, 1021, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return x[np.isfinite(x)]


def float64_sample() -> np.ndarray:
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2 ** 64, 200_000, dtype=np.uint64).view(np.float64)
    x = np.concatenate([bits, np.linspace(-40, 40, 100_001), np.geomspace(1e-300, 1e3, 50_000),
                        -np.geomspace(1e-300, 1, 50_000)])
    return x[np.isfinite(x)]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_float32_sweep_within_tolerance_of_numpy_float64(kernels, name):
    x = float32_sweep()
    with np.errstate(all="ignore"):
        reference = getattr(np, name)(x.astype(np.float64))
    err = max_ulp(kernels[np.float32][name](x), reference)
    print(f"float32 {name}: max {err:.3f} ulp over {x.size} values")
    assert err <= TOLERANCE[name]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_float64_sample_within_tolerance_of_long_double(kernels, name):
    if np.finfo(np.longdouble).nmant < 60:
        pytest.skip("no extended-precision long double for a float64 reference")
    x = float64_sample()
    with np.errstate(all="ignore"):
        reference = getattr(np, name)(x.astype(np.longdouble))
    err = max_ulp(kernels[np.float64][name](x), reference)
    print(f"float64 {name}: max {err:.3f} ulp over {x.size} values")
    assert err <= TOLERANCE[name]


SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 1000.0, -1000.0, 1e-300, -1e-300, 5e-324, 1e-45,
           1.4e-45, 88.72, 88.73, -103.9, -104.0, 709.78, 709.79, -745.1, -745.2, 3.4e38, 1.7e308, -0.5, 2.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_special_values_match_numpy(kernels, dtype, name):
    with np.errstate(all="ignore"):
        x = np.array(SPECIAL, dtype)
        want = getattr(np, name)(x.astype(np.longdouble)).astype(dtype)
    got = kernels[dtype][name](x)
    exact = ~np.isfinite(want) | (want == 0) | (np.abs(want) == 1)  # inf, nan, signed zero, tanh's +-1
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(got[exact & ~np.isnan(want)], want[exact & ~np.isnan(want)])
    assert np.array_equal(np.signbit(got[want == 0]), np.signbit(want[want == 0]))
    close = ~exact
    np.testing.assert_allclose(got[close], want[close], rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plain_x86_64_without_fma_is_accurate_too(dtype):
    scalar = build(dtype, target=SCALAR)
    x = float32_sweep()[::8].astype(dtype) if dtype == np.float32 else float64_sample()[::4]
    for name in FUNCTIONS:
        with np.errstate(all="ignore"):
            reference = getattr(np, name)(x.astype(np.longdouble))
        assert max_ulp(scalar[name](x), reference) <= TOLERANCE[name] + (0.5 if name == "tanh" else 0), name


def test_denormal_results_of_exp_and_arguments_of_log():
    f32 = build(np.float32)
    x = np.array([-87.5, -95.0, -100.0, -103.2], np.float32)  # exp lands in the denormal range
    want = np.exp(x.astype(np.float64)).astype(np.float32)
    assert np.all(want < np.finfo(np.float32).tiny) and np.all(want > 0)
    np.testing.assert_array_equal(f32["exp"](x), want)
    tiny = np.array([1e-45, 3e-42, 1e-39], np.float32)
    np.testing.assert_allclose(f32["log"](tiny), np.log(tiny.astype(np.float64)), rtol=2e-7)


@pytest.mark.parametrize("dtype,lanes", [(np.float32, 16), (np.float32, 8), (np.float64, 4)])
def test_explicit_vectors_agree_with_the_scalar_code(kernels, dtype, lanes):
    vector = build(dtype, lanes)
    x = np.linspace(-30, 30, 64 * lanes, dtype=dtype)
    x[::7] = np.abs(x[::7]) + 1e-3  # log needs some positive arguments
    for name in FUNCTIONS:
        with np.errstate(all="ignore"):
            reference = getattr(np, name)(x.astype(np.longdouble))
        assert max_ulp(vector[name](x), reference) <= TOLERANCE[name]


def test_float32_pow_against_numpy_float64(kernels):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0, 4, 500_000), rng.uniform(-3, 3, 500_000)]).astype(np.float32)
    y = np.concatenate([rng.uniform(-40, 40, 500_000), rng.integers(-30, 30, 500_000)]).astype(np.float32)
    with np.errstate(all="ignore"):
        reference = np.power(x.astype(np.float64), y.astype(np.float64))
    err = max_ulp(kernels[np.float32]["pow"](x, y), reference)
    print(f"float32 pow: max {err:.3f} ulp over {x.size} pairs")
    assert err <= TOLERANCE["pow"]


def test_float32_pow_special_values_match_numpy(kernels):
    values = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 3.0, -3.0, 2.5, -2.5, np.inf, -np.inf, np.nan,
                       1e-30, 1e30, 100.0], np.float32)
    x, y = (a.ravel() for a in np.meshgrid(values, values))
    with np.errstate(all="ignore"):
        want = np.power(x.astype(np.float64), y.astype(np.float64)).astype(np.float32)
    got = kernels[np.float32]["pow"](x, y)
    assert np.array_equal(got, want, equal_nan=True), [(a, c, g, w) for a, c, g, w in zip(x, y, got, want)
                                                        if not (g == w or (np.isnan(g) and np.isnan(w)))]
    numbers = ~np.isnan(want)
    assert np.array_equal(np.signbit(got[numbers]), np.signbit(want[numbers]))


def test_model_with_tanh_sigmoid_softplus_vectorizes_without_libm_calls(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path / "cache"))
    x = gn.placeholder("x", (None, 64))
    weights = np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    w = gn.variable("w", weights)
    h = gn.tanh(x @ w)
    loss = gn.mean(gn.sigmoid(h) + gn.softplus(h) + gn.log(gn.exp(h) + 1.0))
    fn = gn.compile([loss], backend="llvm")
    feed = np.linspace(-2, 2, 32 * 64, dtype=np.float32).reshape(32, 64)
    (got,) = fn(x=feed)
    fn.dump(str(tmp_path / "dump"))
    asm = (tmp_path / "dump" / "module.s").read_text()
    kernels = re.findall(r"^(k\d+_\w+):\n(.*?)^\.Lfunc_end", asm, re.M | re.S)
    code = {}  # by kernel: with threads, the GEMM's epilogue rows are a function of their own (`_rows`)
    for name, text in kernels:
        code[name.removesuffix("_rows")] = code.get(name.removesuffix("_rows"), "") + text
    assert set(code) == {"k0_matmul_tanh", "k1_sum_divide"}, [name for name, _ in kernels]
    for name, text in code.items():  # the tanh epilogue and the exp/log/log1p reduction run on vectors
        assert "zmm" in text or "ymm" in text, name
        assert not re.search(r"(tanh|exp|log|log1p)f\b", text), name
    hv = np.tanh(feed.astype(np.float64) @ weights.astype(np.float64))
    want = np.mean(1 / (1 + np.exp(-hv)) + np.logaddexp(0, hv) + np.log(np.exp(hv) + 1))
    np.testing.assert_allclose(got, want, rtol=1e-5)
