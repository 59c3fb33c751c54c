"""Layers: shapes, parameters, initializers, activations, and the graph a model builds from them."""
import numpy as np
import pytest

import graphnet as gn
from graphnet.layers import Activation, Add, Dense, Dropout, Flatten, Input

BACKEND = "numpy"  # the code generator every model in this file compiles with


def forward(model, x):
    return model.predict(np.asarray(x, np.float32))


def test_dense_computes_activation_of_affine_map():
    inputs = Input((3,))
    outputs = Dense(4, activation="tanh")(inputs)
    model = gn.Model(inputs, outputs)
    model.compile("sgd", "mse", backend=BACKEND)
    kernel, bias = model.get_weights()
    bias += 0.5
    model.set_weights([kernel, bias])
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(forward(model, x), np.tanh(x @ kernel + bias), rtol=1e-5, atol=1e-6)
    assert outputs.shape == (None, 4)
    assert [w.name for w in model.weights] == ["dense/kernel", "dense/bias"]


def test_activation_by_callable_and_layer_and_no_bias():
    inputs = Input((2,))
    hidden = Dense(3, activation=gn.relu, use_bias=False)(inputs)
    outputs = Activation("sigmoid")(hidden)
    model = gn.Model(inputs, outputs)
    model.backend = BACKEND
    (kernel,) = model.get_weights()
    x = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
    np.testing.assert_allclose(forward(model, x), 1 / (1 + np.exp(-np.maximum(x @ kernel, 0))), rtol=1e-6)


def test_initializers():
    gn.set_seed(3)
    inputs = Input((200,))
    a = Dense(300, kernel_initializer="glorot_uniform")(inputs)
    b = Dense(300, kernel_initializer="he_normal")(a)
    c = Dense(5, kernel_initializer="zeros", bias_initializer="zeros")(b)
    glorot, _, he, _, zeros, zero_bias = gn.Model(inputs, c).get_weights()
    limit = np.sqrt(6 / (200 + 300))
    assert np.abs(glorot).max() <= limit and np.abs(glorot).max() > 0.95 * limit
    assert abs(he.std() - np.sqrt(2 / 300)) < 0.05 * np.sqrt(2 / 300)
    assert not zeros.any() and not zero_bias.any()


def test_flatten_and_dense_rank_check():
    inputs = Input((2, 3))
    with pytest.raises(ValueError, match="Flatten"):
        Dense(4)(inputs)
    flat = Flatten()(inputs)
    assert flat.shape == (None, 6)
    model = gn.Model(inputs, flat)
    model.backend = BACKEND
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    np.testing.assert_array_equal(model.predict(x), x.reshape(2, 6))


def test_add_joins_branches_and_checks_shapes():
    a, b = Input((2,), name="a"), Input((3,), name="b")
    with pytest.raises(ValueError, match="one shape"):
        Add()([a, b])
    total = Add()([Dense(4, name="da")(a), Dense(4, name="db")(b)])
    assert total.shape == (None, 4)


@pytest.mark.parametrize("make, message", [
    (lambda: Dense(0), "units"),
    (lambda: Dense(3, activation="swishy"), "unknown activation 'swishy'"),
    (lambda: Dense(3, kernel_initializer="identity"), "kernel_initializer 'identity'"),
    (lambda: Dropout(1.0), "rate"),
    (lambda: Input((0,)), "Input shape"),
    (lambda: Dense(3, name="a/b"), "without '/'"),
])
def test_bad_layer_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_shared_layer_needs_inputs_of_one_width():
    layer = Dense(2)
    layer(Input((3,)))
    layer(Input((3,)))  # shared: same weights
    with pytest.raises(ValueError, match=r"is shared.*cannot take \(N, 4\)"):
        layer(Input((4,)))


def test_calling_a_layer_on_an_array_is_a_type_error():
    with pytest.raises(TypeError, match="layer output"):
        Dense(2)(np.zeros((1, 3)))


def test_nodes_keep_the_layer_call_source_line():
    inputs = Input((3,))
    outputs = Dense(2)(inputs)  # the matmul below must point at this line
    model = gn.Model(inputs, outputs)
    (out,) = model.output_nodes
    filename, line = out.source.rsplit(":", 1)
    assert filename.endswith("test_layers.py")
    with open(__file__) as f:
        assert "Dense(2)(inputs)  # the matmul" in f.read().splitlines()[int(line) - 1]


def test_model_is_an_ordinary_graph():
    """gradients and compile apply to the nodes a model built."""
    inputs = Input((2,))
    outputs = Dense(1)(inputs)
    model = gn.Model(inputs, outputs)
    model.compile("sgd", "mse", backend=BACKEND)
    kernel = model.weights[0]
    (grad,) = gn.gradients(model.loss, [kernel])
    fn = gn.compile(grad, backend=BACKEND)
    x = np.array([[1.0, 2.0]], np.float32)
    y = np.array([[0.0]], np.float32)
    w, b = model.get_weights()
    expected = 2 * x.T @ (x @ w + b - y)
    np.testing.assert_allclose(fn(input=x, **{"dense/target": y}), expected, rtol=1e-5)


def test_a_layer_written_for_the_earlier_output_shape_method_keeps_its_rule():
    class Twice(gn.layers.Layer):
        def output_shape(self, input_shapes):
            (shape,) = input_shapes
            return (None, 2 * shape[1])

        def build(self, graph, inputs):
            return gn.layers.Concatenate().build(graph, [inputs[0], inputs[0]])
    inputs = Input((3,))
    out = Twice()(inputs)
    assert out.shape == (None, 6)
    model = gn.Model(inputs, out)
    model.backend = BACKEND
    np.testing.assert_array_equal(model.predict(np.array([[1, 2, 3]], np.float32)), [[1, 2, 3, 1, 2, 3]])
