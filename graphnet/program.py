"""A `Program`: what one compiled function computes (fetches, variable updates, fusion regions).

Passes map Program -> Program. `rebuild` re-creates the reachable nodes in a fresh graph,
optionally rewriting them; interning in the fresh graph merges structurally equal nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .graph import Graph, Node, ancestors, shape_str, structural_hash
from .source import source_of

Rule = Callable[[Node, list], Optional[Node]]


@dataclass
class Program:
    fetches: list[Node]
    updates: list[tuple[Node, Node]] = field(default_factory=list)  # (variable node, its new value)
    regions: dict[Node, str] = field(default_factory=dict)  # node -> fusion region name
    gradients: dict[Node, Node] = field(default_factory=dict)  # parameter -> its gradient (set by optimizers)

    @property
    def outputs(self) -> list[Node]:
        return list(self.fetches) + [value for _, value in self.updates] + [var for var, _ in self.updates]

    def nodes(self) -> list[Node]:
        return ancestors(self.outputs)

    @property
    def placeholders(self) -> list[Node]:
        return [n for n in self.nodes() if n.op.name == "placeholder"]

    @property
    def variables(self) -> list[Node]:
        return [n for n in self.nodes() if n.op.name == "variable"]

    def hash(self) -> str:
        regions = sorted((n.id, r) for n, r in self.regions.items())
        return structural_hash(self.outputs, extra=(len(self.fetches), regions))

    def rebuild(self, rule: Rule | None = None, intern: bool = True) -> "Program":
        """Copy into a fresh graph; `rule(node, new_inputs)` may return a replacement node."""
        graph = Graph(intern=intern)
        mapping: dict[Node, Node] = {}
        for node in self.nodes():
            new_inputs = [mapping[x] for x in node.inputs]
            with source_of(node.source):
                new = rule(node, new_inputs) if rule else None
                if new is None:
                    new = graph.apply(node.op, new_inputs, node.attrs, source=node.source)
            if new.op.name == "placeholder":
                graph.placeholders[new.attrs["name"]] = new
            elif new.op.name == "variable":
                graph.variables[new.attrs["name"]] = new
            mapping[node] = new
        return Program([mapping[f] for f in self.fetches],
                       [(mapping[v], mapping[x]) for v, x in self.updates],
                       {mapping[n]: r for n, r in self.regions.items() if n in mapping},
                       {mapping[p]: mapping[g] for p, g in self.gradients.items() if p in mapping and g in mapping})

    def to_text(self) -> str:
        """One line per node: `%id = op(inputs) {attrs} : dtype shape  # file:line [region]`."""
        lines = []
        names = {}
        for n in self.nodes():
            names[n] = f"%{len(names)}"
            attrs = {k: v for k, v in n.attrs.items() if k not in ("name", "var")}
            label = n.attrs.get("name")
            args = ", ".join(names[x] for x in n.inputs)
            attr_text = " {" + ", ".join(f"{k}={_attr(v)}" for k, v in attrs.items()) + "}" if attrs else ""
            head = f"{n.op.name}[{label}]" if label else n.op.name
            region = f" [{self.regions[n]}]" if n in self.regions else ""
            lines.append(f"{names[n]} = {head}({args}){attr_text} : {n.dtype} {shape_str(n.shape)}  # {n.source}{region}")
        lines.append("fetch " + ", ".join(names[f] for f in self.fetches))
        for var, value in self.updates:
            lines.append(f"update {names[var]} <- {names[value]}")
        for param, grad in self.gradients.items():
            if param in names and grad in names:
                lines.append(f"gradient {names[param]} = {names[grad]}")
        return "\n".join(lines)


def _attr(value) -> str:
    return str(value) if isinstance(value, np.dtype) else repr(value)
