"""Indexing and joining (ops/indexing.py) beyond the registry examples: x[...] against numpy's own
indexing, take/scatter_add at negative and out-of-range indices, concat/stack/split/pad/flip at odd
shapes and on the batch axis, every case on numpy, LLVM and OpenCL; gradients by central
differences; the loop IR forms (affine slices, clamped computed-index loads); bad input; and the
Keras Embedding and Concatenate layers."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from codegen.loopir import LoadAt
from codegen.lower import lower
from codegen.opencl import runtime
from graphnet.program import Program
from helpers import check_grad, run

try:
    runtime.list_devices()
    BACKENDS = ["numpy", "llvm", "opencl"]
except RuntimeError:  # no OpenCL platform here: the other backends still run
    BACKENDS = ["numpy", "llvm"]

pytestmark = pytest.mark.usefixtures("private_cache")

RNG = np.random.default_rng(7)
X = RNG.normal(size=(3, 5, 4)).astype(np.float32)  # a batch of 3
KEYS = [np.s_[1], np.s_[:, -1], np.s_[:, 1:4], np.s_[:, ::2, 1], np.s_[:, ::-1], np.s_[:, 4:0:-2, ::-3],
        np.s_[:, -10:10], np.s_[:, 3:1], np.s_[..., 2], np.s_[:, None, 2, ..., None], np.s_[::-1, 2],
        np.s_[:, :, -1:], np.s_[..., ::-1, :]]


def _all_backends(fetches, feeds):
    """Each backend's results for `fetches`, checked equal to the numpy backend's; returns numpy's."""
    want = run(fetches, feeds)
    for backend in BACKENDS[1:]:
        got = run(fetches, feeds, backend=backend)
        for w, g in zip(want, got):
            assert g.shape == w.shape and g.dtype == w.dtype, backend
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=backend)
    return want


def test_getitem_matches_numpy_on_every_backend():
    x = gn.placeholder("x", (None, 5, 4))
    keys = [k for k in KEYS if not isinstance(k, int)]  # x[1] indexes the batch axis: refused (see below)
    got = _all_backends([x[k] for k in keys], {"x": X})
    for k, g in zip(keys, got):
        np.testing.assert_array_equal(g, X[k], err_msg=str(k))


def test_getitem_of_a_static_tensor_and_of_a_computed_one():
    a = RNG.normal(size=(6, 7))
    x = gn.placeholder("x", (6, 7), np.float64)
    got = _all_backends([x[1], x[-1, ::-1], x[1:5:3, 2:], gn.exp(x)[::2, -3], (x * 2)[None][0, 3]], {"x": a})
    for g, w in zip(got, [a[1], a[-1, ::-1], a[1:5:3, 2:], np.exp(a)[::2, -3], (a * 2)[3]]):
        np.testing.assert_allclose(g, w, rtol=1e-12)


def test_slices_stay_affine_and_fuse_into_the_consumer():
    """A slice of a slice of a flip reads x at an affine offset (a constant base, negative stride)
    in the kernel of the elementwise op consuming it: no copy kernel, no computed index."""
    x = gn.placeholder("x", (None, 5, 4))
    y = gn.relu(x[:, 1:, ::-1][:, ::2]) * 2.0
    lp, _ = lower(Program([y]))
    assert len(lp.kernels) == 1
    text = lp.kernels[0].to_text()
    assert "v2*-1" in text and "+ 7" in text and "@" not in text, text


def test_take_clamps_negative_and_out_of_range_indices_on_every_backend():
    x = gn.placeholder("x", (None, 4))
    i = gn.placeholder("i", (2, 3), np.int64)
    ids = np.array([[-1, -4, -9], [0, 3, 100]])
    (along_1, along_0) = _all_backends([gn.take(x, i, axis=1), gn.take(x, i, axis=0)], {"x": X[:, 0], "i": ids})
    np.testing.assert_array_equal(along_1, np.take(X[:, 0], [[3, 0, 0], [0, 3, 3]], axis=1))
    np.testing.assert_array_equal(along_0, np.take(X[:, 0], [[2, 0, 0], [0, 2, 2]], axis=0))  # batch of 3


def test_take_reads_through_a_clamped_computed_index():
    x = gn.placeholder("x", (5, 3))
    i = gn.placeholder("i", (None,), np.int32)
    lp, _ = lower(Program([gn.take(x, i, axis=0)]))
    (load,) = [ld for k in lp.kernels for ld in k.loads() if isinstance(ld, LoadAt)]
    assert "max(min(" in str(load.index), load.index


