"""Program -> loop IR: choose the materialized nodes, fuse, and place optimizer updates in place.

Fusion rules (one kernel = one loop nest):
- Elementwise and movement nodes are inlined into their single consumer as expression trees;
  movement ops become index maps (transpose permutes, broadcast drops, reshape renumbers).
- A node is materialized (a "root") when it is fetched or assigned, is a reduction or matmul, has
  several consumers, feeds a broadcast into a larger shape, or feeds a matmul or a general reshape.
- A root joins the latest kernel it reads from when it has that kernel's output shape and reads its
  members only at the same element: bias, activation and its derivative join the matmul that feeds
  them, and the optimizer's region for a parameter joins the loop that produces its gradient.
- An update `var <- value` writes `var` in place inside the value's kernel when nothing later reads
  the old value and that kernel reads `var` only at the element it writes; otherwise the value goes
  to a temporary copied into `var` after every kernel ran (simultaneous assignment).
"""
from __future__ import annotations

import heapq
import math
from collections import defaultdict

import numpy as np

from graphnet.graph import Node
from graphnet.program import Program

from .loopir import (Acc, Affine, Buffer, Const, Expr, ExprBuilder, Index, Kernel, Load, LoopProgram, Op,
                     Reduce, Size, Store, affine, walk)


def expand_composites(prog: Program) -> Program:
    """Replace composite ops (softmax, log_softmax, one_hot) by their primitive expansion."""
    def rule(node: Node, inputs: list) -> Node | None:
        if node.op.kind != "composite":
            return None
        graph = inputs[0].graph
        return node.op.expand(graph.apply(node.op, inputs, node.attrs, source=node.source))
    return prog.rebuild(rule)


