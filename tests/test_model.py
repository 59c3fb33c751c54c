"""Model: compile, fit, evaluate, predict, summary, metrics and the checks on bad input."""
import io
import os
import re
import sys
import time

import numpy as np
import pytest

import graphnet as gn
import graphnet.model as model_module
from graphnet.layers import Dense, Dropout, Input

BACKEND = "numpy"  # the code generator every model in this file compiles with


def students(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, (n, 2)).astype(np.float32)
    y = (x.sum(1) + rng.normal(0, 1, n) > 10).astype(np.float32)[:, None]
    return x, y


def pass_model(optimizer="adam", metrics=("accuracy",)):
    inputs = Input((2,))
    outputs = Dense(1, activation="sigmoid")(Dense(3, activation="relu")(inputs))
    model = gn.Model(inputs, outputs)
    model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=list(metrics), backend=BACKEND)
    return model


def classifier(classes=3, loss="sparse_categorical_crossentropy", dropout=0.0, metrics=("accuracy",)):
    layers = [Input((4,)), Dense(8, activation="relu")]
    layers += [Dropout(dropout)] if dropout else []
    model = gn.Sequential(layers + [Dense(classes, activation="softmax")])
    model.compile(gn.optim.Adam(lr=1e-2), loss, list(metrics), backend=BACKEND)
    return model


def test_fit_learns_and_records_history():
    x, y = students(200)
    model = pass_model(gn.optim.Adam(lr=0.05))
    history = model.fit(x, y, epochs=30, batch_size=16, validation_split=0.25, verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 30 for v in history.history.values())
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert history.history["val_accuracy"][-1] > 0.8
    assert model.history is history and history.epoch == list(range(30))


def test_validation_split_takes_the_last_samples():
    x, y = students(40)
    model = pass_model()
    logs = model.fit(x, y, epochs=2, validation_split=0.25, verbose=0).history
    loss, accuracy = model.evaluate(x[30:], y[30:])
    assert logs["val_loss"][-1] == pytest.approx(loss, rel=1e-6)
    assert logs["val_accuracy"][-1] == pytest.approx(accuracy)


def test_validation_data_and_initial_epoch():
    x, y = students(40)
    model = pass_model()
    history = model.fit(x, y, epochs=5, initial_epoch=3, validation_data=(x[:8], y[:8]), verbose=0)
    assert history.epoch == [3, 4] and len(history.history["val_loss"]) == 2


def test_training_step_compiled_once_for_every_batch_size(monkeypatch):
    calls = []
    real = model_module.compile_function
    monkeypatch.setattr(model_module, "compile_function", lambda *a, **k: calls.append(k) or real(*a, **k))
    x, y = students(10)
    model = pass_model()
    model.fit(x, y, batch_size=4, epochs=3, validation_split=0.3, verbose=0)  # batches 4, 3 and val 3
    model.fit(x, y, batch_size=5, epochs=1, verbose=0)
    model.evaluate(x, y, batch_size=3)
    model.predict(x, batch_size=4)
    model.predict(x[:1])
    assert len(calls) == 3  # train, eval, predict


def test_evaluate_matches_numpy_and_predict_is_batched():
    x, y = students(50)
    model = pass_model(metrics=["accuracy", "mae"])
    model.fit(x, y, epochs=2, verbose=0)
    p = model.predict(x, batch_size=7)
    np.testing.assert_allclose(p, model.predict(x, batch_size=50), rtol=1e-6)
    q = np.clip(p, 1e-7, 1 - 1e-7)
    bce = -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))
    loss, accuracy, mae = model.evaluate(x, y, batch_size=9)
    assert loss == pytest.approx(bce, rel=1e-4)
    assert accuracy == pytest.approx(np.mean((p > 0.5) == y))
    assert mae == pytest.approx(np.mean(np.abs(p - y)), rel=1e-5)
    assert model.evaluate(x, y, return_dict=True).keys() == {"loss", "accuracy", "mae"}


def test_sigmoid_output_trains_through_logits():
    """Logits of 1e4 on the wrong side: the from-logits loss is ~1e4; a clipped probability loss would be ~16."""
    model = pass_model()
    w1, b1, w2, b2 = model.get_weights()
    model.set_weights([np.ones_like(w1), b1, np.full_like(w2, 1e3), b2])
    x = np.array([[5.0, 5.0 / 3]], np.float32)  # hidden = 3 * 6.67 ... -> logit = 1e3 * 3 * (20/3)
    loss = model.evaluate(x, np.zeros((1, 1), np.float32))[0]
    assert loss == pytest.approx(2e4, rel=1e-4)


