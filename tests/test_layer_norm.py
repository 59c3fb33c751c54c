"""gn.layer_norm and Keras's LayerNormalization: values and gradients against PyTorch's F.layer_norm
on every backend, several axes, central differences, the layer's weights and a model that trains,
and the errors."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from helpers import check_grad, run
from test_reliability import BACKENDS

pytestmark = pytest.mark.usefixtures("private_cache")

RNG = np.random.default_rng(31)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm_equals_torch_with_gradients(backend):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x_value = RNG.normal(size=(3, 4, 5)) * 3 + 1
    for axes in ([-1], [1, 2]):
        shape = x_value.shape[axes[0]:]
        scale, offset, upstream = RNG.normal(size=shape), RNG.normal(size=shape), RNG.normal(size=x_value.shape)
        with gn.Graph():
            x = gn.placeholder("x", (None, 4, 5), np.float64)
            s, o = gn.placeholder("s", shape, np.float64), gn.placeholder("o", shape, np.float64)
            y = gn.layer_norm(x, s, o, axes, epsilon=1e-5)
            got = run([y, *gn.gradients(gn.sum(y * upstream), [x, s, o])], {"x": x_value, "s": scale, "o": offset},
                      backend=backend)
        tx, ts, to = (torch.tensor(v, requires_grad=True) for v in (x_value, scale, offset))
        ref = F.layer_norm(tx, shape, ts, to, eps=1e-5)
        want = [ref.detach().numpy(), *(g.numpy() for g in torch.autograd.grad((ref * torch.tensor(upstream)).sum(),
                                                                                [tx, ts, to]))]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-10, err_msg=str(axes))


def test_gradients_match_central_differences():
    check_grad(lambda x, s: gn.layer_norm(x, s, None, -1), [RNG.normal(size=(2, 3, 4)), RNG.normal(size=4)],
               shapes=[(None, 3, 4), (4,)])


def test_keras_layer_normalization():
    torch = pytest.importorskip("torch")
    model = gn.Sequential([gn.layers.Input((6, 4)), gn.layers.LayerNormalization(), gn.layers.Flatten(),
                           gn.layers.Dense(1)])
    layer = model.layers[0]
    assert [w.value.shape for w in layer.weights] == [(4,), (4,)] and model.count_params() == 8 + 25
    gamma, beta = RNG.normal(size=4).astype(np.float32), RNG.normal(size=4).astype(np.float32)
    layer.set_weights([gamma, beta])
    a = RNG.normal(size=(5, 6, 4)).astype(np.float32)
    sub = gn.Sequential([gn.layers.Input((6, 4)), layer])
    want = torch.nn.functional.layer_norm(torch.tensor(a), (4,), torch.tensor(gamma), torch.tensor(beta), 1e-3)
    np.testing.assert_allclose(sub.predict(a), want.numpy(), rtol=1e-5, atol=1e-5)
    assert layer.get_config() == {"name": layer.name, "axis": -1, "epsilon": 1e-3, "center": True, "scale": True}
    model.compile(gn.optim.Adam(lr=0.05), "mse")
    target = a.sum(axis=(1, 2))[:, None]
    history = model.fit(a, target, epochs=20, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_errors():
    x = gn.placeholder("x", (None, 3))
    for axis in (0, 2, [1, -3]):
        with pytest.raises(gn.ShapeError, match="layer_norm: axis .* must name axes of .* other than the batch"):
            gn.layer_norm(x, axis=axis)
    with pytest.raises(ValueError, match="LayerNormalization: axis 0 is not a feature axis"):
        gn.Sequential([gn.layers.Input((3,)), gn.layers.LayerNormalization(axis=0)])
