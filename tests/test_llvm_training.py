"""Whole training steps on the LLVM backend against the numpy backend: a hand-written SGD update,
every optimizer in gn.optim, dropout, partial batches, float64 gradient checks."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from helpers import check_grad

SIZES = (5, 7, 3)


pytestmark = pytest.mark.usefixtures("private_cache")  # compile cold, in a cache of its own


def mlp(backend: str, updates_for, dtype=np.float32, dropout: float = 0.0, fetch_params: bool = False,
        sizes: tuple = SIZES):
    """A 2-layer softmax classifier in a fresh graph; returns (step function, parameters)."""
    with gn.Graph():
        rng = np.random.default_rng(0)
        x = gn.placeholder("x", (None, sizes[0]), dtype)
        y = gn.placeholder("y", (None,), np.int64)
        params, h = [], x
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = gn.variable(f"w{i}", rng.uniform(-1, 1, (a, b)).astype(dtype))
            bias = gn.variable(f"b{i}", rng.uniform(-0.1, 0.1, b).astype(dtype))
            params += [w, bias]
            h = h @ w + bias
            if i == 0:
                h = gn.dropout(gn.tanh(h), dropout, seed=3) if dropout else gn.tanh(h)
        loss = -gn.mean(gn.sum(gn.log_softmax(h, 1) * gn.one_hot(y, sizes[-1], dtype), 1))
        fetches = [loss] + (params if fetch_params else [])
        return gn.compile(fetches, updates_for(loss, params), backend=backend), params


def hand_sgd(loss, params):
    grads = gn.gradients(loss, params)
    return [(p, p - 0.1 * g) for p, g in zip(params, grads)]


def data(batch: int, seed: int, dtype=np.float32, sizes: tuple = SIZES):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(batch, sizes[0])).astype(dtype), "y": rng.integers(0, sizes[-1], batch)}


def train_both(updates_for, batches=(16, 16, 5, 1, 33, 16), dtype=np.float32, sizes: tuple = SIZES, **kw):
    runs = {}
    for backend in ("numpy", "llvm"):
        step, params = mlp(backend, updates_for, dtype, sizes=sizes, **kw)
        if backend == "llvm":
            runs["kernels"] = step.executable.lp.to_text()
        losses = [step(**data(b, i, dtype, sizes)) for i, b in enumerate(batches)]
        runs[backend] = losses, [p.value for p in params]
    return runs


def assert_same(runs, rtol=2e-5, atol=2e-6):
    (ref_losses, ref_params), (losses, params) = runs["numpy"], runs["llvm"]
    for a, b in zip(ref_losses, losses):
        for u, v in zip(a, b):
            np.testing.assert_allclose(v, u, rtol=rtol, atol=atol)
    for u, v in zip(ref_params, params):
        np.testing.assert_allclose(v, u, rtol=rtol, atol=atol)


def test_hand_written_sgd_matches_numpy_with_partial_batches():
    assert_same(train_both(hand_sgd))


@pytest.mark.parametrize("name", sorted(gn.optim.BY_NAME))
def test_every_optimizer_matches_numpy(name):
    runs = train_both(lambda loss, params: gn.optim.get(name).minimize(loss))
    assert_same(runs)
    assert not np.allclose(runs["llvm"][1][0], mlp("numpy", hand_sgd)[1][0].value)  # the step did move


def test_float64_training_matches_numpy_tightly():
    assert_same(train_both(lambda loss, params: gn.optim.Adam(lr=0.01).minimize(loss), dtype=np.float64),
                rtol=1e-11, atol=1e-12)


def test_dropout_masks_identical_across_backends():
    assert_same(train_both(hand_sgd, dropout=0.4))


def test_fetched_parameters_are_the_values_before_the_update():
    step, params = mlp("llvm", hand_sgd, fetch_params=True)
    before = [p.value for p in params]
    out = step(**data(8, 0))
    for old, fetched, p in zip(before, out[1:], params):
        np.testing.assert_array_equal(fetched, old)
        assert not np.array_equal(p.value, old)


def test_updates_are_simultaneous_assignments():
    """a <- b, b <- a swaps; c <- c + a reads the old a."""
    with gn.Graph():
        a = gn.variable("a", np.array([1.0, 2.0], np.float32))
        b = gn.variable("b", np.array([3.0, 4.0], np.float32))
        c = gn.variable("c", np.array([10.0, 20.0], np.float32))
        step = gn.compile([a * 1], [(a, b), (b, a), (c, c + a)], backend="llvm")
        out = step()
        np.testing.assert_array_equal(out[0], [1, 2])
        np.testing.assert_array_equal(a.value, [3, 4])
        np.testing.assert_array_equal(b.value, [1, 2])
        np.testing.assert_array_equal(c.value, [11, 22])


def test_assign_between_calls_is_seen_by_native_code():
    step, params = mlp("llvm", hand_sgd)
    params[0].assign(np.zeros(params[0].value.shape, np.float32))
    params[2].assign(np.zeros(params[2].value.shape, np.float32))
    loss = step(**data(4, 0))[0]
    np.testing.assert_allclose(loss, np.log(SIZES[-1]) - 0.0, atol=0.2)


@pytest.mark.parametrize("fn", [
    lambda x, w: gn.tanh(x @ w),
    lambda x, w: gn.log_softmax(x @ w, 1),
    lambda x, w: gn.sum(gn.softplus(x) * gn.sigmoid(x), 1, keepdims=True) @ gn.reshape(gn.sum(w, 0), (1, 2)),
])
def test_float64_gradient_check(fn):
    rng = np.random.default_rng(0)
    check_grad(fn, [rng.normal(size=(4, 3)), rng.normal(size=(3, 2))], shapes=[(None, 3), (3, 2)], backend="llvm")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_path_all_transposes_and_epilogues(dtype):
    """Matmuls large enough for the GEMM routine: A @ B, A.T @ B, A @ B.T with fused epilogues."""
    rng = np.random.default_rng(0)
    a = gn.placeholder("a", (None, 40), dtype)
    w = gn.variable("w", rng.normal(size=(40, 30)).astype(dtype))
    v = gn.variable("v", rng.normal(size=(50, 30)).astype(dtype))
    h = gn.relu(a @ w + 0.5)
    fetches = [h, gn.transpose(a) @ h, gn.tanh(h @ gn.transpose(v)), gn.sum(h, 0)]
    feeds = [{"a": rng.normal(size=(n, 40)).astype(dtype)} for n in (33, 1, 70)]
    ref, fn = gn.compile(fetches, backend="numpy"), gn.compile(fetches, backend="llvm")
    assert "GEMM" in fn.executable.lp.to_text()
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for f in feeds:
        for e, g in zip(ref(**f), fn(**f)):
            np.testing.assert_allclose(g, e, **tol)


def test_wider_mlp_with_adam_uses_gemm_and_matches_numpy():
    runs = train_both(lambda loss, params: gn.optim.Adam(lr=0.01).minimize(loss), batches=(32, 7, 32),
                      sizes=(48, 64, 10))
    assert "GEMM" in runs["kernels"]
    assert_same(runs, rtol=1e-4, atol=1e-5)


def test_unfused_checking_build_trains_like_numpy():
    """check_numerics=True compiles one kernel per node and runs them one by one."""
    runs = {}
    for backend in ("numpy", "llvm"):
        with gn.Graph():
            step, params = mlp(backend, lambda loss, ps: gn.optim.Adam(lr=0.01).minimize(loss))
        step = gn.compile(step.program.fetches, step.program.updates, backend=backend, check_numerics=True)
        losses = [step(**data(b, i)) for i, b in enumerate((16, 3, 16))]
        runs[backend] = losses, [p.value for p in params]
    assert_same(runs)


def test_large_loops_split_over_threads_match_numpy():
    """Sizes above the parallel thresholds: elementwise, GEMM epilogue and an in-place update (SGD:
    Adam's first step is sign(g) * lr, which float rounding flips where g is nearly zero)."""
    feed = np.random.default_rng(1).normal(size=(520, 600)).astype(np.float32)
    results = {}
    for backend in ("numpy", "llvm"):
        with gn.Graph():
            x = gn.placeholder("x", (None, 600))
            w = gn.variable("w", np.random.default_rng(0).normal(size=(600, 512)).astype(np.float32) * 0.05)
            h = gn.tanh(x @ w)
            loss = gn.mean(h * h) + gn.mean(gn.exp(-x * x))
            fn = gn.compile([loss, h], gn.optim.SGD(lr=0.5).minimize(loss), backend=backend)
            results[backend] = [fn(x=feed) for _ in range(2)], w.value
    for a, b in zip(results["numpy"][0], results["llvm"][0]):
        for u, v in zip(a, b):
            np.testing.assert_allclose(v, u, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results["llvm"][1], results["numpy"][1], rtol=1e-4, atol=1e-5)
    assert ".par" in fn.executable.ir_text or fn.executable.threads == 1


@pytest.mark.parametrize("threads", ["2", "3"])
def test_gemm_and_epilogue_in_one_region_match_numpy(monkeypatch, threads):
    """A GEMM above the threshold runs with its epilogue in one region (columns, barrier, rows).
    N = 256 is 4 column panels: with 3 threads one thread gets no columns and must still meet the
    barrier and take its rows of the epilogue."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", threads)
    feed = np.random.default_rng(2).normal(size=(300, 700)).astype(np.float32)
    results = {}
    for backend in ("numpy", "llvm"):
        with gn.Graph():
            x = gn.placeholder("x", (None, 700))
            w = gn.variable("w", np.random.default_rng(3).normal(size=(700, 256)).astype(np.float32) * 0.05)
            b = gn.variable("b", np.linspace(-1, 1, 256, dtype=np.float32))
            h = gn.relu(x @ w + b)
            loss = gn.mean(h * h)
            fn = gn.compile([loss, h], gn.optim.SGD(lr=0.1).minimize(loss), backend=backend)
            results[backend] = [fn(x=feed) for _ in range(2)], w.value, b.value
    for a, c in zip(results["numpy"][0], results["llvm"][0]):
        for u, v in zip(a, c):
            np.testing.assert_allclose(v, u, rtol=1e-4, atol=1e-5)
    for u, v in zip(results["numpy"][1:], results["llvm"][1:]):
        np.testing.assert_allclose(v, u, rtol=1e-4, atol=1e-5)
    if fn.executable.threads > 1:
        assert "_rows" in fn.executable.ir_text and "GOMP_barrier" in fn.executable.ir_text


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_narrow_products_run_their_epilogue_along_the_stores(monkeypatch, threads):
    """A 10-class layer's weight gradient is computed transposed (10 x 600, lower.py); its Adam epilogue
    runs along the weight's rows (schedule.epilogue_order), on one thread or split over several."""
    from codegen.llvm.schedule import epilogue_order

    monkeypatch.setenv("GRAPHNET_NUM_THREADS", threads)
    rng = np.random.default_rng(4)
    feed = {"x": rng.normal(size=(2000, 600)).astype(np.float32), "y": rng.integers(0, 10, 2000).astype(np.int32)}
    results = {}
    for backend in ("numpy", "llvm"):
        with gn.Graph():
            x = gn.placeholder("x", (None, 600))
            y = gn.placeholder("y", (None,), "int32")
            w = gn.variable("w", np.random.default_rng(5).normal(size=(600, 10)).astype(np.float32) * 0.05)
            loss = gn.losses.softmax_cross_entropy(x @ w, y)
            fn = gn.compile([loss], gn.optim.Adam(lr=0.01).minimize(loss), backend=backend)
            results[backend] = [fn(**feed)[0] for _ in range(3)], w.value
    np.testing.assert_allclose(results["llvm"][0], results["numpy"][0], rtol=1e-5)
    np.testing.assert_allclose(results["llvm"][1], results["numpy"][1], rtol=1e-5, atol=1e-6)
    assert [1, 0] in [epilogue_order(k) for k in fn.executable.lp.kernels if k.reduce and k.reduce.workspace]
