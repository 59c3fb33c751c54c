"""The optimizer-fusion pass is what puts each update into its gradient's kernel: without it the
updates are kernels of their own, with the same numbers."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn

OPTIMIZERS = {
    "sgd": lambda: gn.optim.SGD(lr=0.1),
    "nesterov": lambda: gn.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adagrad": lambda: gn.optim.Adagrad(lr=0.1),
    "adadelta": lambda: gn.optim.Adadelta(),
    "rmsprop": lambda: gn.optim.RMSProp(lr=0.01, momentum=0.9, centered=True),
    "adam": lambda: gn.optim.Adam(lr=0.01, amsgrad=True),
    "adamw": lambda: gn.optim.AdamW(lr=0.01),
}


def _train(optimizer: str, fuse: bool, backend: str = "llvm", steps: int = 3):
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=(40, 2)).astype(np.float32)
    with gn.Graph():
        x, y = gn.placeholder("x", (None, 6)), gn.placeholder("y", (None, 2))
        w1 = gn.variable("w1", gn.init.glorot_uniform((6, 40), seed=1))
        b1 = gn.variable("b1", np.zeros(40, np.float32))
        w2 = gn.variable("w2", gn.init.glorot_uniform((40, 2), seed=2))
        loss = gn.losses.mse(gn.tanh(x @ w1 + b1) @ w2, y)
        step = gn.compile([loss], updates=OPTIMIZERS[optimizer]().minimize(loss), backend=backend,
                          fuse_optimizer=fuse)
        losses = [float(step(x=X, y=Y)[0]) for _ in range(steps)]
        return step, losses, [v.value for v in (w1, b1, w2)]


def _update_kernels(lp) -> list[str]:
    """Kernels that write a parameter and compute nothing else (an update on its own)."""
    params = {b.id for b in lp.buffers if b.name in ("w1", "b1", "w2")}
    variables = {b.id for b in lp.buffers if b.kind == "variable"}
    return [k.name for k in lp.kernels if k.reduce is None and any(s.buffer in params for s in k.stores)
            and all(s.buffer in variables for s in k.stores)]


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_without_the_pass_updates_are_kernels_of_their_own(optimizer):
    fused, fused_losses, fused_values = _train(optimizer, True)
    plain, plain_losses, plain_values = _train(optimizer, False)
    assert "fuse_optimizer" in [r.name for r in fused.records]
    assert "fuse_optimizer" not in [r.name for r in plain.records]
    assert fused.program.regions and not plain.program.regions
    assert len(plain.executable.lp.kernels) > len(fused.executable.lp.kernels)
    assert len(_update_kernels(plain.executable.lp)) >= 3  # one per parameter at least
    assert not _update_kernels(fused.executable.lp)
    np.testing.assert_allclose(plain_losses, fused_losses, rtol=1e-6)
    for a, b in zip(plain_values, fused_values):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_region_is_computed_in_the_gradient_kernel():
    step, _, _ = _train("adam", True)
    lp = step.executable.lp
    variables = {b.name: b.id for b in lp.buffers if b.kind == "variable"}
    w1_kernel = next(k for k in lp.kernels if any(s.buffer == variables["w1"] for s in k.stores))
    assert w1_kernel.reduce is not None and w1_kernel.reduce.contraction is not None  # the dW1 matmul
    written = {s.buffer for s in w1_kernel.stores}
    assert {variables[n] for n in ("w1", "w1/adam_m", "w1/adam_v", "w1/adam_vmax")} <= written


def test_without_the_pass_on_opencl_and_numpy_the_numbers_agree():
    pytest.importorskip("pyopencl")
    _, reference, _ = _train("adam", True, backend="numpy")
    for backend in ("numpy", "opencl"):
        try:
            _, losses, _ = _train("adam", False, backend=backend)
        except RuntimeError as e:  # no OpenCL platform
            pytest.skip(str(e))
        np.testing.assert_allclose(losses, reference, rtol=1e-5)
