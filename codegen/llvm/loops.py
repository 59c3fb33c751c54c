"""Counted loops in LLVM IR as a context manager (the one phi-loop emitter GEMM, tests and benchmarks share)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from llvmlite import ir

I64 = ir.IntType(64)


def i64(value: ir.Value | int) -> ir.Value:
    return value if isinstance(value, ir.Value) else ir.Constant(I64, value)


@contextmanager
def for_range(b: ir.IRBuilder, start: ir.Value | int, stop: ir.Value | int, step: ir.Value | int = 1, name: str = "i",
              at_least_once: bool = False) -> Iterator[ir.Value]:
    """for i in range(start, stop, step) as an SSA (phi) loop; `at_least_once` makes it a do-while.

    The body is emitted inside the `with`; the builder ends positioned after the loop.
    """
    pre = b.block
    head = b.append_basic_block(f"{name}.head")
    body = b.append_basic_block(f"{name}.body")
    done = b.append_basic_block(f"{name}.done")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64, name)
    i.add_incoming(i64(start), pre)
    if at_least_once:
        b.branch(body)
    else:
        b.cbranch(b.icmp_signed("<", i, i64(stop)), body, done)
    b.position_at_end(body)
    yield i
    nxt = b.add(i, i64(step))
    i.add_incoming(nxt, b.block)
    if at_least_once:
        b.cbranch(b.icmp_signed("<", nxt, i64(stop)), head, done)
    else:
        b.branch(head)
    b.position_at_end(done)


def carried_loop(b: ir.IRBuilder, count: ir.Value | int, init: list, body, name: str = "i") -> list:
    """for i in range(count) carrying the values `init` through phis (a register tile's accumulators):
    `body(i, values)` emits one iteration and returns the new values; returns the values after the loop."""
    pre = b.block
    head, inner, done = (b.append_basic_block(f"{name}.{part}") for part in ("head", "body", "done"))
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64, name)
    i.add_incoming(i64(0), pre)
    phis = []
    for value in init:
        phi = b.phi(value.type)
        phi.add_incoming(value, pre)
        phis.append(phi)
    b.cbranch(b.icmp_signed("<", i, i64(count)), inner, done)
    b.position_at_end(inner)
    new = body(i, phis)
    latch = b.block
    i.add_incoming(b.add(i, i64(1)), latch)
    for phi, value in zip(phis, new):
        phi.add_incoming(value, latch)
    b.branch(head)
    b.position_at_end(done)
    return phis
