"""Program -> loop IR: choose the materialized nodes and fuse them into kernels (nothing else:
the rewrites after fusion are the loop passes of `loop_passes.py`, run by `lower`).

Fusion rules (one kernel = one loop nest):
- Elementwise and movement nodes are inlined into their single consumer as expression trees;
  movement ops become index maps (transpose permutes, broadcast drops, reshape renumbers).
- A node is materialized (a "root") when it is fetched or assigned, is a reduction or matmul, has
  several consumers, feeds a broadcast into a larger shape, or feeds a matmul or a general reshape.
- A root joins the latest kernel it reads from when it has that kernel's output shape and reads its
  members only at the same element: bias, activation and its derivative join the matmul that feeds
  them. An optimizer update joins the loop that produces its gradient only where the
  optimizer-fusion pass put it in the parameter's region; otherwise it is a kernel of its own.
- An update `var <- value` is recorded as an assignment (`LoopProgram.assigns`) for the loop passes
  to write in place or copy after every kernel.
"""
from __future__ import annotations

import heapq
import math
from collections import defaultdict
from typing import Sequence

import numpy as np

from graphnet.graph import Node
from graphnet.passes.fuse_optimizer import gradient_flow, region_name
from graphnet.passes.pipeline import PassRecord, run_passes
from graphnet.program import Program

from .loop_passes import LOOP_PASSES, LoopPass, verify_loops
from .lower_conv import WINDOW_INPUTS, place_window
from .loopir import Acc, Buffer, Const, Expr, ExprBuilder, Kernel, Load, LoopProgram, Op, Reduce, Size, Store, affine


class NotFusable(Exception):
    pass


def _numel(shape: tuple) -> tuple:
    return math.prod(d for d in shape if d is not None), None in shape


def _broadcast_forms(forms: tuple, in_shape: tuple, out_shape: tuple) -> tuple:
    lead = len(out_shape) - len(in_shape)
    return tuple(None if d == 1 and out_shape[lead + i] != 1 else forms[lead + i] for i, d in enumerate(in_shape))


def _unit_reshape(in_shape: tuple, out_shape: tuple) -> bool:
    return [d for d in in_shape if d != 1] == [d for d in out_shape if d != 1]


def _reshape_forms(forms: tuple, in_shape: tuple, out_shape: tuple) -> tuple:
    real = iter(f for f, d in zip(forms, out_shape) if d != 1)
    return tuple(None if d == 1 else next(real) for d in in_shape)


def _norm(forms: tuple, shape: tuple) -> tuple:
    return tuple(None if d == 1 else f for f, d in zip(forms, shape))


def _movement_base(n: Node) -> Node:
    while n.op.kind == "movement" and (n.op.name != "reshape" or _unit_reshape(n.inputs[0].shape, n.shape)):
        n = n.inputs[0]
    return n


class _Member:
    """A root computed in a kernel: its coordinates as loop vars (`view`) and its value there."""

    def __init__(self, node: Node, view: tuple, value: Expr, buffer: int):
        self.node, self.view, self.value, self.buffer = node, view, value, buffer


class _KernelBuild:
    def __init__(self, index: int, domain: tuple, view: tuple, shape: tuple, reduce: Reduce | None = None):
        self.index, self.domain, self.view, self.shape, self.reduce = index, domain, view, shape, reduce
        self.members: dict[Node, _Member] = {}


