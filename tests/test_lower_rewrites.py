"""Rewrites the lowering makes for speed, checked against the numpy reference: GEMM kernels of
narrow products run transposed (C^T = B^T A^T, so that the wide side fills the register tile),
including fused epilogues, in-place optimizer updates and position-dependent dropout masks; and
divisions by a loop-invariant value become multiplications by its (hoisted) reciprocal."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn


pytestmark = pytest.mark.usefixtures("private_cache")  # compile cold, in a cache of its own


def _gemm_domains(fn) -> list[tuple]:
    return [k.domain for k in fn.executable.lp.kernels if k.reduce is not None and k.reduce.workspace is not None]


def test_narrow_products_are_transposed_and_agree():
    rng = np.random.default_rng(0)
    with gn.Graph():
        x = gn.placeholder("x", (None, 128))
        w = gn.variable("w", rng.standard_normal((128, 10)).astype(np.float32))
        b = gn.variable("b", rng.standard_normal(10).astype(np.float32))
        d = gn.placeholder("d", (None, 10))
        fetches = [gn.relu(x @ w + b), gn.transpose(x) @ d]
        fns = {be: gn.compile(fetches, backend=be) for be in ("numpy", "llvm")}
    domains = _gemm_domains(fns["llvm"])
    assert (10, None, 128) in domains and (10, 128, None) in domains  # both ran as transposed products
    for n in (1, 7, 64, 130):
        feeds = dict(x=rng.standard_normal((n, 128)).astype(np.float32),
                     d=rng.standard_normal((n, 10)).astype(np.float32))
        for got, want in zip(fns["llvm"](**feeds), fns["numpy"](**feeds)):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_transposed_product_with_dropout_and_adam_matches_numpy():
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((64, 10)).astype(np.float32)
    xs = rng.standard_normal((32, 64)).astype(np.float32)
    ys = rng.standard_normal((32, 10)).astype(np.float32)
    losses = {}
    for backend in ("numpy", "llvm"):
        with gn.Graph():
            x, y = gn.placeholder("x", (None, 64)), gn.placeholder("y", (None, 10))
            w = gn.variable("w", w0)
            loss = gn.losses.mse(gn.dropout(x @ w, 0.3, seed=5), y)
            step = gn.compile(loss, updates=gn.optim.Adam(lr=0.01).minimize(loss), backend=backend)
            losses[backend] = [float(step(x=xs, y=ys)) for _ in range(5)] + [w.attrs["var"].read()]
            if backend == "llvm":
                assert (10, None, 64) in _gemm_domains(step)
    np.testing.assert_allclose(losses["llvm"][:5], losses["numpy"][:5], rtol=1e-5)
    np.testing.assert_allclose(losses["llvm"][5], losses["numpy"][5], rtol=1e-5, atol=1e-6)


def test_division_by_an_invariant_uses_its_reciprocal_and_keeps_special_values():
    with gn.Graph():
        x = gn.placeholder("x", (None, 5))
        s = gn.placeholder("s", ())
        fns = {be: gn.compile(x / s, backend=be) for be in ("numpy", "llvm")}
    assert "div(1.0:float32, b" in fns["llvm"].executable.lp.to_text()
    xs = np.array([[1.0, -3.0, 0.0, np.inf, np.nan]] * 3, np.float32)
    for scale in (7.0, -0.1, 0.0, -0.0, np.inf, np.nan, 3e-30):
        feeds = dict(x=xs, s=np.float32(scale).reshape(()))
        got, want = fns["llvm"](**feeds), fns["numpy"](**feeds)
        np.testing.assert_allclose(got, want, rtol=3e-7)  # NaN and infinities in the same places
