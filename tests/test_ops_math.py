"""The math instructions (expm1, erf, floor, ceil, round, mod, integer pow), argmax/argmin, cumsum,
batched matmul and float32 summation accuracy, on every backend against numpy's definitions."""
from __future__ import annotations

import math

import numpy as np
import pytest

import graphnet as gn
from codegen.llvm.schedule import SUM_BLOCK, SUM_BLOCK_SCALAR
from helpers import check_grad
from test_reliability import BACKENDS

pytestmark = pytest.mark.usefixtures("private_cache")


def _run(outs, backend, **feeds):
    return gn.compile(outs, backend=backend)(**feeds)


def _max_ulp(got: np.ndarray, want: np.ndarray) -> float:
    """Largest |got - want| in ulps of got's dtype at want (want in higher precision); non-finite
    values must agree exactly."""
    rounded = want.astype(got.dtype)
    finite = np.isfinite(rounded)
    assert np.array_equal(np.isnan(got), np.isnan(rounded)) and np.array_equal(got[~finite], rounded[~finite], equal_nan=True)
    spacing = np.spacing(np.abs(rounded[finite])).astype(want.dtype)
    return float(np.max(np.abs(got[finite].astype(want.dtype) - want[finite]) / spacing))


def _wide(dtype) -> np.ndarray:
    """Both signs, magnitudes from the smallest denormals to overflow, plus a dense [-5, 5] and specials."""
    tiny = float(np.finfo(dtype).smallest_subnormal)
    with np.errstate(over="ignore"):
        magnitudes = np.geomspace(tiny, float(np.finfo(dtype).max), 40_000)
    return np.concatenate([magnitudes, -magnitudes, np.linspace(-5, 5, 20_001),
                           [0.0, -0.0, np.inf, -np.inf, np.nan]]).astype(dtype)


# Measured maxima on these inputs (float32 / float64): LLVM expm1 1.2 / 1.6 ulp, erf 1.05 ulp / libm's;
# pocl expm1 0.96 / 1 ulp, erf 1.7 / 1 ulp; numpy's own float32 expm1 2.2 ulp.
ULP = 2.5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_expm1_and_erf_within_a_few_ulp_on_wide_ranges(backend, dtype):
    x = _wide(dtype)
    p = gn.placeholder("x", (None,), dtype)
    expm1, erf = _run([gn.expm1(p), gn.erf(p)], backend, x=x)
    wide = x.astype(np.longdouble)
    with np.errstate(all="ignore"):
        assert _max_ulp(expm1, np.expm1(wide)) <= ULP
    assert _max_ulp(erf, np.array([math.erf(v) for v in x.astype(np.float64)])) <= ULP  # float64: libm's erf
    small = np.abs(x) < np.finfo(dtype).eps / 2  # expm1(x) rounds to x there: no cancellation
    np.testing.assert_allclose(expm1[small], x[small], rtol=np.finfo(dtype).eps, atol=0)
    assert np.array_equal(np.signbit(expm1[x == 0]), np.signbit(x[x == 0]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_floor_ceil_round_at_halves_and_specials(backend):
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, -0.0, 0.0, 2.0 ** 23 + 1, np.inf, -np.inf, np.nan, -0.3],
                 np.float32)
    p = gn.placeholder("x", (None,))
    for got, want in zip(_run([gn.floor(p), gn.ceil(p), gn.round(p)], backend, x=x), [np.floor(x), np.ceil(x),
                                                                                     np.round(x)]):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))  # round(-0.3) is -0


def test_rounding_has_zero_gradient_and_mod_has_torchs():
    torch = pytest.importorskip("torch")
    a = np.array([-7.5, 7.5, -2.25, 3.0, 5.5])
    b = np.array([2.0, -2.0, 0.75, 2.5, -1.25])
    pa, pb = gn.placeholder("a", (5,), np.float64), gn.placeholder("b", (5,), np.float64)
    outs = [gn.floor(pa), gn.ceil(pa), gn.round(pa), pa % pb]
    grads = gn.gradients(gn.sum(outs[0] + outs[1] + outs[2]), pa), *gn.gradients(gn.sum(outs[3]), [pa, pb])
    zero, da, db = gn.compile(list(grads), backend="numpy")(a=a, b=b)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    torch.remainder(ta, tb).sum().backward()
    np.testing.assert_array_equal(zero, 0)
    np.testing.assert_allclose(da, ta.grad.numpy())
    np.testing.assert_allclose(db, tb.grad.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.uint32])
