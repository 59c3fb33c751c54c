"""Compile time of threaded kernels (issue #19): graphs whose threaded kernels once kept LLVM's loop
vectorizer busy for minutes compile, in a subprocess with a timeout so that a hang fails the test
rather than stalling the run, and compute the right values; a threaded elementwise kernel vectorizes
without runtime alias checks, as its serial form does."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphnet as gn
from codegen.llvm import parallel

needs_runtime = pytest.mark.skipif(not parallel.load_runtime(), reason=str(parallel.runtime_failure()))

W = 0.3
BATCH = 300_000  # above schedule.PARALLEL_MIN_FAST, so the threaded loop runs
COMPILE_TIMEOUT_S = 60

# d/dw of a chain of elementwise ops on a broadcast scalar: its kernel stores loop-invariant values.
_PROGRAM = textwrap.dedent("""
    import json, sys, numpy as np, graphnet as gn
    which, w0, batch = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    x = gn.placeholder("x", (None,))
    w = gn.variable("w", np.float32(w0))
    b = gn.broadcast_to(w, (None,))
    if which == "sigmoid_sqrt_exp_tanh":
        y = gn.sigmoid(gn.sqrt(gn.exp(gn.tanh(b))))
    else:
        y = -1.68 / (gn.softplus(b) + 1) ** 0.5
    loss = gn.sum(y * x)
    (grad,) = gn.gradients(loss, [w])
    fn = gn.compile([loss, grad], backend="llvm")
    feed = np.random.default_rng(0).uniform(0, 1, batch).astype(np.float32)
    values = [float(v) for v in fn(x=feed)]
    print(json.dumps({"threads": fn.executable.threads, "values": values,
                      "sum_x": float(feed.astype(np.float64).sum())}))
""")


def _expected(which: str, w: float) -> tuple[float, float]:
    """(y, dy/dw) of the per-element function, in float64."""
    if which == "sigmoid_sqrt_exp_tanh":
        t = np.tanh(w)
        e = np.exp(t)
        s = np.sqrt(e)
        y = 1 / (1 + np.exp(-s))
        return y, y * (1 - y) / (2 * s) * e * (1 - t * t)
    softplus = np.log1p(np.exp(w))
    return -1.68 / np.sqrt(softplus + 1), 0.84 * (softplus + 1) ** -1.5 / (1 + np.exp(-w))


@needs_runtime
@pytest.mark.parametrize("which", ["sigmoid_sqrt_exp_tanh", "softplus_power"])
def test_threaded_kernel_on_a_broadcast_scalar_compiles(tmp_path, which):
    env = dict(os.environ, GRAPHNET_NUM_THREADS="2", GRAPHNET_CACHE_DIR=str(tmp_path))
    try:
        done = subprocess.run([sys.executable, "-c", _PROGRAM, which, str(W), str(BATCH)], env=env,
                              capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"compiling the {which} graph on 2 threads did not finish in {COMPILE_TIMEOUT_S} s")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["threads"] == 2
    y, dy = _expected(which, float(np.float32(W)))
    loss, grad = result["values"]
    np.testing.assert_allclose(loss, y * result["sum_x"], rtol=1e-4)
    np.testing.assert_allclose(grad, dy * result["sum_x"], rtol=1e-4)


@needs_runtime
def test_threaded_elementwise_kernel_needs_no_runtime_alias_checks(monkeypatch, tmp_path):
    """The threaded loop sees its buffers as `noalias`, so it vectorizes without run-time alias checks."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "2")
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    x = gn.placeholder("x", (None,))
    z = gn.placeholder("z", (None,))
    h = x * z + gn.exp(x)
    fn = gn.compile([h, h - z], backend="llvm")
    backend = fn.executable
    assert backend.threads == 2 and len(backend.lp.kernels) == 1 and ".par" in backend.ir_text
    optimized = str(backend.compiler.optimize(backend.ir_text))
    assert re.search(r"store <\d+ x float>", optimized), "the threaded loop is not vectorized"
    assert "vector.memcheck" not in optimized
    feed_x = np.linspace(-2, 2, BATCH, dtype=np.float32)
    feed_z = np.linspace(3, -1, BATCH, dtype=np.float32)
    a, b = fn(x=feed_x, z=feed_z)
    expected = feed_x * feed_z + np.exp(feed_x)
    np.testing.assert_allclose(a, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, expected - feed_z, rtol=1e-5, atol=1e-5)


