"""Errors and bad input: build-time shape/dtype errors name the op, the shapes and the user's line;
bad feeds name the placeholder and the expected vs given shape, and change no variable."""
import inspect
import os
import re

import numpy as np
import pytest

import graphnet as gn


def line_of(fn) -> str:
    """file:line of the last line of `fn`'s body (where the bad op is built)."""
    src, start = inspect.getsourcelines(fn)
    return f"{os.path.relpath(inspect.getsourcefile(fn))}:{start + len(src) - 1}"


@pytest.fixture
def x():
    return gn.placeholder("x", (None, 3))


# ---- build time -------------------------------------------------------------------------------------
def _matmul(x):
    w = gn.placeholder("w", (4, 2))
    return x @ w


def _broadcast_add(x):
    return x + np.ones((1, 4), np.float32)


def _reshape(x):
    return gn.reshape(x, (None, 4))


def _dtype_mismatch(x):
    return x * gn.placeholder("d", (None, 3), np.float64)


def _sum_axis(x):
    return gn.sum(x, axis=2)


def _mean_axis(x):
    return gn.mean(x, axis=-3)


def _softmax_axis(x):
    return gn.softmax(x, axis=5)


def _transpose_perm(x):
    return gn.transpose(x, (0, 0))


def _matmul_rank(x):  # numpy's matmul takes 1-D and N-D operands, never a scalar
    return gn.matmul(x, gn.placeholder("v", ()))


def _float_op_on_int(x):
    return gn.exp(gn.placeholder("i", (None, 3), np.int32))


def _where_condition(x):
    return gn.where(x, x, x)


def _update_shape(x):
    v = gn.variable("v", np.zeros(3, np.float32))
    return gn.compile([], updates=[(v, x * 2.0)], backend="numpy")


BUILD_ERRORS = [
    (_matmul, "matmul", ["(N, 3)", "(4, 2)"]),
    (_broadcast_add, "add", ["(N, 3)", "(1, 4)"]),
    (_reshape, "reshape", ["(N, 3)", "(N, 4)"]),
    (_dtype_mismatch, "multiply", ["float32", "float64"]),
    (_sum_axis, "sum", ["axis 2", "(N, 3)"]),
    (_mean_axis, "mean", ["axis -3", "(N, 3)"]),
    (_softmax_axis, "softmax", ["axis 5", "(N, 3)"]),
    (_transpose_perm, "transpose", ["(0, 0)", "(N, 3)"]),
    (_matmul_rank, "matmul", ["(N, 3)", "()"]),
    (_float_op_on_int, "exp", ["int32"]),
    (_where_condition, "where", ["bool", "float32"]),
    (_update_shape, "update of v", ["(N, 3)", "(3,)"]),
]


@pytest.mark.parametrize("build,op,mentions", BUILD_ERRORS, ids=[b[0].__name__.strip("_") for b in BUILD_ERRORS])
def test_shape_errors_name_op_shapes_and_line(x, build, op, mentions):
    with pytest.raises(gn.ShapeError) as info:
        build(x)
    message = str(info.value)
    assert message.startswith(op), message
    for m in mentions:
        assert m in message, message
    assert line_of(build) in message


def test_shape_error_is_a_value_error(x):
    with pytest.raises(ValueError):
        _matmul(x)


def _complex_placeholder(x):
    return gn.placeholder("c", (2,), np.complex64)


def _string_constant(x):
    return x + "text"


def _string_variable(x):
    return gn.variable("s", np.array(["a", "b"]))


def _cast_to_complex(x):
    return gn.cast(x, np.complex64)


@pytest.mark.parametrize("build,mentions", [(_complex_placeholder, ["'c'", "complex64"]), (_string_constant, ["<U4"]),
                                            (_string_variable, ["'s'", "<U1"]), (_cast_to_complex, ["complex64"])])
def test_unsupported_dtypes_say_which_and_where(x, build, mentions):
    with pytest.raises((TypeError, gn.ShapeError)) as info:
        build(x)
    message = str(info.value)
    for m in mentions:
        assert m in message, message
    assert line_of(build) in message


def test_bad_placeholder_shapes(x):
    with pytest.raises(gn.ShapeError, match="only one dimension may be None"):
        gn.placeholder("two_batches", (None, None))
    with pytest.raises(gn.ShapeError, match="negative"):
        gn.placeholder("negative", (-2,))


# ---- call time --------------------------------------------------------------------------------------
@pytest.fixture
def step():
    """A compiled training-like step whose update must not run on a bad call."""
    x = gn.placeholder("x", (None, 3))
    labels = gn.placeholder("labels", (None,), np.int32)
    w = gn.variable("w", np.ones(3, np.float32))
    loss = gn.mean(gn.sum(x * w, axis=1) * gn.cast(labels, np.float32))
    fn = gn.compile(loss, updates=[(w, w - 0.1 * gn.gradients(loss, w))], backend="numpy")
    return fn, w


