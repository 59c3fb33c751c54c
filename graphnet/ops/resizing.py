"""Resizing: nearest, (bi)linear and (bi)cubic interpolation to any size, with the coordinate
conventions of ONNX's Resize, which cover TensorFlow's, PyTorch's and Keras's.

Interpolation is separable: along a resized axis, each output element is a weighted sum of a few
input elements (its taps), with the same taps and weights for every other index. `axis_taps` works
them out in numpy, as ONNX's reference defines them: the output element's source coordinate, the
kernel's coefficients at it, neighbours past the edge reading the edge element (or dropped, with
`exclude_outside`), and when shrinking with `antialias` a kernel stretched over the shrink. `resample`
applies one axis's taps with graph ops: per tap, a `take` of the input times a constant weight per
output element, summed. So resizing has no op or lowering of its own: every backend runs it, and
its gradients (take's is a scatter_add into the taps) and higher derivatives come from those ops.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from . import api as ops
from ..errors import ShapeError
from ..graph import Node, shape_str
from ..source import user_location
from .base import promote
from .conv import _format, image_dims

METHODS = {"nearest": "nearest", "linear": "linear", "bilinear": "linear", "cubic": "cubic", "bicubic": "cubic"}
COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                    "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def source_coordinates(in_size: int, out_size: int, scale: float, mode: str,
                       roi: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Where each output element lies in the input (float64, in input elements), by ONNX's
    coordinate_transformation_mode; `scale` is the output's size over the input's (or the scale
    given instead of a size), `roi` the (start, end) fractions tf_crop_and_resize reads."""
    y = np.arange(out_size, dtype=np.float64)
    length = scale * in_size  # the output's length before rounding to out_size
    if mode == "align_corners":
        return np.zeros(out_size) if length == 1 else y * (in_size - 1) / (length - 1)
    if mode == "asymmetric":
        return y / scale
    if mode == "pytorch_half_pixel":
        return np.full(out_size, -0.5) if length == 1 else (y + 0.5) / scale - 0.5
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = in_size / 2 * (1 - out_size / length)  # centres the rounded output on the input
        return offset + (y + 0.5) / scale - 0.5
    if mode == "tf_crop_and_resize":
        start, end = roi
        if length == 1:
            return np.full(out_size, (end - start) * (in_size - 1) / 2 + start * (in_size - 1))
        return y * (end - start) * (in_size - 1) / (length - 1) + start * (in_size - 1)
    raise ValueError(f"resize: coordinate_transformation_mode must be one of {COORDINATE_MODES}, got {mode!r}")


def _nearest(ratio: float, mode: str) -> list[float]:
    """The coefficients of the (left, right) neighbours: the one the rounding picks."""
    if ratio == 1:
        return [0.0, 1.0]
    right = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5, "floor": False,
             "ceil": True}[mode]
    return [0.0, 1.0] if right else [1.0, 0.0]


def _cubic(d: float, a: float) -> float:
    """Keys' cubic convolution kernel at distance d (a: its free coefficient, -0.75 as in ONNX and
    PyTorch, -0.5 as in TensorFlow)."""
    d = abs(d)
    if d <= 1:
        return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
    return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a if d < 2 else 0.0


def _kernel(ratio: float, method: str, scale: float, nearest_mode: str, cubic_a: float,
            antialias: bool) -> tuple[int, list[float]]:
    """(offset of the first neighbour from the left one, the neighbours' coefficients) at `ratio` in
    (0, 1], the source coordinate's distance from its left neighbour. Antialiasing (linear and cubic,
    when shrinking) stretches the kernel over 1 / scale input elements and normalizes its coefficients."""
    if method == "nearest":
        return 0, _nearest(ratio, nearest_mode)
    if not antialias:
        if method == "linear":
            return 0, [1 - ratio, ratio]
        return -1, [_cubic(1 + ratio, cubic_a), _cubic(ratio, cubic_a), _cubic(1 - ratio, cubic_a),
                    _cubic(2 - ratio, cubic_a)]
    stretch = min(scale, 1.0)
    first = math.floor(-(1 if method == "linear" else 2) / stretch) + 1  # the kernel's reach, stretched
    distances = [(j - ratio) * stretch for j in range(first, 2 - first)]
    coeffs = [min(max(1 - abs(d), 0.0), 1.0) if method == "linear" else _cubic(d, cubic_a) for d in distances]
    total = sum(coeffs)
    return first, [c / total for c in coeffs]


