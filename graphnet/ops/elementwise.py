"""Elementwise ops: each row holds the numpy reference, the gradient and the scalar lowering.

Gradients are written in graphnet ops (so they can be differentiated again); `y` is the op's own
output node, `g` the incoming gradient.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import api as ops
from ..errors import ShapeError
from ..graph import Node
from .base import FLOATS, REGISTRY, Example, Op, apply, broadcast_shapes, register, require_float, same_dtype
from .scalar import _erf, _mod, _power


# ---- unary ------------------------------------------------------------------------------------
class Unary(Op):
    kind = "elementwise"

    def __init__(self, name: str, ref: Callable, grad: Callable | None, scalar: Callable,
                 low: float = -2.0, high: float = 2.0, smooth: bool = True):
        self.name, self._ref, self._grad, self._scalar = name, ref, grad, scalar
        self.differentiable = grad is not None
        self.signature = "unary"
        self.examples = (Example([(None, 3)], low=low, high=high, smooth=smooth), Example([(2, 3, 4)], low=low,
                                                                                          high=high, smooth=smooth))

    def infer(self, inputs, attrs):
        require_float(inputs[0])
        return inputs[0].shape, inputs[0].dtype

    def numpy(self, x, **attrs):
        with np.errstate(all="ignore"):
            return np.asarray(self._ref(x, **attrs), x.dtype)

    def grad(self, node, g):
        return [self._grad(node.inputs[0], node, g, **node.attrs)] if self._grad else [None]

    def scalar(self, s, x, **attrs):
        return self._scalar(s, x, **attrs)


def _stable_sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _sigmoid_scalar(s, x):
    """`_stable_sigmoid` in scalar instructions, one division: (x >= 0 ? 1 : e) / (1 + e) with
    e = exp(-|x|). (1 / (1 + exp(-x)) gives 0 where exp(-x) overflows, x below about -88 in float32,
    where the sigmoid is exp(x), a subnormal number, and sign(sigmoid(x)) is 1.)"""
    e = s.exp(s.neg(s.abs(x)))
    return s.div(s.select(s.ge(x, 0), 1, e), s.add(1, e))


def _times_sigmoid_scalar(s, x, z):
    """x sigmoid(z) as `_sigmoid_scalar` computes it, one division: (z >= 0 ? x : x e) / (1 + e)."""
    e = s.exp(s.neg(s.abs(z)))
    return s.div(s.select(s.ge(z, 0), x, s.mul(x, e)), s.add(1, e))


SELU_ALPHA, SELU_SCALE = 1.6732632423543772848, 1.0507009873554804934  # Klambauer et al., 2017
GELU_C, GELU_K = float(np.sqrt(2 / np.pi)), 0.044715  # tanh approximation of x * Phi(x)


def _expm1_nonpositive(s, x):
    """e^x - 1 for x <= 0 as 2t / (1 - t) with t = tanh(x/2): accurate near 0, where exp(x) - 1
    cancels (there is no expm1 instruction); -1 at -inf."""
    t = s.tanh(s.mul(x, 0.5))
    return s.div(s.mul(t, 2), s.sub(1, t))


def _elu_scalar(s, x, alpha):
    return s.select(s.gt(x, 0), x, s.mul(_expm1_nonpositive(s, s.min(x, 0)), alpha))


# gelu (tanh form) 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), is written x sigmoid(2u):
# the same function (1 + tanh(u) = 2 sigmoid(2u)) without the cancellation in 1 + tanh(u) for x < 0.
def _gelu_2u(x):
    """2u over numpy arrays or graph nodes."""
    return 2 * GELU_C * (x + GELU_K * x * x * x)


# exact gelu (approximate="none"): x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), torch's formula.
SQRT_HALF, INV_SQRT_2PI = float(np.sqrt(0.5)), float(1 / np.sqrt(2 * np.pi))


def _gelu_ref(x, approximate):
    if approximate == "tanh":
        return x * _stable_sigmoid(_gelu_2u(x))
    return 0.5 * x * (1 + _erf(x * x.dtype.type(SQRT_HALF)))


def _gelu_grad(x, y, g, approximate):
    if approximate != "tanh":  # Phi(x) + x phi(x)
        return g * (0.5 * (1 + ops.erf(x * SQRT_HALF)) + x * INV_SQRT_2PI * ops.exp(-0.5 * x * x))
    sig = ops.sigmoid(_gelu_2u(x))
    return g * (sig + y * (1 - sig) * (2 * GELU_C) * (1 + 3 * GELU_K * x * x))


def _gelu_scalar(s, x, approximate):
    if approximate != "tanh":
        return s.mul(s.mul(x, 0.5), s.add(1, s.erf(s.mul(x, SQRT_HALF))))
    two_u = s.mul(s.add(x, s.mul(s.mul(s.mul(x, x), x), GELU_K)), 2 * GELU_C)
    return _times_sigmoid_scalar(s, x, two_u)


def _zero_grad(x, y, g):
    """Piecewise-constant ops (floor, ceil, round): zero, not None, as torch's."""
    return ops.zeros_like(g)


