"""Optimizer fusion: each parameter's whole update becomes one elementwise region.

An optimizer records each parameter's gradient node (`Program.gradients`). The region
"update:<param>" holds the elementwise nodes, of the parameter's shape and dtype, between that
gradient (excluded: it is the backward pass's result) and the values written to the parameter and
its state slots; scalars such as bias corrections and the clipping factor stay outside as uniform
inputs. A region node has no consumer outside its region and is not fetched, so a backend can
compute the region inside the loop that produces the gradient, element by element, and write the
parameter and its state in place. The graph is unchanged: backends that ignore regions (numpy)
compute the same numbers.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from ..graph import Node
from ..program import Program


def region_name(param: Node) -> str:
    return f"update:{param.attrs['name']}"


def fuse_optimizer(prog: Program) -> Program:
    if not prog.gradients:
        return prog
    consumers: dict[Node, set[Node]] = defaultdict(set)
    for n in prog.nodes():
        for x in n.inputs:
            consumers[x].add(n)
    regions = dict(prog.regions)
    for param, grad in prog.gradients.items():
        for node in update_region(prog, param, grad, consumers):
            regions[node] = region_name(param)
    return replace(prog, regions=regions)


def _inside(n: Node, param: Node, grad: Node) -> bool:
    return n.op.kind == "elementwise" and n.shape == param.shape and n.dtype == param.dtype and n is not grad


def gradient_flow(param: Node, grad: Node, consumers: dict[Node, set[Node]]) -> set[Node]:
    """The elementwise nodes of `param`'s shape and dtype that `grad` flows into: its update's
    candidates, whether or not the pass fuses them."""
    reached, stack = set(), [grad]
    while stack:
        for c in consumers[stack.pop()]:
            if _inside(c, param, grad) and c not in reached:
                reached.add(c)
                stack.append(c)
    return reached


def update_region(prog: Program, param: Node, grad: Node, consumers: dict[Node, set[Node]]) -> set[Node]:
    """The nodes of `param`'s fused update (empty when its new value is not elementwise in `grad`)."""
    def inside(n: Node) -> bool:
        return _inside(n, param, grad)

    reached = gradient_flow(param, grad, consumers)
    writes = {value for _, value in prog.updates if value in reached}
    if dict(prog.updates).get(param) not in writes:
        return set()
    region, stack = set(), list(writes)  # everything those written values are computed from
    while stack:
        n = stack.pop()
        if n not in region and inside(n):
            region.add(n)
            stack.extend(n.inputs)
    other_values = {value for _, value in prog.updates} - writes
    blocked = set(prog.fetches) | other_values
    changed = True
    while changed:  # a node needed outside the region must be materialised: leave it out
        changed = False
        for n in list(region):
            if n in blocked or any(c not in region for c in consumers[n]):
                region.discard(n)
                changed = True
    return region if dict(prog.updates)[param] in region else set()
