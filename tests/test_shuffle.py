"""An epoch's shuffle (graphnet/shuffle.py and its C extension) is numpy's default_rng([seed, epoch])
permutation, bit for bit; fit draws exactly that order."""
import sys

import numpy as np
import pytest

import graphnet as gn
from graphnet import shuffle

native = pytest.importorskip("graphnet._shuffle", reason="the C extension is not built (python setup.py build_ext)")

SEEDS = [0, 1, 2, 12345, 2 ** 31 - 1, 2 ** 32 - 1, 2 ** 32, 2 ** 63 + 11, 3 ** 70]
EPOCHS = [0, 1, 2, 9, 1000, 2 ** 32 - 1, 2 ** 32 + 3]
SIZES = [0, 1, 2, 3, 5, 31, 32, 33, 64, 100, 255, 256, 257, 258, 513, 1280, 4097, 65537]  # blocks of 256 j's


@pytest.mark.parametrize("seed", SEEDS)
def test_native_order_is_numpys_permutation(seed):
    for epoch in EPOCHS:
        for n in SIZES:
            got = shuffle._native_order(native.fill, seed, epoch, n)
            np.testing.assert_array_equal(got, np.random.default_rng([seed, epoch]).permutation(n))
            assert got.dtype == np.int64


def test_many_random_seeds_epochs_and_sizes():
    rng = np.random.default_rng(0)
    for _ in range(300):
        seed, epoch, n = int(rng.integers(2 ** 31)), int(rng.integers(500)), int(rng.integers(1, 3000))
        np.testing.assert_array_equal(shuffle._native_order(native.fill, seed, epoch, n),
                                      shuffle.numpy_order(seed, epoch, n))


def test_entropy_words_are_little_endian_32_bit_words():
    assert shuffle.entropy_words((0, 5)) == (0, 5)
    assert shuffle.entropy_words((2 ** 32 + 7, 0)) == (7, 1, 0)
    assert shuffle.entropy_words((2 ** 64,)) == (0, 0, 1)


def test_epoch_order_uses_the_extension_once_it_agrees(monkeypatch):
    monkeypatch.setattr(shuffle, "_native", None)
    np.testing.assert_array_equal(shuffle.epoch_order(4, 2, 50), shuffle.numpy_order(4, 2, 50))
    assert shuffle._native is native.fill


def test_a_disagreeing_extension_is_never_used(monkeypatch):
    right = native.fill

    def wrong(words, out):
        right(words, out)
        out[:2] = out[1::-1].copy()
    monkeypatch.setattr(native, "fill", wrong)
    monkeypatch.setattr(shuffle, "_native", None)
    np.testing.assert_array_equal(shuffle.epoch_order(4, 2, 50), shuffle.numpy_order(4, 2, 50))
    assert shuffle._native is False
    np.testing.assert_array_equal(shuffle.epoch_order(5, 0, 9), shuffle.numpy_order(5, 0, 9))


def test_other_arguments_go_to_numpy():
    np.testing.assert_array_equal(shuffle.epoch_order(np.int64(3), 1, 7), shuffle.numpy_order(3, 1, 7))
    with pytest.raises(ValueError):
        shuffle.epoch_order(-1, 0, 5)


def test_fit_shuffles_by_numpys_permutation(monkeypatch):
    def fitted():
        model = gn.Sequential([gn.layers.Input((3,)), gn.layers.Dense(4, activation="tanh"), gn.layers.Dense(1)])
        model.seed = 77
        model.compile(gn.optim.Adam(lr=0.01), "mse")
        rng = np.random.default_rng(1)
        model.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()])
        x, y = rng.normal(size=(50, 3)).astype(np.float32), rng.normal(size=(50, 1)).astype(np.float32)
        history = model.fit(x, y, batch_size=8, epochs=3, verbose=0).history
        return history, model.get_weights(), model.predict(x, batch_size=8)

    fast = fitted()
    monkeypatch.setattr(gn.model, "epoch_order", shuffle.numpy_order)
    reference = fitted()
    assert fast[0] == reference[0]
    for a, b in zip(fast[1] + [fast[2]], reference[1] + [reference[2]]):
        np.testing.assert_array_equal(a, b)


def test_without_the_extension_numpy_draws_every_order(monkeypatch):
    monkeypatch.setitem(sys.modules, "graphnet._shuffle", None)  # its import fails
    monkeypatch.setattr(shuffle, "_native", None)
    np.testing.assert_array_equal(shuffle.epoch_order(8, 1, 40), shuffle.numpy_order(8, 1, 40))
    assert shuffle._native is False