TWO_OVER_SQRT_PI = float(2 / np.sqrt(np.pi))


def _silu_grad(x, y, g):
    sig = ops.sigmoid(x)
    return g * (sig + y * (1 - sig))


UNARY = [
    Unary("negative", np.negative, lambda x, y, g: -g, lambda s, x: s.neg(x)),
    Unary("exp", np.exp, lambda x, y, g: g * y, lambda s, x: s.exp(x)),
    Unary("log", np.log, lambda x, y, g: g / x, lambda s, x: s.log(x), low=0.2, high=3.0),
    Unary("sqrt", np.sqrt, lambda x, y, g: g / (2 * y), lambda s, x: s.sqrt(x), low=0.2, high=3.0),
    Unary("abs", np.abs, lambda x, y, g: g * ops.sign(x), lambda s, x: s.abs(x), smooth=False),
    Unary("sign", np.sign, lambda x, y, g: ops.zeros_like(g),  # zero, not None: torch's sign has a gradient
          lambda s, x: s.select(s.gt(x, 0), 1, s.select(s.lt(x, 0), -1, s.mul(x, 0))), smooth=False),
    Unary("tanh", np.tanh, lambda x, y, g: g * (1 - y * y), lambda s, x: s.tanh(x)),
    Unary("sigmoid", _stable_sigmoid, lambda x, y, g: g * y * (1 - y), _sigmoid_scalar),
    # relu's gradient tests its output: y > 0 exactly where x > 0 (NaN, -0.0 included), and y is kept anyway
    Unary("relu", lambda x: np.maximum(x, 0), lambda x, y, g: ops.where(y > 0, g, 0),
          lambda s, x: s.select(s.lt(x, 0), 0, x), smooth=False),
    Unary("softplus", lambda x: np.logaddexp(0, x), lambda x, y, g: g * ops.sigmoid(x),
          lambda s, x: s.add(s.max(x, 0), s.log1p(s.exp(s.neg(s.abs(x)))))),
    Unary("leaky_relu", lambda x, alpha: np.where(x > 0, x, alpha * x),
          lambda x, y, g, alpha: ops.where(x > 0, g, g * alpha),
          lambda s, x, alpha: s.select(s.gt(x, 0), x, s.mul(x, alpha)), smooth=False),
    Unary("clip", lambda x, lo, hi: np.clip(x, lo, hi),
          lambda x, y, g, lo, hi: ops.where(x < lo, 0, ops.where(x > hi, 0, g)),
          lambda s, x, lo, hi: s.select(s.lt(x, lo), lo, s.select(s.gt(x, hi), hi, x)), smooth=False),
    Unary("stop_gradient", lambda x: x, lambda x, y, g: None, lambda s, x: x),
    Unary("elu", lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
          lambda x, y, g, alpha: ops.where(x > 0, g, g * (y + alpha)), _elu_scalar),
    Unary("selu", lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
          lambda x, y, g: ops.where(x > 0, g * SELU_SCALE, g * (y + SELU_SCALE * SELU_ALPHA)),
          lambda s, x: s.mul(_elu_scalar(s, x, SELU_ALPHA), SELU_SCALE)),
    Unary("gelu", _gelu_ref, _gelu_grad, _gelu_scalar),
    Unary("silu", lambda x: x * _stable_sigmoid(x), _silu_grad, lambda s, x: _times_sigmoid_scalar(s, x, x)),
    # Keras 3's (and torch's hardsigmoid): relu6(x + 3) / 6; Keras 2 had clip(0.2 x + 0.5, 0, 1).
    Unary("hard_sigmoid", lambda x: np.clip(x / 6 + 0.5, 0, 1),
          lambda x, y, g: ops.where(x > -3, ops.where(x < 3, g * (1 / 6), 0), 0),
          lambda s, x: s.select(s.lt(x, -3), 0, s.select(s.gt(x, 3), 1, s.add(s.div(x, 6), 0.5))),
          low=-4.0, high=4.0, smooth=False),
    Unary("log1p", np.log1p, lambda x, y, g: g / (1 + x), lambda s, x: s.log1p(x), low=-0.5, high=2.0),
    Unary("square", np.square, lambda x, y, g: g * 2 * x, lambda s, x: s.mul(x, x)),
    Unary("rsqrt", lambda x: 1 / np.sqrt(x), lambda x, y, g: g * -0.5 * y * y * y,
          lambda s, x: s.div(1, s.sqrt(x)), low=0.2, high=3.0),
    Unary("expm1", np.expm1, lambda x, y, g: g * ops.exp(x), lambda s, x: s.expm1(x)),
    Unary("erf", _erf, lambda x, y, g: g * TWO_OVER_SQRT_PI * ops.exp(-x * x), lambda s, x: s.erf(x)),
    Unary("floor", np.floor, _zero_grad, lambda s, x: s.floor(x), smooth=False),
    Unary("ceil", np.ceil, _zero_grad, lambda s, x: s.ceil(x), smooth=False),
    Unary("round", np.round, _zero_grad, lambda s, x: s.round(x), smooth=False),  # half to even, as numpy
]
for _op in UNARY:
    REGISTRY[_op.name] = _op