GEMM_MIN_STATIC = 128  # below this many multiply-adds per batch row a loop nest beats packing panels


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
    def __init__(self, prog: Program, fuse: bool = True, gemm_workspace=None):
        self.prog = expand_composites(prog)
        self.fuse, self.gemm_workspace = fuse, gemm_workspace
        self.nodes = self.prog.nodes()
        self.consumers: dict[Node, list[Node]] = defaultdict(list)
        for n in self.nodes:
            for x in n.inputs:
                self.consumers[x].append(n)
        self.buffers: list[Buffer] = []
        self.buffer_of: dict[Node, int] = {}
        self.kernel_of: dict[Node, _KernelBuild] = {}
        self.kernels: list[_KernelBuild] = []

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
            elif n.op.name == "constant" and n.attrs["value"].array.size > 1:
                self.buffer_of[n] = self._buffer(n.name, "constant", n.shape, n.dtype)
                self.storage[self.buffer_of[n]] = n.attrs["value"].array

    def _roots(self) -> set:
        roots = set()
        wanted = list(self.prog.fetches) + [v for _, v in self.prog.updates]
        for n in self.nodes:
            kind = n.op.kind
            if kind == "source":
                continue
            if kind in ("reduce", "matmul") or not self.fuse:
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
        else:
            kb, view, value = self._fuse_into_producer(r)
            if kb is None:
                view = tuple(range(r.ndim))
                kb = self._new_kernel(r.shape, view, r.shape)
                value = self._define(r, view, kb)
        kb.members[r] = _Member(r, kb.view if kind in ("reduce", "matmul") else view, value, buffer)
        self.buffer_of[r] = buffer
        self.kernel_of[r] = kb

    def _fuse_into_producer(self, r: Node):
        if not self.fuse:
            return None, None, None
        producers = [self.kernel_of[d] for d in self._root_deps(r)]
        if not producers:
            return None, None, None
        kb = max(producers, key=lambda k: k.index)
        if not _unit_reshape(kb.shape, r.shape):
            return None, None, None
        view = _reshape_forms(kb.view, r.shape, kb.shape)
        try:
            return kb, view, self._define(r, view, kb)
        except NotFusable:
            return None, None, None

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
        loaded = {ld.buffer for k in kernels for ld in k.loads()}
        wanted = {home(f) for f in self.prog.fetches} | {home(v) for var, v in self.prog.updates if v is not var}
        for k in kernels:
            k.stores = [s for s in k.stores if s.buffer in loaded or s.buffer in wanted]
        redirect = self._place_updates(kernels, home)
        finals = []
        for var, value in self.prog.updates:
            if value is var or redirect.get(home(value)) == self.buffer_of[var]:
                continue
            ident = tuple(range(var.ndim))
            src = redirect.get(home(value), home(value))
            finals.append(Kernel(f"assign_{var.attrs['name']}", var.shape, [Store(
                self.buffer_of[var], affine(ident, var.shape), Load(src, affine(ident, var.shape), var.dtype),
                f"update {var.attrs['name']}", value.source)], order=ident))
        kernels = [k for k in kernels if k.stores] + finals
        for i, k in enumerate(kernels):
            k.name = f"k{i}_{k.name}"
        _remap(kernels, redirect)
        fetches = [redirect.get(home(f), home(f)) for f in self.prog.fetches]
        return LoopProgram(self.buffers, kernels, fetches, self.inputs, self.storage)

    def _finish(self, kb: _KernelBuild) -> Kernel:
        stores = [Store(m.buffer, affine(m.view, m.node.shape), _reciprocals(m.value), m.node.name, m.node.source)
                  for m in kb.members.values()]
        names = [m.node.op.name for m in kb.members.values()]
        kernel = Kernel("_".join(dict.fromkeys(names))[:40], kb.domain, stores, kb.reduce)
        self._choose_order(kernel)
        return kernel

    def _choose_order(self, k: Kernel) -> None:
        """Loop order of a reduction: the var with the most unit-stride accesses in the accumulated
        value (plus one for a unit-stride store) goes innermost. A kept var there accumulates a row
        in scratch memory (matmul A @ B, bias gradients); otherwise a register accumulates (ties)."""
        variables = list(range(len(k.domain)))
        if k.reduce is None or not variables:
            k.order = tuple(variables)
            return
        red = k.reduce
        kept = [v for v in variables if v not in red.axes]
        static = math.prod(d for d in k.domain if d is not None)
        if red.contraction is not None and self.gemm_workspace is not None and static >= GEMM_MIN_STATIC:
            if _narrow_columns(k.domain):
                _swap_vars(k, 0, 1)
            layout = gemm_layout(k)
            if layout is not None:
                k.order = tuple(kept) + tuple(red.axes)
                red.scratch = self._buffer(f"c_{k.name}", "temp", k.domain[:2], red.value.dtype)
                nbytes = self.gemm_workspace(red.value.dtype, *layout, k.domain[0])
                red.workspace = self._buffer(f"pack_{k.name}", "temp", (nbytes,), np.dtype(np.uint8))
                return
        score = {v: sum(ld.offset.stride(v) == (1, 0) for ld in _loads(red.value)) +
                 any(s.offset.stride(v) == (1, 0) for s in k.stores) for v in variables}
        inner = max(variables, key=lambda v: (score[v], v in red.axes, v))
        if inner in kept and k.domain[inner] != 1:
            k.order = tuple(v for v in kept if v != inner) + tuple(red.axes) + (inner,)
            red.scratch = self._buffer(f"row_{k.name}", "temp", (k.domain[inner],), red.value.dtype)
        else:
            k.order = tuple(kept) + tuple(red.axes)

    def _place_updates(self, kernels: list[Kernel], home) -> dict[int, int]:
        """Map value buffers to the variable buffers they can be written into in place."""
        redirect: dict[int, int] = {}
        for var, value in self.prog.updates:
            if value is var or value.op.kind == "source":
                continue
            vbuf, ubuf = self.buffer_of[var], home(value)
            if ubuf in redirect:
                continue
            kb = self.kernel_of[value]
            k = kernels[kb.index]
            store = next(s for s in k.stores if s.buffer == ubuf)
            later = any(ld.buffer == vbuf for other in kernels[kb.index + 1:] for ld in other.loads())
            same = all(ld.offset == store.offset for ld in k.loads() if ld.buffer == vbuf)
            if not later and same and not any(s.buffer == vbuf for s in k.stores):
                redirect[ubuf] = vbuf
        return redirect


GEMM_NARROW = 32  # fewer output columns than this leave most of a GEMM's register tile (up to 64 wide) empty


def _narrow_columns(domain: tuple) -> bool:
    """Is a matmul's (M, N, K) output so narrow that computing its transpose (N, M) fills the tiles
    better? (N=10, M=64: the (64, 10) product took as long as a (64, 64) one, its transpose 1/4 of that.)"""
    m, n = domain[0], domain[1]
    return n is not None and n < GEMM_NARROW and (m is None or m >= 2 * n)


