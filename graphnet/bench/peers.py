"""Peer training steps for the benchmark grid: hand-written numpy, PyTorch eager and JAX jit.

Every peer trains the same model on the same data from the same initial weights (the grid of
BENCHMARKS.md), so their losses agree and their times compare. A peer is a zero-argument `step()`
that runs forward + backward + Adam in place and returns the loss, plus the version and thread
count to quote next to its time. torch and jax are imported only when their peer is built.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np

from graphnet.init import glorot_uniform

LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8


@dataclass(frozen=True)
class GridConfig:
    """One row of the benchmark grid."""

    name: str
    layers: tuple[int, ...]  # input, hidden..., output
    batch: int
    activation: str  # of the hidden layers: "relu" | "tanh"
    loss: str  # "bce_logits" | "softmax_ce" | "mse"

    @property
    def flops(self) -> int:
        """6 x batch x sum(in x out): forward 2, backward 4 per multiply-add."""
        return 6 * self.batch * sum(a * b for a, b in zip(self.layers, self.layers[1:]))

    @property
    def needed_flops(self) -> int:
        """The FLOPs a step must do: `flops` less the input layer's input gradient, which nothing needs."""
        return self.flops - 2 * self.batch * self.layers[0] * self.layers[1]

    @property
    def label(self) -> str:
        return f"{self.name} {'-'.join(map(str, self.layers))} b{self.batch}"


GRID = {c.name: c for c in [
    GridConfig("tiny", (2, 3, 1), 32, "relu", "bce_logits"),
    GridConfig("small", (64, 128, 10), 64, "relu", "softmax_ce"),
    GridConfig("medium", (784, 256, 256, 10), 128, "relu", "softmax_ce"),
    GridConfig("large", (784, 1024, 1024, 10), 256, "relu", "softmax_ce"),
    GridConfig("wide", (1024, 4096, 1024), 512, "tanh", "mse"),
]}


class PeerUnavailable(RuntimeError):
    """The peer's library is not installed (or cannot run here); the benchmark notes it and goes on."""


@dataclass
class Peer:
    name: str
    version: str
    threads: str
    step: Callable[[], Any]
    note: str = ""