def test_loop_ir_of_a_chain_of_multi_use_ops_grows_linearly():
    """silu(elu(.)) three deep under SGD: the loop IR must stay linear in the size of the graph."""
    from codegen.lower import lower
    x = gn.variable("chain_x", np.ones((3, 4), np.float32))
    h = x
    for _ in range(3):
        h = gn.silu(gn.elu(h, 0.3))
    loss = gn.mean(h)
    fn = gn.compile([loss], updates=gn.optim.SGD(lr=0.1).minimize(loss), backend="numpy")
    lp, _ = lower(fn.program)
    assert len(lp.to_text()) < 50_000


def _vectorized_functions(optimized: str) -> list[str]:
    """The functions of an optimised module that hold a vectorized loop."""
    functions = re.split(r"^define ", optimized, flags=re.M)[1:]
    return [re.match(r'[^@]*@"?([\w.]+)', f).group(1) for f in functions if re.search(r"^vector\.body", f, re.M)]


@needs_runtime
@pytest.mark.parametrize("kind", ["elementwise", "gemm epilogue"])
def test_a_threaded_loop_nest_is_optimised_and_emitted_once(monkeypatch, tmp_path, kind):
    """A threaded kernel's nest (its slice's `_range`, a GEMM's row epilogue `_rows`) is one function
    that the region's thread entry and its serial path both call: inlined into each, LLVM would
    optimise, vectorize and emit it twice."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "2")
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    x = gn.placeholder("x", (None, 96))
    w = rng.standard_normal((96, 128)).astype(np.float32)
    h = gn.relu(x @ gn.variable("w", w) + 1.0) if kind == "gemm epilogue" else x * 2.0 + gn.exp(x)
    fn = gn.compile([h], backend="llvm")
    backend = fn.executable
    assert backend.threads == 2 and len(backend.lp.kernels) == 1 and ".par" in backend.ir_text
    suffix = "_rows" if kind == "gemm epilogue" else "_range"
    assert _vectorized_functions(str(backend.compiler.optimize(backend.ir_text))) == [backend.lp.kernels[0].name
                                                                                      + suffix]
    feed = rng.standard_normal((64, 96)).astype(np.float32)
    expected = np.maximum(feed @ w + 1.0, 0) if kind == "gemm epilogue" else feed * 2.0 + np.exp(feed)
    np.testing.assert_allclose(fn(x=feed)[0], expected, rtol=1e-4, atol=1e-4)


def _train_twice(feed: np.ndarray) -> tuple[list, np.ndarray, list[str], str]:
    """Two Adam steps of a row-normalising model (threaded elementwise kernels and GEMM epilogues,
    serial row reductions): the losses, the updated weights, the kernels' schedules, the LLVM IR."""
    w0 = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32) * 0.1
    with gn.Graph():
        x = gn.placeholder("x", (None, 64))
        w = gn.variable("w", w0)
        h = gn.tanh(x @ w)
        mu = gn.mean(h, axis=1, keepdims=True)
        z = (h - mu) / gn.sqrt(gn.mean((h - mu) * (h - mu), axis=1, keepdims=True) + 1e-5)
        loss = gn.mean(gn.softmax(z) * gn.log(gn.exp(z) + 1.0))
        fn = gn.compile([loss], updates=gn.optim.Adam(1e-2).minimize(loss), backend="llvm")
        losses = [fn(x=feed)[0] for _ in range(2)]
        return losses, w.value, [str(k.schedule) for k in fn.executable.lp.kernels], fn.executable.ir_text


@needs_runtime
def test_sharing_a_threaded_nest_keeps_the_steps_bits(monkeypatch, tmp_path):
    """The step whose threaded nests are called (not inlined) computes the bits of the step compiled
    with them inlined, as before: losses and updated weights, on two threads."""
    import codegen.llvm.render as render
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "2")
    feed = np.random.default_rng(0).standard_normal((8192, 64)).astype(np.float32)
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path / "shared"))
    shared = _train_twice(feed)
    assert any("parallel over" in s for s in shared[2])
    render_shared = render.Renderer.render

    def render_inlined(self) -> str:
        return re.sub(r'^(define internal void @"[\w.]+_(?:range|rows)"\([^)]*\)) noinline', r"\1",
                      render_shared(self), flags=re.M)
    monkeypatch.setattr(render.Renderer, "render", render_inlined)
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path / "inlined"))
    inlined = _train_twice(feed)
    nest = re.compile(r'^define internal void @"k\d+_\w+_(range|rows)"\(.*\) noinline$', re.M)
    assert nest.search(shared[3]) and not nest.search(inlined[3])
    assert [a.tobytes() for a in shared[0]] == [a.tobytes() for a in inlined[0]]
    assert shared[1].tobytes() == inlined[1].tobytes()