REGISTRY["leaky_relu"].examples = (Example([(None, 3)], {"alpha": 0.1}, smooth=False),)
REGISTRY["clip"].examples = (Example([(None, 3)], {"lo": -0.5, "hi": 0.7}, smooth=False),)
REGISTRY["elu"].examples = (Example([(None, 3)], {"alpha": 1.0}), Example([(2, 3, 4)], {"alpha": 0.5}))
REGISTRY["gelu"].examples = (Example([(None, 3)], {"approximate": "tanh"}, low=-4.0, high=4.0),
                             Example([(2, 3, 4)], {"approximate": "tanh"}),
                             Example([(None, 3)], {"approximate": "none"}, low=-4.0, high=4.0),
                             Example([(2, 3, 4)], {"approximate": "none"}))
for _name in ("leaky_relu", "clip", "elu", "gelu"):
    REGISTRY[_name].signature = ""  # attributes: functions in api.py
REGISTRY["stop_gradient"].differentiable = True  # its gradient is defined: zero


@register
class Cast(Op):
    name = "cast"
    examples = (Example([(None, 3)], {"dtype": np.dtype(np.float64)}),)

    def infer(self, inputs, attrs):
        if np.dtype(attrs["dtype"]).kind not in "fiub":
            raise ShapeError(f"cannot cast to {attrs['dtype']}")
        return inputs[0].shape, attrs["dtype"]

    def numpy(self, x, dtype):
        return x.astype(dtype)

    def grad(self, node, g):
        x = node.inputs[0]
        return [ops.cast(g, x.dtype) if x.dtype in FLOATS else None]

    def scalar(self, s, x, dtype):
        return s.cast(x, dtype)


