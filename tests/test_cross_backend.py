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