def _attributes(ir_text: str) -> dict[str, str]:
    """Each defined function's name and the rest of its `define` line (its attributes)."""
    return {m.group(1): m.group(2) for m in re.finditer(r'^define [^@]*@"([\w.]+)"\([^)]*\)(.*)$', ir_text, re.M)}


@needs_runtime
def test_glue_functions_skip_the_optimiser_and_loop_nests_do_not(monkeypatch, tmp_path):
    """The functions that only set up and make calls (a threaded kernel's wrapper, its region's thread
    entry, the profiled step) are `optnone`, a threaded kernel's body (its region's set-up) is inlined
    into its wrapper; the loop nests, a serial kernel (its body inlined into its wrapper) and the entry
    point are optimised."""
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "2")
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    _, _, schedules, text = _train_twice(np.random.default_rng(0).standard_normal((8192, 64)).astype(np.float32))
    attributes = _attributes(text)
    glue = {name for name, rest in attributes.items() if "optnone" in rest}
    assert all("noinline" in attributes[name] and "alwaysinline" not in attributes[name] for name in glue)
    threaded = [name for name in attributes if name.endswith(".par.omp")]
    assert threaded and "graphnet_step_profiled" in glue and "graphnet_step" not in glue
    for omp in threaded:
        kernel = omp[:-len(".par.omp")]
        assert {kernel, omp} <= glue and "alwaysinline" in attributes[kernel + "_body"]
    nests = [name for name in attributes if name.endswith(("_range", "_rows"))]
    assert nests and not glue & set(nests)
    wrappers = [name for name in attributes if re.fullmatch(r"k\d+_\w+", name)
                and not name.endswith(("_body", "_range", "_rows"))]
    serial = [name for name in wrappers if name + ".par.omp" not in attributes]
    assert serial and not glue & set(serial)
    assert any("one thread" in s for s in schedules)


@needs_runtime
def test_glue_without_optimisation_keeps_the_steps_bits(monkeypatch, tmp_path):
    """The step whose glue functions are `optnone` computes the bits of the step optimised whole."""
    import codegen.llvm.render as render
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "2")
    feed = np.random.default_rng(0).standard_normal((8192, 64)).astype(np.float32)
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path / "glue"))
    glue = _train_twice(feed)
    monkeypatch.setattr(render, "is_glue", lambda fn, known: False)
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path / "whole"))
    whole = _train_twice(feed)
    assert "optnone" in glue[3] and "optnone" not in whole[3]
    assert [a.tobytes() for a in glue[0]] == [a.tobytes() for a in whole[0]]
    assert glue[1].tobytes() == whole[1].tobytes()


def test_is_glue_tells_loops_and_floating_point_from_calls_and_branches():
    """`is_glue`: a loop (a cycle however its blocks are laid out) or a floating-point value makes a
    function work, branches that only join do not; a call to an inlinable non-glue function is work."""
    from llvmlite import ir

    from codegen.llvm.render import is_glue
    module = ir.Module()
    i64 = ir.IntType(64)

    def function(name: str, args: list | None = None) -> tuple[ir.Function, ir.IRBuilder]:
        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), args or [i64]), name)
        return fn, ir.IRBuilder(fn.append_basic_block("entry"))

    joins, b = function("joins")  # the join block laid out before a block that branches to it
    join, late = joins.append_basic_block("join"), joins.append_basic_block("late")
    b.cbranch(b.icmp_signed(">", joins.args[0], ir.Constant(i64, 1)), late, join)
    b.position_at_end(join)
    b.ret_void()
    b.position_at_end(late)
    b.call(ir.Function(module, ir.FunctionType(ir.VoidType(), []), "external"), [])
    b.branch(join)
    loops, b = function("loops")
    head, done = loops.append_basic_block("head"), loops.append_basic_block("done")
    b.branch(head)
    b.position_at_end(head)
    b.cbranch(b.icmp_signed(">", b.add(loops.args[0], ir.Constant(i64, 1)), ir.Constant(i64, 9)), done, head)
    b.position_at_end(done)
    b.ret_void()
    floats, b = function("floats", [ir.PointerType()])
    value = b.load(floats.args[0], typ=ir.FloatType())
    b.store(b.fadd(value, value), floats.args[0])
    b.ret_void()
    calls, b = function("calls", [ir.PointerType()])
    b.call(floats, [calls.args[0]])
    b.ret_void()
    known: dict = {}
    assert is_glue(joins, known) and not is_glue(loops, known) and not is_glue(floats, known)
    assert not is_glue(calls, known)
    floats.attributes.add("noinline")
    assert is_glue(calls, {})