def test_take_of_constants_lists_and_flattened_tensors():
    x = gn.placeholder("x", (4, 3))
    a = RNG.normal(size=(4, 3)).astype(np.float32)
    got = _all_backends([gn.take(x, [2, 0, 2], 0), gn.take(x, np.array([[1, 11]]), None),
                         gn.take(x, gn.cast(gn.constant(np.array([2.7, 0.2])), np.int32), 1)], {"x": a})
    np.testing.assert_array_equal(got[0], a[[2, 0, 2]])
    np.testing.assert_array_equal(got[1], np.take(a, [[1, 11]]))
    np.testing.assert_array_equal(got[2], a[:, [2, 0]])


def test_scatter_add_sums_duplicates_and_clamps_like_take():
    u = gn.placeholder("u", (None, 2))
    i = gn.placeholder("i", (None,), np.int64)
    updates = RNG.normal(size=(6, 2)).astype(np.float32)
    ids = np.array([1, 1, -1, 9, 0, 1])
    (got,) = _all_backends([gn.scatter_add(u, i, 0, 4)], {"u": updates, "i": ids})
    want = np.zeros((4, 2), np.float32)
    for row, j in zip(updates, [1, 1, 3, 3, 0, 1]):
        want[j] += row
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_take_gradient_is_a_scatter_add_and_its_gradient_a_take(axis):
    x = RNG.normal(size=(3, 4, 2))
    ids = np.array([[1, -1], [5, 1]])  # a duplicate, a negative and a clamped index
    check_grad(lambda a: gn.take(a, gn.constant(ids), axis), [x])
    g = RNG.normal(size=x.shape[:axis] + ids.shape + x.shape[axis + 1:])
    check_grad(lambda a: gn.scatter_add(a, gn.constant(ids), axis, x.shape[axis]), [g])


def test_concat_stack_split_match_numpy_on_every_backend():
    a = gn.placeholder("a", (None, 2, 3))
    b = gn.placeholder("b", (None, 1, 3))
    c = gn.placeholder("c", (None, 2, 3))
    fa, fb, fc = (RNG.normal(size=(3,) + s).astype(np.float32) for s in [(2, 3), (1, 3), (2, 3)])
    parts = gn.split(a, [1, 5], axis=2)
    got = _all_backends([gn.concat([a, b, c], 1), gn.concat([a, c, a], -1), gn.stack([a, c], 1), gn.stack([a, c], -1),
                         *parts, *gn.split(gn.concat([a, c], 1), 2, axis=1)], {"a": fa, "b": fb, "c": fc})
    want = [np.concatenate([fa, fb, fc], 1), np.concatenate([fa, fc, fa], -1), np.stack([fa, fc], 1),
            np.stack([fa, fc], -1), *np.split(fa, [1, 5], axis=2), fa, fc]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_concat_of_bools_and_ints():
    m = gn.placeholder("m", (2, 2), np.bool_)
    k = gn.placeholder("k", (2, 2), np.int32)
    fm, fk = np.array([[True, False], [False, True]]), np.arange(4, dtype=np.int32).reshape(2, 2)
    got = _all_backends([gn.concat([m, m], 0), gn.concat([k, k * 3], 1)], {"m": fm, "k": fk})
    np.testing.assert_array_equal(got[0], np.concatenate([fm, fm], 0))
    np.testing.assert_array_equal(got[1], np.concatenate([fk, fk * 3], 1))


@pytest.mark.parametrize("pads,mode", [(((0, 0), (1, 2), (0, 3)), "constant"), (2, "constant"),
                                       (((0, 0), (2, 1), (3, 1)), "reflect"), (((0, 0), (1, 1), (0, 0)), "reflect")])
def test_pad_matches_numpy_on_every_backend(pads, mode):
    x = gn.placeholder("x", (3, 5, 4))
    (got,) = _all_backends([gn.pad(x, pads, mode=mode, value=0.5) if mode == "constant" else
                            gn.pad(x, pads, mode=mode)], {"x": X})
    kwargs = {"constant_values": 0.5} if mode == "constant" else {}
    np.testing.assert_array_equal(got, np.pad(X, pads, mode=mode, **kwargs))


def test_pad_and_flip_on_a_batched_tensor():
    x = gn.placeholder("x", (None, 5, 4))
    got = _all_backends([gn.pad(x, ((0, 0), (1, 0), (2, 2))), gn.flip(x, 0), gn.flip(x), gn.flip(x, (0, 2))[:, 1:3]],
                        {"x": X})
    np.testing.assert_array_equal(got[0], np.pad(X, ((0, 0), (1, 0), (2, 2))))
    np.testing.assert_array_equal(got[1], X[::-1])
    np.testing.assert_array_equal(got[2], np.flip(X))
    np.testing.assert_array_equal(got[3], np.flip(X, (0, 2))[:, 1:3])


