"""Multi-input / multi-output models with dict losses, loss_weights and per-output metrics; shared
layers (one variable, gradients summed); models used as layers; and their save/load round trips."""
import numpy as np
import pytest

import graphnet as gn
from graphnet.layers import Add, Concatenate, Dense, Dropout, Input

BACKEND = "numpy"


def two_headed():
    gn.set_seed(0)
    a, b = Input((2,), name="a"), Input((3,), name="b")
    joined = Concatenate()([Dense(4, activation="relu")(a), Dense(4, activation="relu")(b)])
    score = Dense(1, name="score")(joined)
    kind = Dense(3, activation="softmax", name="kind")(joined)
    return gn.Model([a, b], [score, kind])


def two_headed_data(n=24):
    rng = np.random.default_rng(0)
    return ({"a": rng.normal(size=(n, 2)), "b": rng.normal(size=(n, 3))},
            {"score": rng.normal(size=(n, 1)), "kind": rng.integers(0, 3, n)})


# ---- multi-output compile --------------------------------------------------------------------------
def test_dict_losses_loss_weights_and_per_output_metrics():
    x, y = two_headed_data()
    model = two_headed()
    model.compile("adam", loss={"score": "mse", "kind": "sparse_categorical_crossentropy"},
                  loss_weights={"score": 0.5, "kind": 2.0}, metrics={"kind": ["accuracy"], "score": ["mae"]},
                  backend=BACKEND)
    assert model.metrics_names == ["loss", "score_loss", "score_mae", "kind_loss", "kind_accuracy"]
    logs = model.evaluate(x, y, return_dict=True)
    assert logs["loss"] == pytest.approx(0.5 * logs["score_loss"] + 2.0 * logs["kind_loss"], rel=1e-6)
    score_p, kind_p = model.predict(x)
    assert logs["score_loss"] == pytest.approx(np.mean((score_p - y["score"]) ** 2), rel=1e-5)
    assert logs["score_mae"] == pytest.approx(np.mean(np.abs(score_p - y["score"])), rel=1e-5)
    assert logs["kind_accuracy"] == pytest.approx(np.mean(kind_p.argmax(1) == y["kind"]))
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert set(history.history) == set(model.metrics_names)


def test_an_output_without_a_loss_needs_no_targets():
    x, y = two_headed_data()
    model = two_headed()
    model.compile("adam", loss={"kind": "sparse_categorical_crossentropy"}, backend=BACKEND)
    before = model.get_layer("score").get_weights()
    model.fit(x, {"kind": y["kind"]}, epochs=2, verbose=0)
    assert model.metrics_names == ["loss", "kind_loss"]
    assert all(np.array_equal(u, v) for u, v in zip(before, model.get_layer("score").get_weights()))
    assert len(model.predict(x)) == 2


def test_loss_weights_as_a_list_and_bad_keys():
    x, y = two_headed_data()
    model = two_headed()
    model.compile("sgd", ["mse", "sparse_categorical_crossentropy"], loss_weights=[0.0, 1.0], backend=BACKEND)
    logs = model.evaluate(x, y, return_dict=True)
    assert logs["loss"] == pytest.approx(logs["kind_loss"], rel=1e-6)
    with pytest.raises(ValueError, match=r"unknown output\(s\) \['scores'\]"):
        model.compile("sgd", {"scores": "mse"}, backend=BACKEND)


def test_multi_output_sample_weights_per_output():
    x, y = two_headed_data()
    model = two_headed()
    model.compile("sgd", {"score": "mse", "kind": "sparse_categorical_crossentropy"}, backend=BACKEND)
    weights = {"score": np.zeros(24), "kind": np.ones(24)}
    logs = model.evaluate(x, y, sample_weight=weights, return_dict=True)
    assert logs["score_loss"] == 0 and logs["loss"] == pytest.approx(logs["kind_loss"])
    with pytest.raises(ValueError, match="class_weight is for models with one output"):
        model.fit(x, y, class_weight={0: 1.0}, verbose=0)


# ---- shared layers ---------------------------------------------------------------------------------
def test_shared_layer_is_one_variable_with_summed_gradients():
    gn.set_seed(0)
    a, b = Input((3,), name="a"), Input((3,), name="b")
    shared = Dense(1, use_bias=False, name="shared")
    model = gn.Model([a, b], Add()([shared(a), shared(b)]))
    model.compile("sgd", "mse", backend=BACKEND)
    assert [w.name for w in model.weights] == ["shared/kernel"] and model.count_params() == 3
    rng = np.random.default_rng(1)
    xa, xb, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)), rng.normal(size=(6, 1))
    (kernel,) = model.get_weights()
    (grad,) = gn.gradients(model.loss, model.weights)
    got = gn.compile(grad, backend=BACKEND)(a=xa.astype(np.float32), b=xb.astype(np.float32),
                                           **{"add/target": y.astype(np.float32)})
    s = xa + xb
    np.testing.assert_allclose(got, 2 / 6 * s.T @ (s @ kernel - y), rtol=1e-4)


