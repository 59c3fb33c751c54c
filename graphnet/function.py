"""`gn.compile`: fetches + updates -> pass pipeline -> a backend -> a callable `Function`."""
from __future__ import annotations

import importlib
import operator
import os
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import ops
from .errors import ShapeError
from .feeds import FeedSpec
from .graph import Node, Variable, shape_str
from .passes.pipeline import Pass, PassRecord, run_pipeline
from .program import Program


class PythonCall:
    """`fn(**feeds)` -> `fn._call(feeds)`: Function's call where the C version (`_callable.c`, ~0.3 us
    faster) was not built."""

    def __call__(self, **feeds: Any) -> Any:
        return self._call(feeds)


try:
    from ._callable import Callable as _CallBase
except ImportError:  # installed without a C compiler
    _CallBase = PythonCall

BACKENDS = {
    "numpy": "codegen.numpy_backend:NumpyBackend",
    "llvm": "codegen.llvm.backend:LLVMBackend",
    "opencl": "codegen.opencl.backend:OpenCLBackend",
}


@dataclass(frozen=True)
class CompileOptions:
    backend: str = "llvm"
    training: bool = False
    check_numerics: bool = False


def compile(fetches: Any, updates: Any = None, backend: str = "llvm", training: bool | None = None,
            check_numerics: bool = False, passes: Sequence[Pass] | None = None,
            fuse_optimizer: bool = True) -> "Function":
    """Compile `fetches` (a node, list, tuple or dict of nodes) and `updates` into a callable.

    `updates` (pairs (variable, new value), a dict, or an optimizer's result) are applied in place
    after the fetches are computed. `training` (default: True when updates are given) enables dropout.
    `fuse_optimizer=False` leaves out the optimizer-fusion pass: each update becomes a kernel of its
    own that reads the gradient from memory (same numbers; for comparisons and debugging).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    training = updates is not None if training is None else bool(training)
    flat, rebuild = _flatten(fetches)
    pairs = _update_pairs(updates)
    if training:
        pairs = _with_rng_step(flat, pairs)
    gradients = dict(getattr(updates, "gradients", {}))  # an optimizer's: where its fused updates start
    program, records = run_pipeline(Program(flat, pairs, gradients=gradients), passes, training=training,
                                    fuse_optimizer=fuse_optimizer)
    options = CompileOptions(backend, training, check_numerics)
    module, cls = BACKENDS[backend].split(":")
    executable = getattr(importlib.import_module(module), cls)(program, options)
    user_nodes = flat + [var for var, _ in pairs]
    fn = Function(program, executable, rebuild, records, options,
                  user_placeholders=list(user_nodes[0].graph.placeholders.values()) if user_nodes else ())
    if os.environ.get("GRAPHNET_DUMP"):
        from .dump import dump_numbered
        dump_numbered(fn, os.environ["GRAPHNET_DUMP"])
    return fn


class Function(_CallBase):
    """A compiled function: call it with feeds by placeholder name, `fn(x=..., labels=...)`.

    The call passes the feeds to `self._call`: the backend's shorter path for the common case where it
    has one (`fast_call`), else `_general`.
    """

    def __init__(self, program: Program, executable: Any, rebuild: Any, records: list[PassRecord],
                 options: CompileOptions, user_placeholders: Sequence[Node] = ()):
        self.program, self.executable, self.records, self.options = program, executable, records, options
        self._rebuild = rebuild
        needs_batch = any(None in n.shape or n.op.name == "batch_size" for n in program.nodes())
        self.feeds = FeedSpec(sorted(program.placeholders, key=lambda p: p.attrs["name"]), user_placeholders,
                              needs_batch)
        self._check, self._run = self.feeds.check, executable.run  # bound once: the per-call path is short
        fast = getattr(executable, "fast_call", None)
        general = weakref.WeakMethod(self._general)  # no cycle through the fast path: arenas free on `del`
        self._call = (fast and fast(self.feeds, rebuild, lambda feeds: general()(feeds))) or self._general
        host = not getattr(executable, "device_resident", False)
        self._host_reads = [v.attrs["var"] for v in program.variables] if host else []
        self._host_writes = [v.attrs["var"] for v, _ in program.updates] if host else []

    @property
    def graph(self):
        """The optimised graph this function runs."""
        nodes = self.program.nodes()
        return nodes[0].graph if nodes else None

    def _general(self, feeds: dict[str, Any]) -> Any:
        """Check (and convert) the feeds, run, rebuild the fetches' structure. A backend may offer a
        shorter path for the common case (`fast_call`) that falls back to this one."""
        arrays, batch = self._check(feeds)
        if Variable.any_mirrors:
            return self._rebuild(self._run_coherent(arrays, batch))
        return self._rebuild(self._run(arrays, batch))

    def _run_coherent(self, arrays: list, batch: int) -> list:
        """A host backend's step on variables that also live on a device: read the newest values
        first, then tell the device copies what this step wrote."""
        for var in self._host_reads:
            for mirror in var.mirrors:
                mirror.pull(var)
        out = self._run(arrays, batch)
        for var in self._host_writes:
            for mirror in var.mirrors:
                mirror.push(var)
        return out

    def dump(self, directory: str) -> str:
        """Write the graph after each pass and the backend's artifacts (loop IR, code) into `directory`."""
        from .dump import dump_function
        return dump_function(self, directory)

    def profile(self, feeds: dict[str, Any], repeats: int = 20):
        """Time each native kernel inside the step on these feeds (LLVM backend); the variables are
        restored afterwards. Returns a `graphnet.profile.Profile` (print it for a table)."""
        from .profile import profile
        return profile(self, feeds, repeats)


