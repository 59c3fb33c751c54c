"""Regression tests for issue #19 items 6, 9, 10, 11 and 12: negated literals in OpenCL C, OpenCL
float tanh saturation, optimizers skipping variables without a gradient path, malformed checkpoints,
and names with control characters."""
from __future__ import annotations

import copy
import json
import os
import warnings

import numpy as np
import pytest

import graphnet as gn
from graphnet import report, viz
from graphnet.layers import Dense, Input
from graphnet.model import load_model


def _opencl_runtime():
    """The OpenCL runtime, or skip the test where pyopencl or a device is absent."""
    from codegen.opencl import runtime
    try:
        runtime.list_devices()
    except RuntimeError as e:
        pytest.skip(f"no OpenCL: {e}")
    return runtime.runtime()


# ---- item 6: negation of a negative literal in OpenCL C ----------------------------------------
@pytest.mark.usefixtures("private_cache")
@pytest.mark.parametrize("backend", ["llvm", "opencl"])
def test_gradient_with_negated_negative_constant(backend):
    """d(-0.5 * sum(1 - x))/dx lowers to neg(-0.5): OpenCL once rendered it as `--0.5f`."""
    if backend == "opencl":
        _opencl_runtime()
    x = gn.placeholder("x", (None, 3))
    (g,) = gn.gradients(-0.5 * gn.sum(1 - x), [x])
    feed = np.arange(6, dtype=np.float32).reshape(2, 3)
    (got,) = gn.compile([g], backend=backend)(x=feed)
    np.testing.assert_array_equal(got, np.full((2, 3), 0.5, np.float32))


@pytest.mark.usefixtures("private_cache")
@pytest.mark.parametrize("dtype, value", [(np.float32, -0.5), (np.float64, -0.25), (np.int64, -5),
                                          (np.int32, -7), (np.int64, -2 ** 63 + 1), (np.float32, -np.inf)])
def test_negation_of_every_negative_literal_compiles(dtype, value):
    """The renderer's `neg` of any literal (and of expressions) is valid OpenCL C with the right value."""
    from codegen.loopir import Const, Op
    from codegen.opencl.render import PRELUDE, _KernelWriter, ctype
    rt = _opencl_runtime()
    dtype = np.dtype(dtype)
    if dtype == np.float64 and not rt.fp64:
        pytest.skip("no float64 on this OpenCL device")
    const = Const(value, dtype)
    writer = _KernelWriter.__new__(_KernelWriter)
    writer.double, writer.lines, writer.temp = False, [], 0
    twice = Op("neg", (Op("neg", (const,), dtype),), dtype)
    texts = [writer.op(Op("neg", (const,), dtype), [writer.value(const, {}, 0)]),
             writer.op(twice, [writer.op(twice.args[0], [writer.value(const, {}, 0)])])]
    t = ctype(dtype)
    head = "#pragma OPENCL EXTENSION cl_khr_fp64 : enable\n" if dtype == np.float64 else ""
    source = head + PRELUDE + f"__kernel void k(__global {t}* out) {{ out[0] = {texts[0]}; out[1] = {texts[1]}; }}"
    program = rt.cl.Program(rt.context, source).build()
    out = np.zeros(2, dtype)
    buf = rt.buffer(out.nbytes)
    program.k(rt.queue, (1,), None, buf)
    rt.cl.enqueue_copy(rt.queue, out, buf)
    np.testing.assert_array_equal(out, np.array([-value, value], dtype))


