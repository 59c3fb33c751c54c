"""Every scalar instruction and reduction has a numpy evaluator, a builder and a rendering on every
backend, on every dtype kind it is defined for, and the backends compute what the evaluator does.
A reduction or instruction a renderer lacks fails at compile time with a message naming it."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from codegen.loopir import ExprBuilder, UnsupportedInstruction
from graphnet.ops import REGISTRY
from graphnet.ops.base import Example, Op, broadcast_shapes
from graphnet.ops.reduce import Reduce
from graphnet.ops.scalar import INSTRUCTIONS, REDUCTIONS, NumpyScalar, Reduction

from test_reliability import BACKENDS

DTYPES = {"f": (np.float32, np.float64), "i": (np.int32, np.int64), "u": (np.uint32,), "b": (np.bool_,)}
NATIVE = [b for b in BACKENDS if b != "numpy"]


def _inputs(name: str, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Operands for every instruction of `dtype`, with the integer edge cases the backends define alike."""
    rng = np.random.default_rng(1)
    if dtype.kind == "b":
        return rng.integers(0, 2, 16).astype(bool), rng.integers(0, 2, 16).astype(bool)
    if dtype.kind == "f":
        low = 0.1 if name in ("log", "log1p", "sqrt", "pow") else -3.0
        a, b = rng.uniform(low, 3.0, 16), rng.uniform(low, 3.0, 16)
        a[:2] = b[:2]  # ties for the comparisons
        return a.astype(dtype), b.astype(dtype)
    low = 0 if dtype.kind == "u" else -50
    a, b = rng.integers(low, 50, 16).astype(dtype), rng.integers(1, 9, 16).astype(dtype)
    a[:2] = b[:2]
    b[2] = 0  # x / 0 gives 0 everywhere
    if dtype.kind == "i":
        a[3], b[3] = np.iinfo(dtype).min, -1  # MIN / -1 wraps (as do MIN * -1 and -MIN)
    return a, b


class _Apply(Op):
    """An elementwise op running one scalar instruction (registered only inside these tests)."""

    kind = "elementwise"
    differentiable = False

    def __init__(self, name: str):
        self.name, self.instruction = f"test_instruction_{name}", INSTRUCTIONS[name]

    def infer(self, inputs, attrs):
        shape = broadcast_shapes(*(x.shape for x in inputs))
        return shape, np.dtype(bool) if self.instruction.form == "compare" else inputs[0].dtype

    def numpy(self, *args):
        return self.scalar(NumpyScalar(args[0].shape), *args)

    def scalar(self, s, *args):
        name = self.instruction.name
        if name == "select":
            return s.select(s.ne(args[0], args[1]), args[0], args[1])
        if name == "cast":
            return s.cast(s.cast(args[0], np.float64 if args[0].dtype.kind != "f" else np.int32), args[0].dtype)
        if name == "const":
            return s.add(args[0], s.const(3, args[0].dtype)) if args[0].dtype.kind != "b" else s.const(True, bool)
        if name == "shr":
            return s.shr(args[0], 3)
        if name == "index":
            return s.cast(s.index(), args[0].dtype)
        if self.instruction.form == "unary":
            return getattr(s, name)(args[0])
        return getattr(s, name)(args[0], args[1])


def _cases() -> list[tuple[str, np.dtype]]:
    cases = []
    for instruction in INSTRUCTIONS.values():
        for kind in instruction.kinds:
            for dtype in DTYPES[kind]:
                if instruction.name in ("const", "index") and kind == "b":
                    continue  # nothing to add to a bool; the index is uint32, cast for the check
                cases.append((instruction.name, np.dtype(dtype)))
    return cases


CASES = _cases()


@pytest.fixture
def instruction_ops():
    ops = {name: _Apply(name) for name in INSTRUCTIONS}
    for op in ops.values():
        REGISTRY[op.name] = op
    yield ops
    for op in ops.values():
        del REGISTRY[op.name]


