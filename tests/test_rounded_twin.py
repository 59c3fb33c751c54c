"""The fuzz oracle's rounded twin (graphnet/testing/oracle.py): the spec in float64 with every float value
rounded to float32 (`NumpyBackend.rounding`), i.e. correctly rounded float32 arithmetic op by op. It must
round feeds, constants, variables and every op's result, leave ints and bools alone, draw the float32
twin's dropout masks, and widen a comparison's tolerance only where it differs from the float64 twin."""
from __future__ import annotations

import numpy as np

import graphnet as gn
from graphnet.testing import oracle
from graphnet.testing.oracle import Tol, compare
from graphnet.testing.spec import Leaf, OpNode, Spec

F32 = Tol(1e-5, 1e-6)


def rounded(spec: Spec) -> dict:
    return oracle.execute(spec, "numpy", "float64", True, rounding="float32")[0]


def twin(spec: Spec, dtype: str) -> dict:
    return oracle.execute(spec, "numpy", dtype, True)[0]


def test_the_numpy_backend_rounds_every_float_value_only_when_asked():
    x = gn.placeholder("x", (3,), np.float64)
    fn = gn.compile([gn.tanh(x) + 0.1, x * 2.0, gn.cast(x * 1e7, np.int64), x > 0.5], backend="numpy")
    feed = np.array([9.0824757, 0.5 + 2.0 ** -30, 1e300])
    exact = fn(x=feed)
    assert exact[0][0] == np.tanh(feed[0]) + 0.1 and exact[1][2] == 2e300 and exact[3][1]  # not rounded
    fn.executable.rounding = np.dtype(np.float32)
    tanh, double, ints, above = fn(x=feed)
    with np.errstate(over="ignore"):
        x32 = feed.astype(np.float32).astype(np.float64)  # the feed is rounded too (1e300: inf)
    assert tanh.dtype == double.dtype == np.float64
    assert tanh[0] == np.float32(np.float32(np.tanh(x32[0])) + np.float32(0.1)) == np.float32(1.1)
    assert double[2] == np.inf and double[0] == 2 * x32[0]
    assert ints.dtype == np.int64 and ints[0] == np.int64(np.float32(x32[0] * 1e7))
    assert not above[1]  # 0.5 + 2**-30 rounds to 0.5: not above it


def test_basic_arithmetic_of_the_rounded_twin_is_the_float32_twin_bit_for_bit():
    """+, -, *, / and sqrt of float32 values are correctly rounded in IEEE float32, and rounding their
    float64 result to float32 is too (float64 has more than twice float32's bits): the two twins agree
    exactly, constants and variables included."""
    spec = Spec("a", "float32", [Leaf("placeholder", (None, 7)), Leaf("constant", (7,)), Leaf("variable", (7,)),
                                 Leaf("placeholder", (None, 7), low=0.1, high=3.0)],
                [OpNode("add", (0, 1)), OpNode("multiply", (4, 2)), OpNode("divide", (5, 3)),
                 OpNode("sqrt", (3,)), OpNode("subtract", (6, 7))], [4, 5, 6, 8], batches=[5, 2])
    lo, mid, hi = twin(spec, "float32"), rounded(spec), twin(spec, "float64")
    for key in lo:
        np.testing.assert_array_equal(mid[key], lo[key].astype(np.float64))
        assert mid[key].dtype == np.float64
    assert any((mid[k] != hi[k]).any() for k in lo)  # the float64 twin is not rounded


def test_training_keeps_variables_float32_and_draws_the_float32_twins_dropout_masks():
    spec = Spec("t", "float32", [Leaf("placeholder", (None, 64)), Leaf("variable", (64,)),
                                 Leaf("variable", (), "int32", bound=100), Leaf("constant", (), "int32", bound=50)],
                [OpNode("multiply", (0, 1)), OpNode("dropout", (4, 2, 3), {"rate": 0.3, "seed": 11, "row": 64}),
                 OpNode("tanh", (5,))], [6], mode="train",
                optimizer={"name": "Adam", "kwargs": {"lr": 0.01}}, batches=[4, 4, 3])
    lo, mid = twin(spec, "float32"), rounded(spec)
    for key in lo:
        if key.startswith("call"):
            np.testing.assert_array_equal(mid[key] == 0, lo[key] == 0)  # the same dropout masks
    v = mid["final/v1"]
    assert v.dtype == np.float64 and (v == v.astype(np.float32)).all()
    np.testing.assert_allclose(v, lo["final/v1"], rtol=1e-5, atol=1e-6)


def test_a_floor_decided_by_float32_rounding_is_tolerated_and_a_real_error_is_not():
    """floor(tanh(x)) at x = 9.0824757 (fuzz 0:19065): the exact tanh is 1 - 2.6e-8, so float64 floors
    it to 0 while correctly rounded float32 gives tanh 1.0 and floor 1.0, which backends may return."""
    x = np.float32(9.0824757)
    hi = np.array([np.floor(np.tanh(np.float64(x)))])
    mid = np.array([np.floor(np.float64(np.float32(np.tanh(np.float64(x)))))])
    assert (hi, mid) == (0.0, 1.0)
    want = np.array([0.0], np.float32)  # numpy's float32 tanh may be one ulp low
    got = np.array([1.0], np.float32)
    assert "1/1 elements differ" in compare("y", got, want, want, hi, F32, 1.0)
    assert compare("y", got, want, want, hi, F32, 1.0, rounded=mid) is None
    # where the rounded twin agrees with the float64 twin it widens nothing
    off = np.array([0.25, 1.0], np.float32)
    ref = np.array([0.0, 1.0], np.float32)
    assert "1/2 elements differ" in compare("y", off, ref, ref, ref.astype(np.float64), F32, 1.0,
                                            rounded=ref.astype(np.float64))
    # and it marks bool/int results it disagrees on as decided by rounding
    b = np.array([True, False])
    assert compare("b", ~b, b, b, b, F32, 1.0, rounded=~b) is None


FINDING_19065_SMALL = Spec("0:19065", "float32", [Leaf("placeholder", (None, 3), low=-20.0, high=20.0)],
                           [OpNode("tanh", (0,)), OpNode("floor", (1,))], [2], loss="weighted", batches=[1, 3],
                           data_seed=176950135, backends=["llvm"])


def test_the_rounded_twin_of_finding_19065_floors_tanh_to_one():
    mid, hi = rounded(FINDING_19065_SMALL), twin(FINDING_19065_SMALL, "float64")
    assert mid["call1/out0"][2, 0] == 1.0 and hi["call1/out0"][2, 0] == 0.0  # x = 9.0824757
    assert (mid["call0/out0"] == hi["call0/out0"]).all()


def test_the_rounded_twin_runs_only_in_the_float32_regime():
    spec = FINDING_19065_SMALL.copy(dtype="float64")
    assert oracle._rounded_twin(spec, oracle.regime(spec)) == {}
    assert oracle._rounded_twin(FINDING_19065_SMALL, "float32")["call1/out0"][2, 0] == 1.0
