"""The OpenCL backend against the numpy reference: every registry op (forward and gradients), every
optimizer configuration, the small grid model's training run, dropout masks, variable coherence,
partial batches, float64, the disk cache and the error messages.

pocl compiles each kernel on its first launch (~0.1-0.2 s here), so the registry cases share one
program per test family: one graph holds every example, and each case compares its own fetches.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import graphnet as gn
from codegen.cache import OPENCL_BINARIES
from codegen.opencl import runtime
from graphnet.errors import NumericsError
from graphnet.bench.grid import build_grid_model
from graphnet.ops import REGISTRY
from graphnet.bench.peers import GRID, grid_data
from helpers import apply_op, concrete, example_inputs, float_inputs, input_dtypes

try:
    runtime.list_devices()
except RuntimeError as e:
    pytest.skip(f"no OpenCL: {e}", allow_module_level=True)

CASES = [(name, i) for name, op in sorted(REGISTRY.items()) for i, _ in enumerate(op.examples)]
CASE_IDS = [f"{name}-{i}" for name, i in CASES]
BATCHES = (3, 1, 17)
OPTIMIZERS = [  # every optimizer class, each with most of its options (test_optim checks them all on numpy)
    ("SGD", {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.05}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.5}),
    ("Momentum", {"lr": 0.05, "nesterov": True}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.01, "initial_accumulator_value": 0.1}),
    ("Adadelta", {"lr": 0.5, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.01}),
    ("RMSProp", {"lr": 0.01, "alpha": 0.9, "centered": True, "momentum": 0.5, "weight_decay": 0.01}),
    ("Adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.05}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01, "clipnorm": 0.5}),
]


pytestmark = pytest.mark.usefixtures("private_cache")  # compile cold, in a cache of its own


def _tolerance(dtype) -> dict:
    return dict(rtol=2e-5, atol=2e-6) if np.dtype(dtype) == np.float32 else dict(rtol=1e-11, atol=1e-12)


def _both(fetches, updates=None, **options):
    return [gn.compile(fetches, updates=updates, backend=b, **options) for b in ("numpy", "opencl")]


# ---- the op registry --------------------------------------------------------------------------
def _case_graph(name: str, index: int, dtype) -> tuple[list, gn.Node]:
    """Placeholders "<case>/x<i>" with the example's shapes and the op applied to them."""
    op = REGISTRY[name]
    example = op.examples[index]
    xs = [gn.placeholder(f"{name}{index}/x{i}", shape, dt)
          for i, (shape, dt) in enumerate(zip(example.shapes, input_dtypes(example, dtype)))]
    return xs, apply_op(op, xs, example.attrs)


def _case_feeds(name: str, index: int, xs, dtype, batch: int) -> dict:
    arrays = example_inputs(REGISTRY[name], REGISTRY[name].examples[index], dtype, batch=batch, seed=batch)
    return {x.attrs["name"]: a for x, a in zip(xs, arrays)}


def _run_all(build, dtype) -> dict:
    """Compile every case's fetches (`build(name, index)` -> (feeds(batch), fetch list)) into one
    function per backend; return case -> [(expected, got) per fetch and batch]."""
    with gn.Graph():
        gn.placeholder("batch", (None,))  # every batched result has a batched feed to size it
        cases = {case: build(*case) for case in CASES}
        fetches = [f for _, fs in cases.values() for f in fs]
        ref, fn = _both(fetches)
    pairs = {case: [] for case in CASES}
    for batch in BATCHES:
        feeds = {"batch": np.zeros(batch, np.float32)}
        for make_feeds, _ in cases.values():
            feeds.update(make_feeds(batch))
        expected, got = iter(ref(**feeds)), iter(fn(**feeds))
        for case, (_, fs) in cases.items():
            pairs[case] += [(next(expected), next(got)) for _ in fs]
    return pairs


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["float32", "float64"])
def forward(request):
    dtype = request.param

    def build(name, index):
        xs, y = _case_graph(name, index, dtype)
        return (lambda batch: _case_feeds(name, index, xs, dtype, batch)), [y]
    return dtype, _run_all(build, dtype)


