"""The LLVM backend against the numpy reference, driven by the op registry: every op's examples,
forward, gradient and (where smooth) second derivative, float32 and float64, several batch sizes."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet.ops import REGISTRY
from helpers import example_inputs, feeds_for, float_inputs, op_graph

CASES = [pytest.param(name, i, id=f"{name}-{i}") for name, op in sorted(REGISTRY.items())
         for i, _ in enumerate(op.examples)]


pytestmark = pytest.mark.usefixtures("private_cache")  # compile cold, in a cache of its own


def _tolerance(dtype) -> dict:
    return dict(rtol=2e-5, atol=2e-6) if np.dtype(dtype) == np.float32 else dict(rtol=1e-11, atol=1e-12)


def _compare(fetches, feed_sets, dtype, **options):
    ref = gn.compile(fetches, backend="numpy", **options)
    fn = gn.compile(fetches, backend="llvm", **options)
    for feeds in feed_sets:
        expected, got = ref(**feeds), fn(**feeds)
        for e, g in zip(expected, got):
            assert g.shape == e.shape and g.dtype == e.dtype
            np.testing.assert_allclose(g, e, **_tolerance(dtype))


def _batchless(example) -> bool:
    """A batched result with no batched input: nothing can tell the batch size."""
    return not any(None in s for s in example.shapes) and None in example.attrs.get("shape", ())


def _feed_sets(op, example, xs, dtype):
    batches = (3, 1, 17) if any(None in s for s in example.shapes) else (3,)
    return [feeds_for(xs, example_inputs(op, example, dtype, batch=b, seed=b)) for b in batches]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,index", CASES)
def test_forward_matches_numpy(name, index, dtype):
    op = REGISTRY[name]
    example = op.examples[index]
    if _batchless(example):
        pytest.skip("no input sets the batch size")
    xs, y = op_graph(op, example, dtype)
    _compare([y], _feed_sets(op, example, xs, dtype), dtype)


def _weighted_gradients(op, example, dtype, order):
    xs, y = op_graph(op, example, dtype)
    w = gn.placeholder("w", y.shape, y.dtype)
    wrt = [xs[i] for i in float_inputs(example)]
    grads = gn.gradients(gn.sum(y * w), wrt)
    for _ in range(order - 1):
        grads = gn.gradients(sum(gn.sum(g * g) for g in grads if g is not None), wrt)
    return xs, w, y, [g for g in grads if g is not None]


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("name,index", CASES)
def test_gradients_match_numpy(name, index, order):
    op = REGISTRY[name]
    example = op.examples[index]
    if not op.differentiable or _batchless(example) or y_is_int(op, example) or (order == 2 and not example.smooth):
        pytest.skip("no (smooth) gradient")
    dtype = np.float64
    xs, w, y, grads = _weighted_gradients(op, example, dtype, order)
    if not grads:
        pytest.skip("gradient is identically zero")
    feed_sets = []
    for feeds in _feed_sets(op, example, xs, dtype):
        batch = next((a.shape[s.index(None)] for s, a in zip(example.shapes, feeds.values()) if None in s), 3)
        shape = tuple(batch if d is None else d for d in y.shape)
        feed_sets.append({**feeds, "w": np.random.default_rng(batch).uniform(0.5, 1.5, shape).astype(y.dtype)})
    _compare(grads, feed_sets, dtype)


def y_is_int(op, example) -> bool:
    with gn.Graph():
        xs, y = op_graph(op, example, np.float64)
    return y.dtype.kind != "f"
