"""Program -> loop IR: choose the materialized nodes and fuse them into kernels (nothing else:
the rewrites after fusion are the loop passes of `loop_passes.py`, run by `lower`).

Fusion rules (one kernel = one loop nest):
- Elementwise and movement nodes are inlined into their single consumer as expression trees;
  movement ops become index maps (transpose permutes, broadcast drops, reshape renumbers, slices
  and flips scale and shift a coordinate: a `Lin`, still an affine offset).
- Gather ops (pad, take) compute a coordinate as an integer expression, clamped into the input,
  and load there (`LoadAt`); their inputs are materialized (computing an inlined value at a
  computed coordinate would need every element's expression in index form). scatter_add is a
  zero fill, then a kernel over the updates adding each into the element its clamped index
  selects (an accumulating store at a computed index), which nothing joins.
- A node is materialized (a "root") when it is fetched or assigned, is a reduction, matmul or
  scatter, has several consumers, feeds a broadcast into a larger shape, or feeds a matmul, a
  gather or a general reshape; and an elementwise node every MAX_INLINE_DEPTH inlined elementwise
  nodes (expressions are built and rendered recursively).
- A root joins the latest kernel it reads from when it has that kernel's output shape and reads its
  members only at the same element: bias, activation and its derivative join the matmul that feeds
  them. An optimizer update joins the loop that produces its gradient only where the
  optimizer-fusion pass put it in the parameter's region; otherwise it is a kernel of its own.
- An update `var <- value` is recorded as an assignment (`LoopProgram.assigns`) for the loop passes
  to write in place or copy after every kernel.
- A collective (allreduce) is a call kernel of its own (`Kernel.call`) from its materialized input's
  buffer to its own; nothing joins it (the `overlap_collectives` pass places and buckets the calls).
"""
from __future__ import annotations

import heapq
import math
from collections import defaultdict
from typing import Sequence

import numpy as np

from graphnet.graph import Node
from graphnet.ops.indexing import clamp_index
from graphnet.passes.fuse_optimizer import gradient_flow, region_name
from graphnet.passes.pipeline import PassRecord, run_passes
from graphnet.program import Program

from .loop_passes import LOOP_PASSES, LoopPass, verify_loops
from .lower_conv import WINDOW_INPUTS, place_window
from .loopir import (Acc, Affine, Buffer, Collective, Const, Expr, ExprBuilder, Index, Kernel, Load, LoadAt, LoopProgram,
                     Op, Reduce, Size, Store, Var, affine, as_lin, walk_unique)

I64 = np.dtype(np.int64)
S = ExprBuilder(Affine())  # builds the integer index expressions
ROOT_KINDS = ("reduce", "matmul", "scan", "scatter", "collective", "window")  # always a kernel of their own
GATHER_KINDS = ("gather", "scatter")  # ops whose inputs are materialized
MAX_INLINE_DEPTH = 64  # elementwise nodes inlined one into the next before the next is materialized: building
# and rendering an expression recurses through them, and Python bounds its recursion


class NotFusable(Exception):
    pass


# ---- coordinates ----------------------------------------------------------------------------
# A form is a node's coordinate on one axis: None (0), a loop var, a Lin of one, a composite ((var,
# multiplier), ...) (codegen/lower_conv.py), or an int64 Expr.
def _affine_form(form) -> bool:
    return not isinstance(form, Expr)


def _extent(d: int | None) -> Expr:
    return Size(I64) if d is None else Const(d, I64)


def _coordinate(form) -> Expr:
    """A form as an int64 expression."""
    if isinstance(form, Expr):
        return form
    if isinstance(form, tuple):  # a composite: the sum of var * multiplier
        terms = [Var(v) if m == 1 else S.mul(Var(v), m) for v, m in form]
    else:
        lin = as_lin(form)
        terms = [Var(lin.var) if lin.scale == 1 else S.mul(Var(lin.var), lin.scale)] if lin.var is not None else []
        terms += [S.mul(Size(I64), lin.offset_n)] if lin.offset_n else []
        terms += [Const(lin.offset, I64)] if lin.offset or not terms else []
    total = terms[0]
    for t in terms[1:]:
        total = S.add(total, t)
    return total


