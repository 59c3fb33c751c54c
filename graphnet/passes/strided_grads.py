"""Strided convolutions' input gradients (and transposed convolutions) as stride-1 ones.

conv2d_input_grad with strides (sh, sw) writes dy[o] * w[k] to position o * s + k - pad: along each
axis, the positions of one phase (position + pad = p mod s) only ever receive the taps k = p mod s.
So the gradient is sh * sw interleaved stride-1 gradients, phase (p, q) of dy with the sub-filter
w[p::sh, q::sw], computed without padding over their whole extent, then interleaved (a stack and a
reshape) and cropped to the input (the sub-pixel decomposition of a transposed convolution). Each
phase multiplies only the taps that reach it, where the strided kernel multiplies every tap and
drops those whose position the stride does not divide, and each runs on the stride-1 paths (the
implicit GEMM's packing in place, the direct convs), which a strided gradient's divisors rule out.
Dilated gradients keep the strided kernel.
"""
from __future__ import annotations

from .. import ops
from ..graph import Node
from ..program import Program


def split_strided_input_grads(prog: Program) -> Program:
    """Replace each strided, undilated conv2d_input_grad by its phases (see the module docstring)."""
    def rule(node: Node, inputs: list) -> Node | None:
        a = node.attrs
        if node.op.name != "conv2d_input_grad" or a["strides"] == (1, 1) or a["dilations"] != (1, 1):
            return None
        return phases(*inputs, **a)
    return prog.rebuild(rule)


def phases(dy: Node, w: Node, input_size: tuple, strides: tuple, padding: tuple, dilations: tuple, groups: int,
           data_format: str) -> Node:
    """conv2d_input_grad(dy, w, ...) (undilated) as stride-1 gradients of its phases, interleaved."""
    h_axis, w_axis = (1, 2) if data_format == "NHWC" else (2, 3)
    (sh, sw), (kh, kw) = strides, w.shape[:2]
    oh, ow = dy.shape[h_axis], dy.shape[w_axis]
    uh, uw = -(-((oh - 1) * sh + kh) // sh), -(-((ow - 1) * sw + kw) // sw)  # each phase's rows and columns
    one = dict(strides=(1, 1), padding=((0, 0), (0, 0)), dilations=(1, 1), groups=groups, data_format=data_format)
    rows = []
    for p in range(sh):
        cols = []
        for q in range(sw):
            taps_h, taps_w = len(range(p, kh, sh)), len(range(q, kw, sw))
            if not taps_h or not taps_w:  # a kernel narrower than the stride: no tap reaches this phase
                shape = list(dy.shape)
                shape[h_axis], shape[w_axis] = uh, uw
                shape[3 if data_format == "NHWC" else 1] = w.shape[2] * groups
                cols.append(ops.broadcast_to(ops.constant(0.0, dy.dtype, dy.graph), tuple(shape)))
                continue
            sub = w[p::sh, q::sw]
            phase = ops.apply("conv2d_input_grad", [dy, sub], input_size=(oh + taps_h - 1, ow + taps_w - 1), **one)
            pads = [(0, 0)] * dy.ndim
            pads[h_axis], pads[w_axis] = (0, uh - (oh + taps_h - 1)), (0, uw - (ow + taps_w - 1))
            cols.append(ops.pad(phase, pads) if any(pads) else phase)
        rows.append(ops.stack(cols, axis=w_axis + 1))
    full = ops.stack(rows, axis=h_axis + 1)  # NHWC (N, uh, sh, uw, sw, C); NCHW (N, C, uh, sh, uw, sw)
    shape = list(dy.shape)
    shape[h_axis], shape[w_axis] = uh * sh, uw * sw
    shape[3 if data_format == "NHWC" else 1] = w.shape[2] * groups
    full = ops.reshape(full, tuple(shape))
    (top, _), (left, _) = padding
    height, width = input_size
    crop = [slice(None)] * dy.ndim
    crop[h_axis], crop[w_axis] = slice(top, top + height), slice(left, left + width)
    out = full[tuple(crop)]
    short = [(0, 0)] * dy.ndim  # rows and columns past the full extent (an output_padding's): zeros
    short[h_axis], short[w_axis] = (0, height - out.shape[h_axis]), (0, width - out.shape[w_axis])
    return ops.pad(out, short) if any(short) else out