def test_softmax_output_trains_through_logits():
    model = classifier(classes=3)
    w1, b1, w2, b2 = model.get_weights()
    w2[:] = 0
    w2[:, 0] = 1e3
    model.set_weights([np.abs(w1), np.zeros_like(b1), w2, b2])
    x = np.ones((1, 4), np.float32)
    logits = np.abs(w1).sum(0).sum() * 1e3
    assert model.evaluate(x, np.array([1]))[0] == pytest.approx(logits, rel=1e-4)


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", "categorical_crossentropy"])
def test_categorical_accuracy_matches_argmax_with_ties(loss):
    model = classifier(classes=3, loss=loss)
    w1, b1, w2, b2 = model.get_weights()
    model.set_weights([w1, b1, np.zeros_like(w2), b2])  # every output ties: argmax picks class 0
    x = np.random.default_rng(1).normal(size=(12, 4)).astype(np.float32)
    ids = np.array([0, 1, 2] * 4)
    y = ids if loss.startswith("sparse") else np.eye(3, dtype=np.float32)[ids]
    assert model.evaluate(x, y)[1] == pytest.approx(1 / 3)
    model.set_weights([w1, b1, w2, b2])
    p = model.predict(x)
    assert model.evaluate(x, y)[1] == pytest.approx(np.mean(p.argmax(1) == ids))


def test_multi_input_multi_output_model():
    a, b = Input((2,), name="a"), Input((3,), name="b")
    joined = gn.layers.Add()([Dense(4, activation="relu")(a), Dense(4, activation="relu")(b)])
    score = Dense(1, name="score")(joined)
    kind = Dense(3, activation="softmax", name="kind")(joined)
    model = gn.Model([a, b], [score, kind])
    with pytest.raises(ValueError, match="mae needs targets shaped like the output"):
        model.compile("adam", ["mse", "sparse_categorical_crossentropy"], ["mae"], backend=BACKEND)
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(size=(20, 2)), rng.normal(size=(20, 3))
    ys, yk = rng.normal(size=(20, 1)), rng.integers(0, 3, 20)
    model.compile("adam", ["mse", "sparse_categorical_crossentropy"], ["accuracy"], backend=BACKEND)
    history = model.fit({"a": xa, "b": xb}, {"score": ys, "kind": yk}, epochs=2, batch_size=8, verbose=0)
    assert set(history.history) == {"loss", "score_loss", "score_accuracy", "kind_loss", "kind_accuracy"}
    first = history.history
    assert first["loss"][0] == pytest.approx(first["score_loss"][0] + first["kind_loss"][0], rel=1e-5)
    score_p, kind_p = model.predict([xa, xb])
    assert score_p.shape == (20, 1) and kind_p.shape == (20, 3)


def test_recompile_keeps_weights():
    x, y = students(30)
    model = pass_model()
    model.fit(x, y, epochs=2, verbose=0)
    before = model.get_weights()
    model.compile("sgd", "mse", backend=BACKEND)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_dropout_only_in_training():
    model = classifier(dropout=0.5)
    x = np.random.default_rng(2).normal(size=(16, 4)).astype(np.float32)
    w1, b1, w2, b2 = model.get_weights()
    z = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5)
    np.testing.assert_array_equal(model.predict(x), model.predict(x))
    y = np.zeros(16, np.int64)
    model.compile(gn.optim.SGD(lr=0.0), "sparse_categorical_crossentropy", backend=BACKEND)
    train_loss = model.fit(x, y, batch_size=16, verbose=0).history["loss"][0]
    assert train_loss != pytest.approx(model.evaluate(x, y), rel=1e-3)


def test_same_seed_same_training():
    x, y = students(40)
    runs = []
    for _ in range(2):
        gn.set_seed(5)
        model = classifier(classes=2, dropout=0.3)
        model.fit(x.repeat(2, 1), y[:, 0].astype(int), epochs=3, batch_size=8, verbose=0)
        runs.append(model.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*runs))


