"""Loop passes: small rewrites LoopProgram -> LoopProgram, run in order after `lower` built the kernels.

`LOOP_PASSES` is the list every native backend runs (a backend may add its own scheduling passes,
as the LLVM backend adds `use_gemm_routines` before `choose_loop_order`). The passes run through
`graphnet.passes.pipeline.run_passes`, which verifies the loop program after each one
(`verify_loops`) and records its text for dumps. Each pass may mutate the program it is given
and returns it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from .loopir import (Acc, Affine, Buffer, Const, Expr, Index, Kernel, Load, LoadAt, LoopProgram, Op, Store, Var, affine,
                     children, rewrite, walk_unique)
from .window import Window, check_window

SHORT = 16  # a reduction of at most this many elements over a row shorter than this: see short_reduction

LoopPass = Callable[[LoopProgram], LoopProgram]


# ---- dead stores --------------------------------------------------------------------------
def prune_dead_stores(lp: LoopProgram) -> LoopProgram:
    """Drop stores nothing reads (not a later load, a fetch or an assignment's value), then kernels
    left without stores. A stored buffer that some kernel reads is kept whatever the order: the
    verifier rejects reads of buffers never written."""
    wanted = set(lp.fetches) | {value for _, value in lp.assigns}
    wanted |= {ld.buffer for k in lp.kernels for ld in k.loads()}
    wanted |= {b for k in lp.kernels if k.call is not None for b in k.call.reads()}
    for k in lp.kernels:
        k.stores = [s for s in k.stores if s.buffer in wanted]
    lp.kernels = [k for k in lp.kernels if k.stores or k.call is not None]
    return lp


# ---- optimizer updates in place -----------------------------------------------------------
def write_updates_in_place(lp: LoopProgram) -> LoopProgram:
    """An assignment `var <- value` becomes `value`'s kernel writing `var` in place when no later
    kernel reads the old `var`, that kernel reads `var` only at the element it writes and does
    not write `var` otherwise. Decided for every assignment on the program as given, then applied."""
    redirect: dict[int, int] = {}
    for var, value in lp.assigns:
        if value in redirect or lp.buffers[value].kind != "temp":
            continue
        writers = [i for i, k in enumerate(lp.kernels) if any(s.buffer == value for s in k.stores)]
        if len(writers) != 1:
            continue
        k = lp.kernels[writers[0]]
        store = next(s for s in k.stores if s.buffer == value)
        later = any(ld.buffer == var for other in lp.kernels[writers[0] + 1:] for ld in other.loads())
        same = all(isinstance(ld, Load) and ld.offset == store.offset for ld in k.loads() if ld.buffer == var)
        if not later and same and store.index is None and not any(s.buffer == var for s in k.stores):
            redirect[value] = var
    lp.assigns = [(var, value) for var, value in lp.assigns if redirect.get(value) != var]
    _remap(lp, redirect)
    return lp


def copy_assignments(lp: LoopProgram) -> LoopProgram:
    """The assignments left become copy kernels after every other kernel (all values are computed
    before any variable they read is overwritten: simultaneous assignment)."""
    for var, value in lp.assigns:
        buf = lp.buffers[var]
        at = affine(tuple(range(len(buf.shape))), buf.shape)
        lp.kernels.append(Kernel(f"assign_{buf.name}", buf.shape, [Store(
            var, at, Load(value, at, buf.dtype), f"update {buf.name}", "")], order=tuple(range(len(buf.shape)))))
    lp.assigns = []
    return lp


def _remap(lp: LoopProgram, redirect: dict[int, int]) -> None:
    def load(e: Expr) -> Expr:
        if isinstance(e, (Load, LoadAt)) and e.buffer in redirect:
            return dataclasses.replace(e, buffer=redirect[e.buffer])  # a Window keeps its fields
        return e
    for k in lp.kernels:
        for s in k.stores:
            s.buffer = redirect.get(s.buffer, s.buffer)
        rewrite_kernel(k, load)
    lp.fetches = [redirect.get(f, f) for f in lp.fetches]


def rewrite_kernel(k: Kernel, fn: Callable[[Expr], Expr]) -> None:
    """Rewrite every expression of `k` (`loopir.rewrite`: each distinct node once, sharing kept)."""
    red = k.reduce
    contraction = list(red.contraction) if red is not None and red.contraction else []
    new = rewrite(k.exprs() + contraction, fn)
    if red is not None:
        red.value, new = new[0], new[1:]
    for s in k.stores:
        s.value, new = new[0], new[1:]
    for s in k.stores:
        if s.index is not None:
            s.index, new = new[0], new[1:]
    if contraction:
        red.contraction = tuple(new)


# ---- arithmetic -----------------------------------------------------------------------------
def hoist_reciprocals(lp: LoopProgram) -> LoopProgram:
    """x / y with y loop-invariant (Adam's bias correction, a mean's N) -> x * (1 / y): the compiler
    hoists one division out of the loop (divisions and square roots bound the fused Adam update)."""
    for k in lp.kernels:
        invariant: dict = {}

        def reciprocal(e: Expr) -> Expr:
            if isinstance(e, Op) and e.name == "div" and e.dtype.kind == "f":
                x, y = e.args
                if not isinstance(y, Const) and _invariant(y, invariant) and not _invariant(x, invariant):
                    return Op("mul", (x, Op("div", (Const(1.0, e.dtype), y), e.dtype)), e.dtype)
            return e
        values = rewrite([s.value for s in k.stores], reciprocal)
        for s, value in zip(k.stores, values):
            s.value = value
    return lp


def _invariant(e: Expr, memo: dict) -> bool:
    """Is `e` the same at every element of the loop nest (scalar loads, N, constants)? `memo` holds
    the answers so far (a rewrite asks children first, so each node is decided once)."""
    for x in walk_unique(e, skip=memo):
        memo[x] = not isinstance(x, (Acc, Index, Var)) and not (isinstance(x, Load) and x.offset.terms) and \
            all(memo[c] for c in children(x))
    return memo[e]


# ---- loop order -----------------------------------------------------------------------------
def choose_loop_order(lp: LoopProgram) -> LoopProgram:
    """Loop order of each kernel not yet scheduled. A reduction puts innermost the var with the most
    unit-stride accesses in the accumulated value (plus one for a unit-stride store); a kept var
    there accumulates a row in scratch memory (matmul A @ B, bias gradients), otherwise, or for a
    short reduction over a short row (`short_reduction`), a register accumulates (ties)."""
    for k in lp.kernels:
        if not k.order:
            _choose_order(lp, k)
    return lp


def _choose_order(lp: LoopProgram, k: Kernel) -> None:
    variables = list(range(len(k.domain)))
    red = k.reduce
    if red is None or not variables:
        k.order = tuple(variables)
        return
    if red.scan:  # each kept element runs its scan in a register
        k.order = tuple(v for v in variables if v not in red.axes) + tuple(red.axes)
        return
    kept = [v for v in variables if v not in red.axes]
    score = {v: sum(ld.offset.stride(v) == (1, 0) for ld in loads(red.value)) +
             any(s.offset.stride(v) == (1, 0) for s in k.stores) for v in variables}
    inner = max(variables, key=lambda v: (score[v], v in red.axes, v))
    if inner in kept and k.domain[inner] != 1 and not short_reduction(k, inner):
        k.order = tuple(v for v in kept if v != inner) + tuple(red.axes) + (inner,)
        red.scratch = add_buffer(lp, f"row_{k.name}", (k.domain[inner],), red.value.dtype)
    else:
        k.order = tuple(kept) + tuple(red.axes)


def short_reduction(k: Kernel, inner: int) -> bool:
    """Does each kept element reduce at most SHORT elements over a row of fewer than SHORT (a pooling
    window over a few channels)? Then each accumulates in a register: the scratch row would cost a
    load and a store per element and be too short to vectorize."""
    extents = [k.domain[v] for v in k.reduce.axes]
    return None not in extents and math.prod(extents) <= SHORT and k.domain[inner] is not None and \
        k.domain[inner] < SHORT


def add_buffer(lp: LoopProgram, name: str, shape: tuple, dtype) -> int:
    """Append a temp buffer; returns its id."""
    lp.buffers.append(Buffer(len(lp.buffers), name, "temp", tuple(shape), np.dtype(dtype)))
    return len(lp.buffers) - 1


def loads(e: Expr) -> list[Load]:
    """The distinct loads of `e`."""
    return [x for x in walk_unique(e) if isinstance(x, Load)]


LOOP_PASSES: list[LoopPass] = [prune_dead_stores, write_updates_in_place, copy_assignments, hoist_reciprocals,
                               choose_loop_order]


# ---- the verifier ---------------------------------------------------------------------------
def verify_loops(lp: LoopProgram, before: LoopProgram | None = None) -> None:
    """Check buffer references, loop vars within each domain, and that every temp a kernel reads
    was written by an earlier kernel, or by this kernel at the same element (a kernel reading
    elements of its own output that it has not written yet is a fusion bug); stores at computed
    indices accumulate into buffers written before (`_check_accumulate`)."""
    written: set[int] = set()
    n = len(lp.buffers)
    for k in lp.kernels:
        here = {s.buffer: s.offset for s in k.stores}
        for s in k.stores:
            _check_offset(k, s.offset, f"store to b{s.buffer}")
            if not 0 <= s.buffer < n:
                raise AssertionError(f"{k.name}: store to unknown buffer b{s.buffer}")
            if s.index is not None or s.accumulate:
                _check_accumulate(lp, k, s, written)
        for ld in k.loads():
            _check_load(k, ld)
            if not 0 <= ld.buffer < n:
                raise AssertionError(f"{k.name}: load of unknown buffer b{ld.buffer}")
            if isinstance(ld, Window):
                check_window(k, ld, lp.buffers[ld.buffer])
            if lp.buffers[ld.buffer].kind != "temp" or ld.buffer in written:
                continue
            if ld.buffer not in here:
                raise AssertionError(f"{k.name}: reads b{ld.buffer} before any kernel wrote it")
            if isinstance(ld, LoadAt):  # a computed index may reach elements not written yet
                raise AssertionError(f"{k.name}: reads b{ld.buffer} at a computed index while writing it")
            if here[ld.buffer] != ld.offset:
                raise AssertionError(f"{k.name}: reads b{ld.buffer}[{ld.offset}] while writing it at "
                                     f"[{here[ld.buffer]}]")
        if k.call is not None:
            _check_call(lp, k, written)
            written |= set(k.call.writes())
        if k.reduce is not None and any(not 0 <= a < len(k.domain) for a in k.reduce.axes):
            raise AssertionError(f"{k.name}: reduces over vars {k.reduce.axes} outside its domain")
        if k.order and sorted(k.order) != list(range(len(k.domain))):
            raise AssertionError(f"{k.name}: order {k.order} is not a permutation of its loop vars")
        written |= set(here)
    for f in lp.fetches:
        if lp.buffers[f].kind == "temp" and f not in written:
            raise AssertionError(f"fetch b{f} is never written")


def _check_accumulate(lp: LoopProgram, k: Kernel, s: Store, written: set) -> None:
    """A store at a computed index accumulates (an overwrite's result would depend on the order of
    duplicates) at an int64 index of the kernel's vars, into an element an earlier kernel wrote, in
    a kernel without a reduction that reads the buffer nowhere (another iteration may have added to
    the element it would read)."""
    if s.index is not None and not s.accumulate:
        raise AssertionError(f"{k.name}: a store at a computed index must accumulate (b{s.buffer})")
    if s.index is not None:
        _check_index(k, s.index, f"the index of a store to b{s.buffer}")
    if k.reduce is not None:
        raise AssertionError(f"{k.name}: accumulates into b{s.buffer} in a reduction kernel")
    if lp.buffers[s.buffer].kind == "temp" and s.buffer not in written:
        raise AssertionError(f"{k.name}: accumulates into b{s.buffer} before any kernel wrote it")
    if any(ld.buffer == s.buffer for ld in k.loads()) or sum(t.buffer == s.buffer for t in k.stores) > 1:
        raise AssertionError(f"{k.name}: reads b{s.buffer} while accumulating into it")


def _check_call(lp: LoopProgram, k: Kernel, written: set) -> None:
    """A runtime call reads only temps written before it, of static size, in matching pairs."""
    call = k.call
    if k.stores or k.reduce is not None or len(call.srcs) != len(call.dsts):
        raise AssertionError(f"{k.name}: a call kernel has no stores or reduction and pairs each src with a dst")
    for b in call.buffers():
        if not 0 <= b < len(lp.buffers) or None in lp.buffers[b].shape:
            raise AssertionError(f"{k.name}: call buffer b{b} is unknown or batch-sized")
    for b in call.reads():
        if lp.buffers[b].kind == "temp" and b not in written:
            raise AssertionError(f"{k.name}: reads b{b} before any kernel wrote it")


def _check_offset(k: Kernel, offset: Affine, what: str) -> None:
    if any(not 0 <= v < len(k.domain) for v, _, _ in offset.terms):
        raise AssertionError(f"{k.name}: {what} uses a loop var outside its domain {k.domain}")


def _check_load(k: Kernel, ld: Load | LoadAt) -> None:
    """A load's loop vars lie in the domain; so do a computed index's (`_check_index`)."""
    if isinstance(ld, Load):
        _check_offset(k, ld.offset, f"load of b{ld.buffer}")
        return
    _check_index(k, ld.index, f"the index of a load of b{ld.buffer}")


def _check_index(k: Kernel, index: Expr, what: str) -> None:
    """A computed index is an int64 expression of Var, Size, Const, loads (checked as loads of their
    own) and instructions, without Acc or Index, its vars within the domain."""
    if index.dtype != np.int64:
        raise AssertionError(f"{k.name}: {what} is {index.dtype}, not int64")
    for e in walk_unique(index):
        if isinstance(e, Var) and not 0 <= e.var < len(k.domain):
            raise AssertionError(f"{k.name}: {what} uses v{e.var} outside its domain {k.domain}")
        if isinstance(e, (Acc, Index)):
            raise AssertionError(f"{k.name}: {what} uses {e}")



def loop_pass_texts(records) -> dict[str, str]:
    """Dump files `loop_NN_<pass>.txt`: the loop IR after each loop pass (from `lower`'s records)."""
    return {f"loop_{i:02d}_{r.name}.txt": r.text for i, r in enumerate(records)}
