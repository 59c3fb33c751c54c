"""Symbolic reverse-mode differentiation: a graph-to-graph pass over the ops' gradient rules.

The result is ordinary graph nodes, so gradients can be inspected, optimised, compiled and
differentiated again.
"""
from __future__ import annotations

from typing import Any, Sequence

from . import ops
from .graph import Node, ancestors
from .source import source_of


def gradients(ys: Node | Sequence[Node], xs: Node | Sequence[Node],
              grad_ys: Node | Sequence[Node] | None = None,
              unconnected: str = "zero") -> list[Node | None] | Node | None:
    """d(sum of ys)/d(x) for each x, as graph nodes (one per x).

    `grad_ys` seeds each y's gradient (default ones). An x is unconnected when no differentiable
    path leads from it to a y (none at all, or only through comparisons, integer casts,
    stop_gradient): its gradient is zeros, or None with `unconnected="none"` (torch's "grad is
    None"). Returns a list, or one node when `xs` is one.
    """
    if unconnected not in ("zero", "none"):
        raise ValueError(f"gradients: unconnected must be 'zero' or 'none', got {unconnected!r}")
    single = isinstance(xs, Node)
    ys = [ys] if isinstance(ys, Node) else list(ys)
    xs = [xs] if single else list(xs)
    seeds = _seeds(ys, grad_ys)
    for x in xs:
        if not isinstance(x, Node):
            raise TypeError(f"gradients: expected graph nodes to differentiate with respect to, got {type(x).__name__}")
        if x.dtype.kind != "f":
            raise TypeError(f"gradients: cannot differentiate with respect to {x.name} of dtype {x.dtype} "
                            f"(created at {x.source}): only float tensors have gradients")

    stable = stabilized(ys)
    written, kept = set(ancestors(ys)), set(ancestors(stable))
    if all(x in kept for x in xs if x in written):
        ys = stable  # else a rewrite bypasses an x (d log(sigmoid(z)) / d sigmoid(z)): keep the written form
    relevant = _between(xs, ys)
    grads: dict[Node, list[Node]] = {}
    for y, seed in zip(ys, seeds):
        if y in relevant:
            grads.setdefault(y, []).append(seed)
    for node in reversed(ancestors(ys)):
        if node not in grads or node.op.kind == "source":
            continue
        g = _add_n(grads[node])
        with source_of(node.source):  # a gradient node points at the line of the op it differentiates
            for inp, gi in zip(node.inputs, node.op.grad(node, g)):
                if gi is None or inp not in relevant:
                    continue
                grads.setdefault(inp, []).append(ops.sum_to(gi, inp.shape))
    missing = (lambda x: None) if unconnected == "none" else ops.zeros_like
    result = [_add_n(grads[x]) if x in grads else missing(x) for x in xs]
    return result[0] if single else result


def stabilized(ys: list[Node]) -> list[Node]:
    """The ys rebuilt with the stabilize pass's rewrites (e.g. log(sigmoid(z)) -> -softplus(-z)).

    Differentiating the stable form keeps gradients finite where the written form would give
    inf/inf; the user's nodes are left as they are.
    """
    from .passes.stabilize import stabilize_node
    subst: dict[Node, Node] = {}
    for node in ancestors(ys):
        inputs = [subst.get(x, x) for x in node.inputs]
        with source_of(node.source):
            new = stabilize_node(node, inputs)
            if new is None and any(a is not b for a, b in zip(inputs, node.inputs)):
                new = node.graph.apply(node.op, inputs, node.attrs, source=node.source)
        if new is not None:
            subst[node] = new
    return [subst.get(y, y) for y in ys]


def _seeds(ys: list[Node], grad_ys: Any) -> list[Node]:
    if grad_ys is None:
        return [ops.ones_like(y) for y in ys]
    grad_ys = [grad_ys] if isinstance(grad_ys, Node) or not isinstance(grad_ys, (list, tuple)) else list(grad_ys)
    if len(grad_ys) != len(ys):
        raise ValueError(f"gradients: {len(ys)} ys but {len(grad_ys)} grad_ys")
    out = []
    for y, g in zip(ys, grad_ys):
        g = ops.broadcast_to(ops.promote([y, g])[1], y.shape)
        if g.shape != y.shape:
            raise ValueError(f"gradients: grad_ys shape {g.shape} does not match {y.name} shape {y.shape}")
        out.append(g)
    return out


def _between(xs: list[Node], ys: list[Node]) -> set[Node]:
    """Nodes on some path from an x to a y (the only ones whose gradients are needed): the ys'
    ancestors that are an x or read one of these (ancestors are in topological order, inputs first)."""
    targets, found = set(xs), set()
    for n in ancestors(ys):
        if n in targets or any(x in found for x in n.inputs):
            found.add(n)
    return found


def _add_n(terms: list[Node]) -> Node:
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total