@pytest.fixture(scope="module")
def backward():
    """Gradients of sum(y * w) for every differentiable case with a float result (float64)."""
    dtype = np.float64

    def build(name, index):
        op, example = REGISTRY[name], REGISTRY[name].examples[index]
        xs, y = _case_graph(name, index, dtype)
        if not op.differentiable or y.dtype.kind != "f":
            return (lambda batch: {}), []
        w = gn.placeholder(f"{name}{index}/w", y.shape, y.dtype)
        grads = [g for g in gn.gradients(gn.sum(y * w), [xs[i] for i in float_inputs(example)]) if g is not None]

        def feeds(batch):
            weights = np.random.default_rng(batch).uniform(0.5, 1.5, concrete(y.shape, batch)).astype(y.dtype)
            return {**_case_feeds(name, index, xs, dtype, batch), w.attrs["name"]: weights}
        return feeds, grads
    return _run_all(build, dtype)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_matches_numpy(forward, case):
    dtype, pairs = forward
    for expected, got in pairs[case]:
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_allclose(got, expected, **_tolerance(dtype))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradients_match_numpy(backward, case):
    if not backward[case]:
        pytest.skip("no gradient")
    for expected, got in backward[case]:
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, **_tolerance(np.float64))


def test_matmul_tiles_with_ragged_edges():
    """Sizes that fill no tile evenly, both operands transposed in the gradients, a fused epilogue."""
    with gn.Graph():
        x = gn.placeholder("x", (None, 37))
        w = gn.variable("w", np.random.default_rng(0).normal(size=(37, 130)).astype(np.float32))
        y = gn.tanh(x @ w + 1.0)
        ref, fn = _both([y] + gn.gradients(gn.sum(y * y), [x, w]))
    data = np.random.default_rng(1).normal(size=(70, 37)).astype(np.float32)
    for e, o in zip(ref(x=data), fn(x=data)):
        np.testing.assert_allclose(o, e, rtol=1e-4, atol=1e-4)


