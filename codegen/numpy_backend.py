"""The numpy reference backend: evaluates the optimised graph node by node with each op's numpy
reference. Every other backend is tested against it, so it stays simple and obviously right.

`NumpyBackend.rounding` (a float dtype, None by default) rounds every float value the interpreter
holds (inputs, variables, constants, each node's result) to that dtype's precision, keeping its own
dtype: a float64 graph then computes correctly rounded float32 arithmetic, op by op (the fuzz
oracle's rounded twin, graphnet/testing/oracle.py)."""
from __future__ import annotations

import numpy as np

from graphnet.errors import NumericsError
from graphnet.function import step_lock
from graphnet.program import Program


def concrete(shape: tuple, batch: int) -> tuple:
    return tuple(batch if d is None else d for d in shape)


class NumpyBackend:
    def __init__(self, program: Program, options):
        self.program = program
        self.order = program.nodes()
        self.placeholders = sorted(program.placeholders, key=lambda p: p.attrs["name"])
        self.check_numerics = options.check_numerics
        self.rounding: np.dtype | None = None
        self.lock = step_lock(program)  # held by run: the step reads and writes its variables in place

    def evaluate(self, arrays: list[np.ndarray], batch: int) -> dict:
        env = {p: self._rounded(a) for p, a in zip(self.placeholders, arrays)}
        for node in self.order:
            if node in env:
                continue
            name = node.op.name
            if name == "variable":
                env[node] = self._rounded(node.attrs["var"].array)
            elif name == "constant":
                env[node] = self._rounded(node.attrs["value"].array)
            elif name == "batch_size":
                env[node] = np.asarray(batch, node.dtype)
            else:
                attrs = dict(node.attrs)
                if node.op.needs_out_shape:
                    attrs["out_shape"] = concrete(node.shape, batch)
                with np.errstate(all="ignore"):
                    value = np.asarray(node.op.numpy(*(env[x] for x in node.inputs), **attrs))
                if value.dtype != node.dtype:
                    value = value.astype(node.dtype)
                value = self._rounded(value)
                if self.check_numerics:
                    self._check(node, value, env)
                env[node] = value
        return env

    def _rounded(self, value: np.ndarray) -> np.ndarray:
        """`value` rounded to `rounding`'s precision (where set and coarser than its float dtype)."""
        if self.rounding is None or value.dtype.kind != "f" or value.dtype.itemsize <= self.rounding.itemsize:
            return value
        with np.errstate(all="ignore"):  # beyond the coarser dtype's range: its infinity, as it computes
            return value.astype(self.rounding).astype(value.dtype)

    def run(self, arrays: list[np.ndarray], batch: int) -> list[np.ndarray]:
        with self.lock.hold():
            env = self.evaluate(arrays, batch)
            results = [np.array(env[f], copy=True) for f in self.program.fetches]
            new_values = [np.array(env[value], copy=True) for _, value in self.program.updates]
            for (var, _), value in zip(self.program.updates, new_values):
                var.attrs["var"].array[...] = value
            return results

    @staticmethod
    def _check(node, value: np.ndarray, env: dict) -> None:
        """Raise at the first node that turns finite inputs into a non-finite value."""
        if value.dtype.kind != "f" or np.all(np.isfinite(value)):
            return
        if all(env[x].dtype.kind != "f" or np.all(np.isfinite(env[x])) for x in node.inputs):
            raise NumericsError(f"{node.op.name} produced a non-finite value (node {node.name}, created at "
                                f"{node.source})")

    def artifacts(self) -> dict[str, str]:
        return {}
