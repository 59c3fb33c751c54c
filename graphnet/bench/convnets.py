"""The convolutional configurations of the benchmark grid (BENCHMARKS.md): lenet and cifar, their
weights and data, and their training step in graphnet, PyTorch eager (NCHW) and JAX (NHWC, jit of the
whole step with donated buffers). Thread settings are the caller's (`micro/cnn.py` pins one thread,
`graphnet bench` its worker's settings)."""
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

    @property
    def needed_flops(self) -> int:
        """The FLOPs a step must do: `flops` less the first conv's input gradient, which nothing needs."""
        _, _, c, k, f, ho, wo = self.shapes()[0][0]
        return self.flops - 2 * self.batch * ho * wo * k * k * c * f

    @property
    def label(self) -> str:
        return f"{self.name} {'x'.join(map(str, self.image))} b{self.batch}"


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


def graphnet_function(net: ConvNet, weights: list[np.ndarray], backend: str = "llvm",
                      fuse_optimizer: bool = True) -> gn.Function:
    """The compiled training step of `net` (feeds x: NHWC images, y: int64 labels)."""
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
        return gn.compile(loss, updates=gn.optim.Adam(LR, BETAS, EPS).minimize(loss), backend=backend,
                          fuse_optimizer=fuse_optimizer)


def torch_step(net: ConvNet, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray, threads: int | None = 1):
    """PyTorch eager, NCHW, torch.optim.Adam; `threads` None keeps torch's own setting (OMP_NUM_THREADS)."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    F = torch.nn.functional
    params = [torch.tensor(w.transpose(3, 2, 0, 1) if w.ndim == 4 else w.T).contiguous().requires_grad_()
              for w in weights]
    opt = torch.optim.Adam(params, LR, BETAS, EPS)
    tx, ty = torch.tensor(x.transpose(0, 3, 1, 2)).contiguous(), torch.tensor(y)

    def step():
        opt.zero_grad(set_to_none=True)
        h, it = tx, iter(params)
        for item in net.convs:
            h = F.max_pool2d(h, 2) if item == "pool" else F.relu(F.conv2d(h, next(it), next(it), padding=item[2]))
        h = h.permute(0, 2, 3, 1).flatten(1)  # NHWC order, as the dense weights were drawn
        for i in range(len(net.dense)):
            h = F.linear(h, next(it), next(it))
            h = F.relu(h) if i < len(net.dense) - 1 else h
        loss = F.cross_entropy(h, ty)
        loss.backward()
        opt.step()
        return loss.detach()
    return step


def jax_step(net: ConvNet, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray):
    import jax
    import jax.numpy as jnp

    def loss_fn(params, x, y):
        h, it = x, iter(params)
        for item in net.convs:
            if item == "pool":
                h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
            else:
                h = jax.lax.conv_general_dilated(h, next(it), (1, 1), item[2].upper(),
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
                h = jax.nn.relu(h + next(it))
        h = h.reshape(h.shape[0], -1)
        for i in range(len(net.dense)):
            h = h @ next(it) + next(it)
            h = jax.nn.relu(h) if i < len(net.dense) - 1 else h
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h), y[:, None], axis=1))

    def adam(state, x, y):
        params, m, v, t = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        t = t + 1
        m = [BETAS[0] * a + (1 - BETAS[0]) * g for a, g in zip(m, grads)]
        v = [BETAS[1] * a + (1 - BETAS[1]) * g * g for a, g in zip(v, grads)]
        c1, c2 = 1 - BETAS[0] ** t, 1 - BETAS[1] ** t
        params = [p - LR / c1 * a / (jnp.sqrt(b) / jnp.sqrt(c2) + EPS) for p, a, b in zip(params, m, v)]
        return (params, m, v, t), loss

    fn = jax.jit(adam, donate_argnums=0)
    params = [jnp.asarray(w) for w in weights]
    box = [(params, [jnp.zeros_like(p) for p in params], [jnp.zeros_like(p) for p in params], jnp.float32(0))]
    jx, jy = jnp.asarray(x), jnp.asarray(y)

    def step():
        box[0], loss = fn(box[0], jx, jy)
        return loss.block_until_ready()
    return step