def grid_data(config: GridConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 inputs and targets: 0/1 labels, one-hot classes or real targets per the loss."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((config.batch, config.layers[0])).astype(np.float32)
    n_out = config.layers[-1]
    if config.loss == "bce_logits":
        y = (rng.random((config.batch, n_out)) < 0.5).astype(np.float32)
    elif config.loss == "softmax_ce":
        y = np.eye(n_out, dtype=np.float32)[rng.integers(0, n_out, config.batch)]
    else:
        y = rng.standard_normal((config.batch, n_out)).astype(np.float32)
    return x, y


def grid_params(config: GridConfig, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Glorot-uniform weights (layer i seeded with seed + i) and zero biases."""
    dims = list(zip(config.layers, config.layers[1:]))
    return [(glorot_uniform((n_in, n_out), seed=seed + i), np.zeros(n_out, np.float32))
            for i, (n_in, n_out) in enumerate(dims)]


def blas_threads() -> str:
    """numpy's BLAS and its thread count, as threadpoolctl sees them."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "? (threadpoolctl not installed)"
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    return ", ".join(f"{p['num_threads']} ({p['internal_api']})" for p in pools) or "?"


# ---------------------------------------------------------------------------------------------- numpy

class _Adam:
    """PyTorch's Adam on a list of arrays, updated in place with preallocated scratch."""

    def __init__(self, params: list[np.ndarray]):
        self.params = params
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.tmp = [np.empty_like(p) for p in params]
        self.t = 0

    def update(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        b1, b2 = BETAS
        step_size = LR / (1 - b1 ** self.t)
        inv_sqrt_bc2 = 1 / np.sqrt(1 - b2 ** self.t)
        for p, g, m, v, tmp in zip(self.params, grads, self.m, self.v, self.tmp):
            m *= b1
            np.multiply(g, 1 - b1, out=tmp)
            m += tmp
            v *= b2
            np.multiply(g, g, out=tmp)
            tmp *= 1 - b2
            v += tmp
            np.sqrt(v, out=tmp)
            tmp *= inv_sqrt_bc2
            tmp += EPS
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p -= tmp


def _loss_and_grad(config: GridConfig, z: np.ndarray, y: np.ndarray) -> tuple[np.float32, np.ndarray]:
    """The loss (mean over the batch; over all elements for mse) and its gradient w.r.t. the output z."""
    if config.loss == "bce_logits":
        loss = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
        return loss, (1 / (1 + np.exp(-z)) - y) / z.size  # the mean is over every element, as torch's
    if config.loss == "softmax_ce":
        shifted = z - z.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(total[:, 0]) - np.sum(y * shifted, axis=1))
        return loss, (e / total - y) / z.shape[0]
    diff = z - y
    return np.mean(diff * diff), diff * (2 / diff.size)


def numpy_peer(config: GridConfig, seed: int = 0) -> Peer:
    """A hand-written numpy step: matmuls into preallocated buffers, Adam in place."""
    x, y = grid_data(config, seed)
    layers = [(w.copy(), b.copy()) for w, b in grid_params(config, seed)]
    weights = [w for w, _ in layers]
    biases = [b for _, b in layers]
    adam = _Adam([a for wb in layers for a in wb])
    acts = [x] + [np.empty((config.batch, w.shape[1]), np.float32) for w in weights]
    deltas = [np.empty((config.batch, w.shape[0]), np.float32) for w in weights]
    dws = [np.empty_like(w) for w in weights]
    dbs = [np.empty_like(b) for b in biases]
    tanh = config.activation == "tanh"
    last = len(weights) - 1

    def step() -> np.float32:
        for i, (w, b) in enumerate(layers):
            out = acts[i + 1]
            np.matmul(acts[i], w, out=out)
            out += b
            if i < last and tanh:
                np.tanh(out, out=out)
            elif i < last:
                np.maximum(out, 0, out=out)
        loss, dz = _loss_and_grad(config, acts[-1], y)
        for i in range(last, -1, -1):
            np.matmul(acts[i].T, dz, out=dws[i])
            np.sum(dz, axis=0, out=dbs[i])
            if i == 0:
                break
            da = np.matmul(dz, weights[i].T, out=deltas[i])
            h = acts[i]
            if tanh:
                da *= 1 - h * h
            else:
                da *= h > 0
            dz = da
        adam.update([g for pair in zip(dws, dbs) for g in pair])
        return loss

    return Peer("numpy", np.__version__, blas_threads(), step, "hand-written forward, backward and Adam, in place")


# ---------------------------------------------------------------------------------------------- torch

def torch_peer(config: GridConfig, seed: int = 0, impl: str = "for-loop") -> Peer:
    """PyTorch eager with torch.optim.Adam; `impl` picks its "for-loop", "foreach" or "fused" kernel."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        raise PeerUnavailable(f"torch not installed ({e})") from e
    x_np, y_np = grid_data(config, seed)
    x = torch.from_numpy(x_np)
    if config.loss == "softmax_ce":
        y = torch.from_numpy(y_np.argmax(axis=1))
    else:
        y = torch.from_numpy(y_np)
    params = [torch.tensor(a, requires_grad=True) for wb in grid_params(config, seed) for a in wb]
    options = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]
    try:
        opt = torch.optim.Adam(params, lr=LR, betas=BETAS, eps=EPS, **options)
    except (RuntimeError, ValueError, TypeError) as e:
        raise PeerUnavailable(f"torch.optim.Adam({impl}) unsupported here: {e}") from e
    act = torch.tanh if config.activation == "tanh" else torch.relu
    loss_fn = {"bce_logits": F.binary_cross_entropy_with_logits, "softmax_ce": F.cross_entropy,
               "mse": F.mse_loss}[config.loss]
    pairs = list(zip(params[::2], params[1::2]))

    def step():
        opt.zero_grad(set_to_none=True)
        h = x
        for i, (w, b) in enumerate(pairs):
            h = torch.addmm(b, h, w)
            if i < len(pairs) - 1:
                h = act(h)
        loss = loss_fn(h, y)
        loss.backward()
        opt.step()
        return loss.detach()

    name = "torch" if impl == "for-loop" else f"torch-{impl}"
    return Peer(name, torch.__version__, str(torch.get_num_threads()), step,
                note=f"eager, torch.optim.Adam ({impl})")


# ---------------------------------------------------------------------------------------------- jax

def jax_threads() -> str:
    """XLA's CPU thread pool has one thread per core this process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} (cores in the CPU affinity)"


def jax_peer(config: GridConfig, seed: int = 0) -> Peer:
    """`jax.jit` of the whole step (forward, grad, Adam) with the parameters and Adam state donated."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as e:
        raise PeerUnavailable(f"jax not installed ({e})") from e
    x_np, y_np = grid_data(config, seed)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    params = [jnp.asarray(a) for wb in grid_params(config, seed) for a in wb]
    act = jnp.tanh if config.activation == "tanh" else jax.nn.relu

    def loss_fn(params, x, y):
        h = x
        n = len(params) // 2
        for i in range(n):
            h = h @ params[2 * i] + params[2 * i + 1]
            if i < n - 1:
                h = act(h)
        if config.loss == "bce_logits":
            return jnp.mean(jnp.maximum(h, 0) - h * y + jnp.log1p(jnp.exp(-jnp.abs(h))))
        if config.loss == "softmax_ce":
            return jnp.mean(-jnp.sum(y * jax.nn.log_softmax(h, axis=1), axis=1))
        return jnp.mean((h - y) ** 2)

    def train_step(params, m, v, t, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        t = t + 1
        b1, b2 = BETAS
        step_size = LR / (1 - b1 ** t)
        inv_sqrt_bc2 = 1 / jnp.sqrt(1 - b2 ** t)
        m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads)]
        v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, grads)]
        params = [p - step_size * mi / (jnp.sqrt(vi) * inv_sqrt_bc2 + EPS) for p, mi, vi in zip(params, m, v)]
        return params, m, v, t, loss

    jitted = jax.jit(train_step, donate_argnums=(0, 1, 2, 3))
    state = {"params": params, "m": [jnp.zeros_like(p) for p in params], "v": [jnp.zeros_like(p) for p in params],
             "t": jnp.zeros((), jnp.float32)}

    def step():
        state["params"], state["m"], state["v"], state["t"], loss = jitted(
            state["params"], state["m"], state["v"], state["t"], x, y)
        return loss.block_until_ready()

    return Peer("jax", jax.__version__, jax_threads(), step, note="jax.jit of the whole step, donated buffers")


PEERS: dict[str, Callable[..., Peer]] = {
    "numpy": numpy_peer,
    "torch": torch_peer,
    "torch-foreach": partial(torch_peer, impl="foreach"),
    "torch-fused": partial(torch_peer, impl="fused"),
    "jax": jax_peer,
}
