"""A mistake never trains silently: custom losses are called as Keras calls them, swapped
prediction/target pairs and cross-entropy targets outside [0, 1] are errors, loss objects train like
their names, and an output layer that does not fit its cross-entropy is warned about."""
import warnings

import numpy as np
import pytest

import graphnet as gn
from graphnet.layers import Dense, Input

BACKEND = "numpy"


def separable(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = (x[:, :1] + 0.5 * x[:, 1:] > 0).astype(np.float32)
    return x, y


def binary_model(activation="sigmoid"):
    gn.set_seed(0)
    inputs = Input((2,))
    return gn.Model(inputs, Dense(1, activation=activation)(Dense(8, activation="relu")(inputs)))


# ---- compile(loss=callable) is called loss(y_true, y_pred), as Keras calls it ---------------------
def keras_bce(y_true, y_pred):
    p = gn.clip(y_pred, 1e-7, 1 - 1e-7)
    return -gn.mean(y_true * gn.log(p) + (1 - y_true) * gn.log(1 - p))


def test_custom_keras_loss_trains_the_model():
    """The issue's case: a Keras-style BCE trained to accuracy 0.16 when called (output, target)."""
    x, y = separable()
    model = binary_model()
    model.compile(gn.optim.Adam(learning_rate=0.05), loss=keras_bce, metrics=["accuracy"], backend=BACKEND)
    history = model.fit(x, y, epochs=30, batch_size=32, verbose=0)
    assert history.history["accuracy"][-1] > 0.95
    reference = binary_model()
    reference.set_weights(model.get_weights())
    reference.compile("sgd", "binary_crossentropy", backend=BACKEND)
    assert model.evaluate(x, y, verbose=0)[0] == pytest.approx(reference.evaluate(x, y, verbose=0), rel=1e-4)


def test_custom_loss_and_metric_receive_target_first():
    seen = []

    def loss(y_true, y_pred):
        seen.append(("loss", y_true.name, y_pred.op.name))
        return gn.mean((y_pred - y_true) ** 2)

    def first_argument_mean(y_true, y_pred):
        seen.append(("metric", y_true.name, y_pred.op.name))
        return gn.mean(y_true)

    model = binary_model()
    model.compile("sgd", loss, metrics=[first_argument_mean], backend=BACKEND)
    assert seen == [("loss", "dense_1/target", "sigmoid"), ("metric", "dense_1/target", "sigmoid")]
    x, y = separable(20)
    assert model.evaluate(x, y, verbose=0)[1] == pytest.approx(y.mean())


def test_per_sample_custom_loss_is_averaged_like_keras():
    def per_sample_mse(y_true, y_pred):
        return gn.mean((y_pred - y_true) ** 2, axis=-1)  # shape (N,), as a Keras loss returns

    model = binary_model()
    model.compile("sgd", per_sample_mse, backend=BACKEND)
    x, y = separable(16)
    p = model.predict(x)
    assert model.evaluate(x, y) == pytest.approx(np.mean((p - y) ** 2), rel=1e-5)


def test_graphnets_own_prediction_first_losses_keep_their_order():
    x, y = separable()
    model = binary_model()
    model.compile(gn.optim.Adam(learning_rate=0.05), loss=gn.losses.binary_cross_entropy, metrics=["accuracy"],
                  backend=BACKEND)
    assert model.fit(x, y, epochs=20, verbose=0).history["accuracy"][-1] > 0.95


# ---- swapped prediction and target ------------------------------------------------------------------
def course_graph():
    x = gn.placeholder("x", (None, 2))
    labels = gn.placeholder("labels", (None, 3))
    w = gn.variable("w", np.zeros((2, 3), np.float32))
    return x, labels, x @ w


def test_softmax_cross_entropy_in_the_courses_order_is_an_error():
    """softmax_cross_entropy(labels, logits) was accepted and drove the loss to -26."""
    x, labels, logits = course_graph()
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: the arguments look swapped: labels='matmul_\d+' "
                                         r"\(N, 3\).*depends on trainable.*logits='labels' \(N, 3\).*"
                                         r"test_keras_losses.py"):
        gn.losses.softmax_cross_entropy(labels, logits)
    gn.losses.softmax_cross_entropy(logits, labels)  # the right order builds


@pytest.mark.parametrize("call, message", [
    (lambda z, y: gn.losses.binary_cross_entropy(y, z, from_logits=True), r"binary_cross_entropy: .*swapped: y="),
    (lambda z, y: gn.losses.binary_crossentropy(z, y), r"binary_crossentropy: .*swapped: y_true="),
    (lambda z, y: gn.losses.categorical_crossentropy(z, y), r"categorical_crossentropy: .*swapped: y_true="),
    (lambda z, y: gn.losses.BinaryCrossentropy(from_logits=True)(z, y), r"binary_crossentropy: .*swapped"),
])
def test_swapped_cross_entropies_are_errors_naming_both_arguments(call, message):
    x = gn.placeholder("x", (None, 2))
    y = gn.placeholder("y", (None, 1))
    z = x @ gn.variable("w", np.zeros((2, 1), np.float32))
    with pytest.raises(ValueError, match=message) as info:
        call(z, y)
    assert "'y'" in str(info.value) and "matmul" in str(info.value)


