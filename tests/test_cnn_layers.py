"""The Keras image layers: output shapes and parameter counts as Keras reports them, values against
the ops, BatchNormalization's training flag in fit / evaluate / predict, configs, bad arguments."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet import layers as L


def _summary(model) -> str:
    lines = []
    model.summary(print_fn=lines.append)
    return "\n".join(lines)


def test_summary_shapes_and_parameter_counts_are_keras():
    """The figures Keras 3 prints for this model (counted by hand: conv k*k*cin*cout + cout,
    depthwise k*k*c*m + c*m, batch norm 4 per channel of which 2 are non-trainable)."""
    model = gn.Sequential([
        L.Input(shape=(28, 28, 1)),
        L.ZeroPadding2D(2, name="zp"),
        L.Conv2D(6, 5, activation="relu", name="c1"),
        L.BatchNormalization(name="bn"),
        L.MaxPooling2D(2, name="p1"),
        L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw"),
        L.AveragePooling2D(2, padding="same", name="p2"),
        L.Conv2D(16, (3, 3), strides=2, name="c2"),
        L.GlobalAveragePooling2D(name="gap"),
        L.Dense(10, name="out"),
    ])
    text = _summary(model)
    expected = {"zp": (None, 32, 32, 1), "c1": (None, 28, 28, 6), "bn": (None, 28, 28, 6),
                "p1": (None, 14, 14, 6), "dw": (None, 14, 14, 12), "p2": (None, 7, 7, 12),
                "c2": (None, 3, 3, 16), "gap": (None, 16), "out": (None, 10)}
    params = {"c1": 156, "bn": 24, "p1": 0, "dw": 120, "p2": 0, "c2": 1744, "gap": 0, "out": 170}
    for layer in model.layers:
        key = next((k for k in expected if layer.name.startswith(k)), None)
        assert layer.output_shape == expected[key], layer.name
        assert str(expected[key]) in text
        if key in params:
            assert layer.count_params() == params[key], layer.name
    total = sum(params.values())
    assert f"Total params: {total:,}" in text
    assert "Non-trainable params: 12" in text and f"Trainable params: {total - 12:,}" in text


def test_conv_layers_compute_the_ops():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 6, 3)).astype(np.float32)
    conv = L.Conv2D(5, 3, strides=2, padding="same", activation="relu")
    inputs = L.Input(shape=(6, 6, 3))
    model = gn.Model(inputs, L.MaxPooling2D(2, padding="same")(conv(inputs)))
    got = model.predict(x, verbose=0)
    kernel, bias = conv.get_weights()
    with gn.Graph():
        px = gn.placeholder("x", (None, 6, 6, 3))
        want = gn.compile(gn.max_pool2d(gn.relu(gn.conv2d(px, kernel, 2, "same") + bias), 2, padding="same"),
                          backend="numpy")(x=x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_channels_first_layers_match_channels_last():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, 7, 3)).astype(np.float32)
    last = gn.Sequential([L.Input(shape=(7, 7, 3)), L.Conv2D(4, 3, padding="same"), L.MaxPooling2D(2)])
    first_conv = L.Conv2D(4, 3, padding="same", data_format="channels_first")
    first = gn.Sequential([L.Input(shape=(3, 7, 7)), first_conv, L.MaxPooling2D(2, data_format="channels_first")])
    first_conv.set_weights(last.layers[0].get_weights())
    got = first.predict(x.transpose(0, 3, 1, 2), verbose=0)
    np.testing.assert_allclose(got.transpose(0, 2, 3, 1), last.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_batch_normalization_trains_on_batch_statistics_and_predicts_with_moving_ones():
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, size=(64, 4, 4, 2)).astype(np.float32)
    y = rng.integers(0, 2, size=64)
    bn = L.BatchNormalization(momentum=0.5)
    model = gn.Sequential([L.Input(shape=(4, 4, 2)), bn, L.Flatten(), L.Dense(2, activation="softmax")])
    model.compile(optimizer=gn.optim.SGD(lr=0.0), loss="sparse_categorical_crossentropy")
    gamma, beta, mean, variance = bn.get_weights()
    np.testing.assert_array_equal(mean, 0)
    np.testing.assert_array_equal(variance, 1)
    model.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    _, _, mean, variance = bn.get_weights()
    np.testing.assert_allclose(mean, 0.5 * x.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(variance, 0.5 + 0.5 * x.var(axis=(0, 1, 2)), rtol=1e-5)
    inner = gn.Sequential([L.Input(shape=(4, 4, 2)), bn])
    np.testing.assert_allclose(inner.predict(x, verbose=0), (x - mean) / np.sqrt(variance + 1e-3), rtol=1e-4,
                               atol=1e-5)
    before = bn.get_weights()
    model.evaluate(x, y, verbose=0)
    for a, b in zip(before, bn.get_weights()):
        np.testing.assert_array_equal(a, b)  # evaluate updates nothing


def test_glorot_uniform_counts_a_conv_kernels_receptive_field():
    """Keras's fans of a (KH, KW, Cin, Cout) kernel: KH*KW*Cin and KH*KW*Cout (not KH and KW)."""
    w = gn.init.glorot_uniform((3, 3, 16, 32), seed=0)
    bound = np.sqrt(6.0 / (9 * 16 + 9 * 32))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound


def test_config_round_trip_rebuilds_the_layers():
    layers = [L.Conv2D(4, (3, 2), strides=(2, 1), padding="same", dilation_rate=1, activation="relu"),
              L.DepthwiseConv2D(3, depth_multiplier=2), L.MaxPooling2D(3, strides=2, padding="same"),
              L.AveragePooling2D(2), L.GlobalAveragePooling2D(keepdims=True), L.ZeroPadding2D(((1, 0), (2, 1))),
              L.BatchNormalization(momentum=0.9, epsilon=1e-5), L.UpSampling2D((2, 3), data_format="channels_first")]
    for layer in layers:
        clone = L.from_config(type(layer).__name__, layer.get_config())
        assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize("make,message", [
    (lambda: L.Conv2D(0, 3), "filters must be a positive integer"),
    (lambda: L.Conv2D(4, 3, strides=0), "strides must be a positive integer"),
    (lambda: L.Conv2D(4, 3, padding="full"), "padding must be 'valid' or 'same'"),
    (lambda: L.MaxPooling2D(2, data_format="NHCW"), "data_format must be"),
    (lambda: L.BatchNormalization(momentum=1.5), "momentum must be in"),
    (lambda: L.UpSampling2D(2, interpolation="bicubic"), "interpolation must be 'nearest' or 'bilinear'"),
    (lambda: L.UpSampling2D(0), "size must be a positive integer"),
])
def test_bad_arguments_are_value_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_flat_input_to_conv2d_says_it_expects_images():
    with pytest.raises(ValueError, match=r"Conv2D expects 4-D image batches \(batch, height, width, channels\)"):
        L.Conv2D(4, 3)(L.Input(shape=(64,)))


def test_kernel_larger_than_the_input_is_refused_at_the_call():
    with pytest.raises(ValueError, match="larger than the input"):
        L.Conv2D(4, 5)(L.Input(shape=(4, 4, 1)))


def test_unnamed_layers_get_keras_default_names():
    from graphnet.layers import Dense, Flatten, Input
    from graphnet.conv_layers import BatchNormalization, Conv2D, GlobalAveragePooling2D, MaxPooling2D
    inputs = Input((8, 8, 1))
    x = MaxPooling2D()(BatchNormalization()(Conv2D(4, 3)(inputs)))
    outputs = Dense(2)(Flatten()(GlobalAveragePooling2D(keepdims=True)(x)))
    names = [layer.name for layer in gn.Model(inputs, outputs).layers[1:]]
    assert names == ["conv2d", "batch_normalization", "max_pooling2d", "global_average_pooling2d", "flatten",
                     "dense"]


def test_upsampling2d_shape_and_values_in_a_model():
    """A decoder-style block: Conv2D, UpSampling2D back to the input size, trained one step (the
    gradient flows through the repeated pixels)."""
    inputs = L.Input(shape=(4, 6, 2))
    down = L.MaxPooling2D(2)(L.Conv2D(3, 3, padding="same", activation="relu")(inputs))
    up = L.UpSampling2D((2, 2), name="up")(down)
    model = gn.Model(inputs, up)
    assert model.get_layer("up").output_shape == (None, 4, 6, 3)
    x = np.random.default_rng(0).normal(size=(5, 4, 6, 2)).astype(np.float32)
    pooled = gn.Model(inputs, down).predict(x, verbose=0)
    np.testing.assert_array_equal(model.predict(x, verbose=0), pooled.repeat(2, axis=1).repeat(2, axis=2))
    model.compile("sgd", "mse")
    before = model.get_weights()[0].copy()
    model.fit(x, np.ones((5, 4, 6, 3), np.float32), epochs=1, verbose=0)
    assert not np.array_equal(model.get_weights()[0], before)


def test_separable_conv2d_and_cropping2d():
    """SeparableConv2D's weights and parameter count as Keras (depthwise (KH, KW, C, m), pointwise (1, 1,
    C * m, filters), bias) and its values against PyTorch's depthwise then pointwise conv; Cropping2D's
    shape and values, both layouts."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for fmt in ("channels_last", "channels_first"):
        first = fmt == "channels_first"
        shape = (3, 10, 9) if first else (10, 9, 3)
        sep = L.SeparableConv2D(8, 3, padding="same", depth_multiplier=2, data_format=fmt)
        crop = L.Cropping2D(((1, 2), (0, 3)), data_format=fmt)
        model = gn.Sequential([L.Input(shape), sep, crop])
        assert model.count_params() == 3 * 3 * 3 * 2 + 6 * 8 + 8
        assert model.output_shape == ((None, 8, 7, 6) if first else (None, 7, 6, 8))
        assert sep.get_config()["depth_multiplier"] == 2 and "pointwise_initializer" in sep.get_config()
        depthwise, pointwise, bias = (w.value for w in sep.weights)
        assert depthwise.shape == (3, 3, 3, 2) and pointwise.shape == (1, 1, 6, 8)
        a = np.random.default_rng(1).normal(size=(2, *shape)).astype(np.float32)
        t = torch.tensor(a if first else np.transpose(a, (0, 3, 1, 2)))
        dw = torch.tensor(np.transpose(depthwise, (2, 3, 0, 1)).reshape(6, 1, 3, 3))  # (C * m, 1, KH, KW)
        pw = torch.tensor(np.transpose(pointwise, (3, 2, 0, 1)))
        want = F.conv2d(F.conv2d(t, dw, padding=1, groups=3), pw, torch.tensor(bias))[:, :, 1:8, 0:6].numpy()
        np.testing.assert_allclose(model.predict(a), want if first else np.transpose(want, (0, 2, 3, 1)),
                                   rtol=1e-4, atol=1e-5, err_msg=fmt)
    with pytest.raises(ValueError, match="leaves nothing"):
        gn.Sequential([L.Input((4, 4, 1)), L.Cropping2D(2)])