def _shift(form, scale: int, offset: int, offset_n: int = 0):
    """The coordinate scale * form + offset + offset_n * N."""
    if isinstance(form, tuple):  # a composite (grouped channels) is shifted as an index expression
        form = _coordinate(form)
    if isinstance(form, Expr):
        shifted = S.add(S.mul(form, scale), offset)
        return S.add(shifted, S.mul(Size(I64), offset_n)) if offset_n else shifted
    return as_lin(form).then(scale, offset, offset_n)


def _flat_index(forms: tuple, shape: tuple) -> Expr:
    """The row-major element index of coordinates `forms` in `shape`, as an int64 expression."""
    total, coef, nexp = None, 1, 0
    for form, dim in zip(reversed(forms), reversed(shape)):
        if form is not None and dim != 1:
            term = _coordinate(form)
            term = S.mul(term, coef) if coef != 1 else term
            for _ in range(nexp):
                term = S.mul(term, Size(I64))
            total = term if total is None else S.add(total, term)
        if dim is None:
            nexp += 1
        else:
            coef *= dim
    return Const(0, I64) if total is None else total


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
        self.call: Collective | None = None
        self.accumulates: list[Store] = []  # stores at computed indices (scatter_add), after the members'
        self.accumulate_ops: list[str] = []  # their ops' names (the kernel's name)
        self.closed = False  # no later root may join this kernel
        self.flops: tuple | None = None  # Kernel.flops


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
            if kind in ROOT_KINDS or not self.fuse:
                roots.add(n)
            consumers = self.consumers[n]
            if kind == "elementwise" and len(consumers) != 1:
                roots.add(n)
            for c in consumers:
                base = _movement_base(n)
                if len(consumers) > 1 or c.op.kind in ("matmul",) + GATHER_KINDS or (
                        c.op.kind in ("elementwise", "movement") and c.op.name != "strided_slice"
                        and _numel(c.shape) != _numel(n.shape)):  # a slice reads each element once at most
                    roots.add(base)
                if (c.op.name == "reshape" and not _unit_reshape(n.shape, c.shape)) or c.op.kind == "collective":
                    roots.add(n)
                if any(c.inputs[i] is n for i in WINDOW_INPUTS.get(c.op.name, ())):  # read through windows
                    roots.add(n)
        roots.update(n for n in wanted if n.op.kind != "source")
        roots = {r for r in roots if r.op.kind != "source"}
        depth: dict[Node, int] = {}  # elementwise nodes inlined below each node, up to MAX_INLINE_DEPTH
        for n in self.nodes:
            if n in roots or n.op.kind not in ("elementwise", "movement"):
                depth[n] = 0
                continue
            depth[n] = max((depth.get(x, 0) for x in n.inputs), default=0) + (n.op.kind == "elementwise")
            if depth[n] > MAX_INLINE_DEPTH and n.op.kind == "elementwise":
                roots.add(n)
                depth[n] = 0
        return roots

    # ---- expressions --------------------------------------------------------------------
    def _expr(self, n: Node, forms: tuple, kb: _KernelBuild) -> Expr:
        member = kb.members.get(n)
        if member is not None:
            if _norm(member.view, n.shape) != _norm(forms, n.shape):
                raise NotFusable(n)
            return member.value
        if n in self.buffer_of:
            return self._load(self.buffer_of[n], forms, n.shape, n.dtype)
        return self._define(n, forms, kb)

    @staticmethod
    def _load(buffer: int, forms: tuple, shape: tuple, dtype: np.dtype) -> Expr:
        """A load of the element at `forms`: affine where every form is, else at a computed index
        (whose computed coordinates their gather rule has clamped)."""
        if all(_affine_form(f) for f in forms):
            return Load(buffer, affine(forms, shape), dtype)
        index = _flat_index(forms, shape)
        if any(isinstance(e, (Acc, Index)) for e in walk_unique(index)):  # a gather at a reduction's result:
            raise NotFusable(buffer)  # the index is known once the reduction is stored, in a kernel after it
        return LoadAt(buffer, index, dtype)

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
        if name in self.INDEXED:
            return self.INDEXED[name](self, n, forms, kb)
        if name == "transpose":
            inner = [None] * len(forms)
            for d, p in enumerate(n.attrs["perm"]):
                inner[p] = forms[d]
            return self._expr(x, tuple(inner), kb)
        if name == "broadcast_to":
            return self._expr(x, _broadcast_forms(forms, x.shape, n.shape), kb)
        if name == "reshape":
            if x.op.name == "constant" and x not in self.buffer_of:  # one element, inlined: read at every index
                return self._define(x, (), kb)
            if _unit_reshape(x.shape, n.shape):
                return self._expr(x, _reshape_forms(forms, x.shape, n.shape), kb)
            if x not in self.buffer_of:
                raise AssertionError(f"reshape input {x.name} is not materialized")
            member = kb.members.get(x)
            if member is not None:  # computed in this kernel: only its own element may be read back
                if not all(_affine_form(f) for f in forms) or affine(member.view, x.shape) != affine(forms, n.shape):
                    raise NotFusable(n)
                return member.value
            return self._load(self.buffer_of[x], forms, n.shape, n.dtype)  # one flat layout: n's index is x's
        raise AssertionError(f"cannot inline {name} ({n.name}, at {n.source})")

    # ---- indexing: coordinates of the input from those of the output ----------------------
    def _strided_slice(self, n: Node, forms: tuple, kb: _KernelBuild) -> Expr:
        inner = tuple(f if (start, step) == (0, 1) else _shift(f, step, start)
                      for f, (start, _, step) in zip(forms, n.attrs["slices"]))
        return self._expr(n.inputs[0], inner, kb)

    def _flip(self, n: Node, forms: tuple, kb: _KernelBuild) -> Expr:
        inner = list(forms)
        for a in n.attrs["axes"]:
            d = n.shape[a]
            inner[a] = _shift(forms[a], -1, -1, 1) if d is None else _shift(forms[a], -1, d - 1)
        return self._expr(n.inputs[0], tuple(inner), kb)

    def _pad(self, n: Node, forms: tuple, kb: _KernelBuild) -> Expr:
        """x's element where the coordinate falls on one (its clamped inner coordinate), else the value."""
        x, fill = n.inputs[0], S.const(n.attrs["value"], n.dtype)
        if 0 in x.shape:
            return fill
        inner, inside = [], None
        for f, d, (lo, hi, interior) in zip(forms, x.shape, n.attrs["pads"]):
            if (lo, hi, interior) == (0, 0, 0):
                inner.append(f)
                continue
            c = S.sub(_coordinate(f), lo)
            t = S.max(c, 0)
            q = S.div(t, interior + 1) if interior else t
            checks = [S.ge(c, 0), S.lt(q, d)] + ([S.eq(S.sub(t, S.mul(q, interior + 1)), 0)] if interior else [])
            for check in checks:
                inside = check if inside is None else S.select(inside, check, False)
            inner.append(S.min(q, d - 1))
        return S.select(inside, self._expr(x, tuple(inner), kb), fill)

    def _take(self, n: Node, forms: tuple, kb: _KernelBuild) -> Expr:
        x, indices = n.inputs
        axis, k = n.attrs["axis"], indices.ndim
        i = S.cast(self._expr(indices, forms[axis:axis + k], kb), I64)
        at = clamp_index(S, i, _extent(x.shape[axis]))
        return self._expr(x, forms[:axis] + (at,) + forms[axis + k:], kb)

    INDEXED = {"strided_slice": _strided_slice, "flip": _flip, "pad": _pad, "take": _take}

    def _scatter(self, r: Node, buffer: int) -> _KernelBuild:
        """scatter_add: a kernel of zeros, then one over the updates' elements (vars: r's axes before
        `axis`, the indices', r's axes after it) adding each at r's element whose `axis` coordinate is
        its clamped index (`Store.accumulate`). Nothing joins the second kernel (`closed`): its result
        is complete only after its last iteration."""
        updates, indices = r.inputs
        axis, k = r.attrs["axis"], indices.ndim
        ident = tuple(range(r.ndim))
        fill = self._new_kernel(r.shape, ident, r.shape)
        fill.members[r] = _Member(r, ident, S.const(0, r.dtype), buffer)
        kb = self._new_kernel(updates.shape, (), r.shape)
        kb.closed = True
        over = tuple(range(axis, axis + k))
        at = clamp_index(S, S.cast(self._expr(indices, over, kb), I64), _extent(r.shape[axis]))
        forms = tuple(range(axis)) + (at,) + tuple(range(axis + k, updates.ndim))
        value = self._expr(updates, tuple(range(updates.ndim)), kb)
        kb.accumulates.append(Store(buffer, Affine(), value, r.name, r.source, _flat_index(forms, r.shape), True))
        kb.accumulate_ops.append(r.op.name)
        return kb

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
        if kind == "collective":
            src = self._stored(r.inputs[0])
            kb = self._new_kernel((), (), r.shape)
            kb.call = Collective(r.op.name, (src,), (buffer,))
            self.buffer_of[r], self.kernel_of[r] = buffer, kb
            return
        if kind == "reduce":
            x, axes = r.inputs[0], tuple(r.attrs["axes"])
            ident = tuple(range(x.ndim))
            view = tuple(None if d in axes else d for d in ident) if r.attrs["keepdims"] else \
                tuple(d for d in ident if d not in axes)
            kb = self._new_kernel(x.shape, view, r.shape)
            kb.reduce = Reduce(r.op.name, axes, self._expr(x, ident, kb))
            value: Expr = Acc(r.dtype)
        elif kind == "scan":
            x, ident = r.inputs[0], tuple(range(r.ndim))
            kb = self._new_kernel(x.shape, ident, r.shape)
            direction = "reverse" if r.attrs["reverse"] else "forward"
            kb.reduce = Reduce("sum", (r.attrs["axis"],), self._expr(x, ident, kb), scan=direction)
            value = Acc(r.dtype)
        elif kind == "matmul":
            a, b = r.inputs
            kb = self._new_kernel((a.shape[0], b.shape[1], a.shape[1]), (0, 1), r.shape)
            la, lb = self._expr(a, (0, 2), kb), self._expr(b, (2, 1), kb)
            contraction = (la, lb) if isinstance(la, Load) and isinstance(lb, Load) else None
            kb.reduce = Reduce("sum", (2,), Op("mul", (la, lb), r.dtype), contraction)
            value = Acc(r.dtype)
        elif kind == "scatter":
            self.buffer_of[r], self.kernel_of[r] = buffer, self._scatter(r, buffer)
            return
        elif kind == "window":
            kb, value = place_window(self, r)
        else:
            kb, view, value = self._fuse_into_producer(r)
            if kb is None:
                view = tuple(range(r.ndim))
                kb = self._new_kernel(r.shape, view, r.shape)
                value = self._define(r, view, kb)
        kb.members[r] = _Member(r, kb.view if kind in ROOT_KINDS else view, value, buffer)
        self.buffer_of[r] = buffer
        self.kernel_of[r] = kb

    def _stored(self, n: Node) -> int:
        """The buffer holding `n`; a source without one (the batch size, a scalar constant) is first
        copied into a temporary by a kernel of its own."""
        if n in self.buffer_of:
            return self.buffer_of[n]
        ident = tuple(range(n.ndim))
        kb = self._new_kernel(n.shape, ident, n.shape)
        buffer = self._buffer(f"copy_{n.name}", "temp", n.shape, n.dtype)
        kb.members[n] = _Member(n, ident, self._define(n, ident, kb), buffer)
        return buffer

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
        if latest.call is not None or latest.closed:
            return None
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
                  for m in kb.members.values()] + kb.accumulates
        names = [m.node.op.name for m in kb.members.values()] + kb.accumulate_ops or [kb.call.op]
        return Kernel("_".join(dict.fromkeys(names))[:40], kb.domain, stores, kb.reduce, call=kb.call, flops=kb.flops)


def lower(prog: Program, fuse: bool = True, loop_passes: Sequence[LoopPass] | None = None,
          snapshots: bool = True) -> tuple[LoopProgram, list[PassRecord]]:
    """Fuse `prog` into kernels, then run `loop_passes` (default: LOOP_PASSES) through the verifying,
    recording pass runner; kernels are numbered k0, k1, ... at the end. Returns the loop program and
    one record per pass (with `snapshots`, the dumps' loop IR after each; without, only names, sizes
    and times: the passes rewrite the program in place, so its text after a pass is gone)."""
    lp = Lowering(prog, fuse).run()
    lp, records = run_passes(lp, LOOP_PASSES if loop_passes is None else loop_passes, verify=verify_loops,
                             size=lambda p: len(p.kernels), first="lower", text="snapshot" if snapshots else "none")
    for i, k in enumerate(lp.kernels):
        k.name = f"k{i}_{k.name}"
    if lp.assigns:
        raise AssertionError("loop passes left assignments without kernels (copy_assignments must run)")
    return lp, records
