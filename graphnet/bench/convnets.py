"""The convolutional configurations of the benchmark grid (BENCHMARKS.md): lenet and cifar."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import graphnet as gn

LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8  # Adam, as BENCHMARKS.md


@dataclass(frozen=True)
class ConvNet:
    """Convs (k, filters, padding) with a 2x2 max pool after the entries marked "pool", then dense layers."""

    name: str
    image: tuple  # (H, W, C)
    convs: tuple  # (k, filters, padding) or "pool"
    dense: tuple  # widths after the flattened image, the last one the 10 classes
    batch: int = 64

    def shapes(self):
        """Per conv: (H, W, Cin, k, Cout, Ho, Wo); then the flattened width."""
        h, w, c = self.image
        out = []
        for item in self.convs:
            if item == "pool":
                h, w = h // 2, w // 2
                continue
            k, f, pad = item
            ho, wo = (h, w) if pad == "same" else (h - k + 1, w - k + 1)
            out.append((h, w, c, k, f, ho, wo))
            h, w, c = ho, wo, f
        return out, h * w * c

    @property
    def flops(self) -> int:
        """3 x the forward count (BENCHMARKS.md)."""
        convs, flat = self.shapes()
        forward = sum(2 * self.batch * ho * wo * k * k * c * f for _, _, c, k, f, ho, wo in convs)
        widths = (flat,) + self.dense
        forward += sum(2 * self.batch * a * b for a, b in zip(widths, widths[1:]))
        return 3 * forward


NETS = {n.name: n for n in [
    ConvNet("lenet", (28, 28, 1), ((5, 6, "valid"), "pool", (5, 16, "valid"), "pool"), (120, 84, 10)),
    ConvNet("cifar", (32, 32, 3), ((3, 32, "same"), (3, 32, "same"), "pool", (3, 64, "same"), (3, 64, "same"),
                                   "pool"), (256, 10)),
]}


def initial_weights(net: ConvNet, seed: int = 0) -> list[np.ndarray]:
    """He-normal filters (KH, KW, Cin, Cout), Glorot-uniform dense kernels, zero biases."""
    rng = np.random.default_rng(seed)
    convs, flat = net.shapes()
    weights = []
    for _, _, c, k, f, _, _ in convs:
        weights += [rng.normal(0, np.sqrt(2 / (k * k * c)), (k, k, c, f)).astype(np.float32), np.zeros(f, np.float32)]
    widths = (flat,) + net.dense
    for a, b in zip(widths, widths[1:]):
        bound = np.sqrt(6 / (a + b))
        weights += [rng.uniform(-bound, bound, (a, b)).astype(np.float32), np.zeros(b, np.float32)]
    return weights


def data(net: ConvNet, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(net.batch, *net.image)).astype(np.float32),
            rng.integers(0, 10, net.batch).astype(np.int64))


def graphnet_function(net: ConvNet, weights: list[np.ndarray]) -> gn.Function:
    """The compiled LLVM training step of `net` (feeds x: NHWC images, y: int64 labels)."""
    with gn.Graph():
        h = gn.placeholder("x", (None, *net.image))
        labels = gn.placeholder("y", (None,), np.int64)
        params = [gn.variable(f"p{i}", w.copy()) for i, w in enumerate(weights)]
        it = iter(params)
        for item in net.convs:
            h = gn.max_pool2d(h, 2) if item == "pool" else gn.relu(gn.conv2d(h, next(it), padding=item[2]) + next(it))
        h = gn.reshape(h, (None, -1))
        for i in range(len(net.dense)):
            h = h @ next(it) + next(it)
            h = gn.relu(h) if i < len(net.dense) - 1 else h
        loss = gn.losses.softmax_cross_entropy(h, labels)
        return gn.compile(loss, updates=gn.optim.Adam(LR, BETAS, EPS).minimize(loss), backend="llvm")
