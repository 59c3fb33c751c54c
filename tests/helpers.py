"""Shared test utilities: random inputs for an op's registry examples, one-call evaluation with a
backend, and a central-difference gradient checker.

Other test files import these, e.g. a backend's tests run every registry example through
`op_graph` + `run` and compare with the numpy backend; loss and optimizer tests use `check_grad`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

import graphnet as gn
from graphnet.ops.base import Example, Op


def concrete(shape: Sequence[int | None], batch: int) -> tuple:
    """`shape` with the batch dimension (None) set to `batch`."""
    return tuple(batch if d is None else d for d in shape)


def example_inputs(op: Op, example: Example, dtype: Any = np.float64, batch: int = 3,
                   seed: int = 0) -> list[np.ndarray]:
    """Random arrays for `example`'s inputs: floats in [low, high), integer/bool inputs per `int_inputs`."""
    rng = np.random.default_rng(seed)
    arrays = []
    for i, shape in enumerate(example.shapes):
        shape = concrete(shape, batch)
        if i in example.int_inputs:
            int_dtype, bound = example.int_inputs[i]
            arrays.append(rng.integers(0, bound, size=shape).astype(int_dtype))
        else:
            arrays.append(rng.uniform(example.low, example.high, size=shape).astype(dtype))
    return arrays


def input_dtypes(example: Example, dtype: Any = np.float64) -> list[np.dtype]:
    return [np.dtype(example.int_inputs[i][0]) if i in example.int_inputs else np.dtype(dtype)
            for i in range(len(example.shapes))]


def float_inputs(example: Example) -> list[int]:
    """Indices of the inputs a gradient check differentiates (the non-integer ones)."""
    return [i for i in range(len(example.shapes)) if i not in example.int_inputs]


def op_graph(op: Op, example: Example, dtype: Any = np.float64,
             graph: gn.Graph | None = None) -> tuple[list[gn.Node], gn.Node]:
    """Placeholders x0, x1, ... with the example's shapes (None kept) and the op applied to them."""
    graph = graph or gn.get_default_graph()
    xs = [gn.placeholder(f"x{i}", shape, dt, graph=graph)
          for i, (shape, dt) in enumerate(zip(example.shapes, input_dtypes(example, dtype)))]
    return xs, apply_op(op, xs, example.attrs)


def apply_op(op: Op, inputs: Sequence[gn.Node], attrs: dict) -> gn.Node:
    """Apply a registry op directly (bypassing the public function's argument handling)."""
    return inputs[0].graph.apply(op, list(inputs), attrs)


def feeds_for(placeholders: Sequence[gn.Node], arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    return {p.attrs["name"]: a for p, a in zip(placeholders, arrays)}


def call(fn: gn.Function, feeds: dict[str, Any]) -> Any:
    """Call `fn` with the feeds of its graph's placeholders (ignoring feeds for other graphs)."""
    return fn(**{k: v for k, v in feeds.items() if k in fn.feeds.index or k in fn.feeds.optional})


def run(fetches: Any, feeds: dict[str, Any] | None = None, backend: str = "numpy", **options: Any) -> Any:
    """Compile `fetches` with `backend` and call it once with the feeds it takes."""
    return call(gn.compile(fetches, backend=backend, **options), feeds or {})


def numeric_gradient(f: Callable[[list[np.ndarray]], float], arrays: list[np.ndarray], index: int,
                     eps: float = 1e-6) -> np.ndarray:
    """Central differences (f(x + eps) - f(x - eps)) / 2 eps for every element of arrays[index]."""
    x = arrays[index]
    grad = np.zeros(x.shape, np.float64)
    for k in np.ndindex(x.shape):
        saved = x[k]
        x[k] = saved + eps
        plus = f(arrays)
        x[k] = saved - eps
        minus = f(arrays)
        x[k] = saved
        grad[k] = (plus - minus) / (2 * eps)
    return grad


def check_grad(fn: Callable[..., gn.Node | Sequence[gn.Node]], arrays: Sequence[np.ndarray],
               wrt: Sequence[int] | None = None, shapes: Sequence[tuple] | None = None, eps: float = 1e-6,
               rtol: float = 1e-5, atol: float = 1e-7, seed: int = 1, batch: int = 3,
               backend: str = "numpy") -> list[np.ndarray]:
    """Compare gn.gradients of fn with central differences; return the symbolic gradients.

    `fn(*placeholders)` builds one node or a list of nodes from placeholders holding `arrays`
    (declared with `shapes`, default the arrays' shapes; None marks the batch). The checked
    scalar is sum_k sum(w_k * out_k) with fixed random weights w_k, so every output element
    contributes differently. `wrt`: the input indices to differentiate (default: the float ones).
    Use float64 arrays: float32 central differences are too coarse for the tolerances.
    `batch` is the batch size for graphs where no input has a batch dimension but a node does
    (e.g. broadcast_to(x, (None, 3))): it is fed through an otherwise unused placeholder.
    """
    arrays = [np.array(a, copy=True) for a in arrays]
    shapes = [a.shape for a in arrays] if shapes is None else list(shapes)
    wrt = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"] if wrt is None else list(wrt)
    with gn.Graph():
        xs = [gn.placeholder(f"x{i}", s, a.dtype) for i, (s, a) in enumerate(zip(shapes, arrays))]
        gn.placeholder("check_grad/batch", (None,))
        outs = fn(*xs)
        outs = [outs] if isinstance(outs, gn.Node) else list(outs)
        batch = next((a.shape[s.index(None)] for s, a in zip(shapes, arrays) if None in s), batch)
        rng = np.random.default_rng(seed)
        weights = [rng.uniform(0.5, 1.5, concrete(o.shape, batch)).astype(o.dtype) for o in outs]
        ws = [gn.placeholder(f"w{k}", o.shape, o.dtype) for k, o in enumerate(outs)]
        objective = _total([gn.sum(o * w) for o, w in zip(outs, ws)])
        grads = gn.gradients(objective, [xs[i] for i in wrt])
        forward = gn.compile(objective, backend=backend)
        backward = gn.compile(grads, backend=backend)
    fixed = {**feeds_for(ws, weights), "check_grad/batch": np.zeros(batch, np.float32)}
    symbolic = call(backward, {**feeds_for(xs, arrays), **fixed})

    def f(values: list[np.ndarray]) -> float:
        return float(call(forward, {**feeds_for(xs, values), **fixed}))

    for i, g in zip(wrt, symbolic):
        assert g.shape == arrays[i].shape, f"gradient of x{i}: shape {g.shape}, input {arrays[i].shape}"
        expected = numeric_gradient(f, arrays, i, eps)
        np.testing.assert_allclose(g, expected, rtol=rtol, atol=atol, err_msg=f"gradient of input x{i}")
    return symbolic


def _total(terms: list[gn.Node]) -> gn.Node:
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total
