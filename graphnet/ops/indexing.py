"""Indexing and joining: strided slices and flips (affine views), constant padding and take (loads at
computed indices), scatter_add (take's gradient) and concat (a sum of pads).

Rules every backend shares:
- The batch axis (None) has no static length: a slice keeps it whole, a pad leaves it unpadded and
  concat does not join along it; flip and take work on it (their coordinates are N - 1 - i and a
  clamped index).
- take and scatter_add clamp each index: -size <= i < 0 counts from the end (numpy), then the result
  is clipped into [0, size - 1] (numpy's mode="clip"; JAX's gather). `clamp_index` is that rule,
  written once in scalar instructions: the numpy references evaluate it with NumpyScalar and the
  lowering emits it, so every backend reads the same element and none reads outside a buffer.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import api as ops
from ..batchdim import unify_shapes
from ..errors import ShapeError
from ..graph import shape_str
from .base import Example, Op, register, same_dtype
from .scalar import NumpyScalar


def clamp_index(s: Any, i: Any, size: Any) -> Any:
    """The element an index `i` (int64) selects on an axis of `size` elements (>= 1), over builder `s`."""
    wrapped = s.select(s.lt(i, 0), s.add(i, size), i)
    return s.max(s.min(wrapped, s.sub(size, 1)), 0)


def clamp_numpy(indices: np.ndarray, size: int) -> np.ndarray:
    return clamp_index(NumpyScalar(indices.shape), indices.astype(np.int64), np.int64(size))


def slice_extent(start: int, stop: int, step: int) -> int:
    return max(0, -(-(stop - start) // step))


def _require_indices(indices) -> None:
    if indices.dtype.kind not in "iu":
        raise ShapeError(f"indices must be an integer tensor, got {indices.dtype} {shape_str(indices.shape)} "
                         f"(use gn.cast)")


@register
class StridedSlice(Op):
    """x[start:stop:step] on every axis, given normalized: 0 <= start <= stop <= extent, step >= 1
    (getitem reduces numpy's negative bounds and steps to this and a flip). The batch axis is kept
    whole: (0, None, 1)."""

    name = "strided_slice"
    kind = "movement"
    examples = (Example([(None, 7)], {"slices": ((0, None, 1), (1, 6, 2))}),
                Example([(5, 4, 3)], {"slices": ((1, 4, 1), (0, 4, 3), (2, 3, 1))}))

    def infer(self, inputs, attrs):
        (x,), slices = inputs, attrs["slices"]
        if len(slices) != x.ndim:
            raise ShapeError(f"{len(slices)} slices for the {x.ndim} axes of {shape_str(x.shape)}")
        shape = []
        for axis, (d, (start, stop, step)) in enumerate(zip(x.shape, slices)):
            if d is None:
                if (start, stop, step) != (0, None, 1):
                    raise ShapeError(f"axis {axis} of {shape_str(x.shape)} is the batch axis (its length is "
                                     f"known only at run time): slice it whole (':') or use gn.take")
                shape.append(None)
            elif not (isinstance(step, int) and step >= 1 and 0 <= start <= stop <= d):
                raise ShapeError(f"slice {start}:{stop}:{step} is not normalized for axis {axis} of "
                                 f"{shape_str(x.shape)}")
            else:
                shape.append(slice_extent(start, stop, step))
        return tuple(shape), x.dtype

    def numpy(self, x, slices):
        return np.array(x[tuple(slice(*s) for s in slices)], order="C")  # (ascontiguousarray makes 0-d 1-d)

    def grad(self, node, g):
        x = node.inputs[0]
        pads = []
        for d, n, (start, stop, step) in zip(x.shape, node.shape, node.attrs["slices"]):
            span = 0 if d is None else n + max(n - 1, 0) * (step - 1)
            pads.append((0, 0, 0) if d is None else (start, d - start - span, step - 1))
        return [ops.pad_interior(g, tuple(pads))]


@register
class Flip(Op):
    """Reverse the order of elements along `axes` (the batch axis too)."""

    name = "flip"
    kind = "movement"
    examples = (Example([(None, 3)], {"axes": (0, 1)}), Example([(2, 3, 4)], {"axes": (1,)}))

    def infer(self, inputs, attrs):
        (x,), axes = inputs, attrs["axes"]
        if any(not 0 <= a < x.ndim for a in axes) or len(set(axes)) != len(axes):
            raise ShapeError(f"axes {axes} are not distinct axes of {shape_str(x.shape)}")
        return x.shape, x.dtype

    def numpy(self, x, axes):
        return np.array(np.flip(x, axes), order="C")

    def grad(self, node, g):
        return [ops.flip(g, node.attrs["axes"])]


def padded_extent(d: int, lo: int, hi: int, interior: int) -> int:
    return lo + hi + d + max(d - 1, 0) * interior


@register
class Pad(Op):
    """`value` around each axis (lo before, hi after) and between its elements (interior: the
    transpose of a strided slice). Lowered as a load at the clamped inner coordinate, kept where the
    coordinate is an element of x, else `value`."""

    name = "pad"
    kind = "gather"
    examples = (Example([(None, 3)], {"pads": ((0, 0, 0), (2, 1, 0)), "value": 0.0}),
                Example([(2, 3)], {"pads": ((1, 0, 1), (0, 2, 2)), "value": 0.5}),
                Example([(2, 1, 3)], {"pads": ((0, 1, 0), (1, 1, 0), (0, 0, 0)), "value": -1.0}))

    def infer(self, inputs, attrs):
        (x,), pads = inputs, attrs["pads"]
        if len(pads) != x.ndim:
            raise ShapeError(f"{len(pads)} pads for the {x.ndim} axes of {shape_str(x.shape)}")
        shape = []
        for axis, (d, p) in enumerate(zip(x.shape, pads)):
            if len(p) != 3 or any(not isinstance(v, int) or v < 0 for v in p):
                raise ShapeError(f"pad {p} of axis {axis} must be three non-negative ints (before, after, interior)")
            if d is None and p != (0, 0, 0):
                raise ShapeError(f"cannot pad axis {axis} of {shape_str(x.shape)}: it is the batch axis")
            shape.append(None if d is None else padded_extent(d, *p))
        return tuple(shape), x.dtype

    def numpy(self, x, pads, value):
        shape = tuple(padded_extent(d, *p) for d, p in zip(x.shape, pads))
        out = np.full(shape, value, x.dtype)
        out[tuple(slice(lo, lo + padded_extent(d, 0, 0, i), i + 1) for d, (lo, _, i) in zip(x.shape, pads))] = x
        return out

    def grad(self, node, g):
        x = node.inputs[0]
        slices = tuple((0, None, 1) if d is None else (lo, lo + padded_extent(d, 0, 0, i), i + 1)
                       for d, (lo, _, i) in zip(x.shape, node.attrs["pads"]))
        return [ops.strided_slice(g, slices)]


@register
class Take(Op):
    """numpy.take(x, clamp_index(indices), axis): result shape x.shape[:axis] + indices.shape +
    x.shape[axis + 1:]. The gradient scatter-adds into x's shape."""

    name = "take"
    kind = "gather"
    examples = (Example([(5, 3), (None, 2)], {"axis": 0}, int_inputs={1: (np.int64, 5)}),
                Example([(None, 4, 2), (3,)], {"axis": 1}, int_inputs={1: (np.int32, 6)}),  # 4, 5: clamped
                Example([(None, 3), (2, 2)], {"axis": 0}, int_inputs={1: (np.int64, 3)}))

    def infer(self, inputs, attrs):
        (x, indices), axis = inputs, attrs["axis"]
        _require_indices(indices)
        if not 0 <= axis < x.ndim:
            raise ShapeError(f"axis {axis} is out of range for {shape_str(x.shape)}")
        if x.shape[axis] == 0:
            raise ShapeError(f"cannot take from axis {axis} of {shape_str(x.shape)}: it is empty")
        return x.shape[:axis] + indices.shape + x.shape[axis + 1:], x.dtype

    def numpy(self, x, indices, axis):
        return np.take(x, clamp_numpy(indices, x.shape[axis]), axis)

    def grad(self, node, g):
        x, indices = node.inputs
        axis = node.attrs["axis"]
        return [ops.scatter_add(g, indices, axis, x.shape[axis]), None]


@register
class ScatterAdd(Op):
    """The transpose of take: zeros of shape updates.shape[:axis] + (size,) + updates.shape[axis + k:]
    (k = indices.ndim; size None: the batch size) plus each update at its clamped index, duplicates
    summed in ascending order of the updates (numpy's np.add.at). Lowered as a zero fill, then one
    pass adding each update at its clamped index, serial over the index axes (codegen/lower.py)."""

    name = "scatter_add"
    kind = "scatter"
    needs_out_shape = True
    examples = (Example([(None, 2), (None,)], {"axis": 0, "size": 4}, int_inputs={1: (np.int64, 5)}),
                Example([(3, 2, 2), (2, 2)], {"axis": 1, "size": 3}, int_inputs={1: (np.int32, 3)}),
                Example([(4, None), (None,)], {"axis": 1, "size": None}, int_inputs={1: (np.int64, 5)}))

    def infer(self, inputs, attrs):
        (updates, indices), axis, size = inputs, attrs["axis"], attrs["size"]
        _require_indices(indices)
        k = indices.ndim
        if not 0 <= axis <= updates.ndim - k or updates.shape[axis:axis + k] != indices.shape:
            raise ShapeError(f"updates {shape_str(updates.shape)} do not hold indices {shape_str(indices.shape)} "
                             f"at axis {axis}")
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ShapeError(f"size must be a positive int or None (the batch size), got {size!r}")
        return updates.shape[:axis] + (size,) + updates.shape[axis + k:], updates.dtype

    def numpy(self, updates, indices, axis, size, out_shape):
        out = np.zeros(out_shape, updates.dtype)
        lead, trail = updates.shape[:axis], updates.shape[axis + indices.ndim:]
        flat = updates.reshape(lead + (indices.size,) + trail)
        at = clamp_numpy(indices.reshape(-1), out_shape[axis])
        np.add.at(out, (slice(None),) * axis + (at,), flat)
        return out

    def grad(self, node, g):
        updates, indices = node.inputs
        return [ops.take(g, indices, node.attrs["axis"]), None]


@register
class Concat(Op):
    """numpy.concatenate along a static axis; expands into a sum of zero-padded inputs (each output
    element reads every input once, clamped, and keeps the one whose range holds it)."""

    name = "concat"
    kind = "composite"
    examples = (Example([(None, 2), (None, 3)], {"axis": 1}), Example([(2, 3), (1, 3), (3, 3)], {"axis": 0}),
                Example([(2, 0, 2), (2, 2, 2)], {"axis": 1}))

    def infer(self, inputs, attrs):
        axis = attrs["axis"]
        if not inputs:
            raise ShapeError("needs at least one input")
        dtype = same_dtype(inputs)
        first = inputs[0].shape
        shapes = " and ".join(shape_str(x.shape) for x in inputs)
        if not 0 <= axis < len(first):
            raise ShapeError(f"axis {axis} is out of range for {shapes}")
        if any(x.ndim != len(first) for x in inputs):
            raise ShapeError(f"cannot concatenate {shapes} along axis {axis}: the other axes differ")
        if any(x.shape[axis] is None for x in inputs):
            raise ShapeError(f"cannot concatenate {shapes} along axis {axis}: it is the batch axis")
        rest = first[:axis] + first[axis + 1:]
        try:  # the other axes agree, N meeting a static extent k fixing N == k
            for x in inputs[1:]:
                rest = unify_shapes(rest, x.shape[:axis] + x.shape[axis + 1:])
        except ShapeError:
            raise ShapeError(f"cannot concatenate {shapes} along axis {axis}: the other axes differ") from None
        return rest[:axis] + (sum(x.shape[axis] for x in inputs),) + rest[axis:], dtype

    def numpy(self, *xs, axis):
        return np.concatenate(xs, axis)

    def grad(self, node, g):
        return [ops.strided_slice(g, s) for s in _pieces(node)]

    def expand(self, node):
        bools = node.dtype.kind == "b"  # bools have no add: join them as uint8
        total, axis = None, node.attrs["axis"]
        for x, s in zip(node.inputs, _pieces(node)):
            start, stop, _ = s[axis]
            pads = tuple((0, 0, 0) if a != axis else (start, node.shape[axis] - stop, 0) for a in range(x.ndim))
            part = ops.pad_interior(ops.cast(x, np.uint8) if bools else x, pads)
            total = part if total is None else total + part
        return ops.cast(total, np.bool_) if bools else total


def _pieces(node) -> list[tuple]:
    """Each input's slices of a concat's result."""
    axis, start, out = node.attrs["axis"], 0, []
    for x in node.inputs:
        d = x.shape[axis]
        out.append(tuple((start, start + d, 1) if a == axis else (0, None if e is None else e, 1)
                         for a, e in enumerate(node.shape)))
        start += d
    return out