# ---- binary (numpy broadcasting) --------------------------------------------------------------
class Binary(Op):
    kind = "elementwise"
    signature = "binary"
    examples = (Example([(None, 3), (None, 3)]), Example([(None, 3), (3,)]), Example([(2, 1, 4), (3, 1)]))

    def infer(self, inputs, attrs):
        dtype = same_dtype(inputs)
        if dtype.kind == "b":
            raise ShapeError("arithmetic on bool tensors is not supported (cast first)")
        return broadcast_shapes(*(x.shape for x in inputs)), dtype


def _binary(name: str, ref, grad, scalar, low=-2.0, high=2.0, smooth=True):
    cls = type(name.title(), (Binary,), {
        "name": name, "numpy": lambda self, a, b: np.asarray(ref(a, b)),
        "grad": lambda self, node, g: list(grad(*node.inputs, node, g)),
        "scalar": lambda self, s, a, b: scalar(s, a, b)})
    if (low, high, smooth) != (-2.0, 2.0, True):
        cls.examples = tuple(Example(e.shapes, low=low, high=high, smooth=smooth) for e in Binary.examples)
    register(cls)


def _power_grads(a, b, y, g):
    """torch's conventions where the plain rules give 0 * inf: d/da is 0 where b == 0, and d/db is 0
    where a == 0 and b >= 0 (the limit of y * log(a) there)."""
    da = ops.where(ops.equal(b, 0), 0, g * b * a ** (b - 1))
    log_a = ops.log(a)
    db = g * y * ops.where(ops.equal(a, 0), ops.where(b >= 0, 0, log_a), log_a)
    return da, db


def _half(c, g):
    return ops.where(c, g * 0.5, 0)


_binary("add", np.add, lambda a, b, y, g: (g, g), lambda s, a, b: s.add(a, b))
_binary("subtract", np.subtract, lambda a, b, y, g: (g, -g), lambda s, a, b: s.sub(a, b))
_binary("multiply", np.multiply, lambda a, b, y, g: (g * b, g * a), lambda s, a, b: s.mul(a, b))
_binary("divide", np.divide, lambda a, b, y, g: (g / b, -g * y / b), lambda s, a, b: s.div(a, b),
        low=0.3, high=2.0)
_binary("power", _power, lambda a, b, y, g: _power_grads(a, b, y, g), lambda s, a, b: s.pow(a, b), low=0.3, high=2.0)
# floor modulo (numpy's and Python's %); gradients as torch.remainder's: 1 and -floor(a / b)
_binary("mod", _mod, lambda a, b, y, g: (g, -g * ops.floor(a / b)), lambda s, a, b: s.mod(a, b), low=0.3, high=2.0,
        smooth=False)
# PyTorch's convention: at a tie each input gets half the gradient.
_binary("maximum", np.maximum, lambda a, b, y, g: (ops.where(a > b, g, _half(ops.equal(a, b), g)),
                                                   ops.where(b > a, g, _half(ops.equal(a, b), g))),
        lambda s, a, b: s.max(a, b), smooth=False)  # max/min propagate NaN, as numpy does
_binary("minimum", np.minimum, lambda a, b, y, g: (ops.where(a < b, g, _half(ops.equal(a, b), g)),
                                                   ops.where(b < a, g, _half(ops.equal(a, b), g))),
        lambda s, a, b: s.min(a, b), smooth=False)


class Compare(Op):
    kind = "elementwise"
    signature = "binary"
    differentiable = False
    examples = (Example([(None, 3), (None, 3)]), Example([(None, 3), (3,)]))

    def infer(self, inputs, attrs):
        same_dtype(inputs)
        return broadcast_shapes(*(x.shape for x in inputs)), np.dtype(bool)

    def grad(self, node, g):
        return [None, None]