def test_one_line_per_epoch_when_not_a_terminal(capsys):
    x, y = students(20)
    pass_model().fit(x, y, epochs=3, verbose=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[2].startswith("Epoch 3/3") and "loss:" in lines[2] and "accuracy:" in lines[2]


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Slow(gn.callbacks.Callback):
    """Makes each batch outlast tqdm's refresh interval, so the live bar is drawn."""

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(0.11)


def test_progress_bar_on_a_terminal(monkeypatch):
    out = Terminal()
    monkeypatch.setattr("sys.stdout", out)
    x, y = students(20)
    pass_model().fit(x, y, epochs=2, batch_size=4, verbose=1, callbacks=[Slow()])
    text = out.getvalue()
    assert "step/s" in text and "Epoch 1/2 3/5 - loss: " in text  # the live bar: running metrics first
    lines = text.split("\n")
    assert lines[0].endswith("Epoch 1/2 - 5 steps - " + lines[0].rsplit("Epoch 1/2 - 5 steps - ", 1)[1])
    assert all(f"Epoch {e}/2 - 5 steps" in text for e in (1, 2))


def test_bar_never_hides_validation_metrics_on_a_narrow_terminal(monkeypatch):
    """The live bar is cut to the terminal's width; each epoch then ends with its full line."""
    out = Terminal()
    out.fileno = lambda: 1  # what tqdm asks the terminal size of
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((41, 24)))  # tqdm uses 40
    x, y = students(40)
    pass_model().fit(x, y, epochs=1, batch_size=4, verbose=1, validation_split=0.25, callbacks=[Slow()])
    bar_lines = [part for part in out.getvalue().split("\r") if "step/s" in part or "|" in part]
    assert bar_lines and all(len(part.rstrip()) <= 40 for part in bar_lines)
    final = out.getvalue().rsplit("\r", 1)[1]
    assert final.startswith("Epoch 1/1 - 8 steps - ") and final.endswith("\n")
    assert all(f"{key}: " in final for key in ("loss", "accuracy", "val_loss", "val_accuracy"))


