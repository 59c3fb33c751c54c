"""Loop IR expressions are DAGs end to end (issue #19, fuzz finding 0:4035): a subexpression used
several times (elu, silu and softplus use their argument more than once; a fused root's value is
reused by the next) is one node, and every walk, rewrite, text form and renderer handles each
distinct node once, so chains of multi-use ops cost linear, not exponential, compile time.

Sizes, never times, are asserted: `doubling(d)` has 2d + 1 distinct nodes and 2**d paths."""
from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
import pytest

import graphnet as gn
from codegen.llvm.gemm_schedule import swap_vars
from codegen.llvm.render import Renderer
from codegen.llvm.schedule import schedule_llvm
from codegen.loop_passes import LOOP_PASSES, choose_loop_order, hoist_reciprocals, verify_loops
from codegen.loopir import (Acc, Buffer, Const, Kernel, Load, LoopProgram, Op, Reduce, Store, UnsupportedInstruction,
                            affine, check_renderable, rewrite, walk_unique)
from codegen.lower import lower
from codegen.opencl import render as opencl_render
from codegen.opencl.schedule import Limits, schedule_opencl

from test_reliability import BACKENDS

F32 = np.dtype(np.float32)
X = Load(0, affine((0,), (None,)), F32)  # b0[v0]: a batch-long input
DEVICE = Limits(max_work_group_size=256, local_mem_size=65536, compute_units=4)


def doubling(depth: int, base=X, name: str = "sqrt"):
    """x_{i+1} = x_i + name(x_i): every level uses the one below twice."""
    x = base
    for _ in range(depth):
        x = Op("add", (x, Op(name, (x,), F32)), F32)
    return x


def program(value, reduce: Reduce | None = None, domain: tuple = (None,)) -> LoopProgram:
    """b1[v0] = value over `domain`, reading the input b0 (and b2, a scalar)."""
    buffers = [Buffer(0, "x", "input", (None,), F32), Buffer(1, "y", "temp", (None,), F32),
               Buffer(2, "s", "input", (), F32)]
    kernel = Kernel("k", domain, [Store(1, affine((0,), (None,)), value, "y", "test")], reduce, order=())
    return LoopProgram(buffers, [kernel], fetches=[1], inputs=[0, 2])


def rendered_llvm(lp: LoopProgram) -> str:
    for p in LOOP_PASSES + [schedule_llvm(1, None)]:
        lp = p(lp)
    text = Renderer(lp, threads=1).render()
    llvm.parse_assembly(text).verify()  # every use dominated by its definition
    return text


def chain(depth: int):
    """The fuzzer's repro: silu(elu(.)) `depth` deep on a variable, its mean and gradient, one SGD step."""
    x = gn.variable(f"x{depth}", np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4))
    h = x
    for _ in range(depth):
        h = gn.silu(gn.elu(h, 0.3))
    loss = gn.mean(h)
    return x, loss, gn.gradients(loss, [x])[0]


# ---- nodes ----------------------------------------------------------------------------------
def test_structurally_equal_expressions_are_one_node():
    assert Op("exp", (X,), F32) is Op("exp", (Load(0, affine((0,), (None,)), F32),), F32)
    assert Const(-0.0, F32) is not Const(0.0, F32)  # equal as Python floats, not as constants
    assert Const(1, np.dtype(np.int32)) is not Const(True, np.dtype(np.int32))
    assert str(Const(1.0, F32)) == "1.0:float32" and str(Const(1, F32)) == "1:float32"
    deep = doubling(200)
    assert {deep: 1}[doubling(200)] == 1  # hashing and equality do not follow the 2**200 paths


def test_walk_unique_visits_each_distinct_node_once_children_first():
    nodes = list(walk_unique(doubling(300)))
    assert len(nodes) == 2 * 300 + 1  # deeper than Python's recursion limit allows a recursive walk
    position = {n: i for i, n in enumerate(nodes)}
    assert all(position[c] < position[n] for n in nodes if isinstance(n, Op) for c in n.args)


def test_rewrite_rewrites_each_node_once_and_keeps_sharing():
    other = Load(2, affine((), ()), F32)
    calls = []

    def to_other(e):
        calls.append(e)
        return other if e is X else e
    (new,) = rewrite([doubling(100)], to_other)
    assert len(calls) == 2 * 100 + 1
    assert new is doubling(100, other)
    assert rewrite([doubling(100)], lambda e: e)[0] is doubling(100)


# ---- the text form --------------------------------------------------------------------------
def test_text_names_each_shared_subexpression_once():
    lp = program(doubling(3))
    assert lp.kernels[0].to_text(sources=False).splitlines() == [
        "kernel k over v0<N  order ",
        "  t0 = add(b0[v0], sqrt(b0[v0]))",  # a load used twice stays inline
        "  t1 = add(t0, sqrt(t0))",
        "  b1[v0] = add(t1, sqrt(t1))",
    ]
    assert str(doubling(2)) == "t0 = add(b0[v0], sqrt(b0[v0])); add(t0, sqrt(t0))"


