"""OpenCL's tiled convolutions (the implicit GEMM form of codegen/opencl/schedule.py) against the numpy
reference: the forward conv and both gradients at odd shapes that no tile divides, every padding form,
strides, dilations, both layouts, partial batches, float32 and float64; fused epilogues (bias + relu,
the optimizer update in a filter gradient's kernel); the lenet and cifar training steps.

pocl compiles each kernel on first launch, so each family's cases share one compiled function.
"""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from codegen.opencl import runtime
from graphnet.bench.convnets import NETS, data, graphnet_function, initial_weights

try:
    runtime.list_devices()
except RuntimeError as e:
    pytest.skip(f"no OpenCL: {e}", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("private_cache")

# (name, (H, W, Cin), (KH, KW, Cout), strides, padding, dilation, filter gradient tiled): no extent a
# multiple of a tile; a filter gradient (rows KH x KW x Cin) is tiled where its rows fill one tile (64
# rows for 33 to 64 columns, 256 for 16, 512 for 8: schedule.conv_tile), else flat
GEOMETRIES = [
    ("valid", (11, 13, 8), (3, 3, 37), 1, "valid", 1, True),
    ("same", (9, 7, 5), (3, 5, 7), 1, "same", 1, False),  # 7 columns: 512 x 8 tiles
    ("explicit", (10, 9, 7), (4, 3, 45), 1, ((2, 1), (0, 3)), 1, True),
    ("stride2", (13, 11, 8), (3, 3, 40), 2, "same", 1, True),
    ("stride2_valid", (12, 9, 3), (4, 2, 5), (2, 3), "valid", 1, False),
    ("dilation2", (12, 11, 8), (3, 3, 33), 1, "same", 2, True),
    ("wide", (7, 6, 9), (3, 3, 70), 1, "same", 1, True),  # 70 columns: two 64-wide column tiles
    ("deep", (6, 5, 37), (2, 2, 3), 1, "valid", 1, False),  # depth 148 over 16-deep slices
    ("sixteen", (10, 10, 30), (3, 3, 16), 2, "same", 1, True),  # 256 x 16 tiles
]
BATCHES = (3, 1, 17)
CONV_OPS = ("conv2d", "conv2d_input_grad", "conv2d_filter_grad")


def _tolerance(dtype, expected: np.ndarray) -> dict:
    """Rounding of sums in another order: relative, and absolute at the result's scale (a sum of
    terms near its largest cancelling to near 0)."""
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    return dict(rtol=1e-4, atol=1e-5 * scale) if np.dtype(dtype) == np.float32 else dict(rtol=1e-11, atol=1e-12 * scale)


def _image_shape(hwc: tuple, fmt: str) -> tuple:
    h, w, c = hwc
    return (None, h, w, c) if fmt == "NHWC" else (None, c, h, w)


def _conv_cases(fmt: str, dtype) -> tuple[list, list]:
    """Placeholders (image, upstream gradient per case) and per case the fetches (y, dx, dw): the conv
    and both its gradients (of sum(y * g)), every one computed by its own conv kernel."""
    rng = np.random.default_rng(0)
    placeholders, fetches = [], []
    for name, hwc, (kh, kw, cout), strides, padding, dilation, _ in GEOMETRIES:
        x = gn.placeholder(f"{name}/x", _image_shape(hwc, fmt), dtype)
        w = gn.constant(rng.normal(size=(kh, kw, hwc[2], cout)).astype(dtype))
        y = gn.conv2d(x, w, strides, padding, dilation, data_format=fmt)
        g = gn.placeholder(f"{name}/g", y.shape, dtype)
        dx, dw = gn.gradients(gn.sum(y * g), [x, w])
        placeholders += [x, g]
        fetches += [y, dx, dw]
    return placeholders, fetches


def _feeds(placeholders: list, batch: int, dtype, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {p.name: rng.normal(size=tuple(batch if d is None else d for d in p.shape)).astype(dtype)
            for p in placeholders}


def _conv_kernels(fn: gn.Function) -> list:
    return [k for k in fn.executable.lp.kernels if any(op in k.name for op in CONV_OPS)]


def _is_tiled(kernel) -> bool:
    return str(kernel.schedule).startswith("opencl tiled") and "rows v0,v1,v2 x columns v4 over v5,v6,v7" in str(
        kernel.schedule)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("fmt", ["NHWC", "NCHW"])
def test_tiled_conv_and_its_gradients_equal_numpy(fmt, dtype):
    if dtype == np.float64 and not runtime.runtime().fp64:
        pytest.skip("the OpenCL device has no float64")
    with gn.Graph():
        placeholders, fetches = _conv_cases(fmt, dtype)
        ref, fn = (gn.compile(fetches, backend=b) for b in ("numpy", "opencl"))
    kernels = _conv_kernels(fn)
    # forward, filter gradient, and the input gradient: one kernel, or strided one per phase a tap reaches
    # (split_strided_input_grads: min(stride, kernel) phases per axis)
    assert len(kernels) == sum(2 + np.prod([min(s, k) for s, k in zip(np.broadcast_to(strides, 2), (kh, kw))])
                               for _, _, (kh, kw, _), strides, *_ in GEOMETRIES)
    filter_grads = {k.domain[:5]: k for k in kernels if "conv2d_filter_grad" in k.name}  # (KH, KW, Cin, 1, Cout)
    assert all(_is_tiled(k) for k in kernels if "conv2d_filter_grad" not in k.name)
    for name, (_, _, cin), (kh, kw, cout), *_, filter_grad_tiled in GEOMETRIES:
        assert _is_tiled(filter_grads[kh, kw, cin, 1, cout]) == filter_grad_tiled, name
    for seed, batch in enumerate(BATCHES):  # partial batches: 1 and 17 rows after 3
        feeds = _feeds(placeholders, batch, dtype, seed)
        for got, expected, node in zip(fn(**feeds), ref(**feeds), fetches):
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, **_tolerance(dtype, expected),
                                       err_msg=f"{node.name} at batch {batch}")


def test_tiled_conv_with_bias_and_relu_fused():
    rng = np.random.default_rng(3)
    with gn.Graph():
        x = gn.placeholder("x", (None, 10, 9, 3))
        w = gn.constant(rng.normal(size=(3, 3, 3, 11)).astype(np.float32))
        bias = gn.constant(rng.normal(size=11).astype(np.float32))
        y = gn.relu(gn.conv2d(x, w, padding="same") + bias)
        ref, fn = (gn.compile(y, backend=b) for b in ("numpy", "opencl"))
    (kernel,) = _conv_kernels(fn)
    assert _is_tiled(kernel) and "relu" in kernel.name
    assert len(fn.executable.lp.kernels) == 1  # bias and relu in the conv's kernel
    for batch in (5, 2):
        feed = rng.normal(size=(batch, 10, 9, 3)).astype(np.float32)
        expected = ref(x=feed)
        assert (expected == 0).any() and (expected > 0).any()
        np.testing.assert_allclose(fn(x=feed), expected, **_tolerance(np.float32, expected))


def test_grouped_conv_stays_flat_and_correct():
    rng = np.random.default_rng(4)
    with gn.Graph():
        x = gn.placeholder("x", (None, 8, 7, 6))
        w = gn.constant(rng.normal(size=(3, 3, 2, 9)).astype(np.float32))
        y = gn.conv2d(x, w, padding="same", groups=3)
        ref, fn = (gn.compile(y, backend=b) for b in ("numpy", "opencl"))
    (kernel,) = _conv_kernels(fn)
    assert str(kernel.schedule).startswith("opencl flat")
    feed = rng.normal(size=(4, 8, 7, 6)).astype(np.float32)
    expected = ref(x=feed)
    np.testing.assert_allclose(fn(x=feed), expected, **_tolerance(np.float32, expected))


# cifar's third step has an activation at a ReLU's kink, which rounding (of the flat form as well)
# puts on either side: one channel's filter gradient then differs, so two steps
# lenet tiles its forward convs and its input gradient (its filter gradients' 25 and 150 rows fill no
# tile); cifar every conv kernel but its first filter gradient (27 rows)
@pytest.mark.parametrize("net, batch, steps, tiled", [("lenet", 21, 3, 3), ("cifar", 13, 2, 10)])
def test_convnet_training_steps_equal_numpy(net, batch, steps, tiled):
    """A few Adam steps of the benchmark convnets (the filter gradients' kernels update the filters in
    their epilogue, tiled in cifar), at a partial batch: losses and every variable after them."""
    cfg = NETS[net]
    weights = initial_weights(cfg)
    x, y = data(cfg)
    runs = {}
    for backend in ("numpy", "opencl"):
        fn = graphnet_function(cfg, weights, backend=backend)
        losses = [float(fn(x=x[i * batch:(i + 1) * batch], y=y[i * batch:(i + 1) * batch])) for i in range(steps)]
        runs[backend] = (losses, {n.attrs["name"]: n.attrs["var"].read() for n in fn.program.variables}, fn)
    (ref_losses, ref_vars, _), (losses, got_vars, fn) = runs["numpy"], runs["opencl"]
    kernels = _conv_kernels(fn)
    assert sum(map(_is_tiled, kernels)) == tiled
    adam_fused = [k for k in kernels if "filter_grad" in k.name and len(k.stores) == 3]  # m, v, the filter
    assert adam_fused and (net == "lenet" or any(map(_is_tiled, adam_fused)))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    assert got_vars.keys() == ref_vars.keys()
    for name, expected in ref_vars.items():  # Adam moves a weight by about lr (1e-3) whatever its gradient's
        #                                       size, so a gradient near 0 that rounds differently moves it apart
        np.testing.assert_allclose(got_vars[name], expected, rtol=1e-3, atol=1e-4, err_msg=name)


def test_bench_compares_the_flat_and_tiled_forms_of_one_step():
    """bench/micro/oclconv.py's two compiles of a step: the same conv kernels, flat in one (TILE_CONVS
    off while it compiles, then on again) and tiled in the other."""
    from codegen.opencl import schedule
    from graphnet.bench.micro.oclconv import compiled_step, conv_kernels
    (_, flat), (_, tiled) = compiled_step(NETS["lenet"], False), compiled_step(NETS["lenet"], True)
    assert schedule.TILE_CONVS
    assert conv_kernels(flat) == conv_kernels(tiled)
    assert [_is_tiled(flat.lp.kernels[i]) for i in conv_kernels(flat).values()] == [False] * 5
    assert sum(_is_tiled(tiled.lp.kernels[i]) for i in conv_kernels(tiled).values()) == 3