def test_every_instruction_has_an_evaluator_and_a_builder():
    builder, evaluator = ExprBuilder(None), NumpyScalar((2,))
    for instruction in INSTRUCTIONS.values():
        assert hasattr(builder, instruction.name) and hasattr(evaluator, instruction.name), instruction.name
        if instruction.form != "special":
            assert instruction.numpy is not None, instruction.name
    assert {name for name, _ in CASES} == set(INSTRUCTIONS)


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("dtype", sorted({d for _, d in CASES}, key=str), ids=str)
def test_every_instruction_renders_and_computes_as_its_evaluator(instruction_ops, backend, dtype):
    names = [name for name, d in CASES if d == dtype]
    a, b = _inputs("log", dtype)  # one pair per dtype: positive floats suit every float instruction
    with gn.Graph():
        xa, xb = gn.placeholder("a", (None,), dtype), gn.placeholder("b", (None,), dtype)
        outs = [xa.graph.apply(instruction_ops[name], [xa] if INSTRUCTIONS[name].form == "unary" else [xa, xb], {})
                for name in names]
        got = gn.compile(outs, backend=backend)(a=a, b=b)
    for name, value in zip(names, got):
        op = instruction_ops[name]
        want = op.numpy(a) if INSTRUCTIONS[name].form == "unary" else op.numpy(a, b)
        if dtype.kind == "f":
            np.testing.assert_allclose(value, want, rtol=4e-6 if dtype == np.float32 else 1e-13, err_msg=name)
        else:
            np.testing.assert_array_equal(value, want, err_msg=name)


def test_every_reduction_matches_its_definition_on_every_backend():
    x = gn.placeholder("x", (None, 5), np.float64)
    values = np.random.default_rng(0).normal(size=(4, 5))
    cases = [(name, axis) for name in REDUCTIONS for axis in (0, 1)]
    for backend in BACKENDS:
        got = gn.compile([getattr(gn, name)(x, axis) for name, axis in cases], backend=backend)(x=values)
        for (name, axis), value in zip(cases, got):
            np.testing.assert_allclose(value, REDUCTIONS[name].numpy(values, axis, False), err_msg=name)


@pytest.fixture
def prod_reduction():
    """A reduction op whose REDUCTIONS entry names a combine instruction no renderer has (not the
    real prod, whose entries the fixture must leave in place)."""
    class Prod(Reduce):
        name = "fake_prod"
        examples = (Example([(None, 3)], {"axes": (1,), "keepdims": False}),)

        def grad(self, node, g):
            return [None]
    REGISTRY["fake_prod"] = Prod()
    REDUCTIONS["fake_prod"] = Reduction("fake_prod", "mul_all", lambda dtype: 1,
                                        lambda x, axis, keepdims: np.prod(x, axis))
    yield
    del REGISTRY["fake_prod"], REDUCTIONS["fake_prod"]


@pytest.mark.parametrize("backend", NATIVE)
def test_a_reduction_a_renderer_lacks_fails_at_compile_time_naming_it(prod_reduction, backend):
    x = gn.placeholder("x", (None, 3))
    node = x.graph.apply(REGISTRY["fake_prod"], [x], {"axes": (1,), "keepdims": False})
    np.testing.assert_array_equal(gn.compile(node, backend="numpy")(x=np.full((2, 3), 2.0, np.float32)), [8, 8])
    with pytest.raises(UnsupportedInstruction, match="reduction 'fake_prod'"):
        gn.compile(node, backend=backend)


@pytest.mark.parametrize("backend", NATIVE)
def test_an_unknown_reduction_fails_at_compile_time_naming_it(backend):
    class Mystery(Reduce):
        name = "mystery_reduction"

        def numpy(self, x, axes, keepdims):
            return np.sum(x, axis=axes, keepdims=keepdims)
    x = gn.placeholder("x", (None, 3))
    node = x.graph.apply(Mystery(), [x], {"axes": (1,), "keepdims": False})
    with pytest.raises(UnsupportedInstruction, match="reduction 'mystery_reduction'"):
        gn.compile(node, backend=backend)