@pytest.mark.parametrize("build", [
    lambda x: x[:, 1:4:2, ::-1] * x[:, :2, :],
    lambda x: gn.concat([x, gn.tanh(x)[:, ::-1]], 1),
    lambda x: gn.pad(x, ((0, 0), (2, 1), (1, 1)), mode="reflect"),
    lambda x: gn.stack(gn.split(x, [1, 3], axis=2)[::2], 0),
    lambda x: gn.flip(x, (0, 1))[:, :, None, 1],
])
def test_gradients_match_central_differences(build):
    check_grad(build, [RNG.normal(size=(3, 5, 4))], shapes=[(None, 5, 4)])


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_second_derivatives_through_indexing_match_numpy(backend):
    x = gn.placeholder("x", (None, 4), np.float64)
    y = gn.sum(gn.exp(gn.concat([x[:, ::-1], gn.take(x, [0, 3, 3], 1)], 1)) ** 2)
    (g,) = gn.gradients(y, [x])
    (h,) = gn.gradients(gn.sum(g * g), [x])
    feeds = {"x": RNG.normal(size=(3, 4)) * 0.3}
    np.testing.assert_allclose(run([h], feeds, backend=backend)[0], run([h], feeds)[0], rtol=1e-10)


# ---- bad input ------------------------------------------------------------------------------
def _error(fn, kind=gn.ShapeError):
    with pytest.raises(kind) as info:
        fn()
    return str(info.value)


def test_out_of_range_int_index_names_the_op_the_shape_and_the_line():
    x = gn.placeholder("x", (None, 3))
    message = _error(lambda: x[:, 3])
    assert "x[...]" in message and "index 3" in message and "(N, 3)" in message and "test_indexing.py" in message
    assert "too many indices" in _error(lambda: x[0, 1, 2])
    assert "single ellipsis" in _error(lambda: x[..., ...])
    assert "step cannot be zero" in _error(lambda: x[:, ::0])


def test_the_batch_axis_takes_whole_slices_only():
    x = gn.placeholder("x", (None, 3))
    for key in (np.s_[0], np.s_[:2], np.s_[1:], np.s_[::2]):
        assert "batch axis" in _error(lambda: x[key])
    assert "batch axis" in _error(lambda: gn.pad(x, 1))
    assert "batch axis" in _error(lambda: gn.concat([x, x], 0))
    assert "batch axis" in _error(lambda: gn.split(x, 2, 0))


def test_tensor_indices_and_iteration_point_to_take():
    x = gn.placeholder("x", (4, 3))
    assert "gn.take" in _error(lambda: x[gn.constant(np.array([1, 2]))], TypeError)
    assert "gn.take" in _error(lambda: x[[1, 2]], TypeError)
    assert "not iterable" in _error(lambda: list(x), TypeError)


def test_float_indices_and_mismatched_joins_are_shape_errors():
    x = gn.placeholder("x", (4, 3))
    message = _error(lambda: gn.take(x, gn.constant(np.array([1.0])), 0))
    assert message.startswith("take: indices must be an integer tensor, got float64 (1,)") and "test_indexing.py" in message
    message = _error(lambda: gn.concat([x, gn.placeholder("y", (4, 2))], 0))
    assert message.startswith("concat:") and "(4, 3) and (4, 2)" in message and "test_indexing.py" in message
    assert "one shape" in _error(lambda: gn.stack([x, x.T]))
    assert "equal parts" in _error(lambda: gn.split(x, 3))
    assert "dtype mismatch" in _error(lambda: gn.concat([x, gn.placeholder("i", (4, 3), np.int32)], 1))
    assert "mode must be" in _error(lambda: gn.pad(x, 3, mode="replicate"), ValueError)
    assert "non-negative" in _error(lambda: gn.pad(x, -1))
    assert "empty" in _error(lambda: gn.take(gn.placeholder("e", (0, 2)), [0], 0))
    assert "do not hold" in _error(lambda: gn.scatter_add(x, gn.constant(np.array([0, 1])), 0, 5))


