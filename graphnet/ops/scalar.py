"""The scalar instruction set elementwise ops lower to, the reductions, and their numpy evaluator.

An elementwise op's `scalar(s, *args)` composes builder calls `s.<instruction>(...)`; every backend
renders the same instructions (loop IR -> LLVM / OpenCL C), and `NumpyScalar` evaluates them on arrays
so tests can check each op's lowering against its numpy reference without a native compiler.

`INSTRUCTIONS` and `REDUCTIONS` are the one definition of each: the loop IR's builder
(`codegen.loopir.ExprBuilder`), `NumpyScalar` and the reduction ops' numpy references come from them,
and each renderer checks every instruction and reduction of a program against its own rendering
table before it emits code (`codegen.loopir.check_renderable`): a missing rendering is a
compile-time error naming it.

Instructions (Python numbers as operands take the other operand's dtype):
  arithmetic  add sub mul div neg max min pow mod
  math        exp expm1 log log1p sqrt abs tanh erf
  rounding    floor ceil round (half to even)
  compare     lt le gt ge eq ne          -> bool
  select(c, a, b)   cast(x, dtype)   const(value, dtype)
  integers    xor(a, b)  shr(a, bits)  (uint32, wrapping multiply/add)
  index()     the flat element index of the value being computed (uint32)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import math

import numpy as np


@dataclass(frozen=True)
class Instruction:
    """`form`: "unary" (x), "binary" (a, b), "compare" (a, b -> bool) or "special" (its own builder
    signature: select, cast, const, shr, index). `kinds`: the numpy dtype kinds of its operands it is
    defined on ("f" float, "i" signed, "u" unsigned, "b" bool), which every backend must render."""

    name: str
    form: str
    kinds: str
    numpy: Callable | None = None


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Float division; on integers C's truncating division where x / 0 gives 0 and MIN / -1 wraps
    (what the native backends compute instead of trapping)."""
    if a.dtype.kind == "f":
        return np.divide(a, b)
    safe = np.where(b == 0, 1, b)
    quotient = np.where((a < 0) != (safe < 0), -(np.abs(a) // np.abs(safe)), np.abs(a) // np.abs(safe))
    return np.where(b == 0, 0, quotient).astype(a.dtype)


def _mod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy's (Python's) floor modulo: the result takes the divisor's sign. Floats: x % 0 is NaN,
    a zero result is +-0 as the divisor; integers: x % 0 gives 0 (numpy's result, with its warning
    silenced), as does MIN % -1."""
    if a.dtype.kind == "f":
        return np.mod(a, b)
    safe = np.where(b == 0, 1, b)
    return np.where(b == 0, 0, np.mod(a, safe)).astype(a.dtype)


def _power(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.power; on integers (wrapping, as numpy) a negative exponent, where numpy raises, gives x^y
    truncated toward zero: 1 for x = 1, +-1 for x = -1, 0 for any other x (0 ** -1 too, as x / 0
    gives 0)."""
    if a.dtype.kind == "f" or b.dtype.kind == "u":
        return np.power(a, b)
    negative = b < 0
    out = np.power(a, np.where(negative, 0, b))
    inverse = np.where(a == 1, 1, np.where(a == -1, np.where(b % 2 == 0, 1, -1), 0))
    return np.where(negative, inverse, out).astype(a.dtype)


_erf_float64 = np.frompyfunc(math.erf, 1, 1)


def _erf(x: np.ndarray) -> np.ndarray:
    """The error function (libm's, through math.erf: numpy has none), rounded to x's dtype."""
    return np.asarray(_erf_float64(x.astype(np.float64)), np.float64).astype(x.dtype)


INSTRUCTIONS: dict[str, Instruction] = {i.name: i for i in [
    Instruction("add", "binary", "fiu", np.add), Instruction("sub", "binary", "fiu", np.subtract),
    Instruction("mul", "binary", "fiu", np.multiply), Instruction("div", "binary", "fiu", _divide),
    Instruction("max", "binary", "fiu", np.maximum), Instruction("min", "binary", "fiu", np.minimum),
    Instruction("pow", "binary", "fiu", _power), Instruction("mod", "binary", "fiu", _mod),
    Instruction("xor", "binary", "iu", np.bitwise_xor),
    Instruction("neg", "unary", "fi", np.negative), Instruction("exp", "unary", "f", np.exp),
    Instruction("log", "unary", "f", np.log), Instruction("log1p", "unary", "f", np.log1p),
    Instruction("sqrt", "unary", "f", np.sqrt), Instruction("abs", "unary", "fi", np.abs),
    Instruction("tanh", "unary", "f", np.tanh), Instruction("expm1", "unary", "f", np.expm1),
    Instruction("erf", "unary", "f", _erf), Instruction("floor", "unary", "f", np.floor),
    Instruction("ceil", "unary", "f", np.ceil), Instruction("round", "unary", "f", np.round),
    Instruction("lt", "compare", "fiu", np.less), Instruction("le", "compare", "fiu", np.less_equal),
    Instruction("gt", "compare", "fiu", np.greater), Instruction("ge", "compare", "fiu", np.greater_equal),
    Instruction("eq", "compare", "fiub", np.equal), Instruction("ne", "compare", "fiub", np.not_equal),
    Instruction("select", "special", "fiub"), Instruction("cast", "special", "fiub"),
    Instruction("const", "special", "fiub"), Instruction("shr", "special", "iu"), Instruction("index", "special", "u"),
]}
SCALAR_INSTRUCTIONS = tuple(INSTRUCTIONS)


@dataclass(frozen=True)
class Reduction:
    """A reduction of the loop IR: partial results merge with the scalar instruction `combine`; an
    empty reduction gives `identity(dtype)`."""

    name: str
    combine: str
    identity: Callable[[np.dtype], Any]
    numpy: Callable  # (array, axis, keepdims) -> array, with the empty reduction giving the identity


def _lowest(dtype: np.dtype) -> Any:
    dtype = np.dtype(dtype)
    return -np.inf if dtype.kind == "f" else int(np.iinfo(dtype).min)


def _highest(dtype: np.dtype) -> Any:
    dtype = np.dtype(dtype)
    return np.inf if dtype.kind == "f" else int(np.iinfo(dtype).max)


REDUCTIONS: dict[str, Reduction] = {r.name: r for r in [
    Reduction("sum", "add", lambda dtype: 0, lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims)),
    Reduction("max", "max", _lowest,
              lambda x, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims, initial=_lowest(x.dtype))),
    Reduction("min", "min", _highest,
              lambda x, axis, keepdims: np.min(x, axis=axis, keepdims=keepdims, initial=_highest(x.dtype))),
    Reduction("prod", "mul", lambda dtype: 1, lambda x, axis, keepdims: np.prod(x, axis=axis, keepdims=keepdims)),
]}


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

    def _un(self, fn, x):
        with np.errstate(all="ignore"):
            return np.asarray(fn(x))

    def const(self, value, dtype):
        return np.asarray(value, dtype)

    def shr(self, a, bits: int):
        return np.right_shift(a, np.asarray(bits, a.dtype))

    def select(self, c, a, b):
        a, b = self._pair(a, b)
        return np.asarray(np.where(c, a, b))

    def cast(self, x, dtype):
        with np.errstate(all="ignore"):
            return np.asarray(x).astype(dtype)

    def index(self):
        return np.arange(int(np.prod(self.shape)), dtype=np.uint32).reshape(self.shape)


for _i in INSTRUCTIONS.values():
    if _i.form == "unary":
        setattr(NumpyScalar, _i.name, (lambda fn: lambda self, x: self._un(fn, x))(_i.numpy))
    elif _i.form in ("binary", "compare"):
        setattr(NumpyScalar, _i.name, (lambda fn: lambda self, a, b: self._bin(fn, a, b))(_i.numpy))


def evaluate_scalar(op, args: list[np.ndarray], attrs: dict, shape: tuple) -> np.ndarray:
    """Run `op.scalar` on broadcast numpy inputs: the lowering as a backend would compute it."""
    s = NumpyScalar(shape)
    args = [np.broadcast_to(a, shape) for a in args]
    return np.broadcast_to(op.scalar(s, *args, **attrs), shape)
