"""Registry-driven op tests: every op's examples are checked for their shape rule, numpy reference,
scalar lowering, expansion, first and second derivatives, and against PyTorch where installed."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import special

import graphnet as gn
from graphnet.ops import REGISTRY
from graphnet.ops.scalar import evaluate_scalar

import conv_reference
from helpers import (apply_op, check_grad, concrete, example_inputs, feeds_for, float_inputs, op_graph, run)

# collectives need an MPI world: tests/test_distributed.py checks them under mpirun
OPS = [op for op in REGISTRY.values() if op.kind not in ("source", "collective")]
CASES = [pytest.param(op, ex, id=f"{op.name}-{i}") for op in OPS for i, ex in enumerate(op.examples)]
DIFFERENTIABLE = [c for c in CASES if c.values[0].differentiable]
SMOOTH = [c for c in DIFFERENTIABLE if c.values[1].smooth]


def _reduce(fn):
    return lambda x, axes, keepdims: fn(x, axis=axes, keepdims=keepdims)


def _sum_by_loops(x, axes, keepdims):
    out = x
    for a in sorted(axes, reverse=True):
        out = np.add.reduce(out, axis=a, keepdims=True)
    return out if keepdims else out.reshape([d for i, d in enumerate(x.shape) if i not in axes])


def _max_by_sort(x, axes, keepdims):
    moved = np.moveaxis(x, axes, range(x.ndim - len(axes), x.ndim))
    flat = moved.reshape(moved.shape[:x.ndim - len(axes)] + (-1,))
    out = np.sort(flat, axis=-1)[..., -1]
    return out.reshape([1 if i in axes else d for i, d in enumerate(x.shape)]) if keepdims else out


def _min_by_sort(x, axes, keepdims):
    return -_max_by_sort(-x, axes, keepdims)


def _prod_by_loops(x, axes, keepdims):
    out = x
    for a in sorted(axes, reverse=True):
        out = np.multiply.reduce(out, axis=a, keepdims=True)
    return out if keepdims else out.reshape([d for i, d in enumerate(x.shape) if i not in axes])


def _slice_by_index_arrays(x, slices):
    ranges = [np.arange(start, x.shape[d] if stop is None else stop, step) for d, (start, stop, step) in enumerate(slices)]
    return x[np.ix_(*ranges)]


def _pad_by_loops(x, pads, value):
    shape = [lo + hi + d + max(d - 1, 0) * i for d, (lo, hi, i) in zip(x.shape, pads)]
    out = np.full(shape, value, x.dtype)
    for at in np.ndindex(x.shape):
        out[tuple(lo + k * (i + 1) for k, (lo, _, i) in zip(at, pads))] = x[at]
    return out


def _clipped(indices, size):
    return np.minimum(np.maximum(np.where(indices < 0, indices + size, indices), 0), size - 1)


def _take_by_moving_axes(x, indices, axis):
    picked = np.moveaxis(x, axis, 0)[_clipped(indices.astype(np.int64), x.shape[axis])]
    return np.moveaxis(picked.reshape(indices.shape + (-1,) + x.shape[axis + 1:]), list(range(indices.ndim)),
                       list(range(axis, axis + indices.ndim))).reshape(x.shape[:axis] + indices.shape + x.shape[axis + 1:])


def _scatter_by_loops(updates, indices, axis, size, out_shape):
    out = np.zeros(out_shape, updates.dtype)
    k = indices.ndim
    for at in np.ndindex(updates.shape):
        j = _clipped(np.int64(indices[at[axis:axis + k]]), out_shape[axis])
        out[at[:axis] + (j,) + at[axis + k:]] += updates[at]
    return out


def _concat_by_placement(*xs, axis):
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    out, start = np.zeros(shape, xs[0].dtype), 0
    for x in xs:
        out[(slice(None),) * axis + (slice(start, start + x.shape[axis]),)] = x
        start += x.shape[axis]
    return out


def _cumsum_by_triangle(x, axis, reverse):
    n = x.shape[axis]
    triangle = np.tril(np.ones((n, n))) if reverse else np.triu(np.ones((n, n)))
    return np.moveaxis(np.moveaxis(x, axis, -1) @ triangle.astype(x.dtype), -1, axis)


def _first_index(x, axis, pick):
    return np.apply_along_axis(lambda v: list(v).index(pick(v)), axis, x).astype(np.int64)


# Formulas written independently of the ops' own numpy references.
REFERENCE = {
    "negative": lambda x: 0 - x,
    "exp": lambda x: np.e ** x,
    "log": lambda x: np.log2(x) / np.log2(np.e),
    "sqrt": lambda x: x ** 0.5,
    "abs": lambda x: np.where(x < 0, -x, x),
    "sign": lambda x: (x > 0).astype(x.dtype) - (x < 0),
    "tanh": lambda x: 2 * special.expit(2 * x) - 1,
    "sigmoid": special.expit,
    "relu": lambda x: x * (x > 0),
    "softplus": lambda x: np.log1p(np.exp(x)),
    "leaky_relu": lambda x, alpha: np.maximum(x, alpha * x),
    "clip": lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi),
    "stop_gradient": lambda x: x,
    "cast": lambda x, dtype: np.array(x, dtype=dtype),
    "add": lambda a, b: a + b,
    "subtract": lambda a, b: a + (-b),
    "multiply": lambda a, b: a * b,
    "divide": lambda a, b: a * (1 / b),
    "power": lambda a, b: np.exp(b * np.log(a)),
    "maximum": lambda a, b: np.where(a >= b, a, b),
    "minimum": lambda a, b: np.where(a <= b, a, b),
    "less": lambda a, b: a < b,
    "less_equal": lambda a, b: a <= b,
    "greater": lambda a, b: a > b,
    "greater_equal": lambda a, b: a >= b,
    "equal": lambda a, b: a == b,
    "not_equal": lambda a, b: a != b,
    "where": lambda c, a, b: np.choose(c.astype(int), [b, a]),
    "matmul": lambda a, b: np.einsum("ik,kj->ij", a, b),
    "transpose": lambda x, perm: np.einsum(x, list(range(x.ndim)), [int(p) for p in perm]),
    "reshape": lambda x, shape, out_shape: x.ravel().reshape(out_shape),
    "broadcast_to": lambda x, shape, out_shape: x + np.zeros(out_shape, x.dtype),
    "softmax": lambda x, axis: special.softmax(x, axis=axis),
    "log_softmax": lambda x, axis: special.log_softmax(x, axis=axis),
    "one_hot": lambda labels, depth, dtype: np.eye(depth, dtype=dtype)[labels],
    "sum": _sum_by_loops,
    "max": _max_by_sort,
    "min": _min_by_sort,
    "prod": _prod_by_loops,
    "elu": lambda x, alpha: np.where(x > 0, x, alpha * (np.exp(x) - 1)),
    "selu": lambda x: 1.0507009873554805 * (np.maximum(x, 0) + np.minimum(0, 1.6732632423543772 * (np.exp(x) - 1))),
    "gelu": lambda x, approximate: 0.5 * x * (1 + (np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))
                                                   if approximate == "tanh" else special.erf(x / np.sqrt(2)))),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "hard_sigmoid": lambda x: np.minimum(np.maximum(x + 3, 0), 6) / 6,
    "log1p": lambda x: 2 * np.arctanh(x / (2 + x)),
    "square": lambda x: x ** 2,
    "rsqrt": lambda x: x ** -0.5,
    "strided_slice": _slice_by_index_arrays,
    "flip": lambda x, axes: x[tuple(slice(None, None, -1) if d in axes else slice(None) for d in range(x.ndim))],
    "pad": _pad_by_loops,
    "take": _take_by_moving_axes,
    "scatter_add": _scatter_by_loops,
    "concat": _concat_by_placement,
    "expm1": lambda x: 2 * np.tanh(x / 2) / (1 - np.tanh(x / 2)),
    "erf": special.erf,
    "floor": lambda x: -np.ceil(-x),
    "ceil": lambda x: -np.floor(-x),
    "round": np.rint,
    "mod": lambda a, b: a - np.floor(a / b) * b,
    "cumsum": lambda x, axis, reverse: _cumsum_by_triangle(x, axis, reverse),
    "argmax": lambda x, axis: _first_index(x, axis, max),
    "argmin": lambda x, axis: _first_index(x, axis, min),
    "batch_matmul": lambda a, b: np.einsum("...ik,...kj->...ij", a, b),
    **conv_reference.REFERENCE,
}


def _attrs_for_call(op, node, batch):
    attrs = dict(node.attrs)
    if op.needs_out_shape:
        attrs["out_shape"] = concrete(node.shape, batch)
    return attrs


def test_every_op_has_examples():
    missing = [op.name for op in OPS if not op.examples]
    assert not missing, f"ops without registry examples: {missing}"


def test_every_core_op_has_an_independent_reference():
    core = [op.name for op in OPS if type(op).__module__.startswith("graphnet.ops.")]
    assert sorted(set(core) - set(REFERENCE) - {"dropout"}) == []  # dropout: see test_dropout_statistics


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("op,example", CASES)
def test_shape_rule_matches_numpy(op, example, batch):
    xs, node = op_graph(op, example)
    arrays = example_inputs(op, example, batch=batch)
    value = np.asarray(op.numpy(*arrays, **_attrs_for_call(op, node, batch)))
    assert value.shape == concrete(node.shape, batch)
    assert value.dtype == node.dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op,example", CASES)
def test_numpy_reference_matches_independent_formula(op, example, dtype):
    if op.name == "dropout":
        pytest.skip("dropout's mask is its own definition; see test_dropout_statistics")
    if op.name not in REFERENCE:
        pytest.skip(f"{op.name} is not a core op; its own tests cover it")
    xs, node = op_graph(op, example, dtype)
    arrays = example_inputs(op, example, dtype)
    attrs = _attrs_for_call(op, node, 3)
    got = np.asarray(op.numpy(*arrays, **attrs))
    want = np.asarray(REFERENCE[op.name](*arrays, **attrs))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want.astype(got.dtype), rtol=tol, atol=tol)
    assert got.dtype == node.dtype


def test_dropout_statistics():
    x = np.full((2000, 8), 3.0)
    keep = REGISTRY["dropout"].numpy(x, np.int32(5), rate=0.25, seed=11)
    kept = keep != 0
    np.testing.assert_allclose(keep[kept], 3.0 / 0.75)
    assert abs(kept.mean() - 0.75) < 0.01
    other_step = REGISTRY["dropout"].numpy(x, np.int32(6), rate=0.25, seed=11)
    assert (other_step != keep).any()
    np.testing.assert_array_equal(REGISTRY["dropout"].numpy(x, np.int32(5), rate=0.25, seed=11), keep)


ELEMENTWISE = [c for c in CASES if c.values[0].kind == "elementwise"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op,example", ELEMENTWISE)
def test_scalar_lowering_matches_numpy(op, example, dtype):
    xs, node = op_graph(op, example, dtype)
    arrays = example_inputs(op, example, dtype)
    shape = concrete(node.shape, 3)
    lowered = evaluate_scalar(op, arrays, dict(node.attrs), shape)
    reference = op.numpy(*arrays, **node.attrs)
    assert lowered.dtype == node.dtype
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(lowered, reference, rtol=tol, atol=tol)


EXTREMES = np.array([-1e4, -100.0, -20.0, -1.0, -1e-30, 0.0, 1e-30, 1.0, 20.0, 100.0, 1e4])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", [op.name for op in OPS if op.kind == "elementwise"
                                  and len(op.examples[0].shapes) == 1 and op.name != "cast"])
def test_unary_lowering_agrees_at_extremes(name, dtype):
    """The scalar recipe a native backend runs must not overflow where the reference does not."""
    op = REGISTRY[name]
    x = EXTREMES.astype(dtype)
    if op.examples[0].low > 0:  # log, sqrt: their domain
        x = np.abs(x) + np.asarray(1e-30, dtype)
    attrs = op.examples[0].attrs
    reference = op.numpy(x, **attrs)
    lowered = evaluate_scalar(op, [x], attrs, x.shape)
    np.testing.assert_array_equal(np.isfinite(lowered), np.isfinite(reference))
    np.testing.assert_allclose(lowered, reference, rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("op,example", ELEMENTWISE)
def test_scalar_lowering_propagates_nan_like_numpy(op, example):
    xs, node = op_graph(op, example, np.float32)
    arrays = example_inputs(op, example, np.float32)
    for i in float_inputs(example):
        arrays[i].reshape(-1)[i::3] = np.nan
    lowered = evaluate_scalar(op, arrays, dict(node.attrs), concrete(node.shape, 3))
    reference = op.numpy(*arrays, **node.attrs)
    if node.dtype.kind == "f":
        np.testing.assert_array_equal(np.isnan(lowered), np.isnan(reference))
    else:
        np.testing.assert_array_equal(lowered, reference)


COMPOSITE = [c for c in CASES if c.values[0].kind == "composite"]


@pytest.mark.parametrize("scale", [1.0, 1e3])
@pytest.mark.parametrize("op,example", COMPOSITE)
def test_expand_matches_reference(op, example, scale):
    xs, node = op_graph(op, example)
    expanded = op.expand(node)
    assert expanded.shape == node.shape and expanded.dtype == node.dtype
    arrays = [a * scale if a.dtype.kind == "f" else a for a in example_inputs(op, example)]
    got, want = run([expanded, node], feeds_for(xs, arrays))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op,example", [c for c in COMPOSITE if c.values[0].differentiable])
def test_expand_has_the_same_gradient(op, example):
    xs, node = op_graph(op, example)
    w = gn.placeholder("w", node.shape, node.dtype)
    expanded = op.expand(node)
    g_op = gn.gradients(gn.sum(node * w), xs[0])
    g_expanded = gn.gradients(gn.sum(expanded * w), xs[0])
    arrays = example_inputs(op, example)
    feeds = {**feeds_for(xs, arrays), "w": np.random.default_rng(3).normal(size=concrete(node.shape, 3))}
    got, want = run([g_expanded, g_op], feeds)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def _op_fn(op, example):
    return lambda *xs: apply_op(op, xs, example.attrs)


@pytest.mark.parametrize("op,example", [c for c in DIFFERENTIABLE if c.values[0].name != "stop_gradient"])
def test_gradient_matches_central_differences(op, example):
    arrays = example_inputs(op, example)
    check_grad(_op_fn(op, example), arrays, wrt=float_inputs(example), shapes=example.shapes)


@pytest.mark.parametrize("op,example", SMOOTH)
def test_second_derivative_matches_central_differences(op, example):
    """d/dx sum(d sum(op(x))/dx): the gradient rules are themselves differentiable."""
    wrt = float_inputs(example)

    def first_derivatives(*xs):
        return gn.gradients(gn.sum(apply_op(op, xs, example.attrs)), [xs[i] for i in wrt])

    arrays = example_inputs(op, example)
    check_grad(first_derivatives, arrays, wrt=wrt, shapes=example.shapes, rtol=1e-5, atol=1e-6)


# ---- PyTorch as an outside reference ------------------------------------------------------------
def _torch_fns(torch):
    F = torch.nn.functional
    return {
        "negative": torch.neg, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "abs": torch.abs,
        "sign": torch.sign, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
        "softplus": F.softplus, "leaky_relu": lambda x, alpha: F.leaky_relu(x, alpha),
        "clip": lambda x, lo, hi: torch.clamp(x, lo, hi),
        "add": torch.add, "subtract": torch.sub, "multiply": torch.mul, "divide": torch.div, "power": torch.pow,
        "maximum": torch.maximum, "minimum": torch.minimum, "where": torch.where, "matmul": torch.matmul,
        "transpose": lambda x, perm: x.permute(*perm),
        "reshape": lambda x, shape, out_shape: x.reshape(out_shape),
        "broadcast_to": lambda x, shape, out_shape: x.expand(*out_shape),
        "softmax": lambda x, axis: torch.softmax(x, axis), "log_softmax": lambda x, axis: torch.log_softmax(x, axis),
        "sum": lambda x, axes, keepdims: x.sum(dim=axes, keepdim=keepdims),
        "max": lambda x, axes, keepdims: x.amax(dim=axes, keepdim=keepdims),
        "min": lambda x, axes, keepdims: x.amin(dim=axes, keepdim=keepdims),
        "prod": _torch_prod,
        "elu": lambda x, alpha: F.elu(x, alpha), "selu": F.selu,
        "gelu": lambda x, approximate: F.gelu(x, approximate=approximate), "silu": F.silu,
        # F.hardsigmoid's backward multiplies by 1.0f / 6.0f, a float32 constant even in float64: its formula
        "hard_sigmoid": lambda x: torch.clamp(x + 3, 0, 6) / 6,
        "log1p": torch.log1p, "square": torch.square, "rsqrt": torch.rsqrt,
        "expm1": torch.expm1, "erf": torch.erf, "floor": torch.floor, "ceil": torch.ceil, "round": torch.round,
        "mod": torch.remainder, "batch_matmul": torch.matmul,
        "cumsum": lambda x, axis, reverse: (torch.cumsum(x.flip(axis), axis).flip(axis) if reverse
                                            else torch.cumsum(x, axis)),
    }


def _torch_prod(x, axes, keepdims):
    """torch.prod takes one dim: reduce the axes one at a time (keeping them), then drop them."""
    for a in sorted(axes, reverse=True):
        x = x.prod(dim=a, keepdim=True)
    return x if keepdims else x.reshape([d for i, d in enumerate(x.shape) if i not in axes])


TORCH_CASES = [c for c in DIFFERENTIABLE if c.values[0].name not in ("dropout", "cast", "stop_gradient")]


@pytest.mark.parametrize("op,example", TORCH_CASES)
def test_value_and_gradient_match_torch(op, example):
    torch = pytest.importorskip("torch")
    fns = _torch_fns(torch)
    if op.name not in fns:
        pytest.skip(f"no torch counterpart registered for {op.name}")
    xs, node = op_graph(op, example)
    arrays = example_inputs(op, example)
    weights = np.random.default_rng(2).uniform(0.5, 1.5, concrete(node.shape, 3))
    w = gn.placeholder("w", node.shape, node.dtype)
    wrt = float_inputs(example)
    grads = gn.gradients(gn.sum(node * w), [xs[i] for i in wrt])
    value, *ours = run([node] + grads, {**feeds_for(xs, arrays), "w": weights})

    tensors = [torch.tensor(a, requires_grad=i in wrt) for i, a in enumerate(arrays)]
    attrs = _attrs_for_call(op, node, 3)
    out = fns[op.name](*tensors, **attrs)
    (out * torch.tensor(weights)).sum().backward()
    np.testing.assert_allclose(value, out.detach().numpy(), rtol=1e-12, atol=1e-12)
    for i, g in zip(wrt, ours):
        theirs = tensors[i].grad
        np.testing.assert_allclose(g, np.zeros_like(g) if theirs is None else theirs.numpy(), rtol=1e-10,
                                   atol=1e-12, err_msg=f"gradient of x{i}")


@pytest.mark.parametrize("name,torch_name", [("maximum", "maximum"), ("minimum", "minimum")])
def test_ties_share_the_gradient_like_torch(name, torch_name):
    torch = pytest.importorskip("torch")
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([1.0, 5.0, 3.0])
    pa, pb = gn.placeholder("a", (3,), np.float64), gn.placeholder("b", (3,), np.float64)
    ours = run(gn.gradients(gn.sum(getattr(gn, name)(pa, pb)), [pa, pb]), {"a": a, "b": b})
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    getattr(torch, torch_name)(ta, tb).sum().backward()
    np.testing.assert_allclose(ours[0], ta.grad.numpy())
    np.testing.assert_allclose(ours[1], tb.grad.numpy())


def test_max_ties_share_the_gradient_like_torch_amax():
    torch = pytest.importorskip("torch")
    x = np.array([[1.0, 4.0, 4.0], [2.0, 2.0, 2.0]])
    p = gn.placeholder("x", (2, 3), np.float64)
    ours = run(gn.gradients(gn.sum(gn.max(p, axis=1)), p), {"x": x})
    t = torch.tensor(x, requires_grad=True)
    t.amax(dim=1).sum().backward()
    np.testing.assert_allclose(ours, t.grad.numpy())