@pytest.mark.parametrize("backend", BACKENDS)
def test_mod_is_numpys_floor_modulo_including_zero_divisors(backend, dtype):
    """Floats: x % 0 is NaN, a zero result has the divisor's sign, x % inf follows numpy. Integers:
    x % 0 and MIN % -1 give 0 (numpy's values, without its warning)."""
    if np.dtype(dtype).kind == "f":
        a = np.array([7, -7, 7, -7, 6, -6, 5.5, 1e30, -5, 5, np.inf, np.nan, 3, 0], dtype)
        b = np.array([3, 3, -3, -3, 3, 3, 0, 7, np.inf, -np.inf, 2, 2, np.nan, -4], dtype)
    elif np.dtype(dtype).kind == "u":
        a, b = np.array([7, 0, 9, 2 ** 32 - 1], dtype), np.array([3, 5, 0, 7], dtype)
    else:
        low = np.iinfo(dtype).min
        a = np.array([7, -7, 7, -7, 6, -6, 5, low, low, 0], dtype)
        b = np.array([3, 3, -3, -3, 3, -3, 0, -1, 7, -5], dtype)
    pa, pb = gn.placeholder("a", (None,), dtype), gn.placeholder("b", (None,), dtype)
    (got,) = _run([pa % pb], backend, a=a, b=b)
    with np.errstate(all="ignore"):
        want = np.mod(a, b)
    np.testing.assert_array_equal(got, want)
    if np.dtype(dtype).kind == "f":
        np.testing.assert_array_equal(np.signbit(got[want == 0]), np.signbit(want[want == 0]))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32])
@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_pow_wraps_like_numpy_and_defines_negative_exponents(backend, dtype):
    """x ** y on integers: numpy's wrapping result for y >= 0; for y < 0 (numpy raises) x^y truncated
    toward zero: 1 for x = 1, +-1 for x = -1, 0 otherwise (0 ** -1 too)."""
    signed = np.dtype(dtype).kind == "i"
    a = np.array([2, 3, -3, 7, 0, 0, 1, 5, 123457, -1, -1, 1, 2, 0] if signed else [2, 3, 0, 7, 0, 1, 123457], dtype)
    b = np.array([10, 0, 5, 40, 0, 3, 99, 1, 31, 7, 8, -3, -1, -2] if signed else [10, 0, 5, 40, 0, 99, 31], dtype)
    pa, pb = gn.placeholder("a", (None,), dtype), gn.placeholder("b", (None,), dtype)
    (got,) = _run([pa ** pb], backend, a=a, b=b)
    natural = b >= 0
    np.testing.assert_array_equal(got[natural], np.power(a[natural], b[natural]))
    np.testing.assert_array_equal(got[~natural], [1, 0, 0] if signed else [])


