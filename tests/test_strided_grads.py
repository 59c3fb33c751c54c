"""The graph pass split_strided_input_grads (graphnet/passes/strided_grads.py): a strided conv2d_input_grad
becomes stride-1 phases (one per phase a tap reaches), interleaved; stride-1 and dilated ones stay.
Values against conv2d_input_grad's numpy reference on odd geometry (strides 2 and 3, kernels narrower
and wider than the stride, asymmetric padding, input sizes past the full extent, groups, NCHW), on
every backend."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet.ops.base import apply
from graphnet.ops.conv import conv2d_input_grad_reference, out_size
from graphnet.passes import split_strided_input_grads
from graphnet.program import Program
from helpers import run
from test_reliability import BACKENDS

pytestmark = pytest.mark.usefixtures("private_cache")

RNG = np.random.default_rng(23)
# (input H x W, filter (KH, KW, Cin / groups, Cout), strides, padding, groups)
CASES = [((9, 8), (3, 3, 4, 5), (2, 2), ((1, 1), (1, 0)), 1),
         ((10, 7), (4, 2, 3, 2), (2, 3), ((0, 2), (1, 1)), 1),  # a kernel column narrower than its stride
         ((7, 9), (1, 1, 2, 3), (3, 2), ((0, 0), (0, 0)), 1),  # 1 x 1: most phases get no tap (zeros)
         ((8, 8), (3, 3, 2, 4), (2, 2), ((2, 2), (0, 1)), 2),  # groups
         ((11, 6), (5, 3, 3, 3), (3, 1), ((1, 3), (0, 0)), 1)]  # strided along one axis only


def _grad(dy, w, size, strides, padding, groups, fmt="NHWC", dilations=(1, 1)):
    return apply("conv2d_input_grad", [dy, w], input_size=size, strides=strides, padding=padding,
                 dilations=dilations, groups=groups, data_format=fmt)


def _dy_shape(size, kernel, strides, padding, dilations=(1, 1)):
    return tuple(out_size(n, k, s, d, p) for n, k, s, p, d in zip(size, kernel, strides, padding, dilations))


def test_the_pass_replaces_strided_undilated_input_gradients_by_their_phases():
    dy = gn.placeholder("dy", (None, 5, 5, 5))
    w = gn.placeholder("w", (3, 3, 4, 5))
    strided = _grad(dy, w, (9, 9), (2, 2), ((1, 1), (1, 1)), 1)
    plain = _grad(gn.placeholder("dy1", (None, 7, 7, 5)), w, (9, 9), (1, 1), ((0, 0), (0, 0)), 1)
    dilated = _grad(gn.placeholder("dy2", (None, 4, 4, 5)), w, (9, 9), (2, 2), ((1, 1), (1, 1)), 1, dilations=(2, 2))
    out = split_strided_input_grads(Program([strided, plain, dilated]))
    grads = [n for n in out.nodes() if n.op.name == "conv2d_input_grad"]
    assert sorted((n.attrs["strides"], n.attrs["dilations"]) for n in grads) == \
        [((1, 1), (1, 1))] * 5 + [((2, 2), (2, 2))]  # four phases, the stride-1 one, the dilated one
    assert [f.shape for f in out.fetches] == [strided.shape, plain.shape, dilated.shape]


@pytest.mark.parametrize("fmt", ["NHWC", "NCHW"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_phases_equal_the_strided_reference(backend, fmt):
    fetches, feeds, want = [], {}, []
    for i, (size, kernel, strides, padding, groups) in enumerate(CASES):
        kh, kw, cin_g, cout = kernel
        oh, ow = _dy_shape(size, (kh, kw), strides, padding)
        dy_shape = (2, oh, ow, cout) if fmt == "NHWC" else (2, cout, oh, ow)
        dy_value, w_value = RNG.normal(size=dy_shape), RNG.normal(size=kernel)
        dy = gn.placeholder(f"dy{i}", (None,) + dy_shape[1:], np.float64)
        fetches.append(_grad(dy, gn.constant(w_value), size, strides, padding, groups, fmt))
        feeds[f"dy{i}"] = dy_value
        want.append(conv2d_input_grad_reference(dy_value, w_value, size, strides, padding, (1, 1), groups, fmt))
    for got, expected, case in zip(run(fetches, feeds, backend=backend), want, CASES):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12, err_msg=str(case))
