"""Model.evaluate and Model.predict run their batches through Function.run_steps (one native call for
all of them) and give exactly what the batch-by-batch loop gives: the same floats, with and without a
short last batch, sample weights, dropout in the model, several outputs; a callback with a
batch-level hook gets exactly its calls (the loop then goes batch by batch). Fit's native loop is
tested in test_run_steps.py."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
import codegen.llvm.call as call_path

FEATURES, CLASSES = 5, 3


@pytest.fixture(params=["native", "python"])
def implementation(request, monkeypatch):
    """The C loop of run_steps, or its Python fallback."""
    if request.param == "native" and call_path.native is None:
        pytest.skip("the C call path was not built (no C compiler at install time)")
    monkeypatch.setattr(call_path, "native", call_path.native if request.param == "native" else None)
    return request.param


def _model(native: bool, dropout: float = 0.0, two_outputs: bool = False) -> gn.Model:
    """A fresh, identically seeded classifier (trained one epoch so its weights are not the initial ones)."""
    gn.reset_default_graph()
    gn.set_seed(0)
    inputs = gn.layers.Input((FEATURES,))
    h = gn.layers.Dense(8, activation="relu")(inputs)
    h = gn.layers.Dropout(dropout)(h) if dropout else h
    outputs = gn.layers.Dense(CLASSES, activation="softmax", name="classes")(h)
    if two_outputs:
        outputs = [outputs, gn.layers.Dense(1, name="value")(h)]
    model = gn.Model(inputs, outputs)
    model.compile("adam", ["sparse_categorical_crossentropy", "mse"] if two_outputs else
                  "sparse_categorical_crossentropy", ["accuracy"])
    model._native_fit = native
    x, y = _data(two_outputs)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return model


def _data(two_outputs: bool = False, n: int = 61):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, FEATURES)).astype(np.float32)
    labels = rng.integers(0, CLASSES, n).astype(np.int32)
    return x, ([labels, x[:, :1] * 2.0] if two_outputs else labels)


EVALUATE = [
    {"batch_size": 16},  # 61 = 3 x 16 + 13: a short last batch
    {"batch_size": 61},
    {"batch_size": 7, "steps": 4},
    {"batch_size": 10, "weighted": True},
]
PREDICT = [{"batch_size": 16}, {"batch_size": 100}, {"batch_size": 5, "steps": 3}]


@pytest.mark.parametrize("model_options", [{}, {"dropout": 0.5}, {"two_outputs": True}], ids=str)
def test_evaluate_and_predict_are_the_same_with_the_native_loop(implementation, model_options):
    native, by_batch = _model(True, **model_options), _model(False, **model_options)
    x, y = _data(model_options.get("two_outputs", False))
    weights = np.linspace(0, 2, len(x))
    for options in EVALUATE:
        options = dict(options)
        if options.pop("weighted", False):
            options["sample_weight"] = [weights, weights] if model_options.get("two_outputs") else weights
        assert native.evaluate(x, y, return_dict=True, **options) == by_batch.evaluate(x, y, return_dict=True,
                                                                                          **options)  # exact floats
    for options in PREDICT:
        got, want = native.predict(x, **options), by_batch.predict(x, **options)
        got, want = (r if isinstance(r, list) else [r] for r in (got, want))
        for a, b in zip(got, want):
            assert a.shape[0] == min(len(x), options["batch_size"] * options.get("steps", len(x)))
            np.testing.assert_array_equal(a, b)


def _counting_run_steps(monkeypatch) -> list:
    calls = []
    run_steps = gn.Function._run_checked_steps
    monkeypatch.setattr(gn.Function, "_run_checked_steps", lambda self, *a, **k: (calls.append(a[1]), run_steps(self, *a, **k))[1])
    return calls


def test_evaluate_and_predict_use_one_native_call(monkeypatch):
    # an OpenCL function earlier in the process sends host steps through the coherent path
    # (Variable.any_mirrors: no native loop); this model's variables have no device copies
    monkeypatch.setattr(gn.graph.Variable, "any_mirrors", False)
    model = _model(True)
    calls = _counting_run_steps(monkeypatch)
    x, y = _data()
    model.evaluate(x, y, batch_size=8)
    model.predict(x, batch_size=8)
    # fit's training batches go through _sum_checked_steps (the native sums), its validation in one call
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, validation_split=0.25)
    assert calls == [8, 8, 8]


class _Recorder(gn.callbacks.Callback):
    """Records every call of the hooks it overrides."""

    def __init__(self, hooks: list[str]):
        super().__init__()
        self.calls = []
        for hook in hooks:
            setattr(self, hook, lambda batch, logs=None, hook=hook: self.calls.append(
                (hook, batch, {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in (logs or {}).items()})))


@pytest.mark.parametrize("method, hooks", [
    ("evaluate", ["on_test_batch_begin", "on_test_batch_end"]),
    ("evaluate", ["on_test_batch_end"]),
    ("predict", ["on_predict_batch_begin", "on_predict_batch_end"]),
    ("predict", ["on_predict_batch_end"]),
])
def test_batch_level_callbacks_get_exactly_their_calls(monkeypatch, method, hooks):
    calls = _counting_run_steps(monkeypatch)
    recorder = _Recorder(hooks)
    x, y = _data()
    model = _model(True)
    calls.clear()
    args = (x,) if method == "predict" else (x, y)
    result = getattr(model, method)(*args, batch_size=16, callbacks=[recorder])
    assert calls == []  # batch by batch
    assert [(h, b) for h, b, _ in recorder.calls] == [(h, b) for b in range(4) for h in hooks]
    if method == "evaluate":
        ends = [logs for h, _, logs in recorder.calls if h == "on_test_batch_end"]
        assert ends[-1]["loss"] == (result[0] if isinstance(result, list) else result)
    else:
        ends = [logs["outputs"][0] for h, _, logs in recorder.calls if h == "on_predict_batch_end"]
        np.testing.assert_array_equal(np.concatenate(ends), result)
    other = gn.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: None)  # no batch hook: native
    getattr(model, method)(*args, batch_size=16, callbacks=[other])
    assert calls == [16]


def test_fit_checks_its_arrays_against_the_placeholders_once_per_function(monkeypatch):
    model = _model(True)
    checked = []
    datasets = gn.Function._datasets
    monkeypatch.setattr(gn.Function, "_datasets", lambda self, feeds: (checked.append(self), datasets(self, feeds))[1])
    x, y = _data()
    for _ in range(3):
        model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert checked == []  # the first fit (in _model) checked the train function
    model.fit(x, y, batch_size=16, verbose=0, sample_weight=np.ones(len(x)))  # another function: checked once
    model.fit(x, y, batch_size=16, verbose=0, sample_weight=np.ones(len(x)))
    assert checked == [model._function("train_weighted")]
    with pytest.raises(ValueError, match="contains NaN"):  # the data's own checks stay on every call
        model.fit(np.where(x > 1, np.nan, x), y, batch_size=16, verbose=0)


def test_repeated_calls_check_their_arrays_each_time():
    """evaluate and predict make run_steps' checks once per function; every later call's own checks
    still refuse bad arrays (changing nothing) and an empty validation set still gets run_steps' error."""
    model = _model(True)
    x, y = _data()
    first = model.evaluate(x, y, batch_size=16, return_dict=True)
    predicted = model.predict(x, batch_size=16)
    np.testing.assert_array_equal(model.predict(x, batch_size=16), predicted)
    assert model.evaluate(x, y, batch_size=16, return_dict=True) == first
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.evaluate(bad, y, batch_size=16)
    with pytest.raises(ValueError, match="feature width"):
        model.predict(x[:, :4], batch_size=16)
    with pytest.raises(ValueError, match="empty"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, validation_data=(x[:0], y[:0]))