# ---- item 9: OpenCL tanh saturates to exactly +-1 ------------------------------------------------
@pytest.mark.usefixtures("private_cache")
@pytest.mark.parametrize("backend", ["llvm", "opencl"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_saturates_like_numpy(backend, dtype):
    if backend == "opencl":
        rt = _opencl_runtime()
        if dtype == np.float64 and not rt.fp64:
            pytest.skip("no float64 on this OpenCL device")
    big = [10.0, 20.0, 100.0, 1e30, np.inf] if dtype == np.float32 else [19.5, 20.0, 40.0, 1e300, np.inf]
    saturated = np.array(big + [-v for v in big], dtype)
    assert np.array_equal(np.tanh(saturated), np.sign(saturated))  # numpy rounds these to +-1
    moderate = np.array([-8.0, -3.0, -0.5, -1e-3, -0.0, 0.0, 1e-3, 0.5, 3.0, 8.0], dtype)
    x = gn.placeholder("x", (None,), dtype)
    y = gn.tanh(x)
    (g,) = gn.gradients(gn.sum(y), [x])
    fn = gn.compile([y, g], backend=backend)
    ys, gs = fn(x=saturated)
    np.testing.assert_array_equal(ys, np.tanh(saturated))
    np.testing.assert_array_equal(gs, np.zeros_like(saturated))  # a saturated unit passes no gradient
    ys, gs = fn(x=moderate)
    np.testing.assert_allclose(ys, np.tanh(moderate), rtol=4 * np.finfo(dtype).eps, atol=0)
    assert np.array_equal(np.signbit(ys), np.signbit(moderate))  # tanh(-0) is -0
    ys, gs = fn(x=np.array([np.nan, -np.nan], dtype))
    assert np.isnan(ys).all() and np.isnan(gs).all()


# ---- item 10: no gradient path, no update ---------------------------------------------------------
def _three_paths(dtype=np.float32):
    """w reaches the loss differentiably, a only through a comparison, s only through stop_gradient."""
    rng = np.random.default_rng(3)
    init = {k: rng.normal(size=(3,)).astype(dtype) for k in ("w", "a", "s")}
    x = rng.normal(size=(4, 3)).astype(dtype)
    return init, x


def _graphnet_steps(optimizer, init, x, var_list=None, steps=3):
    xs = gn.placeholder("x", (None, 3), x.dtype)
    v = {k: gn.variable(k, val) for k, val in init.items()}
    loss = (gn.sum(gn.tanh(xs * v["w"])) + gn.sum(gn.cast(v["a"] > 0.0, x.dtype))
            + gn.sum(xs * gn.stop_gradient(v["s"])))
    train = optimizer.minimize(loss, var_list=None if var_list is None else [v[k] for k in var_list])
    step = gn.compile([loss], updates=train, backend="numpy")
    for _ in range(steps):
        step(x=x)
    return {k: node.value for k, node in v.items()}, optimizer, train


def _torch_steps(cls, hyper, init, x, steps=3):
    torch = pytest.importorskip("torch")
    p = {k: torch.tensor(val, requires_grad=True) for k, val in init.items()}
    opt = cls(list(p.values()), **hyper)
    xt = torch.from_numpy(x)
    for _ in range(steps):
        opt.zero_grad()
        loss = (torch.tanh(xt * p["w"]).sum() + (p["a"] > 0).to(xt.dtype).sum() + (xt * p["s"].detach()).sum())
        loss.backward()
        opt.step()
    return {k: t.detach().numpy() for k, t in p.items()}


OPTIMIZERS = [("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.5}), ("AdamW", {"lr": 0.1, "weight_decay": 0.5})]


@pytest.mark.parametrize("name, hyper", OPTIMIZERS)
def test_variables_without_gradient_path_are_not_updated(name, hyper):
    """Not by weight decay, and no momentum or moment state is made for them."""
    init, x = _three_paths()
    got, opt, train = _graphnet_steps(getattr(gn.optim, name)(**hyper), init, x)
    np.testing.assert_array_equal(got["a"], init["a"])
    np.testing.assert_array_equal(got["s"], init["s"])
    assert not np.array_equal(got["w"], init["w"])
    written = {var.attrs["name"] for var, _ in train}
    assert not any(n == k or n.startswith(k + "/") for n in written for k in ("a", "s"))
    assert not any(v.attrs["name"].startswith(("a/", "s/")) for v in opt.variables())


@pytest.mark.parametrize("name, hyper", OPTIMIZERS)
def test_variables_without_gradient_path_match_torch(name, hyper):
    torch = pytest.importorskip("torch")
    init, x = _three_paths(np.float64)
    got, _, _ = _graphnet_steps(getattr(gn.optim, name)(**hyper), init, x)
    expected = _torch_steps(getattr(torch.optim, name), hyper, init, x)
    for k in ("w", "a", "s"):
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-12, atol=1e-14)


def test_explicit_var_list_skips_variables_without_gradient_path():
    init, x = _three_paths()
    with pytest.warns(UserWarning, match=r"'a'.*no gradient|no gradient.*'a'"):
        got, opt, train = _graphnet_steps(gn.optim.SGD(lr=0.1, weight_decay=0.5), init, x, var_list=["w", "a"])
    np.testing.assert_array_equal(got["a"], init["a"])
    assert not np.array_equal(got["w"], init["w"])
    assert [p.attrs["name"] for p in train.gradients] == ["w"]


def test_var_list_variable_the_loss_does_not_use_is_skipped_silently():
    """A shared parameter list often holds variables a given loss does not use: no warning."""
    a = gn.variable("a", np.ones(2, np.float32))
    unused = gn.variable("unused", np.ones(2, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train = gn.optim.SGD(0.5, weight_decay=0.1).minimize(gn.sum(a * a), var_list=[a, unused])
    assert list(train.gradients) == [a]


def test_only_non_differentiable_paths_is_an_error():
    a = gn.variable("a", np.ones(3, np.float32))
    loss = gn.sum(gn.stop_gradient(a)) + gn.sum(gn.cast(a > 0.0, np.float32))
    with pytest.raises(ValueError, match="no trainable variable"):
        gn.optim.SGD(lr=0.1).minimize(loss)


def test_gradients_can_report_unconnected_as_none():
    w = gn.variable("w", np.ones(3, np.float32))
    a = gn.variable("a", np.ones(3, np.float32))
    loss = gn.sum(w * w) + gn.sum(gn.stop_gradient(a))
    gw, ga = gn.gradients(loss, [w, a], unconnected="none")
    assert ga is None and gw is not None
    assert gn.gradients(loss, [w, a])[1] is not None  # the default stays zeros


# ---- item 11: malformed checkpoints ----------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    gn.set_seed(0)
    model = gn.Sequential([Input((4,)), Dense(3, activation="relu"), Dense(2)])
    model.compile("adam", "mse", backend="numpy")
    path = tmp_path / "ok.npz"
    model.save(path)
    return model, path


def _with_config(tmp_path, path, config, name="bad.npz", **extra):
    arrays = dict(np.load(path))
    arrays["config"] = np.array(config if isinstance(config, str) else json.dumps(config))
    arrays.update(extra)
    out = tmp_path / name
    np.savez(out, **arrays)
    return out


def test_npy_file_is_a_clear_value_error(saved, tmp_path):
    model, _ = saved
    npy = tmp_path / "w.npy"
    np.save(npy, np.zeros(3))
    for load in (model.load_weights, load_model):
        with pytest.raises(ValueError, match=r"w\.npy.*\.npy array.*not an \.npz"):
            load(npy)


def _mutations():
    def drop_layers(c):
        del c["layers"]

    def unknown_kwarg(c):
        c["layers"][1]["config"]["bogus"] = 1

    def dangling(c):
        c["layers"][2]["inbound"] = ["nowhere"]

    def missing_kwarg(c):
        del c["layers"][1]["config"]["units"]

    def bad_units(c):
        c["layers"][1]["config"]["units"] = "three"

    def layer_not_dict(c):
        c["layers"][1] = ["Dense"]

    def unknown_output(c):
        c["outputs"] = ["ghost"]

    def bad_optimizer_kwarg(c):
        c["compile"]["optimizer"]["config"]["warp"] = 9

    return [("a list", lambda c: [1, 2], r"config is a list, not an object"),
            ("no layers", drop_layers, r"'layers'"),
            ("unknown kwarg", unknown_kwarg, r"layer 'dense'.*Dense.*bogus"),
            ("dangling inbound", dangling, r"layer 'dense_1'.*'nowhere'"),
            ("missing kwarg", missing_kwarg, r"layer 'dense'.*units"),
            ("bad units", bad_units, r"layer 'dense'.*units"),
            ("layer not a dict", layer_not_dict, r"layers\[1\]"),
            ("unknown output", unknown_output, r"'ghost'"),
            ("bad optimizer kwarg", bad_optimizer_kwarg, r"optimizer.*warp")]


@pytest.mark.parametrize("label, mutate, message", _mutations(), ids=[m[0] for m in _mutations()])
def test_malformed_model_config_is_a_clear_value_error(saved, tmp_path, label, mutate, message):
    model, path = saved
    config = copy.deepcopy(model.get_config())
    config = mutate(config) or config
    bad = _with_config(tmp_path, path, config)
    with pytest.raises(ValueError, match=message) as info:
        load_model(bad)
    assert "bad.npz" in str(info.value)


def test_config_that_is_not_json_is_a_clear_value_error(saved, tmp_path):
    _, path = saved
    with pytest.raises(ValueError, match=r"bad\.npz.*config.*JSON"):
        load_model(_with_config(tmp_path, path, "{not json"))


def test_huge_layer_is_refused_before_allocating(saved, tmp_path):
    """Dense(units=10**9) between 4 inputs and 2 outputs asks for 7e9 parameters: refused with the count."""
    model, path = saved
    config = copy.deepcopy(model.get_config())
    config["layers"][1]["config"]["units"] = 10 ** 9
    bad = _with_config(tmp_path, path, config)
    with pytest.raises(ValueError, match=r"bad\.npz.*7,000,000,002 parameters.*2,147,483,648"):
        load_model(bad)


def test_config_disagreeing_with_stored_weights_is_refused_before_building(saved, tmp_path):
    model, path = saved
    config = copy.deepcopy(model.get_config())
    config["layers"][1]["config"]["units"] = 5000
    bad = _with_config(tmp_path, path, config)
    with pytest.raises(ValueError, match=r"bad\.npz: weight 'dense/kernel' has shape \(4, 5000\) in the model "
                                         r"config but \(4, 3\) in the stored weights"):
        load_model(bad)


def test_array_header_larger_than_its_data_is_refused(tmp_path):
    """An .npz member whose header claims more elements than its bytes hold is refused before
    numpy allocates the claimed size."""
    import io
    import zipfile
    from graphnet.checkpoint import load_npz
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (999_999_999_999,)})
    member.write(np.zeros(4, np.float64).tobytes())
    path = tmp_path / "lying.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("big.npy", member.getvalue())
    with pytest.raises(ValueError, match=r"lying\.npz.*'big'.*999,999,999,999 elements"):
        load_npz(path)


# ---- item 12: names with control characters; odd printable names are escaped -----------------------
@pytest.mark.parametrize("bad", ["x\x00y", "tab\there", "line\nbreak", "del\x7f", "surrogate\udcff"])
def test_control_characters_in_names_are_refused(bad):
    with pytest.raises(ValueError, match="control character|surrogate"):
        gn.placeholder(bad, (None, 2))
    with pytest.raises(ValueError, match="control character|surrogate"):
        gn.variable(bad, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="control character|surrogate"):
        Dense(2, name=bad)


def test_non_string_names_are_refused():
    with pytest.raises(TypeError, match="name"):
        gn.placeholder(3, (None, 2))


def test_odd_printable_names_survive_dump_and_report(tmp_path):
    odd = 'q"uo\\te<&>{}|;\\n[x]'
    x = gn.placeholder(odd, (None, 2))
    w = gn.variable("w/" + odd, np.ones((2, 1), np.float32))
    loss = gn.sum(x @ w)
    train = gn.optim.SGD(lr=0.1).minimize(loss)
    fn = gn.compile([loss], updates=train, backend="numpy")
    fn(**{odd: np.ones((3, 2), np.float32)})
    out = fn.dump(str(tmp_path / "dump"))
    names = os.listdir(out)
    assert "report.html" in names and "graph.dot" in names
    if viz.to_svg("digraph { a }") is not None:
        assert "graph.svg" in names
        svg = open(os.path.join(out, "graph.svg"), encoding="utf-8").read()
        assert "q&quot;uo\\te&lt;&amp;&gt;{}|;\\n[x]" in svg


def test_quote_escapes_control_characters():
    """Whatever reaches DOT text (kernel names, attributes) carries no raw control character."""
    text = viz.quote("a\x00b\rc\td\x1b\ne\udcff")
    assert text.isprintable() and text.startswith('"') and text.endswith('"')
    assert "\\n" in text  # the newline is still DOT's line break
    text.encode("utf-8")
    html = report._escape("<a\x00b>\tc\nd\udcff")
    assert html == "&lt;a\\x00b&gt;\tc\nd\\udcff"  # generated code keeps its tabs and newlines


def test_a_variable_reached_only_through_sign_gets_a_zero_gradient_like_torch():
    """torch's sign() has a zero gradient (not None), so weight decay still moves such a parameter."""
    w = gn.variable("w_sign", np.array([0.5, -2.0], np.float32))
    loss = gn.sum(gn.sign(w))
    (g,) = gn.gradients(loss, [w], unconnected="none")
    assert g is not None
    step = gn.compile([loss], updates=gn.optim.SGD(lr=0.1, weight_decay=0.5).minimize(loss), backend="numpy")
    step()
    np.testing.assert_allclose(w.value, [0.5 - 0.1 * 0.25, -2.0 + 0.1 * 1.0], rtol=1e-6)