def _swap_vars(k: Kernel, a: int, b: int) -> None:
    """Rename loop vars a <-> b throughout the kernel (the same loop nest, transposed)."""
    def offset(o: Affine) -> Affine:
        return Affine(tuple(sorted(({a: b, b: a}.get(v, v), coef, nexp) for v, coef, nexp in o.terms)))

    def expr(e: Expr) -> Expr:
        if isinstance(e, Load):
            return Load(e.buffer, offset(e.offset), e.dtype)
        if isinstance(e, Index):
            return Index(offset(e.offset), e.dtype)
        if isinstance(e, Op):
            return Op(e.name, tuple(expr(x) for x in e.args), e.dtype)
        return e
    domain = list(k.domain)
    domain[a], domain[b] = domain[b], domain[a]
    k.domain = tuple(domain)
    for s in k.stores:
        s.offset, s.value = offset(s.offset), expr(s.value)
    red = k.reduce
    if red is not None:
        red.axes = tuple({a: b, b: a}.get(v, v) for v in red.axes)
        red.value = expr(red.value)
        if red.contraction is not None:
            red.contraction = tuple(expr(x) for x in reversed(red.contraction))


def _invariant(e: Expr) -> bool:
    """Is `e` the same at every element of the loop nest (a scalar load, N, constants)?"""
    return all(not isinstance(x, (Acc, Index)) and not (isinstance(x, Load) and x.offset.terms) for x in walk(e))


def _reciprocals(e: Expr) -> Expr:
    """x / y with y loop-invariant (Adam's bias correction, a mean's N) -> x * (1 / y): the compiler
    hoists one division out of the loop (divisions and square roots bound the fused Adam update)."""
    if not isinstance(e, Op):
        return e
    args = tuple(_reciprocals(a) for a in e.args)
    x = args[0]
    if e.name == "div" and e.dtype.kind == "f" and not isinstance(args[1], Const) and _invariant(args[1]) \
            and not _invariant(x):
        return Op("mul", (x, Op("div", (Const(1.0, e.dtype), args[1]), e.dtype)), e.dtype)
    return Op(e.name, args, e.dtype)


def _loads(e: Expr) -> list[Load]:
    return [x for x in walk(e) if isinstance(x, Load)]


def _stride_of(extent) -> tuple:
    return (1, 1) if extent is None else (extent, 0)


def _row_major(load: Load, rows: int, cols: int, domain: tuple) -> bool:
    """Does `load` read a dense row-major matrix indexed (var rows, var cols)?"""
    terms = {v for v, _, _ in load.offset.terms}
    if not terms <= {rows, cols}:
        return False
    ok_cols = load.offset.stride(cols) == (1, 0) or domain[cols] == 1
    ok_rows = load.offset.stride(rows) == _stride_of(domain[cols]) or domain[rows] == 1
    return ok_cols and ok_rows


def gemm_layout(k: Kernel):
    """(trans_a, trans_b) when both operands of a matmul kernel are dense matrices, else None."""
    a, b = k.reduce.contraction
    if a.dtype.kind != "f" or len(k.domain) != 3:
        return None
    ta = None if not _row_major(a, 2, 0, k.domain) else True
    ta = False if _row_major(a, 0, 2, k.domain) else ta
    tb = None if not _row_major(b, 1, 2, k.domain) else True
    tb = False if _row_major(b, 2, 1, k.domain) else tb
    return None if ta is None or tb is None else (ta, tb)


def _remap(kernels: list[Kernel], redirect: dict[int, int]) -> None:
    def expr(e: Expr) -> Expr:
        if isinstance(e, Load) and e.buffer in redirect:
            return Load(redirect[e.buffer], e.offset, e.dtype)
        if isinstance(e, Op):
            return Op(e.name, tuple(expr(a) for a in e.args), e.dtype)
        return e
    for k in kernels:
        for s in k.stores:
            s.buffer = redirect.get(s.buffer, s.buffer)
            s.value = expr(s.value)
        if k.reduce:
            k.reduce.value = expr(k.reduce.value)
            if k.reduce.contraction:
                k.reduce.contraction = tuple(expr(x) for x in k.reduce.contraction)


def lower(prog: Program, fuse: bool = True, gemm_workspace=None) -> LoopProgram:
    """`gemm_workspace(dtype, trans_a, trans_b, m) -> bytes` (m: C's static row count or None): matmuls of dense operands are marked for
    a GEMM routine needing that much packing space (None: every matmul is a loop nest)."""
    return Lowering(prog, fuse, gemm_workspace).run()
