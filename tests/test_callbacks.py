"""Callbacks: hook order, stop_training, EarlyStopping, ModelCheckpoint, LearningRateScheduler."""
import os

import numpy as np
import pytest

import graphnet as gn
from graphnet.callbacks import Callback, EarlyStopping, LearningRateScheduler, ModelCheckpoint
from graphnet.layers import Dense, Input

BACKEND = "numpy"  # the code generator every model in this file compiles with


def data(n=24):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return x, x @ np.array([[1.0], [-2.0], [0.5]], np.float32)


def regression(optimizer=None):
    inputs = Input((3,))
    model = gn.Model(inputs, Dense(1)(inputs))
    model.compile(optimizer or gn.optim.SGD(lr=0.05), "mse", backend=BACKEND)
    return model


class Scripted(Callback):
    """Logs a scripted 'score' per epoch and keeps a copy of the weights after each epoch."""

    def __init__(self, scores):
        self.scores, self.weights = scores, []

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.scores[epoch]
        self.weights.append(self.model.get_weights())


def test_hooks_are_called_in_order():
    events = []

    class Recorder(Callback):
        def on_train_begin(self, logs=None): events.append("train_begin")
        def on_train_end(self, logs=None): events.append("train_end")
        def on_epoch_begin(self, epoch, logs=None): events.append(f"epoch_begin {epoch}")
        def on_epoch_end(self, epoch, logs=None): events.append(f"epoch_end {epoch} {sorted(logs)}")
        def on_batch_begin(self, batch, logs=None): events.append(f"batch_begin {batch}")
        def on_batch_end(self, batch, logs=None): events.append(f"batch_end {batch} {sorted(logs)}")

    x, y = data(10)
    recorder = Recorder()
    regression().fit(x, y, batch_size=6, epochs=2, verbose=0, callbacks=[recorder])
    epoch = ["batch_begin 0", "batch_end 0 ['loss']", "batch_begin 1", "batch_end 1 ['loss']"]
    assert events == (["train_begin", "epoch_begin 0"] + epoch + ["epoch_end 0 ['loss']", "epoch_begin 1"] + epoch +
                      ["epoch_end 1 ['loss']", "train_end"])
    assert recorder.params["steps"] == 2 and recorder.params["epochs"] == 2


def test_stop_training_flag_ends_fit_after_the_epoch():
    class StopAtTwo(Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = epoch == 1

    x, y = data()
    history = regression().fit(x, y, epochs=10, verbose=0, callbacks=[StopAtTwo()])
    assert history.epoch == [0, 1]


def test_early_stopping_stops_and_restores_best_weights():
    x, y = data()
    scripted = Scripted([5, 3, 4, 4, 4, 4, 4, 1])
    stopper = EarlyStopping(monitor="score", patience=2, restore_best_weights=True)
    model = regression()
    history = model.fit(x, y, epochs=8, verbose=0, callbacks=[scripted, stopper])
    assert history.epoch == [0, 1, 2, 3]  # no improvement on epochs 2 and 3
    assert stopper.stopped_epoch == 3 and stopper.best_epoch == 1 and stopper.best == 3
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), scripted.weights[1]))
    assert not np.array_equal(scripted.weights[1][0], scripted.weights[3][0])


def test_early_stopping_without_restore_keeps_last_weights_and_min_delta():
    x, y = data()
    scripted = Scripted([5.0, 4.95, 4.9, 4.85, 1.0])
    model = regression()
    history = model.fit(x, y, epochs=5, verbose=0,
                        callbacks=[scripted, EarlyStopping(monitor="score", min_delta=0.1, patience=2)])
    assert history.epoch == [0, 1, 2]
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), scripted.weights[2]))


def test_early_stopping_mode():
    assert EarlyStopping(monitor="val_accuracy").mode == "max"
    assert EarlyStopping(monitor="val_loss").mode == "min"
    x, y = data()
    history = regression().fit(x, y, epochs=6, verbose=0,
                               callbacks=[Scripted([1, 2, 3, 2, 2, 2]),
                                          EarlyStopping(monitor="score", mode="max", patience=1)])
    assert history.epoch == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")