def test_shared_dropout_draws_its_own_mask_per_call():
    gn.set_seed(0)
    x = Input((64,))
    drop = Dropout(0.5)
    model = gn.Model(x, gn.layers.Subtract()([drop(x), drop(x)]))
    model.compile(gn.optim.SGD(learning_rate=0.0), "mse", backend=BACKEND)
    ones = np.ones((4, 64), np.float32)
    train_loss = model.fit(ones, np.zeros((4, 64), np.float32), batch_size=4, verbose=0).history["loss"][0]
    assert train_loss > 0.5  # equal masks would subtract to zero


def test_shared_layers_survive_save_and_load(tmp_path):
    gn.set_seed(0)
    a, b = Input((3,), name="a"), Input((3,), name="b")
    tower = Dense(2, activation="tanh", name="tower")
    head = Dense(1, name="head")
    model = gn.Model([a, b], [head(tower(a)), head(tower(b))])
    model.compile("adam", "mse", backend=BACKEND)
    rng = np.random.default_rng(0)
    x, y = [rng.normal(size=(8, 3)), rng.normal(size=(8, 3))], [rng.normal(size=(8, 1)), rng.normal(size=(8, 1))]
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = gn.load_model(tmp_path / "m.npz")
    assert [w.name for w in loaded.weights] == ["tower/kernel", "tower/bias", "head/kernel", "head/bias"]
    for got, want in zip(loaded.predict(x), model.predict(x)):
        np.testing.assert_array_equal(got, want)
    assert loaded.evaluate(x, y) == model.evaluate(x, y)


# ---- models as layers ------------------------------------------------------------------------------
def autoencoder():
    gn.set_seed(0)
    encoder = gn.Sequential([Input((6,)), Dense(3, activation="tanh")], name="encoder")
    decoder = gn.Sequential([Input((3,)), Dense(6)], name="decoder")
    inputs = Input((6,))
    return encoder, decoder, gn.Model(inputs, decoder(encoder(inputs)), name="autoencoder")


def test_sub_models_train_inside_the_outer_model_and_keep_their_weights():
    encoder, decoder, model = autoencoder()
    assert [w.name for w in model.weights] == ["encoder/dense/kernel", "encoder/dense/bias", "decoder/dense/kernel",
                                               "decoder/dense/bias"]
    assert model.layers[1] is encoder and model.get_layer("decoder") is decoder
    model.compile(gn.optim.Adam(learning_rate=0.05), "mse", backend=BACKEND)
    x = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    before = encoder.get_weights()
    history = model.fit(x, x, epochs=30, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]
    assert not np.array_equal(before[0], encoder.get_weights()[0])  # the encoder itself was trained
    np.testing.assert_allclose(decoder.predict(encoder.predict(x)), model.predict(x), rtol=1e-5, atol=1e-6)
    lines = []
    model.summary(print_fn=lines.append)
    assert any(line.startswith(" encoder (Sequential)") and " 21" in line for line in lines)


def test_a_model_over_another_models_layers_shares_them():
    """Keras's encoder / autoencoder idiom ("layer 'input' already belongs to another model" before)."""
    gn.set_seed(0)
    inputs = Input((4,))
    code = Dense(2, name="code")(inputs)
    encoder = gn.Model(inputs, code)
    autoencoder = gn.Model(inputs, Dense(4, name="reconstruction")(code))
    autoencoder.compile("adam", "mse", backend=BACKEND)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    autoencoder.fit(x, x, epochs=2, verbose=0)
    np.testing.assert_array_equal(encoder.get_weights()[0], autoencoder.get_layer("code").get_weights()[0])


def test_a_model_called_twice_shares_its_weights():
    gn.set_seed(0)
    embed = gn.Sequential([Input((3,)), Dense(2)], name="embed")
    a, b = Input((3,), name="a"), Input((3,), name="b")
    model = gn.Model([a, b], gn.layers.Subtract()([embed(a), embed(b)]))
    assert model.count_params() == 8
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict([x, x]), 0.0, atol=1e-6)


def test_nested_models_survive_save_and_load(tmp_path):
    encoder, _, model = autoencoder()
    model.compile("adam", "mse", backend=BACKEND)
    x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    model.fit(x, x, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = gn.load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    sub = loaded.get_layer("encoder")
    assert isinstance(sub, gn.Sequential) and sub.name == "encoder"
    np.testing.assert_array_equal(sub.predict(x), encoder.predict(x))


def test_a_layer_used_directly_and_inside_a_sub_model_is_refused():
    gn.set_seed(0)
    inputs = Input((3,))
    dense = Dense(3)
    inner = gn.Model(inputs, dense(inputs), name="inner")
    outer_in = Input((3,))
    with pytest.raises(ValueError, match="under two names"):
        gn.Model(outer_in, dense(inner(outer_in)))


def test_a_sequential_can_start_with_a_model():
    encoder, _, _ = autoencoder()
    stacked = gn.Sequential([encoder, Dense(6, name="out")])
    assert stacked.input_shape == (None, 6) and [layer.name for layer in stacked.layers] == ["encoder", "out"]
    stacked.compile("sgd", "mse", backend=BACKEND)
    x = np.ones((2, 6), np.float32)
    kernel, bias = stacked.get_layer("out").get_weights()
    np.testing.assert_allclose(stacked.predict(x), encoder.predict(x) @ kernel + bias, rtol=1e-5)
