"""gn.resize (graphnet/ops/resizing.py): each axis's taps against ONNX's reference Resize for every mode,
coordinate transformation, rounding, exclude_outside and antialias; images against PyTorch's
F.interpolate (nearest, bilinear and bicubic, align_corners either way, antialias) with gradients;
every backend against numpy, float32 and float64, partial batches; central-difference first and
second derivatives; Keras's UpSampling2D(interpolation="bilinear"); the errors."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet.ops.resizing import COORDINATE_MODES, NEAREST_MODES, axis_taps, source_coordinates
from helpers import check_grad, run
from test_reliability import BACKENDS

pytestmark = pytest.mark.usefixtures("private_cache")

RNG = np.random.default_rng(5)
NCHW = (2, 3, 5, 7)
SIZES = [(9, 4), (3, 11), (5, 7), (1, 2), (10, 14)]  # taller and narrower, shrunk, the same, one row, doubled


def _onnx_reference(data, out_size, method, mode, nearest, exclude, antialias, scale=None):
    reference = pytest.importorskip("onnx.reference.ops.op_resize")
    if method == "nearest":
        coeffs = lambda ratio, s: reference._nearest_coeffs(ratio, mode=nearest)  # noqa: E731
    elif method == "linear":
        coeffs = reference._linear_coeffs_antialias if antialias else reference._linear_coeffs
    else:
        cubic = reference._cubic_coeffs_antialias if antialias else reference._cubic_coeffs
        coeffs = lambda ratio, s: cubic(ratio, s, A=-0.75)  # noqa: E731
    if scale is None:
        return reference._interpolate_nd(data, coeffs, output_size=[out_size], exclude_outside=exclude,
                                         coordinate_transformation_mode=mode)
    return reference._interpolate_nd(data, coeffs, scale_factors=[scale], exclude_outside=exclude,
                                     coordinate_transformation_mode=mode)


def _assert_onnx(got, want, source, message=""):
    """got == want but where the source coordinate lies within rounding of an integer without being
    one: ONNX's reference finds the neighbours of the coordinate plus its edge padding, which rounds
    to the integer, and takes the ratio from the coordinate itself; graphnet takes both from the
    coordinate."""
    artifact = (source != np.round(source)) & (np.abs(source - np.round(source)) < 1e-9)
    np.testing.assert_allclose(got[~artifact], want[~artifact], rtol=0, atol=1e-12, err_msg=message)


@pytest.mark.parametrize("method", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("mode", COORDINATE_MODES[:-1])
def test_axis_taps_are_onnx_resize_along_one_axis(method, mode):
    """Every size from 1 to 8 into 1 to 12, each rounding (nearest) or with and without
    exclude_outside and antialias (linear, cubic), and a given scale (ONNX's scales input)."""
    options = ([(nearest, False, False) for nearest in NEAREST_MODES] if method == "nearest" else
               [(NEAREST_MODES[0], exclude, antialias) for exclude in (False, True) for antialias in (False, True)])
    for in_size in range(1, 9):
        data = RNG.normal(size=in_size)
        for out_size in range(1, 13):
            for nearest, exclude, antialias in options:
                indices, weights, offsets = axis_taps(in_size, out_size, method, coordinate_transformation_mode=mode,
                                                      nearest_mode=nearest, exclude_outside=exclude, antialias=antialias)
                assert offsets is None and indices.min() >= 0 and indices.max() < in_size
                want = _onnx_reference(data, out_size, method, mode, nearest, exclude, antialias)
                _assert_onnx((data[indices] * weights).sum(1), want,
                             source_coordinates(in_size, out_size, out_size / in_size, mode),
                             f"{in_size} -> {out_size} {nearest} {exclude} {antialias}")
        scale = 1.7  # 8 * 1.7: 13 outputs, the coordinates at the scale given
        taps = axis_taps(in_size, int(in_size * scale), method, scale=scale, coordinate_transformation_mode=mode)
        want = _onnx_reference(data, None, method, mode, "round_prefer_floor", False, False, scale=scale)
        _assert_onnx((data[taps[0]] * taps[1]).sum(1), want,
                     source_coordinates(in_size, int(in_size * scale), scale, mode), f"{in_size} scale {scale}")


def test_nearest_has_one_tap_and_linear_two_with_clamped_edges():
    indices, weights, _ = axis_taps(4, 8, "nearest")
    assert indices.shape == (8, 1) and np.all(weights == 1)
    indices, weights, _ = axis_taps(4, 8, "bilinear")  # half-pixel centres: the first and last read the edge
    assert indices.shape == (8, 2) and indices[0, 0] == 0 and weights[0, 0] == 1 and weights[0, 1] == 0
    np.testing.assert_allclose(weights.sum(1), 1)


TORCH_MODES = [  # (F.interpolate's keywords, gn.resize's)
    (dict(mode="nearest"), dict(method="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")),
    (dict(mode="bilinear", align_corners=False), dict(method="bilinear")),
    (dict(mode="bilinear", align_corners=True), dict(method="bilinear", coordinate_transformation_mode="align_corners")),
    (dict(mode="bicubic", align_corners=False), dict(method="bicubic")),
    (dict(mode="bicubic", align_corners=True), dict(method="bicubic", coordinate_transformation_mode="align_corners")),
    (dict(mode="bilinear", align_corners=False, antialias=True),
     dict(method="bilinear", antialias=True, exclude_outside=True)),
    (dict(mode="bicubic", align_corners=False, antialias=True),
     dict(method="bicubic", antialias=True, exclude_outside=True, cubic_coeff_a=-0.5)),
]


@pytest.mark.parametrize("torch_kw,ours", TORCH_MODES, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_resize_equals_torch_interpolate_with_gradients(torch_kw, ours):
    """NCHW images, values and the gradient of a weighted sum, on numpy and LLVM. PyTorch's antialias
    is ONNX's with exclude_outside (and bicubic's a = -0.5, PIL's)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    xv = RNG.normal(size=NCHW)
    weights = {size: RNG.normal(size=NCHW[:2] + size) for size in SIZES}
    x = gn.placeholder("x", (None,) + NCHW[1:], np.float64)
    fetches = []
    for size in SIZES:
        y = gn.resize(x, size, data_format="NCHW", **ours)
        fetches += [y, gn.gradients(gn.sum(y * weights[size]), [x])[0]]
    for backend in ("numpy", "llvm"):
        got = run(fetches, {"x": xv}, backend=backend)
        for i, size in enumerate(SIZES):
            t = torch.tensor(xv, requires_grad=True)
            ref = F.interpolate(t, size=size, **torch_kw)
            (grad,) = torch.autograd.grad((ref * torch.tensor(weights[size])).sum(), t)
            np.testing.assert_allclose(got[2 * i], ref.detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=f"{size}")
            np.testing.assert_allclose(got[2 * i + 1], grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=f"{size} grad")


def _numpy_resize(a: np.ndarray, size, axes=(1, 2), **options) -> np.ndarray:
    for axis, after in zip(axes, size):
        indices, weights, _ = axis_taps(a.shape[axis], after, **options)
        gathered = np.take(a, indices, axis=axis)  # (..., out, taps, ...)
        shape = [1] * gathered.ndim
        shape[axis:axis + 2] = weights.shape
        a = (gathered * weights.reshape(shape)).sum(axis=axis + 1).astype(a.dtype)
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_resizes_nhwc_batches_as_numpy(backend, dtype):
    x = gn.placeholder("x", (None, 6, 5, 3), dtype)
    cases = [((12, 10), dict(method="nearest")), ((4, 7), dict(method="bilinear")),
             ((9, 3), dict(method="bicubic", antialias=True)), ((6, 11), dict(method="bicubic", exclude_outside=True))]
    fn = gn.compile([gn.resize(x, size, **options) for size, options in cases], backend=backend)
    for batch in (4, 1):
        a = RNG.normal(size=(batch, 6, 5, 3)).astype(dtype)
        for got, (size, options) in zip(fn(x=a), cases):
            assert got.dtype == dtype and got.shape == (batch, *size, 3)
            np.testing.assert_allclose(got, _numpy_resize(a, size, **options), rtol=1e-5 if dtype == np.float32 else 1e-12,
                                       atol=1e-6 if dtype == np.float32 else 1e-13, err_msg=f"{size} {options}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_antialiased_shrink_with_hundreds_of_taps_is_a_matmul(backend):
    """Fuzz finding 0:47831: 512 columns shrunk to 2 by antialiased bicubic take 512 taps each; as
    takes summed one after another the LLVM lowering recursed past Python's limit. Past MAX_TAPS the
    axis is multiplied by the matrix of weights: values equal numpy's taps, gradients too."""
    a = RNG.normal(size=(2, 3, 2, 512))
    x = gn.placeholder("x", (None, 3, 2, 512), np.float64)
    options = dict(method="bicubic", data_format="NCHW", antialias=True)
    y = gn.resize(x, (5, 2), **options)
    got, grad = run([y, gn.gradients(gn.sum(y * y), [x])[0]], {"x": a}, backend=backend)
    want = _numpy_resize(a, (5, 2), axes=(2, 3), method="bicubic", antialias=True)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    indices, weights, _ = axis_taps(512, 2, "bicubic", antialias=True)
    assert indices.shape[1] > 16  # (the matmul path)
    upstream = 2 * want  # d sum(y^2) / dx: the resize's transpose applied to 2y
    np.testing.assert_allclose(grad, _resize_transpose(upstream, (2, 512), **options), rtol=1e-9, atol=1e-11)


def _resize_transpose(g: np.ndarray, size, method, data_format, antialias) -> np.ndarray:
    """The gradient of the separable resize: each axis's weights transposed, the last axis first."""
    for axis, before in reversed(list(zip((2, 3), size))):
        indices, weights, _ = axis_taps(before, g.shape[axis], method, antialias=antialias)
        out_shape = list(g.shape)
        out_shape[axis] = before
        back = np.zeros(out_shape)
        for t in range(indices.shape[1]):
            for i in range(len(indices)):
                src = [slice(None)] * g.ndim
                src[axis] = i
                dst = [slice(None)] * g.ndim
                dst[axis] = indices[i, t]
                back[tuple(dst)] += weights[i, t] * g[tuple(src)]
        g = back
    return g


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic"])
def test_gradients_match_central_differences(method):
    check_grad(lambda x: [gn.resize(x, (5, 2), method=method), gn.resize(x, (2, 7), method=method, data_format="NHWC")],
               [RNG.normal(size=(2, 3, 4, 2))], shapes=[(None, 3, 4, 2)])


def test_second_derivatives_match_central_differences():
    def gradient(x):
        return gn.gradients(gn.sum(gn.exp(gn.resize(x, (4, 5), method="bicubic")) ** 2), [x])[0]
    check_grad(gradient, [RNG.normal(size=(1, 3, 3, 2)) * 0.3], shapes=[(None, 3, 3, 2)], rtol=1e-4)


def test_keras_upsampling_bilinear_is_half_pixel_bilinear():
    """Keras's UpSampling2D(interpolation="bilinear") (tf.image.resize's half-pixel centres), checked
    against PyTorch's align_corners=False, which is the same interpolation."""
    torch = pytest.importorskip("torch")
    model = gn.Sequential([gn.layers.Input((4, 3, 2)), gn.layers.UpSampling2D((2, 3), interpolation="bilinear")])
    assert model.output_shape == (None, 8, 9, 2)
    a = RNG.normal(size=(2, 4, 3, 2)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.tensor(a).permute(0, 3, 1, 2), size=(8, 9), mode="bilinear",
                                           align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(model.predict(a), want, rtol=1e-5, atol=1e-6)
    assert model.get_layer(index=0).get_config()["interpolation"] == "bilinear"


# ---- bad input ------------------------------------------------------------------------------
def test_errors_name_the_op_and_the_line():
    x = gn.placeholder("x", (None, 4, 4, 3))
    for bad, kind, words in [(lambda: gn.resize(x, (0, 3)), gn.ShapeError, "size must be a positive integer"),
                             (lambda: gn.resize(x, (2, 3, 4)), gn.ShapeError, "size must be"),
                             (lambda: gn.resize(x[:, 0], (2, 3)), gn.ShapeError, "4-D NHWC image batch"),
                             (lambda: gn.resize(x, 2, method="area"), ValueError, "method must be one of"),
                             (lambda: gn.resize(x, 2, coordinate_transformation_mode="tf_crop_and_resize"),
                              ValueError, "coordinate_transformation_mode must be one of"),
                             (lambda: gn.resize(x, 2, method="nearest", antialias=True), ValueError, "antialias"),
                             (lambda: gn.resize(gn.cast(x, np.int32), 2), gn.ShapeError, "float32 or float64")]:
        with pytest.raises(kind) as info:
            bad()
        assert info.value.args[0].startswith("resize") and words in str(info.value), str(info.value)
        assert "test_resize.py" in str(info.value)
    with pytest.raises(ValueError, match="interpolation must be 'nearest' or 'bilinear'"):
        gn.layers.UpSampling2D(interpolation="area")
