"""The numpy reference backend through gn.compile: fetch structures, update ordering, batch sizes,
float64, check_numerics, dropout in training, dumps."""
import os

import numpy as np
import pytest

import graphnet as gn


def compile_numpy(fetches, **kwargs):
    return gn.compile(fetches, backend="numpy", **kwargs)


@pytest.fixture
def x():
    return gn.placeholder("x", (None, 2))


X = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)


def test_fetch_structures_mirror_the_request(x):
    a, b = x * 2.0, gn.sum(x)
    single = compile_numpy(a)(x=X)
    assert isinstance(single, np.ndarray)
    np.testing.assert_array_equal(single, X * 2)
    as_list = compile_numpy([a, b])(x=X)
    assert isinstance(as_list, list) and len(as_list) == 2 and as_list[1] == 10
    as_tuple = compile_numpy((b, a))(x=X)
    assert isinstance(as_tuple, tuple) and as_tuple[0] == 10
    as_dict = compile_numpy({"double": a, "total": b})(x=X)
    assert isinstance(as_dict, dict) and list(as_dict) == ["double", "total"] and as_dict["total"] == 10
    assert compile_numpy([])() == []


def test_results_are_fresh_arrays(x):
    v = gn.variable("v", np.ones(2, np.float32))
    fn = compile_numpy([v, x])
    got_v, got_x = fn(x=X)
    got_v[0] = 99
    got_x[0, 0] = 99
    np.testing.assert_array_equal(v.value, [1, 1])
    assert X[0, 0] == 1


def test_updates_apply_after_fetches(x):
    v = gn.variable("v", np.zeros(2, np.float32))
    new = v + gn.sum(x, axis=0)
    fn = compile_numpy([v, new, v * 10.0], updates=[(v, new)])
    old, fetched_new, scaled = fn(x=X)
    np.testing.assert_array_equal(old, [0, 0])
    np.testing.assert_array_equal(fetched_new, [4, 6])
    np.testing.assert_array_equal(scaled, [0, 0])
    np.testing.assert_array_equal(v.value, [4, 6])
    old, _, _ = fn(x=X)
    np.testing.assert_array_equal(old, [4, 6])
    np.testing.assert_array_equal(v.value, [8, 12])


def test_updates_are_simultaneous():
    a = gn.variable("a", np.float32(1))
    b = gn.variable("b", np.float32(2))
    swap = compile_numpy([], updates=[(a, b), (b, a)])
    swap()
    assert (a.value, b.value) == (2, 1)
    swap()
    assert (a.value, b.value) == (1, 2)


def test_updates_accept_a_dict_and_arrays():
    v = gn.variable("v", np.zeros(3, np.float32))
    compile_numpy([], updates={v: np.full(3, 5.0)})()
    np.testing.assert_array_equal(v.value, [5, 5, 5])


def test_assign_between_calls_is_seen(x):
    w = gn.variable("w", np.ones((2, 1), np.float32))
    fn = compile_numpy(x @ w)
    np.testing.assert_array_equal(fn(x=X), [[3], [7]])
    w.assign([[1.0], [0.0]])
    np.testing.assert_array_equal(fn(x=X), [[1], [3]])


@pytest.mark.parametrize("batch", [5, 2, 1])
def test_partial_batches(x, batch):
    """One function serves every batch size; means divide by the runtime size."""
    fn = compile_numpy([gn.mean(x, axis=0), gn.mean(x), gn.sum(x * 0.0 + 1.0)])
    data = np.arange(batch * 2, dtype=np.float32).reshape(batch, 2)
    col, total, count = fn(x=data)
    np.testing.assert_allclose(col, data.mean(axis=0))
    np.testing.assert_allclose(total, data.mean())
    assert count == batch * 2


def test_batch_size_node_follows_the_feed(x):
    fn = compile_numpy(gn.batch_size(x) + gn.sum(x) * 0.0)
    assert fn(x=np.zeros((7, 2), np.float32)) == 7
    assert fn(x=np.zeros((3, 2), np.float32)) == 3


def test_float64_graph_stays_float64():
    x = gn.placeholder("x", (None, 2), np.float64)
    w = gn.variable("w", np.full((2, 2), 1 / 3))
    y = gn.softmax(gn.tanh(x @ w) * 1.5 + 1e-20)
    grad = gn.gradients(gn.sum(y * y), w)
    fn = compile_numpy([y, grad, gn.mean(x)])
    data = np.array([[1.0, 2.0]])
    results = fn(x=data)
    assert all(r.dtype == np.float64 for r in results)
    h = np.tanh(data @ np.full((2, 2), 1 / 3)) * 1.5 + 1e-20
    e = np.exp(h - h.max(1, keepdims=True))
    np.testing.assert_allclose(results[0], e / e.sum(1, keepdims=True), rtol=1e-15)


def test_check_numerics_names_the_node_and_line(x):
    v = gn.variable("v", np.zeros(2, np.float32))
    y = gn.log(x - 1.0); where = y.source  # noqa: E702
    fn = compile_numpy(gn.sum(y), updates=[(v, v + 1.0)], check_numerics=True)
    with pytest.raises(gn.NumericsError) as info:
        fn(x=X)  # log(0) = -inf
    assert "log" in str(info.value) and where in str(info.value) and "test_numpy_backend.py" in where
    np.testing.assert_array_equal(v.value, [0, 0])  # the failed call updated nothing
    assert np.isfinite(fn(x=X + 1.0))
    np.testing.assert_array_equal(v.value, [1, 1])


def test_check_numerics_lets_non_finite_inputs_through(x):
    fn = compile_numpy(x * 2.0, check_numerics=True)
    assert np.isnan(fn(x=np.array([[np.nan, 1.0]], np.float32))[0, 0])


def test_check_numerics_finds_the_backward_op(x):
    y = gn.sum(gn.sqrt(x)); where = y.inputs[0].source  # noqa: E702
    fn = compile_numpy(gn.gradients(y, x), check_numerics=True)
    with pytest.raises(gn.NumericsError, match=where):
        fn(x=np.zeros((1, 2), np.float32))  # d sqrt(x)/dx = 1 / (2 sqrt(0)) = inf


def test_without_check_numerics_inf_is_returned(x):
    assert np.isneginf(compile_numpy(gn.log(x))(x=np.zeros((1, 2), np.float32))).all()


def test_dropout_only_in_training(x):
    data = np.ones((50, 2), np.float32)
    y = gn.dropout(x, 0.5)
    np.testing.assert_array_equal(compile_numpy(y)(x=data), data)
    train = compile_numpy(y, training=True)
    first, second = train(x=data), train(x=data)
    assert set(np.unique(first)) == {0.0, 2.0}
    assert not np.array_equal(first, second)  # the step counter advanced
    assert x.graph.variables["rng/step"].value == 2


def test_dump_writes_every_pass(x, tmp_path):
    fn = compile_numpy(gn.log(gn.sigmoid(x)))
    directory = fn.dump(str(tmp_path))
    files = sorted(os.listdir(directory))
    assert "summary.txt" in files and "00_input.txt" in files
    assert len([f for f in files if f[:2].isdigit() and f.endswith(".txt")]) == len(fn.records)
    with open(os.path.join(directory, "00_input.txt")) as f:
        assert "sigmoid" in f.read()