def test_early_stopping_on_real_validation_loss():
    x, y = data(60)
    model = regression(gn.optim.SGD(lr=0.05))
    stopper = EarlyStopping(patience=3, restore_best_weights=True)
    history = model.fit(x, y, epochs=500, validation_split=0.25, verbose=0, callbacks=[stopper])
    assert len(history.epoch) < 500
    best = min(history.history["val_loss"])
    assert model.evaluate(x[45:], y[45:]) == pytest.approx(best, rel=1e-5)


def test_unlogged_monitor_is_named():
    x, y = data()
    with pytest.raises(ValueError, match="'val_loss', which is not logged"):
        regression().fit(x, y, epochs=1, verbose=0, callbacks=[EarlyStopping()])


def test_model_checkpoint_every_epoch_and_best_only(tmp_path):
    x, y = data()
    every = ModelCheckpoint(str(tmp_path / "all-{epoch}.npz"), save_weights_only=True)
    best = ModelCheckpoint(str(tmp_path / "best-{epoch}.npz"), monitor="score", save_best_only=True)
    scripted = Scripted([3, 2, 2.5, 1])
    model = regression()
    model.fit(x, y, epochs=4, verbose=0, callbacks=[scripted, every, best])
    names = sorted(os.listdir(tmp_path))
    assert names == ["all-1.npz", "all-2.npz", "all-3.npz", "all-4.npz", "best-1.npz", "best-2.npz", "best-4.npz"]
    restored = gn.load_model(tmp_path / "best-2.npz")
    assert all(np.array_equal(a, b) for a, b in zip(restored.get_weights(), scripted.weights[1]))
    model.load_weights(tmp_path / "all-3.npz")
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), scripted.weights[2]))


def test_learning_rate_scheduler_changes_lr_without_recompiling():
    x, y = data()
    model = regression(gn.optim.SGD(lr=0.1))
    model.fit(x, y, epochs=1, verbose=0)
    train = model.train_function
    seen = []
    schedule = LearningRateScheduler(lambda epoch, lr: seen.append(lr) or (0.0 if epoch >= 2 else lr / 2))
    snapshots = Scripted([0] * 4)
    history = model.fit(x, y, epochs=4, verbose=0, callbacks=[schedule, snapshots])
    assert seen == pytest.approx([0.1, 0.05, 0.025, 0.0])
    assert history.history["lr"] == pytest.approx([0.05, 0.025, 0.0, 0.0])
    assert model.train_function is train
    assert all(np.array_equal(a, b) for a, b in zip(snapshots.weights[1], snapshots.weights[3]))
    assert not np.array_equal(snapshots.weights[0][0], snapshots.weights[1][0])


def test_callbacks_must_be_callback_objects():
    x, y = data()
    with pytest.raises(TypeError, match="Callback"):
        regression().fit(x, y, verbose=0, callbacks=[lambda: None])


def test_callback_list_calls_exactly_the_overridden_hooks_in_order():
    from graphnet.callbacks import CallbackList, LambdaCallback, _nothing
    calls = []

    class OldName(Callback):  # the older name: on_train_batch_end's default forwards to it
        def on_batch_end(self, batch, logs=None):
            calls.append(("old", batch))

    class Epochs(Callback):
        def on_epoch_end(self, epoch, logs=None):
            calls.append(("epochs", epoch))

    lam = LambdaCallback(on_batch_end=lambda batch, logs: calls.append(("lambda", batch)),
                         on_epoch_end=lambda epoch, logs: calls.append(("lambda", epoch)))
    cbs = CallbackList([OldName(), lam, Epochs()], None, {})
    cbs.on_train_batch_end(3, {})
    cbs.on_epoch_end(1, {})
    cbs.on_batch_begin(0, {})
    assert calls == [("old", 3), ("lambda", 3), ("lambda", 1), ("epochs", 1)]
    assert cbs.on_train_begin is _nothing and cbs.on_test_batch_end is _nothing
    with pytest.raises(AttributeError):
        cbs.on_no_such_hook
