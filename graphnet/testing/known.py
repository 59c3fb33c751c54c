"""Known bugs: failures the fuzzer explains instead of reporting as new, each entry citing its bug.

This list is meant to shrink: when a fix lands, delete its entry (the in-suite fuzz test then checks
the fix). An entry matches a failure by backend, kind and a predicate on the failing spec that
describes the bug's trigger as narrowly as the bug is understood.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .oracle import Failure
from .spec import Spec


@dataclass(frozen=True)
class KnownBug:
    name: str
    issue: str  # where the bug is tracked
    backends: tuple  # failing backends ("numpy" for the reference or the torch comparison)
    kinds: tuple  # failure kinds (Failure.kind)
    matches: Callable[[Spec], bool]

    def explains(self, spec: Spec, failure: Failure) -> bool:
        return failure.backend in self.backends and failure.kind in self.kinds and self.matches(spec)


# No open entries. An entry looks like
#   KnownBug("mean of (N, N) divides by N", "#19 item 2", ("numpy", "llvm", "opencl"), ("torch mismatch",),
#            lambda spec: any(n.op == "api:mean" for n in spec.nodes))
KNOWN_BUGS: list[KnownBug] = []


@dataclass(frozen=True)
class GeneratorExclusion:
    """Nodes the generator does not propose, because a known bug makes every graph holding one fail
    in ways that would drown other findings (a node whose shape rule should have refused it)."""

    name: str
    issue: str
    excludes: Callable  # (op name, input nodes, attrs, output node) -> bool


# No open entries. An entry looks like
#   GeneratorExclusion("broadcast_to accepts negative sizes", "fuzz finding 2",
#                      lambda op, inputs, attrs, out: any(d is not None and d < 0 for d in out.shape))
GENERATOR_EXCLUSIONS: list[GeneratorExclusion] = []


def excluded(op: str, inputs: list, attrs: dict, out) -> str | None:
    """The name of the generator exclusion refusing this node, or None."""
    for rule in GENERATOR_EXCLUSIONS:
        if rule.excludes(op, inputs, attrs, out):
            return rule.name
    return None


def explain(spec: Spec, failure: Failure) -> str | None:
    """The name of the known bug explaining `failure`, or None."""
    for bug in KNOWN_BUGS:
        if bug.explains(spec, failure):
            return bug.name
    return None
