"""A convolution kernel seen as a GEMM (implicit GEMM): the description every backend's conv GEMM
reads (codegen/llvm/igemm.py, codegen/opencl's tiled form).

A conv kernel (codegen/lower_conv.py) over (v0, v1, v2, group, v4, v5, v6, v7) summing
window(image) * other over (v5, v6, v7) is C[M, N] = A[M, K] @ B[K, N] with rows M = (v0, v1, v2),
columns N = v4 and depth K = (v5, v6, v7), each row-major: forward (n, i, j) x (kh, kw, cin), input
gradient (n, h, w) x (kh, kw, cout), filter gradient (kh, kw, cin) x (n, i, j). A[m, k] is the
window's element (zero outside the image), B[k, j] the other operand's element at an affine offset.
"""
from __future__ import annotations

from .loopir import Kernel, Load, Op
from .window import Window, guarded_axes, row_strides

ROWS, COLS, COLUMN = (0, 1, 2), (5, 6, 7), 4  # the conv kernel's GEMM roles of its loop vars: rows, depth, column


def operands(k: Kernel) -> tuple[Window, Load] | None:
    """(window, other) when `k` is a conv kernel an implicit GEMM can compute, else None: a sum of
    window * dense load over (v5, v6, v7), one group, float, static strides, two guarded axes at most."""
    red = k.reduce
    if red is None or red.op != "sum" or red.scan or len(k.domain) != 8 or red.axes != COLS or k.domain[3] != 1:
        return None
    v = red.value
    if not (isinstance(v, Op) and v.name == "mul" and len(v.args) == 2):
        return None
    w, other = v.args
    if not isinstance(w, Window) or type(other) is not Load or w.dtype.kind != "f" or other.dtype != w.dtype:
        return None
    if any(d is None for d in (k.domain[1], k.domain[2], k.domain[4], k.domain[6], k.domain[7])):
        return None
    if any(nexp for _, _, nexp in other.offset.terms) or any(nexp for _, nexp in other.offset.base) \
            or any(var in ROWS for var, _, _ in other.offset.terms):
        return None
    guarded = guarded_axes(w, k.domain)
    if sum(guarded) > 2 or any(c.div != 1 and not g for c, g in zip(w.coords, guarded)):
        return None
    for coord, (_, nexp), g in zip(w.coords, row_strides(w.shape), guarded):
        if any(var == COLUMN for var, _ in coord.terms) or (nexp and (coord.terms or coord.const)):
            return None
    return w, other