def test_later_calls_feed_their_own_arrays_to_each_placeholder():
    """Where each placeholder's array sits is recorded on a function's first call; later calls, with
    other arrays for two inputs, two outputs and their sample weights, train as the batch-by-batch
    loop does on the same arrays."""
    rng = np.random.default_rng(2)

    def data(n):
        a, b = rng.standard_normal((n, 3)).astype(np.float32), rng.standard_normal((n, 2)).astype(np.float32)
        return [a, b], [rng.integers(0, CLASSES, n), a[:, :1] - b[:, 1:]], [rng.random(n), rng.random(n)]

    calls = [data(40), data(37), data(40)]
    results = []
    for native in (True, False):
        gn.reset_default_graph()
        gn.set_seed(0)
        a, b = gn.layers.Input((3,), name="a"), gn.layers.Input((2,), name="b")
        h = gn.layers.Dense(6, activation="relu")(gn.layers.Concatenate()([a, b]))
        model = gn.Model([a, b], [gn.layers.Dense(CLASSES, activation="softmax", name="classes")(h),
                                  gn.layers.Dense(1, name="value")(h)])
        model.compile("adam", ["sparse_categorical_crossentropy", "mse"], ["accuracy"])
        model._native_fit = native
        histories = []
        for k, (x, y, w) in enumerate(calls):
            histories.append(model.fit(x, y, batch_size=8, verbose=0, sample_weight=w if k == 1 else None).history)
            histories.append(model.evaluate(x, y, batch_size=8, return_dict=True))
        results.append((histories, model.get_weights()))
    assert results[0][0] == results[1][0]
    for wa, wb in zip(results[0][1], results[1][1]):
        np.testing.assert_array_equal(wa, wb)
