"""Keras's API on graphnet models: optimizer argument names, Sequential().add and input_shape=,
the accessors, the *_on_batch methods, model(x), fit's class_weight / sample_weight /
steps_per_epoch / validation_freq, verbose on evaluate and predict, the callbacks' Keras arguments,
and checkpoints (Sequential round trip, Keras suffixes, file permissions)."""
import os
import stat
import zipfile

import numpy as np
import pytest

import graphnet as gn
from graphnet.callbacks import Callback, EarlyStopping, LearningRateScheduler
from graphnet.layers import Dense, Dropout, Input

BACKEND = "numpy"


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, :1] - x[:, 1:2] > 0).astype(np.float32)
    return x, y


def sequential(**compile_args):
    gn.set_seed(0)
    model = gn.Sequential([Dense(8, activation="relu", input_shape=(4,)), Dense(1, activation="sigmoid")])
    model.compile(**{"optimizer": "adam", "loss": "binary_crossentropy", "metrics": ["accuracy"], "backend": BACKEND,
                     **compile_args})
    return model


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


# ---- optimizers: Keras's argument names, PyTorch's kept as aliases -------------------------------------
@pytest.mark.parametrize("keras_args, torch_args", [
    ({"learning_rate": 0.05, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-6},
     {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6}),
    ({"learning_rate": 0.1, "momentum": 0.9, "nesterov": True}, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ({"learning_rate": 0.01, "rho": 0.9, "momentum": 0.5, "epsilon": 1e-6},
     {"lr": 0.01, "alpha": 0.9, "momentum": 0.5, "eps": 1e-6}),
    ({"learning_rate": 0.1, "epsilon": 1e-6}, {"lr": 0.1, "eps": 1e-6}),
    ({"learning_rate": 0.5, "rho": 0.8, "epsilon": 1e-5}, {"lr": 0.5, "rho": 0.8, "eps": 1e-5}),
], ids=["Adam", "SGD", "RMSprop", "Adagrad", "Adadelta"])
def test_optimizers_take_keras_names(keras_args, torch_args, request):
    cls = getattr(gn.optimizers, request.node.callspec.id)
    x, y = data()
    trained = []
    for args in (keras_args, torch_args):
        model = sequential(optimizer=cls(**args))
        model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        trained.append(model.get_weights())
    assert same(*trained)
    assert float(cls(**keras_args).learning_rate.value) == keras_args["learning_rate"]


def test_optimizer_names_given_twice_are_refused():
    with pytest.raises(TypeError, match="lr=0.2 and learning_rate=0.1"):
        gn.optim.Adam(lr=0.2, learning_rate=0.1)
    with pytest.raises(TypeError, match="betas"):
        gn.optim.Adam(betas=(0.5, 0.9), beta_1=0.8)


# ---- Sequential, build, accessors ----------------------------------------------------------------------
def test_sequential_add_with_input_shape_and_keras_accessors():
    gn.set_seed(0)
    model = gn.Sequential(name="net")
    model.add(Dense(8, activation="relu", input_shape=(4,), name="hidden"))
    model.add(Dropout(0.1))
    model.add(Dense(1, activation="sigmoid"))
    assert [layer.name for layer in model.layers] == ["hidden", "dropout", "dense"]
    assert model.get_layer("hidden") is model.layers[0] and model.get_layer(index=-1) is model.layers[2]
    assert model.input_shape == (None, 4) and model.output_shape == (None, 1)
    assert model.layers[0].output_shape == (None, 8) and model.layers[0].input_shape == (None, 4)
    assert model.count_params() == 4 * 8 + 8 + 8 + 1 == sum(layer.count_params() for layer in model.layers)
    assert model.metrics_names == []
    model.compile("adam", "binary_crossentropy", ["accuracy"], backend=BACKEND)
    assert model.metrics_names == ["loss", "accuracy"]
    kernel, bias = model.layers[0].get_weights()
    assert kernel.shape == (4, 8) and np.array_equal(kernel, model.get_weights()[0])
    with pytest.raises(ValueError, match="no layer named 'nope'.*hidden"):
        model.get_layer("nope")


def test_sequential_without_input_builds_on_first_fit_and_keeps_its_compile():
    x, y = data()
    gn.set_seed(0)
    model = gn.Sequential([Dense(8, activation="relu"), Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"], backend=BACKEND)
    with pytest.raises(ValueError, match="not been built yet"):
        model.count_params()
    history = model.fit(x, y, epochs=2, verbose=0)
    assert model.input_shape == (None, 4) and set(history.history) == {"loss", "accuracy"}
    built = gn.Sequential([Dense(3)])
    built.build((None, 5))
    assert built.output_shape == (None, 3) and built.count_params() == 18


def test_on_batch_methods_and_calling_the_model_on_arrays():
    x, y = data(16)
    model = sequential(optimizer=gn.optim.SGD(learning_rate=0.1))
    before = model.get_weights()
    loss, accuracy = model.test_on_batch(x, y)
    assert model.test_on_batch(x, y, return_dict=True) == {"loss": loss, "accuracy": accuracy}
    assert same(before, model.get_weights())
    np.testing.assert_allclose(model.evaluate(x, y, batch_size=16, verbose=0), [loss, accuracy], rtol=1e-6)
    step_loss, _ = model.train_on_batch(x, y)
    assert step_loss == pytest.approx(loss, rel=1e-6) and not same(before, model.get_weights())
    np.testing.assert_array_equal(model.predict_on_batch(x), model.predict(x))
    np.testing.assert_array_equal(model(x), model.predict(x))


def test_evaluate_and_predict_take_verbose(capsys):
    x, y = data(40)
    model = sequential()
    model.evaluate(x, y, verbose=0)
    model.predict(x, verbose=0)
    assert capsys.readouterr().out == ""
    model.predict(x, verbose=1)
    assert capsys.readouterr().out.startswith("2/2 - ")


def test_evaluate_prints_a_keras_line(capsys):
    x, y = data(40)
    model = sequential()
    loss, accuracy = model.evaluate(x, y, batch_size=16, verbose=1)
    out = capsys.readouterr().out
    assert out.startswith("3/3 - ") and f"loss: {loss:.4f} - accuracy: {accuracy:.4f}" in out


# ---- fit: class_weight, sample_weight, steps_per_epoch, validation_freq -------------------------------
def test_sample_weight_zero_drops_samples_and_two_compensates():
    """mean(w * loss) with w = 2 on half the samples and 0 on the others is the mean loss of that half."""
    x, y = data(32)
    keep = np.arange(32) % 2 == 0
    weighted, subset = sequential(optimizer="sgd"), sequential(optimizer="sgd")
    weighted.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0, sample_weight=np.where(keep, 2.0, 0.0))
    subset.fit(x[keep], y[keep], batch_size=16, epochs=3, shuffle=False, verbose=0)
    for a, b in zip(weighted.get_weights(), subset.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert weighted.evaluate(x[keep], y[keep], verbose=0) == subset.evaluate(x[keep], y[keep], verbose=0)


def test_class_weight_is_the_per_class_sample_weight_and_plain_fit_is_unchanged():
    x, y = data(48)
    by_class, by_sample, plain = sequential(), sequential(), sequential()
    by_class.fit(x, y, batch_size=16, epochs=2, verbose=0, class_weight={0: 0.5, 1: 3.0})
    by_sample.fit(x, y, batch_size=16, epochs=2, verbose=0, sample_weight=np.where(y[:, 0] == 1, 3.0, 0.5))
    assert same(by_class.get_weights(), by_sample.get_weights())
    plain.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert not same(plain.get_weights(), by_class.get_weights())
    with pytest.raises(ValueError, match=r"no weight for class\(es\) \[1\]"):
        sequential().fit(x, y, verbose=0, class_weight={0: 1.0})


def test_sparse_class_weight_and_weighted_evaluate():
    gn.set_seed(0)
    model = gn.Sequential([Input((4,)), Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", backend=BACKEND)
    x = data(30)[0]
    ids = np.arange(30) % 3
    model.fit(x, ids, epochs=1, verbose=0, class_weight={0: 1.0, 1: 2.0, 2: 0.0})
    p = model.predict(x)
    per_sample = -np.log(p[np.arange(30), ids])
    weights = np.array([1.0, 2.0, 0.0])[ids]
    assert model.evaluate(x, ids, sample_weight=weights, verbose=0) == pytest.approx(np.mean(weights * per_sample),
                                                                                     rel=1e-5)


def test_steps_per_epoch_and_validation_freq():
    x, y = data(40)
    model = sequential()
    steps = []

    class Count(Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(batch)
    history = model.fit(x, y, batch_size=16, epochs=4, steps_per_epoch=5, validation_split=0.2, validation_freq=2,
                        callbacks=[Count()], verbose=0)
    assert steps == list(range(5)) * 4 and history.params["steps"] == 5
    step_var = next(v for v in model.optimizer.variables() if v.name.endswith("/step"))
    assert int(step_var.value) == 20
    assert len(history.history["loss"]) == 4 and len(history.history["val_loss"]) == 2
    history = model.fit(x, y, epochs=3, validation_data=(x, y), validation_freq=[1, 3], verbose=0)
    assert len(history.history["val_accuracy"]) == 2


# ---- callbacks ----------------------------------------------------------------------------------------
def test_on_train_batch_end_overrides_are_called_once_per_batch():
    calls = []

    class Keras(Callback):
        def on_train_batch_begin(self, batch, logs=None):
            calls.append(("begin", batch))

        def on_train_batch_end(self, batch, logs=None):
            calls.append(("end", batch, sorted(logs)))

    class Old(Callback):
        def on_batch_end(self, batch, logs=None):
            calls.append(("old", batch))
    x, y = data(20)
    sequential().fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[Keras(), Old()])
    assert calls == [("begin", 0), ("end", 0, ["accuracy", "loss"]), ("old", 0),
                     ("begin", 1), ("end", 1, ["accuracy", "loss"]), ("old", 1)]


def test_early_stopping_verbose_baseline_and_start_from_epoch(capsys):
    x, y = data()

    class Scores(Callback):
        def __init__(self, scores):
            self.scores = scores

        def on_epoch_end(self, epoch, logs=None):
            logs["score"] = self.scores[epoch]
    stopper = EarlyStopping(monitor="score", patience=2, verbose=1, restore_best_weights=True)
    history = sequential().fit(x, y, epochs=10, verbose=0, callbacks=[Scores([5, 3, 4, 4, 4, 1, 1, 1, 1, 1]), stopper])
    assert history.epoch == [0, 1, 2, 3]
    assert capsys.readouterr().out == ("Epoch 4: early stopping\n"
                                       "Restoring model weights from the end of the best epoch: 2.\n")
    # improvements that do not beat the baseline do not reset the patience (Keras's rule)
    scores = [5, 4, 3, 3, 3, 3, 3, 3, 3, 3]
    history = sequential().fit(x, y, epochs=10, verbose=0, callbacks=[
        Scores(scores), EarlyStopping(monitor="score", patience=3, baseline=1.0)])
    assert history.epoch == [0, 1, 2, 3]
    history = sequential().fit(x, y, epochs=10, verbose=0, callbacks=[
        Scores(scores), EarlyStopping(monitor="score", patience=3)])
    assert history.epoch == [0, 1, 2, 3, 4, 5]
    # warm-up epochs are not monitored
    history = sequential().fit(x, y, epochs=10, verbose=0, callbacks=[
        Scores([1, 9, 9, 9, 8, 7, 9, 9, 9, 9]), EarlyStopping(monitor="score", patience=1, start_from_epoch=3)])
    assert history.epoch == [0, 1, 2, 3, 4, 5, 6]


def test_learning_rate_scheduler_takes_a_one_argument_schedule(capsys):
    x, y = data()
    model = sequential(optimizer=gn.optim.SGD(learning_rate=0.1))
    history = model.fit(x, y, epochs=3, verbose=0,
                        callbacks=[LearningRateScheduler(lambda epoch: 0.1 * 0.5 ** epoch, verbose=1)])
    assert history.history["lr"] == pytest.approx([0.1, 0.05, 0.025])
    assert "Epoch 3: LearningRateScheduler setting learning rate to 0.025." in capsys.readouterr().out


def test_reduce_lr_on_plateau_and_lambda_callback():
    x, y = data()
    seen = []

    class Flat(Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["score"] = 1.0
    model = sequential(optimizer=gn.optim.SGD(learning_rate=0.1))
    history = model.fit(x, y, epochs=4, verbose=0, callbacks=[
        Flat(), gn.callbacks.ReduceLROnPlateau(monitor="score", factor=0.5, patience=1),
        gn.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))])
    assert history.history["lr"] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert seen == [0, 1, 2, 3]


# ---- checkpoints --------------------------------------------------------------------------------------
def test_saved_sequential_reloads_as_sequential(tmp_path):
    x, y = data()
    model = sequential()
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = gn.models.load_model(tmp_path / "m.npz")
    assert type(loaded) is gn.Sequential and [type(layer).__name__ for layer in loaded.layers] == ["Dense", "Dense"]
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    loaded.add(Dense(1, activation="sigmoid"))  # a Sequential still
    assert loaded.output_shape == (None, 1) and len(loaded.layers) == 3


@pytest.mark.parametrize("name", ["m.keras", "m.h5", "w.weights.h5"])
def test_keras_suffixes_get_graphnets_archive_with_a_warning(tmp_path, name):
    x, y = data(8)
    model = sequential()
    with pytest.warns(UserWarning, match="graphnet writes its own .npz archive under this name.*Keras cannot"):
        (model.save_weights if "weights" in name else model.save)(tmp_path / name)
    assert os.listdir(tmp_path) == [name]
    if "weights" in name:
        sequential().load_weights(tmp_path / name)
    else:
        np.testing.assert_array_equal(gn.load_model(tmp_path / name).predict(x), model.predict(x))


def test_real_keras_files_are_refused_clearly(tmp_path):
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    with pytest.raises(ValueError, match="HDF5 file .Keras's .h5 format."):
        gn.load_model(h5)
    archive = tmp_path / "model.keras"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", b"")
    with pytest.raises(ValueError, match="is a Keras .keras archive"):
        gn.load_model(archive)


def test_checkpoints_get_the_usual_permissions(tmp_path):
    model = sequential()
    old = os.umask(0o022)
    try:
        model.save(tmp_path / "a.npz")
        model.save_weights(tmp_path / "w.npz")
        os.umask(0o077)
        model.save(tmp_path / "private.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.npz").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "w.npz").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "private.npz").st_mode) == 0o600
    os.chmod(tmp_path / "a.npz", 0o640)
    model.save(tmp_path / "a.npz")  # replacing a file keeps its mode, as writing it in place would
    assert stat.S_IMODE(os.stat(tmp_path / "a.npz").st_mode) == 0o640


def test_graphnet_demo_on_a_terminal_without_tqdm(monkeypatch, capsys):
    """A plain install has no tqdm: `graphnet demo` on a terminal printed ModuleNotFoundError."""
    import sys
    from graphnet import cli
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert cli.main(["demo", "--backend", "numpy", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "Epoch 3/3 - 10 steps - " in out and "val_accuracy: " in out


def test_compile_before_add_waits_for_the_input():
    model = gn.Sequential()
    model.compile(optimizer="sgd", loss="mse", backend=BACKEND)
    model.add(Dense(2, input_shape=(3,)))
    assert model.metrics_names == ["loss"]
    assert model.evaluate(np.zeros((4, 3), np.float32), np.zeros((4, 2), np.float32)) == 0.0