GOOD = {"x": np.ones((2, 3), np.float32), "labels": np.array([1, 0], np.int32)}

BAD_FEEDS = [
    ({"x": GOOD["x"]}, ValueError, ["missing", "'labels'", "(N,)"]),
    ({**GOOD, "y": GOOD["x"]}, ValueError, ["'y'", "labels, x"]),
    ({**GOOD, "x": np.ones((2, 4), np.float32)}, ValueError, ["'x'", "(N, 3)", "(2, 4)"]),
    ({**GOOD, "x": np.ones(3, np.float32)}, ValueError, ["'x'", "rank 2", "rank 1", "(3,)"]),
    ({**GOOD, "x": np.ones((1, 2, 3), np.float32)}, ValueError, ["'x'", "rank 2", "rank 3"]),
    ({**GOOD, "labels": np.array([1, 0, 1], np.int32)}, ValueError, ["'x': batch size 2", "'labels' (3)"]),
    ({**GOOD, "x": "not an array"}, TypeError, ["'x'", "str"]),
    ({**GOOD, "x": np.array([[object()] * 3] * 2)}, TypeError, ["'x'", "object"]),
    ({**GOOD, "x": [[1.0, 2.0, 3.0], [4.0, 5.0]]}, TypeError, ["'x'"]),
    ({**GOOD, "x": np.array([["a", "b", "c"]] * 2)}, TypeError, ["'x'", "<U1"]),
    ({**GOOD, "labels": np.array([0.5, 1.0])}, TypeError, ["'labels'", "int32"]),
    ({**GOOD, "labels": np.array([1, 2 ** 40])}, TypeError, ["'labels'", "range of int32"]),
    ({**GOOD, "labels": np.array([-1.0, 3e10])}, TypeError, ["'labels'", "range of int32"]),
    ({**GOOD, "x": np.ones((0, 3), np.float32), "labels": np.ones(0, np.int32)}, ValueError, ["empty batch"]),
]


@pytest.mark.parametrize("feeds,error,mentions", BAD_FEEDS)
def test_bad_feeds_are_refused_and_change_nothing(step, feeds, error, mentions):
    fn, w = step
    before = w.value
    with pytest.raises(error) as info:
        fn(**feeds)
    for m in mentions:
        assert m in str(info.value), str(info.value)
    np.testing.assert_array_equal(w.value, before)
    fn(**GOOD)
    assert not np.array_equal(w.value, before)  # the same function still runs and updates


def test_feeds_are_converted_when_safe(step):
    fn, w = step
    fn(x=[[1, 2, 3], [4, 5, 6]], labels=np.array([1.0, 0.0]))  # ints -> float32, integral floats -> int32
    np.testing.assert_allclose(w.value, 1 - 0.1 * np.array([0.5, 1.0, 1.5]))


def test_positional_arguments_are_refused(step):
    fn, _ = step
    with pytest.raises(TypeError):
        fn(GOOD["x"], GOOD["labels"])


def test_nan_and_inf_in_feeds_are_data():
    x = gn.placeholder("x", (None, 3))
    w = gn.variable("w", np.zeros(3, np.float32))
    fn = gn.compile([x * 2.0, gn.maximum(x, 0.0)], updates=[(w, gn.sum(x, axis=0))], backend="numpy")
    X = np.array([[np.nan, np.inf, -np.inf]], np.float32)
    doubled, relu = fn(x=X)
    np.testing.assert_array_equal(doubled, [[np.nan, np.inf, -np.inf]])
    np.testing.assert_array_equal(relu, [[np.nan, np.inf, 0.0]])
    np.testing.assert_array_equal(w.value, [np.nan, np.inf, -np.inf])


def test_unknown_backend_and_bad_fetches():
    x = gn.placeholder("x", (2,))
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        gn.compile(x, backend="tpu")
    with pytest.raises(TypeError, match="not a graph node"):
        gn.compile([x, 3.0], backend="numpy")
    with pytest.raises(TypeError, match="not a variable"):
        gn.compile(x, updates=[(x, x)], backend="numpy")
    v = gn.variable("v", np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="updated twice"):
        gn.compile(x, updates=[(v, x), (v, x * 2.0)], backend="numpy")


def test_error_messages_use_the_batch_letter():
    x = gn.placeholder("x", (None, 3))
    with pytest.raises(gn.ShapeError, match=re.escape("(N, 3)")):
        gn.reshape(x, (7,))
