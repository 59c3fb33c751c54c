"""Checkpoints: weights round trips, architecture checks, whole-model save/load, bit-identical
resume, and atomic writes."""
import json
import os

import numpy as np
import pytest

import graphnet as gn
from graphnet import checkpoint
from graphnet.layers import Dense, Dropout, Input

BACKEND = "numpy"  # the code generator every model in this file compiles with


def build(seed=1, hidden=8, optimizer="adam"):
    gn.set_seed(seed)
    model = gn.Sequential([Input((4,)), Dense(hidden, activation="relu"), Dropout(0.3),
                           Dense(3, activation="softmax")])
    model.compile(optimizer, "sparse_categorical_crossentropy", ["accuracy"], backend=BACKEND)
    return model


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(50, 4)).astype(np.float32), rng.integers(0, 3, 50)


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


def test_weights_round_trip(tmp_path):
    x, y = data()
    trained = build()
    trained.fit(x, y, epochs=2, verbose=0)
    trained.save_weights(tmp_path / "w.npz")
    fresh = build(seed=2)
    assert not same(fresh.get_weights(), trained.get_weights())
    fresh.load_weights(tmp_path / "w.npz")
    assert same(fresh.get_weights(), trained.get_weights())
    np.testing.assert_array_equal(fresh.predict(x), trained.predict(x))


def test_weights_of_another_architecture_are_rejected(tmp_path):
    build(hidden=8).save_weights(tmp_path / "w.npz")
    other = build(hidden=5)
    before = other.get_weights()
    with pytest.raises(ValueError, match=r"weight 'dense/kernel' has shape \(4, 8\), the model's has \(4, 5\)"):
        other.load_weights(tmp_path / "w.npz")
    assert same(before, other.get_weights())
    gn.set_seed(0)
    deeper = gn.Sequential([Input((4,)), Dense(8), Dense(8), Dense(3)])
    before = deeper.get_weights()
    with pytest.raises(ValueError, match="missing weight.*dense_2/kernel"):
        deeper.load_weights(tmp_path / "w.npz")
    assert same(before, deeper.get_weights())


def test_pickled_arrays_are_refused(tmp_path):
    model = build()
    path = tmp_path / "evil.npz"
    np.savez(path, **{"dense/kernel": np.array([object()], dtype=object)})
    with pytest.raises(ValueError):
        model.load_weights(path)


def test_garbage_file_is_a_value_error(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        build().load_weights(path)


def test_save_and_load_model(tmp_path):
    x, y = data()
    model = build(optimizer=gn.optim.Adam(lr=0.02, betas=(0.8, 0.99)))
    model.fit(x, y, epochs=2, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = gn.load_model(tmp_path / "m.npz")
    assert same(loaded.get_weights(), model.get_weights())
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert isinstance(loaded, gn.Sequential)  # a Sequential's layers exclude its input, as in Keras
    assert [type(layer).__name__ for layer in loaded.layers] == ["Dense", "Dropout", "Dense"]
    assert isinstance(loaded.optimizer, gn.optim.Adam) and loaded.optimizer.betas == (0.8, 0.99)
    assert float(loaded.optimizer.lr.value) == pytest.approx(0.02)
    assert same([v.value for v in loaded.optimizer.variables()], [v.value for v in model.optimizer.variables()])
    assert loaded.evaluate(x, y) == model.evaluate(x, y)
    config = json.loads(str(np.load(tmp_path / "m.npz")["config"]))
    assert config["layers"][1]["config"]["activation"] == "relu"


def test_resume_is_bit_identical(tmp_path):
    """2 epochs + save + load + 2 epochs == 4 epochs straight (Adam state, step, dropout masks, shuffles)."""
    x, y = data()
    straight = build()
    straight.fit(x, y, batch_size=16, epochs=4, verbose=0)
    first = build()
    first.fit(x, y, batch_size=16, epochs=2, verbose=0)
    first.save(tmp_path / "m.npz")
    gn.set_seed(123)  # the resumed run must not depend on the global seed
    resumed = gn.load_model(tmp_path / "m.npz")
    resumed.fit(x, y, batch_size=16, epochs=4, initial_epoch=2, verbose=0)
    assert same(resumed.get_weights(), straight.get_weights())
    assert same([v.value for v in resumed.optimizer.variables()], [v.value for v in straight.optimizer.variables()])


def test_killed_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    model = build()
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()
    real_savez = np.savez

    def crash(file, **arrays):
        real_savez(file, **arrays)
        file.seek(file.tell() // 2)
        file.truncate()
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(np, "savez", crash)
    model.fit(*data(), epochs=1, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        model.save(path)
    with pytest.raises(KeyboardInterrupt):
        model.save_weights(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]  # no temporary file left behind
    assert not same(gn.load_model(path).get_weights(), model.get_weights())


def test_save_npz_writes_exactly_the_given_name(tmp_path):
    checkpoint.save_npz(tmp_path / "weights.ckpt", {"a": np.arange(3)})
    assert os.listdir(tmp_path) == ["weights.ckpt"]
    np.testing.assert_array_equal(checkpoint.load_npz(tmp_path / "weights.ckpt")["a"], np.arange(3))


def test_unsavable_models_say_why(tmp_path):
    inputs = Input((2,))
    model = gn.Model(inputs, Dense(1)(inputs))
    model.compile("sgd", lambda p, t: gn.mean(gn.abs(p - t)), backend=BACKEND)
    with pytest.raises(ValueError, match="Python callable"):
        model.save(tmp_path / "m.npz")
    inputs = Input((2,))
    custom = gn.Model(inputs, Dense(1, activation=lambda z: z * 2)(inputs))
    with pytest.raises(ValueError, match="cannot be stored"):
        custom.save(tmp_path / "m.npz")
    assert not os.listdir(tmp_path)
    custom.save_weights(tmp_path / "w.npz")
    with pytest.raises(ValueError, match="no model config"):
        gn.load_model(tmp_path / "w.npz")


def test_uncompiled_model_round_trip(tmp_path):
    gn.set_seed(0)
    a, b = Input((2,), name="a"), Input((3,), name="b")
    out = gn.layers.Add()([Dense(2)(a), Dense(2)(b)])
    model = gn.Model([a, b], out)
    model.save(tmp_path / "m.npz")
    loaded = gn.load_model(tmp_path / "m.npz")
    assert loaded.optimizer is None and [t.layer.name for t in loaded.inputs] == ["a", "b"]
    assert same(loaded.get_weights(), model.get_weights())


@pytest.mark.parametrize("name", sorted(gn.optim.BY_NAME))
def test_every_optimizer_survives_save_and_load(tmp_path, name):
    x, y = data()
    optimizer = gn.optim.BY_NAME[name](lr=0.03)
    model = build(optimizer=optimizer)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = gn.load_model(tmp_path / "m.npz")
    assert type(loaded.optimizer) is type(optimizer)
    for key, value in vars(optimizer).items():
        if not key.startswith("_") and key not in ("lr", "name"):
            assert getattr(loaded.optimizer, key) == value, key
    assert same([v.value for v in loaded.optimizer.variables()], [v.value for v in model.optimizer.variables()])