for _name, _ref, _ins in [("less", np.less, "lt"), ("less_equal", np.less_equal, "le"),
                          ("greater", np.greater, "gt"), ("greater_equal", np.greater_equal, "ge"),
                          ("equal", np.equal, "eq"), ("not_equal", np.not_equal, "ne")]:
    register(type(_name.title(), (Compare,), {
        "name": _name, "numpy": (lambda ref: lambda self, a, b: np.asarray(ref(a, b)))(_ref),
        "scalar": (lambda ins: lambda self, s, a, b: getattr(s, ins)(a, b))(_ins)}))


@register
class Where(Op):
    name = "where"
    examples = (Example([(None, 3), (None, 3), (None, 3)], int_inputs={0: (bool, 2)}),
                Example([(None, 3), (None, 3), ()], int_inputs={0: (bool, 2)}),
                Example([(3,), (None, 1), (None, 3)], int_inputs={0: (bool, 2)}))

    def infer(self, inputs, attrs):
        cond, a, b = inputs
        if cond.dtype != bool:
            raise ShapeError(f"condition must be bool, got {cond.dtype}")
        return broadcast_shapes(cond.shape, a.shape, b.shape), same_dtype([a, b])

    def numpy(self, c, a, b):
        return np.asarray(np.where(c, a, b))

    def grad(self, node, g):
        c = node.inputs[0]
        return [None, ops.where(c, g, 0), ops.where(c, 0, g)]

    def scalar(self, s, c, a, b):
        return s.select(c, a, b)


@register
class Dropout(Op):
    """Inverted dropout; inputs (x, step, offset); the mask is keyed by (seed, step, counter), the
    counter being offset * row + the element's flat index (uint32, wrapping). The public function
    sets `row` to the elements per batch row, so a batch shard fed with its first row's global index
    as offset draws the whole batch's masks of its rows; row 0 keys by the flat index alone."""

    name = "dropout"
    examples = (Example([(None, 8), (), ()], {"rate": 0.3, "seed": 7, "row": 8},
                        int_inputs={1: (np.int32, 100), 2: (np.int32, 50)}),)

    def infer(self, inputs, attrs):
        x, step, offset = inputs
        require_float(x)
        for name, counter in (("step", step), ("offset", offset)):
            if counter.shape != () or counter.dtype.kind not in "iu":
                raise ShapeError(f"{name} must be an integer scalar, got {counter.dtype} {counter.shape}")
        if not 0 <= attrs["rate"] < 1:
            raise ShapeError(f"rate must be in [0, 1), got {attrs['rate']}")
        if attrs["row"] < 0:
            raise ShapeError(f"row must be >= 0, got {attrs['row']}")
        return x.shape, x.dtype

    def numpy(self, x, step, offset=0, *, rate, seed, row=0):  # (offset 0, row 0: the flat index alone)
        from ..ops.scalar import evaluate_scalar
        return evaluate_scalar(self, [x, np.asarray(step), np.asarray(offset)],
                               {"rate": rate, "seed": seed, "row": row}, x.shape).copy()

    def grad(self, node, g):
        return [ops.graph_dropout(g, node.inputs[1], offset=node.inputs[2], **node.attrs), None, None]

    def scalar(self, s, x, step, offset, rate, seed, row):
        from ..random import uniform
        counter = s.index()
        if row:  # (row 0 leaves the counter, and so the generated code, as without an offset)
            counter = s.add(s.mul(s.cast(offset, np.uint32), s.const(row, np.uint32)), counter)
        keep = s.ge(uniform(s, seed, step, counter, x.dtype), s.const(rate, x.dtype))
        return s.select(keep, s.mul(x, s.const(1.0 / (1.0 - rate), x.dtype)), s.const(0, x.dtype))


def unary(name: str, x: Any, **attrs: Any) -> Node:
    return apply(name, [x], **attrs)
