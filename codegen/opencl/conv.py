"""OpenCL C rendering of the windowed load (codegen/window.py): a conditional expression that reads
the buffer only where every guarded coordinate is a real element (C evaluates one branch), else the
window's fill."""
from __future__ import annotations

from ..window import Coord, Window, guarded_axes, row_strides


def window_text(e: Window, domain: tuple, buffer: str, names: dict, fill: str) -> str:
    """C text of windowed load `e` of `buffer` in a kernel over `domain`, loop var v named names[v]."""
    tests, address = [], []
    for coord, dim, stride, guarded in zip(e.coords, e.shape, row_strides(e.shape), guarded_axes(e, domain)):
        q = _coordinate(coord, names)
        extent = "N" if dim is None else f"{dim}L"
        index = q if coord.div == 1 else f"({q} / {coord.div}L)"
        if guarded:
            tests.append(f"{q} >= 0")
            if coord.div != 1:
                tests.append(f"{q} % {coord.div}L == 0")
            tests.append(f"{index} < {extent}")
        address.append("*".join([index] + ([f"{stride[0]}L"] if stride[0] != 1 else []) + ["N"] * stride[1]))
    load = f"{buffer}[{' + '.join(address)}]"
    return f"(({' && '.join(tests)}) ? {load} : {fill})" if tests else load


def _coordinate(coord: Coord, names: dict) -> str:
    parts = [names[v] if c == 1 else f"{names[v]}*{c}L" for v, c in coord.terms]
    return "(" + " + ".join(parts + [f"{coord.const}L"]) + ")"
