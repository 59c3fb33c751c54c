"""Convolution and pooling written as plain loops over output and window positions, independently
of graphnet.ops.conv's sliding-window references (tests/test_ops.py checks those against these)."""
from __future__ import annotations

import numpy as np


def _nhwc(x, data_format):
    return x if data_format == "NHWC" else x.transpose(0, 2, 3, 1)


def _back(y, data_format):
    return y if data_format == "NHWC" else y.transpose(0, 3, 1, 2)


def _taps(i, k, stride, dilation, pad, size):
    """(window index, input index) of the taps of output position i that land inside the input."""
    return [(t, i * stride + t * dilation - pad) for t in range(k)
            if 0 <= i * stride + t * dilation - pad < size]


def _out(size, k, stride, dilation, pad):
    return (size + pad[0] + pad[1] - dilation * (k - 1) - 1) // stride + 1


def conv2d(x, w, strides, padding, dilations, groups, data_format):
    x = _nhwc(x, data_format)
    n, h, wd, c = x.shape
    kh, kw, cig, cout = w.shape
    cog = cout // groups
    ho, wo = _out(h, kh, strides[0], dilations[0], padding[0]), _out(wd, kw, strides[1], dilations[1], padding[1])
    y = np.zeros((n, ho, wo, cout), np.float64)
    for i in range(ho):
        for j in range(wo):
            for a, hi in _taps(i, kh, strides[0], dilations[0], padding[0][0], h):
                for b, wj in _taps(j, kw, strides[1], dilations[1], padding[1][0], wd):
                    for o in range(cout):
                        g = o // cog
                        y[:, i, j, o] += x[:, hi, wj, g * cig:(g + 1) * cig] @ w[a, b, :, o]
    return _back(y.astype(x.dtype), data_format)


def conv2d_input_grad(dy, w, input_size, strides, padding, dilations, groups, data_format):
    dy = _nhwc(dy, data_format)
    n, ho, wo, cout = dy.shape
    kh, kw, cig, _ = w.shape
    cog = cout // groups
    dx = np.zeros((n, *input_size, cig * groups), np.float64)
    for i in range(ho):
        for j in range(wo):
            for a, hi in _taps(i, kh, strides[0], dilations[0], padding[0][0], input_size[0]):
                for b, wj in _taps(j, kw, strides[1], dilations[1], padding[1][0], input_size[1]):
                    for o in range(cout):
                        g = o // cog
                        dx[:, hi, wj, g * cig:(g + 1) * cig] += dy[:, i, j, o:o + 1] * w[a, b, :, o]
    return _back(dx.astype(dy.dtype), data_format)


def conv2d_filter_grad(x, dy, kernel_size, strides, padding, dilations, groups, data_format):
    x, dy = _nhwc(x, data_format), _nhwc(dy, data_format)
    n, h, wd, c = x.shape
    _, ho, wo, cout = dy.shape
    cig, cog = c // groups, cout // groups
    dw = np.zeros((*kernel_size, cig, cout), np.float64)
    for i in range(ho):
        for j in range(wo):
            for a, hi in _taps(i, kernel_size[0], strides[0], dilations[0], padding[0][0], h):
                for b, wj in _taps(j, kernel_size[1], strides[1], dilations[1], padding[1][0], wd):
                    for o in range(cout):
                        g = o // cog
                        dw[a, b, :, o] += x[:, hi, wj, g * cig:(g + 1) * cig].T @ dy[:, i, j, o]
    return dw.astype(x.dtype)


def _pool_windows(x, ksize, strides, padding, dilations):
    """For each output position, the list of input positions its window covers."""
    n, h, wd, c = x.shape
    (kh, kw), (sh, sw), (dh, dw) = ksize, strides, dilations
    ho, wo = _out(h, kh, sh, dh, padding[0]), _out(wd, kw, sw, dw, padding[1])
    return {(i, j): [(hi, wj) for _, hi in _taps(i, kh, sh, dh, padding[0][0], h)
                     for _, wj in _taps(j, kw, sw, dw, padding[1][0], wd)]
            for i in range(ho) for j in range(wo)}, (n, ho, wo, c)


def max_pool2d(x, ksize, strides, padding, data_format, dilations=(1, 1)):
    x = _nhwc(x, data_format)
    windows, shape = _pool_windows(x, ksize, strides, padding, dilations)
    y = np.empty(shape, x.dtype)
    for (i, j), taps in windows.items():
        y[:, i, j] = np.max([x[:, hi, wj] for hi, wj in taps], axis=0)
    return _back(y, data_format)


def max_pool2d_grad(x, y, dy, ksize, strides, padding, data_format, dilations=(1, 1)):
    x, y, dy = (_nhwc(a, data_format) for a in (x, y, dy))
    windows, _ = _pool_windows(x, ksize, strides, padding, dilations)
    dx = np.zeros(x.shape, np.float64)
    for (i, j), taps in windows.items():
        hits = [x[:, hi, wj] == y[:, i, j] for hi, wj in taps]
        count = np.sum(hits, axis=0)
        for (hi, wj), hit in zip(taps, hits):
            dx[:, hi, wj] += np.where(hit, dy[:, i, j] / np.maximum(count, 1), 0)
    return _back(dx.astype(x.dtype), data_format)


REFERENCE = {"conv2d": conv2d, "conv2d_input_grad": conv2d_input_grad, "conv2d_filter_grad": conv2d_filter_grad,
             "max_pool2d": max_pool2d, "max_pool2d_grad": max_pool2d_grad, "in_training": lambda a, b: a}