def test_plain_lines_on_a_terminal_without_tqdm(monkeypatch):
    """A plain install (no tqdm): one line per epoch on a terminal too, no ImportError."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    out = Terminal()
    monkeypatch.setattr("sys.stdout", out)
    x, y = students(20)
    pass_model().fit(x, y, epochs=2, batch_size=4, verbose=1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("Epoch 2/2 - 5 steps - ") and "\r" not in out.getvalue()
    assert re.search(r"loss: \d\.\d{4} - accuracy: \d\.\d{4}$", lines[1])


def test_log_numbers_are_formatted_as_keras_does():
    from graphnet.callbacks import format_logs, format_value
    assert format_value(2.17912) == "2.1791" and format_value(0.5) == "0.5000"
    assert format_value(0.0001234) == "1.2340e-04" and format_value(0.0) == "0.0000e+00"
    assert format_logs({"loss": 0.69314, "val_loss": 12.0}) == "loss: 0.6931 - val_loss: 12.0000"


def test_verbose_zero_is_silent(capsys):
    x, y = students(20)
    pass_model().fit(x, y, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""


def test_summary_prints_keras_style_and_returns_none(capsys):
    model = classifier(dropout=0.1)
    assert model.summary() is None
    text = capsys.readouterr().out
    assert 'Model: "sequential"' in text and "dense (Dense)" in text and "(None, 8)" in text
    assert "dropout (Dropout)" in text and "(N," not in text and "input" not in text
    assert "Total params: 67" in text  # 4*8+8 + 8*3+3
    lines = []
    model.summary(print_fn=lines.append)
    assert "\n".join(lines) + "\n" == text


@pytest.mark.parametrize("kwargs, message", [
    ({"optimizer": "adamax"}, "unknown optimizer 'adamax'"),
    ({"loss": "squared_hinge"}, "unknown loss 'squared_hinge'"),
    ({"metrics": ["f1"]}, "unknown metric 'f1'"),
    ({"backend": "cuda"}, "unknown backend 'cuda'"),
    ({"loss": ["mse", "mse"]}, "2 losses for 1 outputs"),
])
def test_compile_rejects_unknown_names(kwargs, message):
    model = pass_model()
    args = {"optimizer": "sgd", "loss": "mse", "metrics": [], "backend": "numpy", **kwargs}
    with pytest.raises(ValueError, match=message):
        model.compile(**args)


def _bad_inputs():
    x, y = students(10)
    nan_y = y.copy()
    nan_y[3] = np.nan
    nan_x = x.copy()
    nan_x[2, 1] = np.inf
    return [
        (x[:, :1], y, "feature width 1, the model expects 2"),
        (x, y[:9], "y has 9 samples but x has 10"),
        (x, nan_y, "NaN or inf .first at row 3"),
        (nan_x, y, "x: contains NaN or inf .first at row 2"),
        (x, y * 2, r"labels must lie in \[0, 1\]"),
        (x, np.ones((10, 2)), r"expected shape \(N, 1\)"),
        (x.astype(str), y, "expected numbers"),
    ]


@pytest.mark.parametrize("x, y, message", _bad_inputs())
def test_bad_input_raises_before_any_update(x, y, message):
    model = pass_model()
    before = model.get_weights()
    step = model.optimizer.variables()
    with pytest.raises(ValueError, match=message):
        model.fit(x, y, epochs=1, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert all(not v.value.any() for v in step if v.name.endswith("step"))


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, 3, 1]), r"class id 3 out of range \[0, 3\)"),
    (np.array([0, -1, 2, 1]), "class id -1 out of range"),
    (np.array([0.5, 1, 2, 1]), "integer class ids"),
    (np.array([0, np.nan, 2, 1]), "NaN"),
])
def test_sparse_labels_checked(labels, message):
    model = classifier()
    before = model.get_weights()
    with pytest.raises(ValueError, match=message):
        model.fit(np.zeros((4, 4)), labels, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_validation_data_checked_before_training():
    x, y = students(10)
    model = pass_model()
    before = model.get_weights()
    with pytest.raises(ValueError, match="validation x"):
        model.fit(x, y, validation_data=(x[:, :1], y), verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_fit_before_compile_and_bad_arguments():
    inputs = Input((2,))
    model = gn.Model(inputs, Dense(1)(inputs))
    x, y = students(10)
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(x, y)
    model.compile("sgd", "mse", backend=BACKEND)
    with pytest.raises(ValueError, match="batch_size"):
        model.fit(x, y, batch_size=0)
    with pytest.raises(ValueError, match="validation_split"):
        model.fit(x, y, validation_split=1.5)


def test_model_construction_errors():
    a = Input((2,))
    stray = Input((2,))
    with pytest.raises(ValueError, match="not among the model's inputs"):
        gn.Model(a, gn.layers.Add()([Dense(2)(a), Dense(2)(stray)]))
    with pytest.raises(ValueError, match="not been built yet.*input_shape"):
        gn.Sequential([Dense(2)]).summary()  # no input shape until build/fit/predict
    inputs = Input((2,))
    hidden = Dense(2)(inputs)
    outer = gn.Model(inputs, Dense(1)(hidden))
    inner = gn.Model(inputs, hidden)  # a model over another's layers shares their weights, as in Keras
    inner.set_weights([np.ones((2, 2)), np.zeros(2)])
    np.testing.assert_array_equal(outer.get_weights()[0], np.ones((2, 2)))
    x = Input((2,))
    with pytest.raises(ValueError, match="unique"):
        gn.Model(x, Dense(1, name="d")(Dense(2, name="d")(x)))


@pytest.mark.parametrize("loss, classes", [("binary_crossentropy", 1), ("categorical_crossentropy", 3),
                                           ("sparse_categorical_crossentropy", 3), ("mse", 1)])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_labels_are_named_by_row_for_every_loss(loss, classes, bad):
    """The range checks' extremes stand in for the finiteness check where a loss has them: NaN and
    inf still raise the same error, naming the first bad row, before any update."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 2)).astype(np.float32)
    ids = rng.integers(0, classes, 9)
    y = ids.astype(np.float64) if loss.startswith("sparse") or classes == 1 else np.eye(classes)[ids]
    y = y.reshape(9, -1) if classes == 1 else y
    y[5] = bad
    y[7] = bad
    model = gn.Sequential([gn.layers.Input((2,)), gn.layers.Dense(classes, activation="softmax" if classes > 1 else
                                                                   "sigmoid")])
    model.compile("sgd", loss)
    before = model.get_weights()
    with pytest.raises(ValueError, match=r"y: contains NaN or inf \(first at row 5\); graphnet rejects non-finite"):
        model.fit(x, y, epochs=1, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
