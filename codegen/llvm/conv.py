"""LLVM rendering of the windowed load (codegen/window.py): the element's address from its
per-axis coordinates, each guarded axis tested (inside the axis, an exact multiple of its divisor);
where a test fails the address is clamped to 0 and the value is the window's fill, so no load ever
leaves the buffer."""
from __future__ import annotations

from llvmlite import ir

from ..window import Coord, Window, guarded_axes, row_strides

I64 = ir.IntType(64)


def window_load(em, e: Window, typ: ir.Type) -> ir.Value:
    """The value of windowed load `e` (of LLVM type `typ`) in kernel emitter `em` (render.py's _KernelEmitter)."""
    b = em.b
    inside, address = None, ir.Constant(I64, 0)
    for coord, dim, stride, guarded in zip(e.coords, e.shape, row_strides(e.shape), guarded_axes(e, em.k.domain)):
        index, ok = axis_index(em, coord, em.N if dim is None else ir.Constant(I64, dim), guarded)
        if ok is not None:
            inside = ok if inside is None else b.and_(inside, ok)
        step = ir.Constant(I64, stride[0])
        for _ in range(stride[1]):
            step = b.mul(step, em.N, flags=["nsw"])
        address = b.add(address, b.mul(index, step, flags=["nsw"]), flags=["nsw"])
    if inside is None:
        return b.load(em.element(e.buffer, address, e.dtype), typ=typ)
    safe = b.select(inside, address, ir.Constant(I64, 0))
    value = b.load(em.element(e.buffer, safe, e.dtype), typ=typ)
    return b.select(inside, value, ir.Constant(typ, e.fill))


def axis_index(em, coord: Coord, extent: ir.Value, guarded: bool) -> tuple[ir.Value, ir.Value | None]:
    """The axis index and, where guarded, the i1 saying it is a real element."""
    b = em.b
    q = ir.Constant(I64, coord.const)
    for var, coef in coord.terms:
        q = b.add(q, b.mul(em.vars[var], ir.Constant(I64, coef), flags=["nsw"]), flags=["nsw"])
    if not guarded:
        return q, None
    if coord.div == 1:
        return q, b.icmp_unsigned("<", q, extent)  # unsigned: a negative index is a huge one
    div = ir.Constant(I64, coord.div)
    index = b.sdiv(q, div)
    exact = b.icmp_signed("==", b.srem(q, div), ir.Constant(I64, 0))
    ok = b.and_(b.icmp_signed(">=", q, ir.Constant(I64, 0)), b.and_(exact, b.icmp_signed("<", index, extent)))
    return index, ok