def test_text_of_a_deep_shared_expression_is_linear_in_its_nodes():
    assert len(program(doubling(20)).to_text()) < 40 * 20 + 500


def test_text_scopes_temporaries_to_the_reduction_and_to_the_stores():
    """A value used in the reduction's loop and by a store is named in each place it is evaluated."""
    shared = Op("sqrt", (Op("exp", (X,), F32),), F32)
    lp = _reduce_and_store_sharing(shared)
    assert lp.kernels[0].to_text(sources=False).splitlines()[1:] == [
        "  t0 = sqrt(exp(b0[v0]))",
        "  acc = sum over v1 of mul(t0, t0)",
        "  t1 = sqrt(exp(b0[v0]))",
        "  b1[v0] = add(acc, add(t1, t1))",
    ]


def _reduce_and_store_sharing(shared) -> LoopProgram:
    """sum over v1 of shared * shared, then b1[v0] = acc + shared + shared: `shared` is one node in both."""
    red = Reduce("sum", (1,), Op("mul", (shared, shared), F32))
    value = Op("add", (Acc(F32), Op("add", (shared, shared), F32)), F32)
    return program(value, red, (None, 5))


# ---- passes ---------------------------------------------------------------------------------
def test_loop_passes_and_the_verifier_keep_a_deep_dag_shared():
    scalar = Load(2, affine((), ()), F32)
    lp = program(Op("div", (doubling(200), scalar), F32))
    verify_loops(lp)
    hoist_reciprocals(lp)
    value = lp.kernels[0].stores[0].value
    assert value is Op("mul", (doubling(200), Op("div", (Const(1.0, F32), scalar), F32)), F32)
    assert len(lp.kernels[0].loads()) == 2


def test_swap_vars_keeps_a_deep_dag_shared():
    lp = program(doubling(200, Load(0, affine((0, 1), (None, 3)), F32)), domain=(None, 3))
    lp.kernels[0].stores[0].offset = affine((0, 1), (None, 3))
    swap_vars(lp.kernels[0], 0, 1)
    value = lp.kernels[0].stores[0].value
    assert value is doubling(200, Load(0, affine((1, 0), (None, 3)), F32))


def test_check_renderable_names_an_unrenderable_instruction_deep_in_a_dag():
    lp = program(doubling(200, Op("frobnicate", (X,), F32)))
    with pytest.raises(UnsupportedInstruction, match="'frobnicate'.*y at test"):
        check_renderable(lp, "test", lambda name, dtype: name != "frobnicate", lambda op, dtype: True)


# ---- renderers ------------------------------------------------------------------------------
def test_llvm_renders_each_shared_node_once():
    text = rendered_llvm(program(doubling(40)))
    assert sum("call" in line and "llvm.sqrt" in line for line in text.splitlines()) == 40


def test_llvm_evaluates_a_value_shared_by_the_reduction_and_a_store_in_each_place():
    """The reduction's loop computes it per v1; the store, after the loop, computes it again."""
    text = rendered_llvm(_reduce_and_store_sharing(Op("sqrt", (X,), F32)))
    body = text[text.index('define internal void @"k_body"'):]
    assert sum("call" in line and "llvm.sqrt" in line for line in body.splitlines()) == 2


def test_opencl_declares_each_shared_node_once():
    lp = schedule_opencl(DEVICE)(choose_loop_order(program(doubling(40))))
    source, _, _ = opencl_render.render(lp, DEVICE)
    code = "\n".join(line for line in source.splitlines() if not line.startswith("/*"))
    assert code.count(" = sqrt(") == 40


# ---- the fuzzer's repro ---------------------------------------------------------------------
def test_loop_ir_of_a_chain_of_multi_use_ops_grows_by_a_constant_per_link():
    sizes = {}
    for depth in (2, 4, 8):
        x, loss, grad = chain(depth)
        fn = gn.compile([loss, grad], updates=gn.optim.SGD(lr=0.1).minimize(loss), backend="numpy")
        sizes[depth] = len(lower(fn.program)[0].to_text())
    step = (sizes[4] - sizes[2]) / 2
    assert 0 < step < 2_000
    assert abs(sizes[8] - sizes[4] - 4 * step) <= step


@pytest.mark.usefixtures("private_cache")
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
@pytest.mark.parametrize("depth", [4, 8])
def test_chain_of_multi_use_ops_compiles_and_matches_numpy(backend, depth):
    x, loss, grad = chain(depth)
    want = gn.compile([loss, grad], backend="numpy")()
    got = gn.compile([loss, grad], backend=backend)()
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
