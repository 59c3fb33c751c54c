"""The course's TF1 idioms: placeholder(dtype, shape, name=...), v.assign(expr) as an update,
reduce_mean / reduce_sum, random_normal; and re-running a notebook cell that builds a graph."""
import numpy as np
import pytest

import graphnet as gn

BACKEND = "numpy"


# ---- placeholders in TF1's order ----------------------------------------------------------------------
def test_placeholder_in_tf1_order():
    a = gn.placeholder(np.float32, shape=(None, 2), name="a")
    b = gn.placeholder(np.float64, (None, 3), "b")
    c = gn.placeholder("c", (None, 2))
    d = gn.placeholder(name="d", shape=(4,), dtype=np.int32)
    assert (a.name, a.shape, a.dtype) == ("a", (None, 2), np.float32)
    assert (b.name, b.shape, b.dtype) == ("b", (None, 3), np.float64)
    assert (c.dtype, d.dtype, d.shape) == (np.float32, np.int32, (4,))
    fn = gn.compile(gn.sum(a * c), backend=BACKEND)
    assert fn(a=np.ones((3, 2), np.float32), c=np.full((3, 2), 2, np.float32)) == 12


@pytest.mark.parametrize("call", [
    lambda: gn.placeholder(np.float32, shape=(None, 2)),  # the crash: no name, dtype first
    lambda: gn.placeholder(3, (None, 2)),
    lambda: gn.placeholder(np.float32, (None, 2), np.float64),
    lambda: gn.placeholder("x", (None, 2), name="y"),
])
def test_unusable_placeholder_calls_are_refused_at_once_showing_both_forms(call):
    with pytest.raises(TypeError) as info:
        call()
    assert "gn.placeholder('x', (None, 2), np.float32)" in str(info.value)
    assert "gn.placeholder(np.float32, (None, 2), name='x')" in str(info.value)


# ---- v.assign(expr) in a graph is an update -----------------------------------------------------------
def test_tf1_gradient_descent_with_assign():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3)).astype(np.float32)
    Y = X @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 0.3
    x = gn.placeholder(np.float32, (None, 3), name="x")
    y = gn.placeholder(np.float32, (None, 1), name="y")
    w = gn.variable("w", gn.random_normal((3, 1), stddev=0.1, seed=0))
    b = gn.variable("b", np.zeros(1, np.float32))
    loss = gn.reduce_mean(gn.reduce_sum((x @ w + b - y) ** 2, axis=1))
    dw, db = gn.gradients(loss, [w, b])
    learning_rate = 0.1
    update_w = w.assign(w - learning_rate * dw)
    update_b = b.assign_sub(learning_rate * db)
    assert update_w[0] is w and np.array_equal(w.value, gn.init.random_normal((3, 1), stddev=0.1, seed=0))
    step = gn.compile([loss], updates=[update_w, update_b], backend=BACKEND)
    for _ in range(200):
        (final,) = step(x=X, y=Y)
    assert final < 1e-4
    np.testing.assert_allclose(w.value.ravel(), [1.0, -2.0, 0.5], atol=1e-2)
    np.testing.assert_allclose(b.value, [0.3], atol=1e-2)


def test_assign_add_update_and_eager_assign_stay():
    v = gn.variable("v", np.zeros(2, np.float32))
    step = gn.compile([], updates=[v.assign_add(gn.constant(np.ones(2, np.float32)))], backend=BACKEND)
    step()
    step()
    np.testing.assert_array_equal(v.value, [2.0, 2.0])
    assert v.assign(np.array([5.0, 6.0])) is None  # an array: set now
    v.assign_sub(np.array([1.0, 1.0]))
    np.testing.assert_array_equal(v.value, [4.0, 5.0])


def test_assign_of_a_wrong_shape_is_refused_when_built():
    w = gn.variable("w", np.zeros((3, 1), np.float32))
    with pytest.raises(gn.ShapeError, match=r"assign to variable 'w': the value has shape \(\), the variable \(3, 1\)"):
        w.assign(gn.reduce_mean(w))
    with gn.Graph():
        other = gn.variable("u", np.zeros((3, 1), np.float32))
    with pytest.raises(ValueError, match="another graph"):
        w.assign(other * 2.0)
    with pytest.raises(TypeError, match="not a variable"):
        (w * 2.0).assign(w)


def test_reduce_aliases_and_random_initial_values():
    x = gn.placeholder("x", (None, 3))
    fn = gn.compile([gn.reduce_mean(x), gn.reduce_sum(x, axis=1), gn.reduce_max(x, 0, keepdims=True)],
                    backend=BACKEND)
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    mean, sums, maxes = fn(x=data)
    assert mean == 2.5 and np.array_equal(sums, [3, 12]) and np.array_equal(maxes, [[3, 4, 5]])
    gn.set_seed(1)
    first = gn.random_normal([200, 50], stddev=0.1)
    gn.set_seed(1)
    assert np.array_equal(first, gn.random_normal([200, 50], stddev=0.1)) and first.dtype == np.float32
    assert abs(first.std() - 0.1) < 0.005 and abs(first.mean()) < 0.005
    truncated = gn.truncated_normal((1000,), mean=1.0, stddev=0.5)
    assert truncated.min() >= 0.0 and truncated.max() <= 2.0
    uniform = gn.random_uniform((1000,), -1, 1)
    assert uniform.min() >= -1 and uniform.max() < 1


# ---- notebooks: re-running a cell that builds the graph ----------------------------------------------
CELL = """
x = gn.placeholder("x", (None, 2))
y = gn.placeholder("y", (None, 1))
W = gn.variable("W", np.zeros((2, 1), np.float32))
loss = gn.losses.mse(x @ W, y)
step = gn.compile([loss], updates=gn.optim.SGD(learning_rate=0.1).minimize(loss), backend="numpy")
for _ in range(50):
    (final,) = step(x=X, y=X @ np.array([[1.0], [2.0]], np.float32))
"""


def run_cell(source, name, scope):
    exec(compile(source, name, "exec"), scope)
    return scope


def test_rerunning_a_notebook_cell_rebuilds_and_trains():
    X = np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32)
    first = run_cell(CELL, "<cell-1>", {"gn": gn, "np": np, "X": X})
    again = run_cell(CELL, "<cell-1>", {"gn": gn, "np": np, "X": X})
    assert again["x"] is first["x"]  # the same line declares the same placeholder: the same node
    assert again["W"].name == "W_1" and first["W"].name == "W"  # a new variable, named as TF1 named it
    assert again["final"] < 1e-3 and first["final"] < 1e-3
    np.testing.assert_allclose(again["W"].value.ravel(), [1.0, 2.0], atol=0.02)


def test_a_name_clash_from_another_line_says_how_to_reset():
    gn.placeholder("x", (None, 2))
    with pytest.raises(ValueError, match=r"'x' already exists .*gn\.reset_default_graph\(\)"):
        gn.placeholder("x", (None, 3))
    gn.variable("v", np.zeros(2))
    with pytest.raises(ValueError, match=r"'v' already exists .*gn\.reset_default_graph\(\)"):
        gn.variable("v", np.zeros(2))
    gn.reset_default_graph()
    assert gn.placeholder("x", (None, 3)).shape == (None, 3)


def test_a_single_assign_is_accepted_as_the_updates():
    v = gn.variable("v_single", np.float32(1.0))
    step = gn.compile([], updates=v.assign(v * 2.0), backend="numpy")
    step()
    assert float(v.value) == 2.0