# ---- argmax / argmin ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_argmax_and_argmin_take_the_first_tie_and_the_first_nan(backend):
    x = np.array([[1, 5, 5, 2], [np.nan, 1, np.nan, 9], [3, 3, -1, -1], [-np.inf, -np.inf, -np.inf, -np.inf],
                  [0, 0, np.inf, np.nan]], np.float32)
    p = gn.placeholder("x", (None, 4))
    got = _run([gn.argmax(p), gn.argmin(p, 1), gn.argmax(p, 0), gn.argmin(p, 0)], backend, x=x)
    for g, want in zip(got, [np.argmax(x, 1), np.argmin(x, 1), np.argmax(x, 0), np.argmin(x, 0)]):
        assert g.dtype == np.int64
        np.testing.assert_array_equal(g, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_argmax_of_integers_over_the_batch_axis(backend):
    labels = np.array([[3, 1], [7, 7], [7, 0], [-2, 9]], np.int32)
    p = gn.placeholder("y", (None, 2), np.int32)
    got = _run([gn.argmax(p, 0), gn.argmin(p, 0)], backend, y=labels)
    np.testing.assert_array_equal(got[0], np.argmax(labels, 0))
    np.testing.assert_array_equal(got[1], np.argmin(labels, 0))


def test_differentiating_argmax_is_an_error_naming_it():
    x = gn.placeholder("x", (None, 3), np.float64)
    with pytest.raises(gn.NotDifferentiableError, match="argmax has no gradient"):
        gn.gradients(gn.argmax(x), x)


def test_argmax_of_an_empty_axis_is_refused():
    with pytest.raises(gn.ShapeError, match="argmin of an empty axis"):
        gn.argmin(gn.placeholder("x", (None, 0)), 1)


# ---- cumsum ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_cumsum_forward_and_reverse_along_every_axis(backend):
    x = np.random.default_rng(0).normal(size=(5, 3, 7))
    p = gn.placeholder("x", (None, 3, 7), np.float64)
    outs = [gn.cumsum(p, axis, reverse) for axis in range(3) for reverse in (False, True)]
    for (axis, reverse), got in zip([(a, r) for a in range(3) for r in (False, True)], _run(outs, backend, x=x)):
        want = np.flip(np.cumsum(np.flip(x, axis), axis), axis) if reverse else np.cumsum(x, axis)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_cumsum_gradient_is_the_reverse_cumsum():
    x = np.random.default_rng(1).normal(size=(3, 6))
    check_grad(lambda p: gn.cumsum(p, 1) * gn.cumsum(p, 0, reverse=True), [x], shapes=[(None, 6)])


def test_cumsum_is_one_linear_scan_kernel(tmp_path):
    p = gn.placeholder("x", (None, 1000))
    fn = gn.compile(gn.cumsum(p, 1) * 2.0, backend="llvm")
    fn.dump(str(tmp_path))
    text = (tmp_path / "loopir.txt").read_text()
    assert text.count("kernel ") == 1 and "acc = forward scan sum over v1" in text


# ---- batched matmul ----------------------------------------------------------------------------
SHAPES = [((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 3)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4,)), ((4,), (2, 4, 3)),
          ((2, 3, 4), (4,)), ((3, 4), (4,)), ((4,), (4, 2))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_matmul_broadcasts_like_numpy(backend):
    rng = np.random.default_rng(2)
    arrays, outs = {}, []
    for k, (sa, sb) in enumerate(SHAPES):
        arrays[f"a{k}"], arrays[f"b{k}"] = rng.normal(size=sa), rng.normal(size=sb)
        outs.append(gn.placeholder(f"a{k}", sa, np.float64) @ gn.placeholder(f"b{k}", sb, np.float64))
    for k, got in enumerate(_run(outs, backend, **arrays)):
        want = np.matmul(arrays[f"a{k}"], arrays[f"b{k}"])
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sa,sb", [((2, 1, 3, 4), (5, 4, 2)), ((4,), (2, 4, 3)), ((2, 3, 4), (4, 2))])
def test_batched_matmul_gradients_sum_over_broadcast_batch_dims(sa, sb):
    rng = np.random.default_rng(3)
    check_grad(lambda a, b: a @ b, [rng.normal(size=sa), rng.normal(size=sb)])


def test_batched_matmul_is_one_reduction_kernel_without_the_product(tmp_path):
    a, b = gn.placeholder("a", (None, 1, 3, 4)), gn.placeholder("b", (5, 4, 6))
    fn = gn.compile(a @ b, backend="llvm")
    fn.dump(str(tmp_path))
    text = (tmp_path / "loopir.txt").read_text()
    buffers = [line for line in text.splitlines() if line.startswith("b") and " temp " in line]
    assert text.count("kernel ") == 1 and "acc = sum over v3" in text
    # the result only: a sum of 4 products into a row of 6 accumulates in registers, with no scratch row
    assert [line.split(": ")[1] for line in buffers] == ["float32 (N, 5, 3, 6)"]


def test_two_d_matmul_keeps_the_gemm_kernel():
    a, b = gn.placeholder("a", (None, 64)), gn.placeholder("b", (64, 32))
    assert (a @ b).op.name == "matmul"
    assert gn.matmul(gn.reshape(a, (None, 1, 64)), b).op.name == "batch_matmul"


# ---- float32 summation accuracy ----------------------------------------------------------------
def _relative_error(got, x: np.ndarray) -> float:
    want = np.sum(x.astype(np.float64))
    return abs(float(got) - want) / abs(want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_sum_of_a_6d_tensor_is_as_accurate_as_numpy(backend):
    """6,480 values over six short axes: summed sequentially, the relative error was 2e-5."""
    x = np.random.default_rng(4).uniform(0, 1, (2, 3, 4, 5, 6, 9)).astype(np.float32)
    (got,) = _run([gn.sum(gn.placeholder("x", x.shape))], backend, x=x)
    assert _relative_error(got, x) <= max(4 * _relative_error(np.sum(x), x), 1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_loss_over_a_million_rows_within_1e_6_of_float64(backend):
    """A loss summed over (rows, 5 outputs): the short inner loop kept every row's terms in one
    sequential accumulation (relative error 2e-4 before blocking)."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(10 ** 6, 5)).astype(np.float32)
    labels = rng.integers(0, 2, size=(10 ** 6, 5)).astype(np.float32)
    z, y = gn.placeholder("z", (None, 5)), gn.placeholder("y", (None, 5))
    total, mean = _run([gn.sum(gn.softplus(z) - z * y), gn.losses.binary_cross_entropy(z, y, from_logits=True)],
                       backend, z=logits, y=labels)
    z64, y64 = logits.astype(np.float64), labels.astype(np.float64)
    want = np.logaddexp(0, z64) - z64 * y64
    assert _relative_error(total, want) < 1e-6
    assert abs(float(mean) - want.mean()) / want.mean() < 1e-6


def test_a_long_float32_sum_is_scheduled_in_blocks(tmp_path):
    fn = gn.compile(gn.sum(gn.placeholder("x", (None, 3))), backend="llvm")
    fn.dump(str(tmp_path))
    assert f"float32 sum in blocks of {SUM_BLOCK // 3} v0 into a float64 total" in (tmp_path / "loopir.txt").read_text()
    short = gn.compile(gn.sum(gn.placeholder("y", (None, 10)), 1), backend="llvm")
    short.dump(str(tmp_path / "short"))
    assert "blocks" not in (tmp_path / "short" / "loopir.txt").read_text()  # one block's worth: a plain sum


def test_float32_column_sums_of_a_million_rows_within_1e_6_of_float64():
    """Column sums (a bias gradient over the batch) accumulate in a row of partial sums; summed
    sequentially over 10^6 rows their relative error grew with the rows."""
    x = np.random.default_rng(6).uniform(0, 1, (10 ** 6, 8)).astype(np.float32)
    (got,) = _run([gn.sum(gn.placeholder("x", (None, 8)), 0)], "llvm", x=x)
    want = x.astype(np.float64).sum(axis=0)
    assert np.max(np.abs(got - want) / want) < 1e-6


def test_a_long_column_sum_is_scheduled_in_blocks(tmp_path):
    fn = gn.compile(gn.sum(gn.placeholder("x", (None, 8)), 0), backend="llvm")
    fn.dump(str(tmp_path))
    text = (tmp_path / "loopir.txt").read_text()
    assert "in row b" in text and f"float32 sum in blocks of {SUM_BLOCK_SCALAR} v0 into a float64 total" in text


@pytest.mark.parametrize("backend", BACKENDS)
def test_argmax_keepdims_and_axis_none_follow_numpy(backend):
    x = np.array([[1, 5, 5, 2], [np.nan, 1, np.nan, 9], [3, 3, -1, -1]], np.float32)
    p, c = gn.placeholder("x", (None, 4)), gn.constant(x)
    got = _run([gn.argmax(p, 1, keepdims=True), gn.argmin(p, 0, keepdims=True), gn.argmax(c, None),
                gn.argmin(c, None, keepdims=True)], backend, x=x)
    wants = [np.argmax(x, 1, keepdims=True), np.argmin(x, 0, keepdims=True), np.argmax(x), np.argmin(x, keepdims=True)]
    for g, want in zip(got, wants):
        assert g.dtype == np.int64 and g.shape == want.shape
        np.testing.assert_array_equal(g, want)


def test_argmax_over_no_axis_of_a_batched_tensor_is_refused():
    with pytest.raises(gn.ShapeError, match="argmax: axis=None flattens"):
        gn.argmax(gn.placeholder("x", (None, 3)), None)
