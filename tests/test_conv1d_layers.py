"""Keras's 1-D layers (graphnet/conv1d_layers.py) and GlobalMaxPooling2D: output shapes and parameter
counts as Keras prints them, values and gradients against PyTorch's conv1d (valid, same, causal,
strides, dilation, groups, channels first) and pooling, and a sequence model that trains."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn

pytestmark = pytest.mark.usefixtures("private_cache")

L = gn.layers
RNG = np.random.default_rng(29)


def test_shapes_and_parameter_counts_are_keras():
    model = gn.Sequential([L.Input((20, 3)), L.Conv1D(8, 3, padding="causal", dilation_rate=2, activation="relu"),
                           L.MaxPooling1D(2), L.Conv1D(4, 5, strides=2, padding="same"),
                           L.AveragePooling1D(3, padding="same"), L.GlobalMaxPooling1D()])
    assert [layer.output_shape for layer in model.layers] == [(None, 20, 8), (None, 10, 8), (None, 5, 4), (None, 2, 4),
                                                             (None, 4)]
    assert model.count_params() == (3 * 3 * 8 + 8) + (5 * 8 * 4 + 4)
    assert [v.value.shape for v in model.layers[0].weights] == [(3, 3, 8), (8,)]  # Keras's (K, Cin, filters)
    first = gn.Sequential([L.Input((3, 20)), L.Conv1D(6, 4, groups=3, data_format="channels_first"),
                           L.GlobalAveragePooling1D(data_format="channels_first", keepdims=True)])
    assert [layer.output_shape for layer in first.layers] == [(None, 6, 17), (None, 6, 1)]
    images = gn.Sequential([L.Input((5, 4, 3)), L.GlobalMaxPooling2D()])
    assert images.output_shape == (None, 3)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_conv1d_and_pooling_equal_torch(data_format):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    first = data_format == "channels_first"
    cases = [dict(padding="valid"), dict(padding="same", strides=2), dict(padding="causal", dilation_rate=3),
             dict(padding="same", groups=2, dilation_rate=2)]
    x = RNG.normal(size=(3, 4, 17))  # torch's (N, C, L)
    ours_x = x if first else np.transpose(x, (0, 2, 1))
    to_ours = (lambda a: a) if first else (lambda a: np.transpose(a, (0, 2, 1)))
    for options in cases:
        layer = L.Conv1D(6, 3, data_format=data_format, **options)
        model = gn.Sequential([L.Input(ours_x.shape[1:]), layer])
        kernel, bias = (v.value for v in layer.weights)
        weight = torch.tensor(np.transpose(kernel, (2, 1, 0)).astype(np.float64))  # (filters, Cin / g, K)
        k, d, s = 3, options.get("dilation_rate", 1), options.get("strides", 1)
        t = torch.tensor(x)
        if options["padding"] == "causal":
            t = F.pad(t, (d * (k - 1), 0))
        elif options["padding"] == "same":
            total = max((-(-17 // s) - 1) * s + d * (k - 1) + 1 - 17, 0)
            t = F.pad(t, (total // 2, total - total // 2))
        want = F.conv1d(t, weight, torch.tensor(bias.astype(np.float64)), stride=s, dilation=d,
                        groups=options.get("groups", 1)).numpy()
        np.testing.assert_allclose(model.predict(ours_x.astype(np.float32)), to_ours(want), rtol=1e-4, atol=1e-5,
                                   err_msg=str(options))
    for layer, want in [(L.MaxPooling1D(3, 2, data_format=data_format), F.max_pool1d(torch.tensor(x), 3, 2)),
                        (L.AveragePooling1D(4, data_format=data_format), F.avg_pool1d(torch.tensor(x), 4)),
                        (L.GlobalMaxPooling1D(data_format=data_format), torch.tensor(x).amax(2)),
                        (L.GlobalAveragePooling1D(data_format=data_format), torch.tensor(x).mean(2))]:
        model = gn.Sequential([L.Input(ours_x.shape[1:]), layer])
        got = model.predict(ours_x.astype(np.float32))
        np.testing.assert_allclose(got, want.numpy() if want.ndim == 2 else to_ours(want.numpy()), rtol=1e-5,
                                   atol=1e-6, err_msg=type(layer).__name__)


def test_conv1d_gradients_equal_torch():
    torch = pytest.importorskip("torch")
    layer = L.Conv1D(3, 4, padding="causal", dilation_rate=2, use_bias=False)
    with gn.Graph() as graph:
        x = gn.placeholder("x", (None, 9, 2))
        y = layer.build(graph, [x])
        (kernel,) = graph.variables.values()
        gx, gk = gn.gradients(gn.sum(y * y), [x, kernel])
        a = RNG.normal(size=(2, 9, 2)).astype(np.float32)
        got_x, got_k = gn.compile([gx, gk])(x=a)
    tx = torch.tensor(np.transpose(a, (0, 2, 1)).astype(np.float64), requires_grad=True)
    tk = torch.tensor(np.transpose(kernel.value, (2, 1, 0)).astype(np.float64), requires_grad=True)
    out = torch.nn.functional.conv1d(torch.nn.functional.pad(tx, (6, 0)), tk, dilation=2)
    want_x, want_k = torch.autograd.grad((out * out).sum(), [tx, tk])
    np.testing.assert_allclose(got_x, np.transpose(want_x.numpy(), (0, 2, 1)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_k, np.transpose(want_k.numpy(), (2, 1, 0)), rtol=1e-4, atol=1e-4)


def test_global_max_pooling_2d():
    a = RNG.normal(size=(2, 5, 4, 3)).astype(np.float32)
    model = gn.Sequential([L.Input((5, 4, 3)), L.GlobalMaxPooling2D(keepdims=True)])
    assert model.output_shape == (None, 1, 1, 3)
    np.testing.assert_array_equal(model.predict(a), a.max(axis=(1, 2), keepdims=True))


def test_a_sequence_model_trains():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 16, 2)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.float32)[:, None]
    model = gn.Sequential([L.Input((16, 2)), L.Conv1D(8, 3, padding="same", activation="relu"), L.MaxPooling1D(2),
                           L.Conv1D(8, 3, activation="relu"), L.GlobalAveragePooling1D(), L.Dense(1, activation="sigmoid")])
    model.compile(gn.optim.Adam(lr=0.01), "binary_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=30, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]


def test_bad_arguments_are_value_errors():
    for make, words in [(lambda: L.Conv1D(4, 3, padding="full"), "padding must be 'valid', 'same' or 'causal'"),
                        (lambda: L.Conv1D(0, 3), "filters must be a positive integer"),
                        (lambda: L.MaxPooling1D(2, padding="causal"), "padding must be 'valid' or 'same'"),
                        (lambda: gn.Sequential([L.Input((5, 4, 3)), L.Conv1D(2, 3)]), "3-D sequence batches"),
                        (lambda: gn.Sequential([L.Input((2, 3)), L.Conv1D(2, 3)]), "longer than the input's 2 steps")]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(")):
            make()