class Lowering:
    def __init__(self, prog: Program, fuse: bool = True):
        self.prog, self.fuse = prog, fuse
        self.nodes = self.prog.nodes()
        self.consumers: dict[Node, list[Node]] = defaultdict(list)
        for n in self.nodes:
            for x in n.inputs:
                self.consumers[x].append(n)
        self.buffers: list[Buffer] = []
        self.buffer_of: dict[Node, int] = {}
        self.kernel_of: dict[Node, _KernelBuild] = {}
        self.kernels: list[_KernelBuild] = []
        self.region_gradient = {region_name(p): g for p, g in self.prog.gradients.items()}
        self.update_nodes = set().union(*(gradient_flow(p, g, self.consumers) for p, g in self.prog.gradients.items()))

    # ---- buffers and roots --------------------------------------------------------------
    def _buffer(self, name: str, kind: str, shape: tuple, dtype: np.dtype) -> int:
        self.buffers.append(Buffer(len(self.buffers), name, kind, tuple(shape), np.dtype(dtype)))
        return len(self.buffers) - 1

    def _leaf_buffers(self) -> None:
        placeholders = sorted((n for n in self.nodes if n.op.name == "placeholder"), key=lambda p: p.attrs["name"])
        self.inputs = []
        for p in placeholders:
            self.buffer_of[p] = self._buffer(p.attrs["name"], "input", p.shape, p.dtype)
            self.inputs.append(self.buffer_of[p])
        self.storage = {}
        for n in self.nodes:
            if n.op.name == "variable":
                self.buffer_of[n] = self._buffer(n.attrs["name"], "variable", n.shape, n.dtype)
                self.storage[self.buffer_of[n]] = n.attrs["var"].array
            elif n.op.name == "constant" and n.attrs["value"].array.size != 1:  # one element: inlined
                self.buffer_of[n] = self._buffer(n.name, "constant", n.shape, n.dtype)
                self.storage[self.buffer_of[n]] = n.attrs["value"].array

    def _roots(self) -> set:
        roots = set()
        wanted = list(self.prog.fetches) + [v for _, v in self.prog.updates]
        for n in self.nodes:
            kind = n.op.kind
            if kind == "source":
                continue
            if kind in ("reduce", "matmul", "window") or not self.fuse:
                roots.add(n)
            consumers = self.consumers[n]
            if kind == "elementwise" and len(consumers) != 1:
                roots.add(n)
            for c in consumers:
                base = _movement_base(n)
                if len(consumers) > 1 or c.op.kind == "matmul" or (
                        c.op.kind in ("elementwise", "movement") and _numel(c.shape) != _numel(n.shape)):
                    roots.add(base)
                if c.op.name == "reshape" and not _unit_reshape(n.shape, c.shape):
                    roots.add(n)
                if any(c.inputs[i] is n for i in WINDOW_INPUTS.get(c.op.name, ())):  # read through windows
                    roots.add(n)
        roots.update(n for n in wanted if n.op.kind != "source")
        return {r for r in roots if r.op.kind != "source"}

    # ---- expressions --------------------------------------------------------------------
    def _expr(self, n: Node, forms: tuple, kb: _KernelBuild) -> Expr:
        member = kb.members.get(n)
        if member is not None:
            if _norm(member.view, n.shape) != _norm(forms, n.shape):
                raise NotFusable(n)
            return member.value
        if n in self.buffer_of:
            return Load(self.buffer_of[n], affine(forms, n.shape), n.dtype)
        return self._define(n, forms, kb)

    def _define(self, n: Node, forms: tuple, kb: _KernelBuild) -> Expr:
        name = n.op.name
        if name == "constant":
            return Const(n.attrs["value"].array.reshape(-1)[0].item(), n.dtype)
        if name == "batch_size":
            return Size(n.dtype)
        if n.op.kind == "elementwise":
            args = [self._expr(x, _broadcast_forms(forms, x.shape, n.shape), kb) for x in n.inputs]
            return n.op.scalar(ExprBuilder(affine(forms, n.shape)), *args, **n.attrs)
        x = n.inputs[0] if n.inputs else None
        if name == "transpose":
            inner = [None] * len(forms)
            for d, p in enumerate(n.attrs["perm"]):
                inner[p] = forms[d]
            return self._expr(x, tuple(inner), kb)
        if name == "broadcast_to":
            return self._expr(x, _broadcast_forms(forms, x.shape, n.shape), kb)
        if name == "reshape":
            if _unit_reshape(x.shape, n.shape):
                return self._expr(x, _reshape_forms(forms, x.shape, n.shape), kb)
            if x not in self.buffer_of:
                raise AssertionError(f"reshape input {x.name} is not materialized")
            offset = affine(forms, n.shape)
            member = kb.members.get(x)
            if member is not None:  # computed in this kernel: only its own element may be read back
                if affine(member.view, x.shape) != offset:
                    raise NotFusable(n)
                return member.value
            return Load(self.buffer_of[x], offset, n.dtype)
        raise AssertionError(f"cannot inline {name} ({n.name}, at {n.source})")

    # ---- kernels ------------------------------------------------------------------------
    def _new_kernel(self, domain: tuple, view: tuple, shape: tuple, reduce: Reduce | None = None) -> _KernelBuild:
        kb = _KernelBuild(len(self.kernels), tuple(domain), tuple(view), tuple(shape), reduce)
        self.kernels.append(kb)
        return kb

    def _root_deps(self, r: Node) -> list[Node]:
        deps, stack, seen = [], list(r.inputs), set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in self.roots:
                deps.append(n)
            elif n.op.kind != "source":
                stack.extend(n.inputs)
        return deps

    def _placement_order(self) -> list[Node]:
        """Roots in a topological order that computes uniform values (no placeholder among their
        inputs: learning-rate schedules, bias corrections) first, so that the optimizer region
        finds the gradient's kernel to be the latest one it reads from."""
        batched: dict[Node, bool] = {}
        for n in self.nodes:
            batched[n] = n.op.name == "placeholder" or any(batched[x] for x in n.inputs)
        pending = {n: len(set(n.inputs)) for n in self.nodes}
        ready = [(batched[n], n.id, n) for n in self.nodes if pending[n] == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            _, _, n = heapq.heappop(ready)
            order.append(n)
            for c in dict.fromkeys(self.consumers[n]):
                pending[c] -= 1
                if pending[c] == 0:
                    heapq.heappush(ready, (batched[c], c.id, c))
        return [n for n in order if n in self.roots]

    def _place(self, r: Node) -> None:
        buffer = self._buffer(r.name, "temp", r.shape, r.dtype)
        kind = r.op.kind
        if kind == "reduce":
            x, axes = r.inputs[0], tuple(r.attrs["axes"])
            ident = tuple(range(x.ndim))
            view = tuple(None if d in axes else d for d in ident) if r.attrs["keepdims"] else \
                tuple(d for d in ident if d not in axes)
            kb = self._new_kernel(x.shape, view, r.shape)
            kb.reduce = Reduce(r.op.name, axes, self._expr(x, ident, kb))
            value: Expr = Acc(r.dtype)
        elif kind == "matmul":
            a, b = r.inputs
            kb = self._new_kernel((a.shape[0], b.shape[1], a.shape[1]), (0, 1), r.shape)
            la, lb = self._expr(a, (0, 2), kb), self._expr(b, (2, 1), kb)
            contraction = (la, lb) if isinstance(la, Load) and isinstance(lb, Load) else None
            kb.reduce = Reduce("sum", (2,), Op("mul", (la, lb), r.dtype), contraction)
            value = Acc(r.dtype)
        elif kind == "window":
            kb, value = place_window(self, r)
        else:
            kb, view, value = self._fuse_into_producer(r)
            if kb is None:
                view = tuple(range(r.ndim))
                kb = self._new_kernel(r.shape, view, r.shape)
                value = self._define(r, view, kb)
        kb.members[r] = _Member(r, kb.view if kind in ("reduce", "matmul", "window") else view, value, buffer)
        self.buffer_of[r] = buffer
        self.kernel_of[r] = kb

    def _fuse_into_producer(self, r: Node):
        """The kernel `r` joins, its view there and its value; (None, None, None) for a kernel of its own."""
        kb = self._producer_kernel(r) if self.fuse else None
        if kb is None or not _unit_reshape(kb.shape, r.shape):
            return None, None, None
        view = _reshape_forms(kb.view, r.shape, kb.shape)
        try:
            return kb, view, self._define(r, view, kb)
        except NotFusable:
            return None, None, None

    def _producer_kernel(self, r: Node) -> _KernelBuild | None:
        """The latest kernel `r` reads from. An optimizer update joins it only when the
        optimizer-fusion pass put `r` in the parameter's region and that kernel produces the
        gradient (a gradient computed inline is computed in whichever kernel the region joins)."""
        producers = [self.kernel_of[d] for d in self._root_deps(r)]
        if not producers:
            return None
        latest = max(producers, key=lambda k: k.index)
        if r not in self.update_nodes:
            return latest
        region = self.prog.regions.get(r)
        if region is None:
            return None
        grad = self.region_gradient[region]
        return latest if grad not in self.kernel_of or self.kernel_of[grad] is latest else None

    # ---- the whole program --------------------------------------------------------------
    def run(self) -> LoopProgram:
        self._leaf_buffers()
        self.roots = self._roots()
        copy_buffer = {}  # source nodes fetched or assigned: snapshot first, before any in-place write
        for n in list(self.prog.fetches) + [v for var, v in self.prog.updates if v is not var]:
            if n.op.kind == "source" and n not in copy_buffer:
                ident = tuple(range(n.ndim))
                kb = self._new_kernel(n.shape, ident, n.shape)
                buffer = self._buffer(f"copy_{n.name}", "temp", n.shape, n.dtype)
                kb.members[n] = _Member(n, ident, self._expr(n, ident, kb), buffer)
                copy_buffer[n] = buffer
        for n in self._placement_order():
            self._place(n)

        def home(n: Node) -> int:
            return copy_buffer[n] if n in copy_buffer else self.buffer_of[n]

        kernels = [self._finish(kb) for kb in self.kernels]
        assigns = [(self.buffer_of[var], home(value)) for var, value in self.prog.updates if value is not var]
        return LoopProgram(self.buffers, kernels, [home(f) for f in self.prog.fetches], self.inputs, self.storage,
                           assigns)

    def _finish(self, kb: _KernelBuild) -> Kernel:
        stores = [Store(m.buffer, affine(m.view, m.node.shape), m.value, m.node.name, m.node.source)
                  for m in kb.members.values()]
        names = [m.node.op.name for m in kb.members.values()]
        return Kernel("_".join(dict.fromkeys(names))[:40], kb.domain, stores, kb.reduce)


def lower(prog: Program, fuse: bool = True, loop_passes: Sequence[LoopPass] | None = None
          ) -> tuple[LoopProgram, list[PassRecord]]:
    """Fuse `prog` into kernels, then run `loop_passes` (default: LOOP_PASSES) through the verifying,
    recording pass runner; kernels are numbered k0, k1, ... at the end. Returns the loop program and
    one record per pass (the dumps' loop IR after each)."""
    lp = Lowering(prog, fuse).run()
    lp, records = run_passes(lp, LOOP_PASSES if loop_passes is None else loop_passes, verify=verify_loops,
                             size=lambda p: len(p.kernels), first="lower")
    for i, k in enumerate(lp.kernels):
        k.name = f"k{i}_{k.name}"
    if lp.assigns:
        raise AssertionError("loop passes left assignments without kernels (copy_assignments must run)")
    return lp, records
