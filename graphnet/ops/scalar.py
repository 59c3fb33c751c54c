"""The scalar instruction set that elementwise ops lower to, and its numpy evaluator.

An elementwise op's `scalar(s, *args)` composes these builder calls; every backend renders the
same calls (loop IR -> LLVM / OpenCL C), and `NumpyScalar` evaluates them on arrays so tests can
check each op's lowering against its numpy reference without a native compiler.

Instructions (Python numbers as operands take the other operand's dtype):
  arithmetic  add sub mul div neg max min pow
  math        exp log log1p sqrt abs tanh
  compare     lt le gt ge eq ne          -> bool
  select(c, a, b)   cast(x, dtype)   const(value, dtype)
  integers    xor(a, b)  shr(a, bits)  (uint32, wrapping multiply/add)
  index()     the flat element index of the value being computed (uint32)
"""
from __future__ import annotations

from typing import Any

import numpy as np

SCALAR_INSTRUCTIONS = (
    "add", "sub", "mul", "div", "neg", "max", "min", "pow", "exp", "log", "log1p", "sqrt", "abs", "tanh",
    "lt", "le", "gt", "ge", "eq", "ne", "select", "cast", "const", "xor", "shr", "index",
)


class NumpyScalar:
    """Evaluates scalar expressions elementwise on numpy arrays of one output shape."""

    def __init__(self, shape: tuple):
        self.shape = shape

    @staticmethod
    def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(a, np.ndarray) and not isinstance(b, np.ndarray):
            b = np.asarray(b, a.dtype)
        elif isinstance(b, np.ndarray) and not isinstance(a, np.ndarray):
            a = np.asarray(a, b.dtype)
        return np.asarray(a), np.asarray(b)

    def _bin(self, fn, a, b):
        a, b = self._pair(a, b)
        with np.errstate(all="ignore"):
            return np.asarray(fn(a, b))

    def const(self, value, dtype):
        return np.asarray(value, dtype)

    def add(self, a, b): return self._bin(np.add, a, b)
    def sub(self, a, b): return self._bin(np.subtract, a, b)
    def mul(self, a, b): return self._bin(np.multiply, a, b)
    def div(self, a, b): return self._bin(np.divide, a, b)
    def pow(self, a, b): return self._bin(np.power, a, b)
    def max(self, a, b): return self._bin(np.maximum, a, b)
    def min(self, a, b): return self._bin(np.minimum, a, b)
    def lt(self, a, b): return self._bin(np.less, a, b)
    def le(self, a, b): return self._bin(np.less_equal, a, b)
    def gt(self, a, b): return self._bin(np.greater, a, b)
    def ge(self, a, b): return self._bin(np.greater_equal, a, b)
    def eq(self, a, b): return self._bin(np.equal, a, b)
    def ne(self, a, b): return self._bin(np.not_equal, a, b)
    def xor(self, a, b): return self._bin(np.bitwise_xor, a, b)

    def shr(self, a, bits: int):
        return np.right_shift(a, np.asarray(bits, a.dtype))

    def _un(self, fn, x):
        with np.errstate(all="ignore"):
            return np.asarray(fn(x))

    def neg(self, x): return self._un(np.negative, x)
    def exp(self, x): return self._un(np.exp, x)
    def log(self, x): return self._un(np.log, x)
    def log1p(self, x): return self._un(np.log1p, x)
    def sqrt(self, x): return self._un(np.sqrt, x)
    def abs(self, x): return self._un(np.abs, x)
    def tanh(self, x): return self._un(np.tanh, x)

    def select(self, c, a, b):
        a, b = self._pair(a, b)
        return np.asarray(np.where(c, a, b))

    def cast(self, x, dtype):
        with np.errstate(all="ignore"):
            return np.asarray(x).astype(dtype)

    def index(self):
        return np.arange(int(np.prod(self.shape)), dtype=np.uint32).reshape(self.shape)


def evaluate_scalar(op, args: list[np.ndarray], attrs: dict, shape: tuple) -> np.ndarray:
    """Run `op.scalar` on broadcast numpy inputs: the lowering as a backend would compute it."""
    s = NumpyScalar(shape)
    args = [np.broadcast_to(a, shape) for a in args]
    return np.broadcast_to(op.scalar(s, *args, **attrs), shape)