# ---- Keras layers ---------------------------------------------------------------------------
def test_embedding_layer_trains_and_summarizes_like_keras(capsys):
    ids = gn.layers.Input(shape=(3,), dtype=np.int32)
    table = gn.layers.Embedding(10, 4, name="embed")
    pooled = gn.layers.Flatten()(table(ids))
    model = gn.Model(ids, gn.layers.Dense(1)(pooled))
    model.summary()
    out = capsys.readouterr().out
    assert "(None, 3, 4)" in out and "40" in out
    assert table.count_params() == 40
    model.compile(optimizer=gn.optim.SGD(0.1), loss="mse", backend="llvm")
    x = RNG.integers(0, 10, size=(32, 3)).astype(np.int32)
    y = (x[:, :1] % 2).astype(np.float32)
    before = table.get_weights()[0].copy()
    history = model.fit(x, y, batch_size=8, epochs=20, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    unused = sorted(set(range(10)) - set(x.ravel().tolist()))
    np.testing.assert_array_equal(table.get_weights()[0][unused], before[unused])  # rows no id selects stay


def test_embedding_casts_float_ids_and_predicts_the_table_rows():
    ids = gn.layers.Input(shape=(2,))
    layer = gn.layers.Embedding(5, 3)
    model = gn.Model(ids, layer(ids))
    table = layer.get_weights()[0]
    got = model.predict(np.array([[0, 4], [2.9, 1]], np.float32))
    np.testing.assert_array_equal(got, table[[[0, 4], [2, 1]]])
    assert gn.layers.from_config("Embedding", layer.get_config()).output_dim == 3


def test_concatenate_layer_joins_any_non_batch_axis():
    a, b = gn.layers.Input(shape=(2, 3)), gn.layers.Input(shape=(2, 5))
    joined = gn.layers.Concatenate()([a, b])
    assert joined.shape == (None, 2, 8)
    model = gn.Model([a, b], joined)
    fa, fb = RNG.normal(size=(4, 2, 3)).astype(np.float32), RNG.normal(size=(4, 2, 5)).astype(np.float32)
    np.testing.assert_array_equal(model.predict([fa, fb]), np.concatenate([fa, fb], -1))
    with pytest.raises(ValueError, match="equal on the other axes"):
        gn.layers.Concatenate(axis=1)([a, b])
    with pytest.raises(ValueError, match="non-batch axis"):
        gn.layers.Concatenate(axis=0)([a, a])


def test_flip_and_slice_of_a_scalar_keep_its_shape():
    """Found by the fuzzer: the numpy references returned shape (1,) for a 0-d input
    (np.ascontiguousarray makes at least 1-d), which constant folding then refused."""
    x = gn.placeholder("x", (), np.float64)
    c = gn.constant(np.float32(1.5))
    for fetch, feeds in [(gn.ops.apply("flip", [x], axes=()), {"x": np.float64(2.0)}),
                         (gn.ops.apply("strided_slice", [x], slices=()), {"x": np.float64(2.0)}),
                         (gn.ops.apply("flip", [c], axes=()), {})]:
        (got,) = _all_backends([fetch], feeds)
        assert got.shape == ()


def test_take_at_a_reductions_result_reads_it_from_memory():
    """Fuzz finding 0:24187: a take whose index is an argmin fused into the argmin's kernel read its
    table at the running accumulator (the loop IR refuses an index that uses `acc`); it joins a kernel of
    its own, after the reduction's result is stored."""
    x = gn.placeholder("x", (None, 3))
    table = gn.placeholder("table", (4,))
    picked = gn.take(table, gn.argmin(x, axis=1), axis=0)
    xs = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0], [1.0, 1.0, 4.0]], np.float32)
    values = np.array([10.0, 20.0, 30.0, 40.0], np.float32)
    for got in _all_backends([picked], {"x": xs, "table": values}):
        np.testing.assert_array_equal(got, values[np.argmin(xs, axis=1)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_take_along_an_axis_of_one_element_adds_every_gradient(backend):
    """Fuzz finding 0:32110: take's indices on an axis of one element clamp to 0, so the gradient's
    scatter index does not use the indices' axis at all; every value of that loop var adds into the
    same elements, which must run serially (OpenCL's work-items lost all but one of the additions)."""
    x = gn.placeholder("x", (None, 3, 1), np.float64)
    w = gn.placeholder("w", (None, 3, 5), np.float64)
    (g,) = gn.gradients(gn.sum(gn.take(x, np.array([0, 0, 0, 0, 0], np.int32), axis=2) * w), [x])
    kernel = next(k for k in lower(Program([g]))[0].kernels if any(s.accumulate for s in k.stores))
    assert 2 in kernel.serial_vars()
    weights = np.random.default_rng(0).uniform(0.5, 1.5, (4, 3, 5))
    got = gn.compile(g, backend=backend)(x=np.ones((4, 3, 1)), w=weights)
    np.testing.assert_allclose(got, weights.sum(axis=2, keepdims=True), rtol=1e-14)
