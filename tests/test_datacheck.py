"""fit's one-pass data check (graphnet/datacheck.py and its C extension) accepts exactly the arrays
whose elements are all finite, within the bounds and (integral) whole; everything else goes to numpy's
checks, which raise the same errors with the extension, without it, or with one that disagrees."""
import math
import sys

import numpy as np
import pytest

import graphnet as gn
from graphnet import datacheck
from graphnet.metrics import LossSpec, check_finite, check_targets

native = pytest.importorskip("graphnet._datacheck", reason="the C extension is not built (python setup.py build_ext)")

INF = math.inf
INTS = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.longlong, np.ulonglong]
FLOATS = [np.float32, np.float64]
BOUNDS = [(0.0, 1.0), (0.0, 9.0), (-INF, INF), (-2.5, 3.5), (0.5, 0.75), (3.0, 2.0), (-1e300, 1e300), (1e300, INF),
          (-INF, -1e300), (2.0 ** 63, 2.0 ** 64), (-(2.0 ** 63), -(2.0 ** 63)), (float(2 ** 24 + 1), float(2 ** 24 + 3))]


def exact(arr, low, high, integral):
    """Python's own comparisons (exact between ints and floats), element by element."""
    return all(math.isfinite(v) and low <= v <= high and (not integral or v == math.floor(v)) for v in arr.tolist())


def values_for(dtype):
    """Edge values of the type: its extremes, around 0 and 1, and (floats) non-finite and fractional ones."""
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
    edges = [0, 1, 2, 9, 10, int(info.max), int(info.min) if np.dtype(dtype).kind == "i" else 0]
    if np.dtype(dtype).kind == "f":
        edges = [0.0, -0.0, 1.0, 0.5, -1.0, 9.0, 9.5, 2.0 ** 24 + 2, 2.0 ** 24 + 4, float(info.max), float(info.min),
                 float(info.tiny) / 2, np.nan, np.inf, -np.inf]
    return np.array(edges, dtype)


@pytest.mark.parametrize("dtype", INTS + FLOATS + [np.bool_])
def test_native_matches_exact_comparisons_on_each_value_and_pair(dtype):
    values = values_for(dtype) if dtype is not np.bool_ else np.array([False, True])
    arrays = [values[i:i + 1] for i in range(len(values))] + [values[[i, j]] for i in range(len(values))
                                                               for j in range(len(values))]
    for arr in arrays:
        for low, high in BOUNDS:
            for integral in (False, True):
                assert native.within(arr, low, high, integral) == exact(arr, low, high, integral), \
                    (arr, low, high, integral)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.uint8])
