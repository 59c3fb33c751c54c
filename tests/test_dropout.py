"""Dropout: mask statistics, inverted scaling, replay from (seed, step), training-only, and a gradient
that uses the forward pass's mask."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn

ROWS, COLS = 200, 500  # 100,000 draws per mask


def dropped(rate: float, seed: int | None = None, training: bool = True):
    x = gn.placeholder("x", (None, COLS))
    f = gn.compile(gn.dropout(x, rate, seed=seed), backend="numpy", training=training)
    return f, np.ones((ROWS, COLS), np.float32)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_mask_rate_and_inverted_scaling(rate):
    f, ones = dropped(rate)
    y = f(x=ones)
    zero = y == 0
    n = zero.size
    # the dropped fraction is Binomial(n, rate)/n: within 5 standard deviations
    assert abs(zero.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
    np.testing.assert_allclose(y[~zero], 1 / (1 - rate), rtol=1e-6)  # survivors scaled by 1/(1-rate)
    assert abs(y.mean() - 1.0) < 5 * np.sqrt(rate / (1 - rate) / n)  # so the expectation is unchanged
    # masks are not striped: rows and columns drop at the same rate
    assert np.abs(zero.mean(axis=0) - rate).max() < 6 * np.sqrt(rate * (1 - rate) / ROWS)
    assert np.abs(zero.mean(axis=1) - rate).max() < 6 * np.sqrt(rate * (1 - rate) / COLS)


def test_each_training_call_draws_a_new_mask_and_a_reset_step_replays():
    f, ones = dropped(0.5)
    step = gn.get_default_graph().variables["rng/step"]
    first, second = f(x=ones), f(x=ones)
    assert int(step.value) == 2
    assert (first != second).mean() > 0.4  # independent masks differ in about half the places
    step.assign(0)
    np.testing.assert_array_equal(f(x=ones), first)
    np.testing.assert_array_equal(f(x=ones), second)


def test_same_seed_and_step_give_the_same_mask_in_a_new_graph():
    masks = []
    for _ in range(2):
        gn.reset_default_graph()
        gn.set_seed(123)
        f, ones = dropped(0.3)
        masks.append(f(x=ones))
    np.testing.assert_array_equal(masks[0], masks[1])
    gn.reset_default_graph()
    gn.set_seed(124)
    f, ones = dropped(0.3)
    assert (f(x=ones) != masks[0]).mean() > 0.2  # another seed, another mask


def test_explicit_seeds_key_the_mask():
    x = gn.placeholder("x", (None, COLS))
    a, b, c = gn.dropout(x, 0.5, seed=1), gn.dropout(x, 0.5, seed=1), gn.dropout(x, 0.5, seed=2)
    ya, yb, yc = gn.compile([a, b, c], backend="numpy", training=True)(x=np.ones((ROWS, COLS), np.float32))
    np.testing.assert_array_equal(ya, yb)
    assert (ya != yc).mean() > 0.4


def test_off_outside_training():
    f, _ = dropped(0.5, training=False)
    x = np.random.default_rng(0).normal(size=(ROWS, COLS)).astype(np.float32)
    np.testing.assert_array_equal(f(x=x), x)
    assert "dropout" not in [n.op.name for n in f.program.nodes()]
    assert int(gn.get_default_graph().variables["rng/step"].value) == 0  # inference does not advance it
    with pytest.raises(ValueError, match="rate"):
        gn.dropout(gn.placeholder("z", (None, 2)), 1.0)


def test_gradient_uses_the_same_mask():
    x = gn.placeholder("x", (None, COLS))
    w = gn.placeholder("w", (None, COLS))
    y = gn.dropout(x, 0.4)
    (dx,) = gn.gradients(gn.sum(y * w), [x])
    f = gn.compile([y, dx], backend="numpy", training=True)
    rng = np.random.default_rng(1)
    xv = rng.uniform(1, 2, (ROWS, COLS)).astype(np.float32)
    wv = rng.normal(size=(ROWS, COLS)).astype(np.float32)
    yv, dxv = f(x=xv, w=wv)
    np.testing.assert_allclose(dxv, np.where(yv != 0, wv / 0.6, 0), rtol=1e-6)


def test_dropout_in_a_training_step_advances_with_the_optimizer():
    x = gn.placeholder("x", (None, 4))
    w = gn.variable("w", np.ones((4, 1), np.float32))
    loss = gn.mean(gn.dropout(x, 0.5) @ w)
    step = gn.compile(loss, updates=gn.optim.SGD(0.1).minimize(loss), backend="numpy")
    xs = np.ones((64, 4), np.float32)
    losses = [float(step(x=xs)) for _ in range(3)]
    assert int(gn.get_default_graph().variables["rng/step"].value) == 3
    assert len(set(losses)) == 3  # a different mask each step
    evaluate = gn.compile(loss, backend="numpy")
    np.testing.assert_allclose(evaluate(x=xs), w.value.sum(), rtol=1e-6)  # no dropout when evaluating


# ---- the row offset: a shard of a batch draws the masks of its rows in the whole batch ----------------
def _backends() -> list[str]:
    """numpy, llvm, and opencl where a device exists."""
    from codegen.opencl import runtime
    try:
        runtime.list_devices()
    except RuntimeError:
        return ["numpy", "llvm"]
    return ["numpy", "llvm", "opencl"]


def _masks(shape: tuple, backend: str, batches: list[tuple[int, int]]) -> list[np.ndarray]:
    """Dropout (rate 0.5) of ones of `shape` (None: the batch) at step 0 for each (rows, row offset)."""
    x = gn.placeholder("x", shape)
    f = gn.compile(gn.dropout(x, 0.5, seed=11), backend=backend, training=True)
    variables = gn.get_default_graph().variables
    masks = []
    for rows, offset in batches:
        variables["rng/step"].assign(0)
        variables["rng/offset"].assign(offset)
        masks.append(f(x=np.ones(tuple(rows if d is None else d for d in shape), np.float32)) != 0)
    return masks


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("shape", [(None, 8), (None, 5, 3)])
def test_a_row_offset_draws_those_rows_of_the_whole_batch(backend, shape):
    """Rows [k, k+b) of a 12-row batch, fed alone with offset k, get exactly the whole batch's masks."""
    whole, first, middle, last = _masks(shape, backend, [(12, 0), (5, 0), (4, 5), (3, 9)])
    np.testing.assert_array_equal(first, whole[:5])
    np.testing.assert_array_equal(middle, whole[5:9])
    np.testing.assert_array_equal(last, whole[9:])
    assert 0.3 < whole.mean() < 0.7


def test_a_tensor_without_a_batch_axis_draws_the_same_mask_at_every_offset():
    at_zero, at_seven = _masks((6, 50), "llvm", [(0, 0), (0, 7)])
    np.testing.assert_array_equal(at_seven, at_zero)


def test_a_non_leading_batch_axis_gives_other_offsets_other_masks():
    """Not the whole batch's masks (the offset keys whole rows of the leading axis), but each shard's own."""
    at_zero, at_four = _masks((50, None), "numpy", [(4, 0), (4, 4)])
    assert (at_zero != at_four).mean() > 0.3