# ---- optimizers ---------------------------------------------------------------------------------
def test_every_optimizer_matches_numpy():
    """Each configuration trains its own copy of a small tanh/softmax model; all
    of them run in one function. Losses and every variable (parameters and state) after 5 steps."""
    rng = np.random.default_rng(0)
    init = {"W1": rng.normal(0, 0.5, (4, 6)), "b1": rng.normal(0, 0.1, 6), "W2": rng.normal(0, 0.5, (6, 3)),
            "b2": np.zeros(3)}
    X = rng.normal(size=(16, 4)).astype(np.float32)
    Y = rng.integers(0, 3, 16).astype(np.int32)
    with gn.Graph() as g:
        x, y = gn.placeholder("x", (None, 4)), gn.placeholder("y", (None,), np.int32)
        losses, updates = [], gn.optim.Updates()
        for c, (name, hyper) in enumerate(OPTIMIZERS):
            p = {k: gn.variable(f"c{c}/{k}", v.astype(np.float32)) for k, v in init.items()}
            loss = gn.losses.softmax_cross_entropy(gn.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"], y)
            losses.append(loss)
            updates = updates + getattr(gn.optim, name)(**hyper).minimize(loss)
        ref, fn = _both(losses, updates)
    variables = list(g.variables.values())
    start = {v: v.value for v in variables}
    runs = {}
    for backend, f in (("numpy", ref), ("opencl", fn)):
        for v in variables:
            v.assign(start[v])
        runs[backend] = ([f(x=X, y=Y) for _ in range(5)], {v.name: v.value for v in variables})
    (ref_losses, ref_vars), (got_losses, got_vars) = runs["numpy"], runs["opencl"]
    for (name, hyper), e, o in zip(OPTIMIZERS, np.array(ref_losses).T, np.array(got_losses).T):
        np.testing.assert_allclose(o, e, rtol=1e-5, err_msg=f"{name} {hyper}")
    for key, e in ref_vars.items():
        np.testing.assert_allclose(got_vars[key], e, rtol=1e-4, atol=1e-6, err_msg=key)


# ---- a training run, batches, coherence -------------------------------------------------------
@pytest.fixture(scope="module")
def small_grid():
    """The benchmark's small model (64-128-10 b64, relu, softmax CE, Adam) on both backends."""
    ref, ocl = build_grid_model("small", backend="numpy"), build_grid_model("small", backend="opencl")
    return ref, ocl


def _params(model) -> dict:
    return {name: node.value for name, node in model.graph.variables.items()}


def test_small_grid_training_matches_numpy(small_grid):
    ref, ocl = small_grid
    x, y = grid_data(GRID["small"])
    ref_losses = [float(ref.step(x=x, y=y)[0]) for _ in range(20)]
    ocl_losses = [float(ocl.step(x=x, y=y)[0]) for _ in range(20)]
    assert ref_losses[-1] < ref_losses[0]
    np.testing.assert_allclose(ocl_losses, ref_losses, rtol=1e-5)
    ref_params, ocl_params = _params(ref), _params(ocl)
    for name, value in ref_params.items():
        np.testing.assert_allclose(ocl_params[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_partial_batches_and_growing_batches(small_grid):
    """The last, smaller batch of an epoch, then a batch larger than the arena was planned for."""
    ref, ocl = small_grid
    x, y = grid_data(GRID["small"], seed=1)
    big_x, big_y = np.concatenate([x, x, x]), np.concatenate([y, y, y])
    for xb, yb in ((x[:17], y[:17]), (x, y), (big_x, big_y), (x[:1], y[:1])):
        np.testing.assert_allclose(ocl.step(x=xb, y=yb)[0], ref.step(x=xb, y=yb)[0], rtol=1e-5)
    ref_params, ocl_params = _params(ref), _params(ocl)
    for name, value in ref_params.items():
        np.testing.assert_allclose(ocl_params[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_value_and_assign_stay_coherent_with_the_device():
    with gn.Graph():
        w = gn.variable("w", np.arange(4, dtype=np.float32))
        x = gn.placeholder("x", (None, 4))
        step = gn.compile(gn.sum(x * w), updates=[(w, w * 2.0)], backend="opencl")
        read = gn.compile(w + 0.0, backend="opencl")
    ones = np.ones((2, 4), np.float32)
    assert float(step(x=ones)) == 2 * 6.0
    np.testing.assert_array_equal(w.value, [0, 2, 4, 6])  # pulled from the device
    w.assign(np.full(4, 10, np.float32))  # pushed to the device
    assert float(step(x=ones)) == 2 * 40.0
    np.testing.assert_array_equal(read(x=ones), [20, 20, 20, 20])  # another function, same device copy
    np.testing.assert_array_equal(w.value, [20, 20, 20, 20])


def test_dropout_masks_are_identical_to_numpy():
    with gn.Graph() as g:
        x = gn.placeholder("x", (None, 300))
        fetch = gn.dropout(x, 0.3)
        ref, fn = _both([fetch, gn.dropout(fetch, 0.5)], training=True)
    step = g.variables["rng/step"]  # shared (and kept coherent): both functions must start from one value
    data = np.random.default_rng(0).uniform(1, 2, (50, 300)).astype(np.float32)
    for _ in range(3):  # the step counter advances: new masks each call, the same on both
        start = step.value
        expected = ref(x=data)
        step.assign(start)
        got = fn(x=data)
        for e, o in zip(expected, got):
            np.testing.assert_array_equal(o == 0, e == 0)
            np.testing.assert_allclose(o, e, rtol=1e-6)
        assert 0.2 < (expected[0] == 0).mean() < 0.4


def test_float64_training_step():
    with gn.Graph() as g:
        x, y = gn.placeholder("x", (None, 3), np.float64), gn.placeholder("y", (None, 1), np.float64)
        w = gn.variable("w", np.full((3, 1), 0.5))
        loss = gn.losses.mse(x @ w, y)
        ref, fn = _both([loss], gn.optim.RMSProp(0.01).minimize(loss))
    data = np.random.default_rng(0).normal(size=(9, 4))
    start = {name: v.value for name, v in g.variables.items()}  # the weight and the optimizer state
    runs = []
    for f in (ref, fn):
        for name, value in start.items():
            g.variables[name].assign(value)
        runs.append([f(x=data[:, :3], y=data[:, 3:])[0] for _ in range(4)] + [w.value])
    for e, o in zip(*runs):
        assert o.dtype == np.float64
        np.testing.assert_allclose(o, e, rtol=1e-12)


def test_float64_without_device_support_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(runtime.runtime(), "fp64", False)
    with gn.Graph():
        x = gn.placeholder("x", (None,), np.float64)
        with pytest.raises(RuntimeError, match="float64.*cl_khr_fp64"):
            gn.compile(x * 2.0, backend="opencl")


def test_check_numerics_names_the_node():
    with gn.Graph():
        x = gn.placeholder("x", (None,))
        fn = gn.compile(gn.sqrt(x - 1.0) * 2.0, backend="opencl", check_numerics=True)
    np.testing.assert_allclose(fn(x=np.array([5.0], np.float32)), [4.0])
    with pytest.raises(NumericsError, match="sqrt"):
        fn(x=np.array([0.0], np.float32))


# ---- cache, dumps, devices, errors -------------------------------------------------------------
def _tiny():
    with gn.Graph():
        x = gn.placeholder("x", (None, 2))
        return gn.compile(gn.tanh(x).sum(axis=1), backend="opencl")


def test_pocl_builds_are_left_to_its_own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    fn = _tiny()
    if fn.executable.rt.device.platform.name not in runtime.SELF_CACHING:
        pytest.skip("not pocl")
    assert not any(f.endswith(".bin") for _, _, fs in os.walk(OPENCL_BINARIES.directory()) for f in fs)


def test_programs_are_cached_on_disk_and_damaged_entries_rebuilt(monkeypatch):
    monkeypatch.setattr(runtime, "SELF_CACHING", set())  # pocl's binaries too, on this small program
    first = _tiny()
    entries = [os.path.join(d, f) for d, _, fs in os.walk(OPENCL_BINARIES.directory()) for f in fs if f.endswith(".bin")]
    assert len(entries) >= 1 and first.executable.cache_hit is False
    assert _tiny().executable.cache_hit is True
    for path in entries:
        with open(path, "r+b") as f:
            f.seek(-4, os.SEEK_END)
            f.write(b"XXXX")
    again = _tiny()
    assert again.executable.cache_hit is False
    np.testing.assert_allclose(again(x=np.ones((2, 2), np.float32)), np.tanh(1.0) * 2, rtol=1e-6)


def test_dump_writes_the_opencl_source(tmp_path):
    fn = _tiny()
    fn.dump(str(tmp_path))
    names = {p.name: p for p in tmp_path.rglob("*")}
    assert "kernels.cl" in names and "loopir.txt" in names
    text = names["kernels.cl"].read_text()
    assert "__kernel void" in text and "rendered for" in text


def test_device_choice_by_index_name_and_environment(monkeypatch):
    index, device = runtime.list_devices()[0]
    assert runtime.choose_device(index).int_ptr == device.int_ptr
    assert runtime.choose_device(device.name[:6].upper()).name == device.name
    monkeypatch.setenv("GRAPHNET_OPENCL_DEVICE", "no such device")
    with pytest.raises(RuntimeError, match="no OpenCL device matches 'no such device'.*" + index):
        runtime.choose_device()


def test_missing_pyopencl_or_platform_says_what_to_install(monkeypatch):
    import pyopencl
    monkeypatch.setattr(pyopencl, "get_platforms", lambda: [])
    with pytest.raises(RuntimeError, match="no OpenCL platform.*pocl-opencl-icd"):
        _tiny()
    monkeypatch.setitem(__import__("sys").modules, "pyopencl", None)
    with pytest.raises(RuntimeError, match=r"pyopencl.*pip install graphnet\[opencl\]"):
        _tiny()
