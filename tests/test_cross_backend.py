"""Whole training runs agree across backends: the numpy reference and the native code.

The per-op and per-optimizer agreement is tested in test_llvm_*.py and test_opencl.py; here whole
Keras-style trainings (mini-batches, a partial last batch, dropout, early stopping) must follow the
same trajectory on every backend within float rounding.
"""
import numpy as np
import pytest

import graphnet as gn
from graphnet import demo
from graphnet.layers import Dense, Dropout, Input


def _opencl_available() -> bool:
    try:
        import pyopencl as cl
        return bool(cl.get_platforms())
    except Exception:
        return False


NATIVE = ["llvm"] + (["opencl"] if _opencl_available() else [])


@pytest.mark.parametrize("backend", NATIVE)
def test_pass_the_class_training_matches_numpy(backend):
    reference = demo.train(backend="numpy", epochs=30, verbose=0)
    native = demo.train(backend=backend, epochs=30, verbose=0)
    assert len(native.history.history["loss"]) == len(reference.history.history["loss"])
    np.testing.assert_allclose(native.history.history["loss"], reference.history.history["loss"], rtol=1e-4)
    np.testing.assert_allclose(native.history.history["val_loss"], reference.history.history["val_loss"], rtol=1e-4)
    assert native.probability == pytest.approx(reference.probability, abs=1e-4)
    for ref_w, nat_w in zip(reference.model.get_weights(), native.model.get_weights()):
        np.testing.assert_allclose(nat_w, ref_w, rtol=1e-4, atol=1e-5)


def _digits_run(backend):
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.data[:600] / 16.0).astype(np.float32)
    y = digits.target[:600]
    gn.set_seed(3)
    model = gn.Sequential([Input(shape=(64,)), Dense(32, activation="relu"), Dropout(0.3),
                           Dense(10, activation="softmax")])
    model.compile(optimizer=gn.optim.Adam(lr=3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], backend=backend)
    history = model.fit(x, y, batch_size=50, epochs=4, verbose=0, validation_split=0.1)  # 540 rows: partial batch
    return history.history, model.predict(x[:100]), model.get_weights()


@pytest.mark.parametrize("backend", NATIVE)
def test_dropout_mlp_training_matches_numpy(backend):
    pytest.importorskip("sklearn")
    ref_hist, ref_pred, ref_weights = _digits_run("numpy")
    hist, pred, weights = _digits_run(backend)
    for key in ("loss", "val_loss", "accuracy"):
        np.testing.assert_allclose(hist[key], ref_hist[key], rtol=2e-4, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(pred, ref_pred, rtol=1e-3, atol=1e-5)
    for w, ref in zip(weights, ref_weights):
        np.testing.assert_allclose(w, ref, rtol=1e-3, atol=1e-5)


@pytest.mark.skipif("opencl" not in NATIVE, reason="no OpenCL platform (apt-get install pocl-opencl-icd)")
@pytest.mark.parametrize("host", ["numpy", "llvm"])
def test_host_and_device_functions_share_variables_coherently(host):
    """Alternating steps of a host-backend function and an OpenCL function on the same variables
    follow the trajectory of one backend doing every step."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 3)).astype(np.float32)
    Y = rng.normal(size=(16, 1)).astype(np.float32)

    def build():
        g = gn.Graph()
        with g:
            x, y = gn.placeholder("x", (None, 3)), gn.placeholder("y", (None, 1))
            w = gn.variable("w", np.ones((3, 1), np.float32))
            loss = gn.losses.mse(x @ w, y)
            updates = gn.optim.SGD(lr=0.1, momentum=0.9).minimize(loss)
        return w, loss, updates

    w_ref, loss_ref, up_ref = build()
    reference = gn.compile(loss_ref, updates=up_ref, backend="numpy")
    w, loss, updates = build()
    on_host = gn.compile(loss, updates=updates, backend=host)
    on_device = gn.compile(loss, updates=updates, backend="opencl")
    for i in range(6):
        expected = reference(x=X, y=Y)
        got = (on_host if i % 2 else on_device)(x=X, y=Y)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(w.value, w_ref.value, rtol=1e-5)
    w.assign(np.zeros((3, 1), np.float32))
    w_ref.assign(np.zeros((3, 1), np.float32))
    np.testing.assert_allclose(on_host(x=X, y=Y), reference(x=X, y=Y), rtol=1e-5)
    np.testing.assert_allclose(on_device(x=X, y=Y), reference(x=X, y=Y), rtol=1e-5)


@pytest.mark.parametrize("backend", ["numpy"] + NATIVE)
def test_numbers_and_arrays_as_update_values_broadcast_to_the_variable(backend):
    v = gn.variable("v", np.ones((2, 3), np.float32))
    x = gn.placeholder("x", (None, 3))
    gn.compile(gn.sum(x), updates={v: 5.0}, backend=backend)(x=np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(v.value, np.full((2, 3), 5.0))
    gn.compile(gn.sum(x), updates={v: np.arange(3)}, backend=backend)(x=np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(v.value, [[0, 1, 2], [0, 1, 2]])
    with pytest.raises(gn.ShapeError, match="cannot broadcast"):
        gn.compile(gn.sum(x), updates={v: np.arange(4)}, backend=backend)