def axis_taps(in_size: int, out_size: int, method: str = "linear", *, scale: float | None = None,
              coordinate_transformation_mode: str = "half_pixel", nearest_mode: str = "round_prefer_floor",
              cubic_coeff_a: float = -0.75, exclude_outside: bool = False, antialias: bool = False,
              roi: tuple[float, float] = (0.0, 1.0),
              extrapolation_value: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One axis's interpolation: (indices, weights, offsets) with output element i =
    sum_t weights[i, t] * input[indices[i, t]] (+ offsets[i]): `indices` int64 and `weights` float64,
    each (out_size, taps), a row's unused taps index 0 with weight 0; `offsets` None, or (with
    tf_crop_and_resize) `extrapolation_value` where the source lies outside the input (no taps).
    ONNX's Resize along one axis; `scale` defaults to out_size / in_size."""
    method = METHODS[method]
    scale = out_size / in_size if scale is None else float(scale)
    x = source_coordinates(in_size, out_size, scale, coordinate_transformation_mode, roi)
    rows: list[dict[int, float]] = []
    outside = np.zeros(out_size, dtype=bool)
    for i, source in enumerate(x):
        if coordinate_transformation_mode == "tf_crop_and_resize" and not 0 <= source <= in_size - 1:
            outside[i] = True
            rows.append({})
            continue
        left = math.ceil(source) - 1  # ratio in (0, 1]: an integer coordinate is its left neighbour's right one
        first, coeffs = _kernel(source - left, method, scale, nearest_mode, cubic_coeff_a, antialias)
        neighbours = [left + first + j for j in range(len(coeffs))]
        if exclude_outside:
            coeffs = [c if 0 <= k < in_size else 0.0 for c, k in zip(coeffs, neighbours)]
            total = sum(coeffs)
            coeffs = [c / total for c in coeffs] if total else coeffs
        row: dict[int, float] = {}
        for k, c in zip(neighbours, coeffs):  # past the edge: the edge element (ONNX pads by the edge)
            if c != 0:
                clamped = min(max(k, 0), in_size - 1)
                row[clamped] = row.get(clamped, 0.0) + c
        rows.append(row)
    taps = max(1, max(len(r) for r in rows))
    indices = np.zeros((out_size, taps), dtype=np.int64)
    weights = np.zeros((out_size, taps), dtype=np.float64)
    for i, row in enumerate(rows):
        for t, (k, c) in enumerate(sorted(row.items())):
            indices[i, t], weights[i, t] = k, c
    offsets = np.where(outside, float(extrapolation_value), 0.0) if outside.any() else None
    return indices, weights, offsets


MAX_TAPS = 16  # taps per output element applied as takes; more (an antialiased shrink): a matmul


def resample(x: Node, axis: int, indices: np.ndarray, weights: np.ndarray, offsets: np.ndarray | None = None) -> Node:
    """`axis_taps`' interpolation applied to x along `axis`: per tap, take(x, indices[:, t]) times
    weights[:, t] (in x's dtype, broadcast along the other axes), summed in tap order; a tap whose
    weights are all one is its take alone. Past MAX_TAPS taps (an antialiased shrink by a large factor
    reads a long window per output), the axis moved last times the (input, output) matrix of weights:
    a sum of that many takes is one expression too deep and too wide for a kernel."""
    shape = [1] * x.ndim
    shape[axis] = len(indices)
    if indices.shape[1] > MAX_TAPS:
        matrix = np.zeros((x.shape[axis], len(indices)))
        for t in range(indices.shape[1]):
            np.add.at(matrix, (indices[:, t], np.arange(len(indices))), weights[:, t])
        order = [a for a in range(x.ndim) if a != axis] + [axis]
        moved = ops.transpose(x, order) @ ops.constant(matrix, dtype=x.dtype, graph=x.graph)
        out = ops.transpose(moved, list(np.argsort(order)))
    else:
        out = None
        for t in range(indices.shape[1]):
            term = ops.take(x, indices[:, t], axis=axis)
            if not np.all(weights[:, t] == 1):
                term = term * ops.constant(weights[:, t].reshape(shape), dtype=x.dtype, graph=x.graph)
            out = term if out is None else out + term
    if offsets is not None:
        out = out + ops.constant(offsets.reshape(shape), dtype=x.dtype, graph=x.graph)
    return out


def resize(x: Any, size: Any, method: str = "bilinear", data_format: str = "NHWC", *,
           coordinate_transformation_mode: str = "half_pixel", nearest_mode: str = "round_prefer_floor",
           cubic_coeff_a: float = -0.75, exclude_outside: bool = False, antialias: bool = False) -> Node:
    """Images resized to `size` = (height, width) by "nearest", "bilinear" or "bicubic" interpolation
    ("linear" and "cubic" too), with ONNX Resize's options. The defaults are TensorFlow's and Keras's
    `resize(method="bilinear")` and PyTorch's `interpolate(mode="bilinear", align_corners=False)`
    (half-pixel centres); `coordinate_transformation_mode="align_corners"` is PyTorch's
    `align_corners=True`, and "asymmetric" with nearest_mode "floor" is PyTorch's "nearest".
    Separable (`axis_taps`, `resample`): differentiable to any order on every backend."""
    (x,) = promote([x])
    fmt = _format(data_format, "resize")
    where = f"(at {user_location()})"
    if x.ndim != 4:
        raise ShapeError(f"resize: input must be a 4-D {fmt} image batch, got {shape_str(x.shape)} {where}")
    if x.dtype not in (np.float32, np.float64):
        raise ShapeError(f"resize: the image must be float32 or float64, got {x.dtype} {where}")
    pair = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in pair):
        raise ShapeError(f"resize: size must be a positive integer or a (height, width) pair of them, got {size!r} "
                         f"{where}")
    options = {"method": method, "coordinate_transformation_mode": coordinate_transformation_mode,
               "nearest_mode": nearest_mode}
    for name, allowed in (("method", tuple(METHODS)), ("coordinate_transformation_mode", COORDINATE_MODES[:-1]),
                          ("nearest_mode", NEAREST_MODES)):
        if options[name] not in allowed:
            raise ValueError(f"resize: {name} must be one of {allowed}, got {options[name]!r} {where}")
    if antialias and METHODS[method] == "nearest":
        raise ValueError(f"resize: antialias applies to bilinear and bicubic resizing, not nearest {where}")
    h, w, _ = image_dims(x.shape, fmt)
    axes = (1, 2) if fmt == "NHWC" else (2, 3)
    for axis, before, after in zip(axes, (h, w), pair):
        taps = axis_taps(before, int(after), method, coordinate_transformation_mode=coordinate_transformation_mode,
                         nearest_mode=nearest_mode, cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                         antialias=antialias)
        if int(after) != before or taps[0].shape[1] > 1 or not np.array_equal(taps[0][:, 0], np.arange(before)):
            x = resample(x, axis, *taps)  # (an axis whose taps are the identity is left as it is)
    return x


PUBLIC = ["resize"]
