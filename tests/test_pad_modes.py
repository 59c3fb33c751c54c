"""gn.pad's modes beyond "constant" ("edge", "reflect", "symmetric", "wrap") against numpy.pad on every
backend, at float32 and float64, any rank, zero widths, widths equal to and longer than the axis, a
batched input fed whole and partial batches; gradients by central differences, a second derivative;
the errors; torch's F.pad "replicate" and "circular" on an NCHW tensor."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from helpers import check_grad, run
from test_reliability import BACKENDS

pytestmark = pytest.mark.usefixtures("private_cache")

MODES = ["edge", "reflect", "symmetric", "wrap"]
RNG = np.random.default_rng(11)
# (shape, pads): ranks 1 to 4; zero widths, widths equal to the axis, several periods, an axis of 1
CASES = [((5,), ((2, 3),)), ((5,), ((0, 0),)), ((4,), ((4, 4),)), ((3,), ((7, 11),)), ((1,), ((2, 1),)),
         ((2, 3), ((1, 0), (3, 2))), ((2, 3), ((2, 2), (0, 6))), ((3, 1, 4), ((0, 0), (2, 1), (1, 4))),
         ((2, 2, 3, 2), ((1, 1), (0, 0), (3, 0), (2, 5)))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_modes_match_numpy_pad(backend, dtype):
    arrays = [RNG.normal(size=shape).astype(dtype) for shape, _ in CASES]
    xs = [gn.placeholder(f"x{i}", shape, dtype) for i, (shape, _) in enumerate(CASES)]
    fetches = [gn.pad(x, pads, mode=mode) for mode in MODES for x, (_, pads) in zip(xs, CASES)]
    got = run(fetches, {f"x{i}": a for i, a in enumerate(arrays)}, backend=backend)
    want = [np.pad(a, pads, mode=mode) for mode in MODES for a, (_, pads) in zip(arrays, CASES)]
    for g, w, (mode, (shape, pads)) in zip(got, want, [(m, c) for m in MODES for c in CASES]):
        assert g.dtype == w.dtype, (mode, shape, pads)
        np.testing.assert_array_equal(g, w, err_msg=f"{mode} {shape} {pads}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batched_input_fed_whole_and_partial_batches(backend):
    x = gn.placeholder("x", (None, 3, 4))
    pads = ((0, 0), (2, 4), (1, 0))
    fetches = [gn.pad(x, pads, mode=mode) for mode in MODES] + [gn.pad(x[:, 0], ((0, 0), (5, 5)), mode="symmetric")]
    fn = gn.compile(fetches, backend=backend)
    for batch in (4, 1):
        a = RNG.normal(size=(batch, 3, 4)).astype(np.float32)
        got = fn(x=a)
        for g, mode in zip(got, MODES):
            np.testing.assert_array_equal(g, np.pad(a, pads, mode=mode), err_msg=f"{mode} batch {batch}")
        np.testing.assert_array_equal(got[-1], np.pad(a[:, 0], ((0, 0), (5, 5)), mode="symmetric"))


@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_central_differences(mode):
    check_grad(lambda x: [gn.pad(x, ((0, 0), (2, 7), (1, 1)), mode=mode), gn.pad(x, ((0, 0), (0, 0), (4, 0)), mode=mode)],
               [RNG.normal(size=(2, 3, 4))], shapes=[(None, 3, 4)])


def test_second_derivatives_match_central_differences():
    """The check differentiates a gradient: the second derivative of sum(exp(pad(x))^2)."""
    def gradient(x):
        y = gn.sum(gn.concat([gn.exp(gn.pad(x, ((0, 0), (3, 2)), mode=mode)) for mode in MODES], 1) ** 2)
        return gn.gradients(y, [x])[0]
    check_grad(gradient, [RNG.normal(size=(2, 3)) * 0.3], shapes=[(None, 3)], rtol=1e-4)


# ---- bad input ------------------------------------------------------------------------------
def _error(fn, kind=gn.ShapeError):
    with pytest.raises(kind) as info:
        fn()
    return str(info.value)


@pytest.mark.parametrize("mode", MODES)
def test_an_empty_axis_is_padded_only_by_a_constant(mode):
    x = gn.placeholder("x", (2, 0, 3))
    message = _error(lambda: gn.pad(x, ((0, 0), (1, 2), (0, 0)), mode=mode))
    assert message.startswith(f"pad: {mode} pads (1, 2) of axis 1 of (2, 0, 3)") and "empty" in message
    assert "test_pad_modes.py" in message
    with pytest.raises(ValueError):  # numpy refuses too
        np.pad(np.zeros((2, 0, 3)), ((0, 0), (1, 2), (0, 0)), mode=mode)
    a = np.zeros((2, 0, 3), np.float32)  # other axes of an empty tensor pad as numpy's
    (got,) = run([gn.pad(x, ((1, 0), (0, 0), (2, 2)), mode=mode)], {"x": a})
    assert got.shape == np.pad(a, ((1, 0), (0, 0), (2, 2)), mode=mode).shape


def test_the_batch_axis_and_unknown_modes_are_refused():
    x = gn.placeholder("x", (None, 3))
    for mode in MODES:
        assert "batch axis" in _error(lambda: gn.pad(x, ((1, 0), (0, 0)), mode=mode))
    message = _error(lambda: gn.pad(x, ((0, 0), (1, 1)), mode="replicate"), ValueError)
    assert "'edge'" in message and "'circular' is 'wrap'" in message and "test_pad_modes.py" in message


# ---- torch ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,torch_mode", [("edge", "replicate"), ("wrap", "circular"), ("reflect", "reflect")])
def test_matches_torch_pad_on_nchw(mode, torch_mode):
    torch = pytest.importorskip("torch")
    a = RNG.normal(size=(2, 3, 5, 6))
    left, right, top, bottom = 2, 1, 0, 3  # torch's order: the last axis first
    t = torch.tensor(a, requires_grad=True)
    out = torch.nn.functional.pad(t, (left, right, top, bottom), mode=torch_mode)
    w = RNG.normal(size=tuple(out.shape))
    (out * torch.tensor(w)).sum().backward()
    x = gn.placeholder("x", (None, 3, 5, 6), np.float64)
    y = gn.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=mode)
    (grad,) = gn.gradients(gn.sum(y * gn.constant(w)), [x])
    got, got_grad = run([y, grad], {"x": a}, backend="llvm")
    np.testing.assert_array_equal(got, out.detach().numpy())
    np.testing.assert_allclose(got_grad, t.grad.numpy(), rtol=1e-12)