@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 1000, 70000])
def test_every_position_of_a_bad_element_is_found(dtype, n):
    """The scan's blocks (and, past 64 KiB, its run without the GIL) miss no element."""
    arr = (np.arange(n) % 7).astype(dtype)
    assert native.within(arr, 0.0, 6.0, True)
    for pos in sorted({0, n // 2, n - 1, 255, 256}):
        if not 0 <= pos < n:
            continue
        bad = arr.copy()
        bad[pos] = 7
        assert not native.within(bad, 0.0, 6.0, True)
        if np.dtype(dtype).kind == "f":
            for value in (np.nan, np.inf, -np.inf, 2.5):
                bad[pos] = value
                assert not native.within(bad, 0.0, 6.0, True)
                assert native.within(bad, -INF, INF, False) == (value == 2.5)


def test_matches_numpys_reference_on_random_arrays():
    rng = np.random.default_rng(0)
    for _ in range(300):
        dtype = rng.choice([np.float32, np.float64, np.int32, np.int64, np.int8, np.uint16])
        arr = (rng.integers(-3, 12, size=int(rng.integers(0, 600))) * rng.choice([1, 0.5])).astype(dtype)
        if np.dtype(dtype).kind == "f" and arr.size and rng.random() < 0.3:
            arr[rng.integers(arr.size)] = rng.choice([np.nan, np.inf, -np.inf])
        low, high = float(rng.integers(-4, 2)), float(rng.integers(0, 13))
        integral = bool(rng.random() < 0.5)
        assert native.within(arr, low, high, integral) == datacheck.numpy_within(arr, low, high, integral)


@pytest.mark.parametrize("arr", [
    np.ones((4, 3), np.float32)[:, 1], np.ones(5, ">f4"), np.ones(5, np.float16), np.ones(5, np.longdouble),
    np.ones(5, np.complex64), np.array([b"a"]), np.ones(5, ">i8")], ids=str)
def test_buffers_it_does_not_read_are_not_accepted(arr):
    """Not C-contiguous, byte-swapped or of another format: numpy's checks decide."""
    assert native.within(arr, -INF, INF, False) is False


def test_shapes_do_not_matter():
    assert native.within(np.float64(0.5), 0.0, 1.0, False)
    assert native.within(np.zeros((2, 3, 4), np.float32), 0.0, 0.0, True)
    assert not native.within(np.full((2, 3, 4), np.nan, np.float32), -INF, INF, False)


def test_within_uses_the_extension_once_it_agrees(monkeypatch):
    monkeypatch.setattr(datacheck, "_native", None)
    assert datacheck.within(np.ones(3), 0.0, 1.0)
    assert datacheck._native is native.within


def test_without_the_extension_nothing_is_accepted(monkeypatch):
    monkeypatch.setitem(sys.modules, "graphnet._datacheck", None)  # as if it was never built
    monkeypatch.setattr(datacheck, "_native", None)
    assert not datacheck.within(np.ones(3), 0.0, 1.0)
    assert datacheck._native is datacheck._never


def test_a_disagreeing_extension_is_never_used(monkeypatch):
    monkeypatch.setattr(native, "within", lambda arr, low, high, integral: True)
    monkeypatch.setattr(datacheck, "_native", None)
    assert not datacheck.within(np.ones(3), 0.0, 1.0)
    assert datacheck._native is datacheck._never
    assert not datacheck.within(np.array([np.nan]), -INF, INF)


class _Output:
    """An output node's shape and dtype, as check_targets reads them."""

    def __init__(self, shape, dtype=np.float32):
        self.shape, self.dtype, self.ndim = shape, np.dtype(dtype), len(shape)


TARGETS = [  # (spec, output shape, targets): accepted and rejected, each kind of label
    ("binary_crossentropy", (None, 1), np.array([[0.0], [1.0], [0.25]])),
    ("binary_crossentropy", (None, 1), np.array([0, 1, 1], np.int64)),
    ("binary_crossentropy", (None, 1), np.array([True, False])),
    ("binary_crossentropy", (None, 1), np.array([[0.0], [1.5]])),
    ("binary_crossentropy", (None, 1), np.array([[0.0], [np.nan]], np.float32)),
    ("binary_crossentropy", (None, 1), np.array([[-np.inf], [0.5]], np.float32)),
    ("binary_crossentropy", (None, 2), np.array([[0.0], [1.0]])),
    ("categorical_crossentropy", (None, 3), np.array([[0, 1, 0], [1, 0, 0]], np.float32)),
    ("categorical_crossentropy", (None, 3), np.array([[0, 2, 0], [-1, 0, 0]], np.float32)),
    ("categorical_crossentropy", (None, 3), np.array([0, 2, 1])),
    ("sparse_categorical_crossentropy", (None, 3), np.array([0, 2, 1])),
    ("sparse_categorical_crossentropy", (None, 3), np.array([[0.0], [2.0]])),
    ("sparse_categorical_crossentropy", (None, 3), np.array([0, 3, 1], np.uint8)),
    ("sparse_categorical_crossentropy", (None, 3), np.array([0.0, 1.5])),
    ("sparse_categorical_crossentropy", (None, 3), np.array([0.0, np.nan])),
    ("sparse_categorical_crossentropy", (None, 3), np.array([[0, 1], [1, 2]])),
    ("sparse_categorical_crossentropy", (None, 3), np.array([-1, 0], np.int64)),
    ("sparse_categorical_crossentropy", (None, 3), np.ones(3, np.float16)),
    ("mse", (None, 2), np.array([[1e30, -1e30], [0, 7]], np.float32)),
    ("mse", (None, 2), np.array([[1.0, np.inf], [0, 7]])),
    ("mse", (None, 2), np.ones((4, 2))[:, ::-1]),
    ("mse", (None, 2), np.array([[1, 2]], ">f8")),
    ("mse", (None, 2), np.zeros((0, 2))),
]


def outcome(call):
    try:
        result = call()
    except ValueError as e:
        return "error", str(e)
    return "ok", result.dtype, result.shape, result.tolist()


@pytest.mark.parametrize("name, shape, y", TARGETS)
def test_check_targets_is_the_same_with_and_without_the_extension(monkeypatch, name, shape, y):
    """Same arrays, same errors word for word (the first bad row, the range seen, the bad class id)."""
    spec, output = LossSpec(name), _Output(shape)
    monkeypatch.setattr(datacheck, "_native", native.within)
    with_native = outcome(lambda: check_targets(y, spec, output, "y"))
    monkeypatch.setattr(datacheck, "_native", datacheck._never)
    assert outcome(lambda: check_targets(y, spec, output, "y")) == with_native


@pytest.mark.parametrize("arr", [np.ones((3, 2)), np.array([[1.0, 2.0], [np.nan, 1.0]], np.float32),
                                 np.array([[1.0], [2.0], [-np.inf]]), np.ones((3, 2), np.float16),
                                 np.array([[np.inf]], np.float16), np.ones((5, 4))[:, ::2]], ids=str)
def test_check_finite_is_the_same_with_and_without_the_extension(monkeypatch, arr):
    monkeypatch.setattr(datacheck, "_native", native.within)
    with_native = outcome(lambda: check_finite(arr, "x") or arr)
    monkeypatch.setattr(datacheck, "_native", datacheck._never)
    assert outcome(lambda: check_finite(arr, "x") or arr) == with_native


def test_fit_trains_the_same_with_and_without_the_extension(monkeypatch):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(70, 3)).astype(np.float32), (rng.random(70) > 0.5).astype(np.float32)
    results = []
    for check in (native.within, datacheck._never):
        monkeypatch.setattr(datacheck, "_native", check)
        model = gn.Sequential([gn.layers.Input((3,)), gn.layers.Dense(4, activation="relu"), gn.layers.Dense(1)])
        model.seed = 7
        model.compile(gn.optim.Adam(lr=0.01), gn.losses.BinaryCrossentropy(from_logits=True))
        model.set_weights([np.full(w.shape, 0.1, w.dtype) for w in model.get_weights()])
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
        with pytest.raises(ValueError, match=r"contains NaN or inf \(first at row 4\)"):
            model.fit(np.where(np.arange(70)[:, None] == 4, np.nan, x), y, verbose=0)
        results.append((history.history, [w.tolist() for w in model.get_weights()]))
    assert results[0] == results[1]