def test_swapped_keras_loss_object_in_a_custom_loss_is_caught_at_compile():
    model = binary_model()
    bce = gn.losses.BinaryCrossentropy()
    with pytest.raises(ValueError, match="swapped"):
        model.compile("sgd", lambda y_true, y_pred: bce(y_pred, y_true), backend=BACKEND)


def test_a_loss_between_two_data_tensors_is_not_flagged():
    a, b = gn.placeholder("a", (None, 1)), gn.placeholder("b", (None, 1))
    gn.losses.binary_cross_entropy(a, b)  # neither depends on a variable: nothing to tell apart


# ---- cross-entropy targets outside [0, 1] ------------------------------------------------------------
@pytest.mark.parametrize("loss", [
    lambda z: gn.losses.binary_cross_entropy(z, np.array([[2.0, 0.0], [0.0, 1.0]], np.float32), from_logits=True),
    lambda z: gn.losses.softmax_cross_entropy(z, np.array([[1.5, 0.0], [-0.5, 1.0]], np.float32)),
])
def test_constant_targets_outside_unit_interval_are_errors(loss):
    z = gn.placeholder("z", (2, 2))
    with pytest.raises(ValueError, match=r"must hold probabilities in \[0, 1\]"):
        loss(z)


def test_fit_refuses_categorical_targets_outside_unit_interval():
    gn.set_seed(0)
    inputs = Input((2,))
    model = gn.Model(inputs, Dense(3, activation="softmax")(inputs))
    model.compile("sgd", "categorical_crossentropy", backend=BACKEND)
    before = model.get_weights()
    targets = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 2.0]], np.float32)
    with pytest.raises(ValueError, match=r"categorical_crossentropy labels must lie in \[0, 1\].*\[-1.0, 2.0\]"):
        model.fit(np.zeros((2, 2), np.float32), targets, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_integer_labels_with_categorical_crossentropy_say_which_loss():
    gn.set_seed(0)
    inputs = Input((2,))
    model = gn.Model(inputs, Dense(3, activation="softmax")(inputs))
    model.compile("sgd", "categorical_crossentropy", backend=BACKEND)
    with pytest.raises(ValueError, match="sparse_categorical_crossentropy"):
        model.fit(np.zeros((2, 2), np.float32), np.array([0, 2]), verbose=0)


# ---- Keras loss objects and functions -------------------------------------------------------------------
def test_from_logits_loss_object_trains_a_linear_output():
    x, y = separable()
    model = binary_model(activation=None)
    model.compile(gn.optim.Adam(learning_rate=0.05), gn.losses.BinaryCrossentropy(from_logits=True),
                  metrics=["accuracy"], backend=BACKEND)
    history = model.fit(x, y, epochs=20, verbose=0)
    assert history.history["accuracy"][-1] > 0.95  # accuracy thresholds logits at 0, not 0.5
    z = model.predict(x)
    bce = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
    assert model.evaluate(x, y, verbose=0)[0] == pytest.approx(bce, rel=1e-4)
    assert model.evaluate(x, y, verbose=0)[1] == pytest.approx(np.mean((z > 0) == y))


def test_sparse_loss_object_from_logits_and_keras_functions_match_numpy():
    rng = np.random.default_rng(1)
    logits, ids = rng.normal(size=(5, 3)), rng.integers(0, 3, 5)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    with gn.Graph():
        z = gn.placeholder("z", (None, 3), np.float64)
        t = gn.placeholder("t", (None,), np.int64)
        one_hot = gn.placeholder("one_hot", (None, 3), np.float64)
        fetches = [gn.losses.SparseCategoricalCrossentropy(from_logits=True)(t, z),
                   gn.losses.sparse_categorical_crossentropy(t, gn.softmax(z)),
                   gn.losses.categorical_crossentropy(one_hot, z, from_logits=True),
                   gn.losses.mean_squared_error(one_hot, z), gn.losses.mean_absolute_error(one_hot, z)]
        values = gn.compile(fetches, backend=BACKEND)(z=logits, t=ids, one_hot=np.eye(3)[ids])
    per_row = -log_p[np.arange(5), ids]
    np.testing.assert_allclose(values[0], per_row.mean(), rtol=1e-6)
    np.testing.assert_allclose(values[1], per_row, rtol=1e-6)
    np.testing.assert_allclose(values[2], per_row, rtol=1e-6)
    np.testing.assert_allclose(values[3], ((logits - np.eye(3)[ids]) ** 2).mean(-1), rtol=1e-6)
    np.testing.assert_allclose(values[4], np.abs(logits - np.eye(3)[ids]).mean(-1), rtol=1e-6)


def test_output_layer_that_does_not_fit_the_loss_is_warned_about():
    with pytest.warns(UserWarning, match="from_logits=True, but the output is a sigmoid"):
        binary_model().compile("sgd", gn.losses.BinaryCrossentropy(from_logits=True), backend=BACKEND)
    with pytest.warns(UserWarning, match="linear layer.*activation='sigmoid'.*from_logits=True"):
        binary_model(activation=None).compile("sgd", "binary_crossentropy", backend=BACKEND)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binary_model().compile("sgd", "binary_crossentropy", backend=BACKEND)


def test_loss_objects_survive_save_and_load(tmp_path):
    x, y = separable(40)
    model = binary_model(activation=None)
    model.compile("adam", gn.losses.BinaryCrossentropy(from_logits=True), ["accuracy"], backend=BACKEND)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = gn.load_model(tmp_path / "m.npz")
    assert loaded.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)