def _flatten(fetches: Any):
    if isinstance(fetches, Node):
        return [fetches], operator.itemgetter(0)
    if isinstance(fetches, dict):
        keys = list(fetches)
        return [_check_fetch(fetches[k]) for k in keys], lambda out: dict(zip(keys, out))
    if isinstance(fetches, (list, tuple)):
        return [_check_fetch(f) for f in fetches], tuple if type(fetches) is tuple else list
    raise TypeError(f"fetches must be a node, list, tuple or dict of nodes, got {type(fetches).__name__}")


def _check_fetch(f: Any) -> Node:
    if not isinstance(f, Node):
        raise TypeError(f"fetch {f!r} is not a graph node")
    return f


def _update_pairs(updates: Any) -> list[tuple[Node, Node]]:
    if updates is None:
        return []
    items = updates.items() if isinstance(updates, dict) else updates
    pairs = []
    for var, value in items:
        if not isinstance(var, Node) or var.op.name != "variable":
            raise TypeError(f"update target {var!r} is not a variable")
        if not isinstance(value, Node):  # a number or array: broadcast to the variable, in its dtype
            value = ops.broadcast_to(ops.promote([var, value])[1], var.shape)
        if value.graph is not var.graph:
            raise ValueError(f"update of {var.name}: value belongs to another graph")
        if value.shape != var.shape or value.dtype != var.dtype:
            raise ShapeError(f"update of {var.name}: value is {value.dtype} {shape_str(value.shape)}, variable is "
                             f"{var.dtype} {shape_str(var.shape)} (value created at {value.source})")
        pairs.append((var, value))
    if len({id(v) for v, _ in pairs}) != len(pairs):
        raise ValueError("a variable is updated twice in one function")
    return pairs


def _with_rng_step(fetches: list[Node], pairs: list[tuple[Node, Node]]) -> list[tuple[Node, Node]]:
    """Training functions that draw dropout masks advance the graph's step counter each call."""
    program = Program(fetches, pairs)
    steps = {n.inputs[1] for n in program.nodes() if n.op.name == "dropout"}
    updated = {v for v, _ in pairs}
    return pairs + [(s, s + np.int32(1)) for s in sorted(steps - updated, key=lambda n: n.id)]
