"""The loop-level IR every native backend renders (LLVM here; OpenCL renders the same objects).

A `LoopProgram` is a list of buffers and a list of kernels run in order.

Buffers (`Buffer.kind`): "input" (a feed), "variable" (a parameter or optimizer state: the
persistent `Variable.array`, written in place), "constant" (a read-only array), "temp" (an
intermediate in the arena). Every buffer is dense, row-major, of a static shape in which `None`
is the runtime batch size N.

A kernel is one loop nest over `domain` (extents, `None` = N); loop variable `v<d>` runs over
dimension d. Each `Store` writes `value` at `offset` (an `Affine`: sum of var * stride, a stride
being `coef * N**nexp`, coefficients negative for flips, plus constant `base` terms for slices) of
one buffer. Values are scalar expressions, DAGs of interned nodes (a subexpression used twice is
one shared node, named once in the text form; see `Expr`):

  Const(value, dtype)        Load(buffer, offset, dtype)    Size(dtype): N as a number
  Index(offset): uint32 flat index (dropout's counter)      Acc(dtype): the kernel's reduction result
  Op(name, args, dtype)      name is one of graphnet.ops.scalar.INSTRUCTIONS
  Var(var): loop var v<var> as an int64 value (computed indices: pad, take, scatter_add)
  LoadAt(buffer, index, dtype): a load at the element an int64 expression computes; whoever builds
      it clamps that index into the buffer first (a backend may evaluate a load whose value a
      select discards, so a guard alone does not keep the read inside the buffer)
  Window(...): a Load at per-axis computed coordinates, `fill` outside the buffer (codegen/window.py)

A store with `index` set writes the element an int64 expression computes, clamped into the buffer by
its builder; with `accumulate` it adds its value to the element (`b[@i] += v`, scatter_add: a kernel
that zero-fills the buffer, then one over the updates). The vars such an index reads through loads
(`Kernel.serial_vars`) run serially in ascending order on every backend: no two threads or
work-items add into one element, and duplicates add up in the order of numpy's `np.add.at`.

A kernel with `reduce` set accumulates `reduce.value` with `reduce.op` (graphnet.ops.scalar.REDUCTIONS) over the
vars in `reduce.axes`; its stores do not use those vars and read the result as `Acc`. A matmul is
such a kernel over (M, N, K) summing A[i, k] * B[k, j]; `reduce.contraction` names the two loads so
a renderer may call a GEMM instead. A scan (`reduce.scan`, cumsum) reduces over one var in the given
direction and stores inside that loop: each store reads the running result. Stores of one kernel happen after all of its values for that
element are computed, so a kernel may read and rewrite a buffer at the same element (in-place
optimizer updates).

Loop passes decide how kernels run (the memory plan already holds their buffers): `Kernel.order`
lists the loop vars outermost first; `Reduce.scratch` is a row of accumulators indexed by the
innermost kept var (so the reduced loops sit outside a unit-stride loop), or, with
`Reduce.workspace`, the whole (M, N) product computed by a GEMM before the stores read it.
`Kernel.schedule` holds the rest, per backend (threads, unrolling, GEMM strategy, OpenCL kernel
form and tile sizes: codegen/llvm/schedule.py, codegen/opencl/schedule.py); renderers follow it.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Container, Iterator, Optional, Sequence

import numpy as np

from graphnet.ops.scalar import INSTRUCTIONS, REDUCTIONS

from .memory import Buffer  # noqa: F401 (part of the IR; defined beside the arena, which needs no more of it)

Term = tuple  # (var, coef, nexp): var * coef * N**nexp


@dataclass(frozen=True)
class Affine:
    terms: tuple = ()
    base: tuple = ()  # constant terms (coef, nexp): coef * N**nexp, nonzero, sorted by nexp

    def __str__(self) -> str:
        parts = []
        for var, coef, nexp in self.terms:
            factor = "*".join(([str(coef)] if coef != 1 else []) + (["N"] * nexp))
            parts.append(f"v{var}" + (f"*{factor}" if factor else ""))
        parts += ["*".join([str(coef)] + ["N"] * nexp) for coef, nexp in self.base]
        return " + ".join(parts) or "0"

    def stride(self, var: int) -> tuple[int, int]:
        for v, coef, nexp in self.terms:
            if v == var:
                return coef, nexp
        return 0, 0


@dataclass(frozen=True)
class Lin:
    """A coordinate `scale * v<var> + offset + offset_n * N` (var None: a constant): what slices
    and flips make of a loop var, still an affine offset."""

    var: int | None
    scale: int = 1
    offset: int = 0
    offset_n: int = 0

    def then(self, scale: int, offset: int, offset_n: int = 0) -> "Lin":
        """The coordinate `scale * self + offset + offset_n * N`."""
        return Lin(self.var if scale else None, self.scale * scale, self.offset * scale + offset,
                   self.offset_n * scale + offset_n)


def as_lin(form) -> Lin:
    """A loop var (int) or None (coordinate 0) as a Lin."""
    if isinstance(form, Lin):
        return form
    if form is None or isinstance(form, int):
        return Lin(None, 0) if form is None else Lin(form)
    raise TypeError(f"{form} is not an affine coordinate")


def affine(forms: tuple, shape: tuple) -> Affine:
    """The row-major offset of the element whose coordinate d is forms[d]: a loop var, a `Lin`, None
    (0), or a composite ((var, multiplier), ...): the coordinate sum of var * multiplier (a channel
    axis split into group and channel-in-group vars, codegen/lower_conv.py). A dimension of extent 1
    has coordinate 0."""
    terms, base, coef, nexp = [], {}, 1, 0
    for form, dim in zip(reversed(forms), reversed(shape)):
        if form is not None and dim != 1 and isinstance(form, tuple):
            terms += [(var, coef * mult, nexp) for var, mult in form]
        elif form is not None and dim != 1:
            lin = as_lin(form)
            if lin.var is not None and lin.scale:
                terms.append((lin.var, coef * lin.scale, nexp))
            base[nexp] = base.get(nexp, 0) + coef * lin.offset
            base[nexp + 1] = base.get(nexp + 1, 0) + coef * lin.offset_n
        if dim is None:
            nexp += 1
        else:
            coef *= dim
    return Affine(tuple(sorted(terms)), tuple((c, e) for e, c in sorted(base.items()) if c))



class _Interned(type):
    """Structurally equal expressions are one object: constructing a node returns the existing equal
    node when there is one. Equality is therefore identity (object's own `==` and `hash`, O(1) however
    deep the expression; the dataclasses' structural ones would follow every path of a DAG), and a
    node's key holds its children, themselves interned, by identity."""

    _table: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()
    _lock = threading.Lock()

    def __call__(cls, *args, **kwargs):
        node = super().__call__(*args, **kwargs)
        values = tuple(node.__dict__.values())  # the fields, as the dataclass __init__ set them
        types = tuple(map(type, values))  # 1, 1.0 and True are equal in Python, not as constants
        if float in types:  # nor are 0.0 and -0.0
            values = tuple(v.hex() if t is float else v for v, t in zip(values, types))
        with _Interned._lock:
            return _Interned._table.setdefault((cls, types, values), node)


class Expr(metaclass=_Interned):
    """Base of the scalar expression nodes: immutable and interned (equal nodes are one object), so an
    expression is a DAG whose shared subexpressions are shared objects. A new kind is an
    `@expr_node` class and is taught to `children` and `with_children`, the only functions that know
    which fields are subexpressions; every walk and rewrite goes through them."""

    dtype: np.dtype

    def text(self, args: list[str]) -> str:
        """This node's text given its operands' texts (in `children`' order; a leaf has none)."""
        raise NotImplementedError(type(self).__name__)

    def __str__(self) -> str:
        """The expression in the text form: its shared subexpressions as `tN = ...; ` first."""
        defs, (text,) = format_exprs([self])
        return "".join(f"{name} = {value}; " for name, value in defs) + text

    __repr__ = __str__


expr_node = dataclass(frozen=True, eq=False, repr=False)


@expr_node
class Const(Expr):
    value: Any
    dtype: np.dtype

    def text(self, args: list[str]) -> str:
        return f"{self.value!r}:{self.dtype}"


@expr_node
class Load(Expr):
    buffer: int
    offset: Affine
    dtype: np.dtype

    def text(self, args: list[str]) -> str:
        return f"b{self.buffer}[{self.offset}]"


@expr_node
class Index(Expr):
    offset: Affine
    dtype: np.dtype = np.dtype(np.uint32)

    def text(self, args: list[str]) -> str:
        return f"index({self.offset})"


@expr_node
class Size(Expr):
    dtype: np.dtype

    def text(self, args: list[str]) -> str:
        return f"N:{self.dtype}"


@expr_node
class Acc(Expr):
    dtype: np.dtype

    def text(self, args: list[str]) -> str:
        return "acc"


@expr_node
class Var(Expr):
    var: int
    dtype: np.dtype = np.dtype(np.int64)

    def text(self, args: list[str]) -> str:
        return f"v{self.var}"


@expr_node
class LoadAt(Expr):
    buffer: int
    index: Expr  # int64, already clamped into the buffer
    dtype: np.dtype

    def text(self, args: list[str]) -> str:
        return f"b{self.buffer}[@{args[0]}]"


@expr_node
class Op(Expr):
    name: str
    args: tuple
    dtype: np.dtype

    def text(self, args: list[str]) -> str:
        extra = f":{self.dtype}" if self.name == "cast" else ""
        return f"{self.name}{extra}(" + ", ".join(args) + ")"


# ---- traversal: the one place that knows an expression's structure ------------------------
def children(e: Expr) -> tuple:
    """The subexpressions `e` reads, in order."""
    if isinstance(e, Op):
        return e.args
    if isinstance(e, LoadAt):
        return (e.index,)
    return ()


def with_children(e: Expr, args: tuple) -> Expr:
    """`e` reading `args` instead of its children (in `children`' order)."""
    if isinstance(e, Op):
        return Op(e.name, tuple(args), e.dtype)
    if isinstance(e, LoadAt):
        return LoadAt(e.buffer, args[0], e.dtype)
    return e


def walk_unique(*roots: Expr, skip: Container = ()) -> Iterator[Expr]:
    """Every distinct node of the expressions `roots` once, children before parents (left to right);
    nodes in `skip` (already handled by the caller) are neither yielded nor entered. Iterative: an
    expression may be deeper than Python's recursion limit."""
    seen: set = set()
    for root in roots:
        if root in seen or root in skip:
            continue
        seen.add(root)
        stack = [(root, iter(children(root)))]
        while stack:
            node, pending = stack[-1]
            for c in pending:
                if c not in seen and c not in skip:
                    seen.add(c)
                    stack.append((c, iter(children(c))))
                    break
            else:
                stack.pop()
                yield node


def rewrite(roots: Sequence[Expr], fn: Callable[[Expr], Expr]) -> list[Expr]:
    """`roots` rebuilt bottom-up: each distinct node, with its children already rewritten, is replaced by
    `fn(node)` (which returns the node itself to keep it). Each node is rewritten once, so shared
    subexpressions stay shared; an unchanged expression comes back as the same object."""
    done: dict = {}
    for node in walk_unique(*roots):
        old = children(node)
        new = tuple(done[c] for c in old)
        done[node] = fn(node if all(a is b for a, b in zip(old, new)) else with_children(node, new))
    return [done[r] for r in roots]


def format_exprs(roots: Sequence[Expr], first: int = 0) -> tuple[list[tuple[str, str]], list[str]]:
    """The text form of expressions evaluated together: (let-bound temporaries as (name, text), in
    definition order; each root's text). A subexpression with operands that is used more than once
    (counting every operand slot and every root) is named once, `t<first>`, `t<first+1>`, ... in
    children-first order; the rest print inline, so the text is linear in the number of distinct nodes."""
    order = list(walk_unique(*roots))
    operands = [children(node) for node in order]
    uses = dict.fromkeys(order, 0)
    for node in list(roots) + [c for args in operands for c in args]:
        uses[node] += 1
    text: dict = {}
    defs: list[tuple[str, str]] = []
    for node, args in zip(order, operands):
        inline = node.text([text[c] for c in args])
        if args and uses[node] > 1:
            name = f"t{first + len(defs)}"
            defs.append((name, inline))
            inline = name
        text[node] = inline
    return defs, [text[r] for r in roots]


@dataclass
class Store:
    buffer: int
    offset: Affine
    value: Expr
    node: str  # the graph node computed here, for comments and error messages
    source: str  # the user's file:line that created it
    index: Optional[Expr] = None  # set: the element an int64 expression computes (clamped by its builder;
    #                               `offset` unused), which an accumulating store needs (scatter_add)
    accumulate: bool = False  # buffer[at] += value: an earlier kernel wrote the element; iterations run
    #                           in ascending order over the vars `index` reads through loads (serial_vars)


@dataclass
class Reduce:
    op: str  # sum | max
    axes: tuple  # the loop vars reduced over
    value: Expr
    contraction: Optional[tuple] = None  # (Load a, Load b) when value is a * b (a matmul)
    scratch: Optional[int] = None  # a row of accumulators over the innermost (kept) var, when set
    workspace: Optional[int] = None  # when set: a GEMM computes the whole (M, N) result into `scratch`
    #                                  first (using this buffer for packing); the stores then read it
    scan: str = ""  # "forward" / "reverse": a scan over its one var (the stores use it), "" a reduction


@dataclass(frozen=True)
class Collective:
    """A step that calls the communication runtime instead of running a loop nest (graphnet.distributed).

    "allreduce": each dst becomes the sum over the ranks of its src (the matching dst of `srcs`);
    lowering emits one per allreduce node. The `overlap_collectives` loop pass turns them into buckets,
    each an "allreduce_start" placed after the kernel writing its last src and an "allreduce_wait"
    placed before the first kernel reading one of its dsts, so that communication overlaps the kernels
    in between. `staging` packs a bucket of several buffers into one message; `request` holds the
    runtime's handle from start to wait. Both steps name every buffer, so the arena keeps them all
    live from start to wait. "allreduce_progress" (no buffers) lets the runtime move the messages of
    the buckets in flight."""
    op: str  # allreduce | allreduce_start | allreduce_wait | allreduce_progress
    srcs: tuple
    dsts: tuple
    staging: Optional[int] = None
    request: Optional[int] = None

    def reads(self) -> tuple:
        return self.srcs if self.op in ("allreduce", "allreduce_start") else ()

    def writes(self) -> tuple:
        return self.dsts if self.op in ("allreduce", "allreduce_wait") else ()

    def buffers(self) -> tuple:
        return self.srcs + self.dsts + tuple(b for b in (self.staging, self.request) if b is not None)

    def __str__(self) -> str:
        pairs = ", ".join(f"b{s}->b{d}" for s, d in zip(self.srcs, self.dsts))
        extra = "".join(f" {name} b{b}" for name, b in (("staging", self.staging), ("request", self.request))
                        if b is not None)
        return f"{self.op}({pairs}){extra}"


@dataclass
class Kernel:
    name: str
    domain: tuple
    stores: list
    reduce: Optional[Reduce] = None
    order: tuple = ()  # loop vars outermost first (reduced vars inside the kept ones, but a scratch
    #                    row's var innermost)
    schedule: Any = None  # the backend's decisions for this kernel (its schedule pass sets them; the
    #                       renderer follows them): a frozen object whose str() is one line
    call: Optional[Collective] = None  # set: the kernel is this runtime call (no loops, no stores)
    flops: Optional[tuple] = None  # (coef, nexp): the useful FLOPs coef * N**nexp of a convolution kernel
    #                                (its domain also counts the taps a stride or the padding skips)

    def exprs(self) -> list[Expr]:
        """The kernel's expressions: the reduced value (if any), each store's value, then each computed
        store index."""
        return ([self.reduce.value] if self.reduce else []) + [s.value for s in self.stores] + \
            [s.index for s in self.stores if s.index is not None]

    def serial_vars(self) -> tuple:
        """The loop vars of an accumulating store's computed index that two iterations apart on may
        add into one element, so every backend runs them serially, in ascending order: those the index
        reads through loads (scatter_add's index axes), and those it does not use at all (every value
        addresses the same elements: an index clamped into an axis of one element is a constant). A
        var the index uses directly is an output coordinate: distinct values address distinct
        elements, so threads and work-items may split it."""
        found: set = set()
        for s in self.stores:
            if s.accumulate and s.index is not None:
                direct = set()
                for e in walk_unique(s.index):
                    if isinstance(e, Load):
                        found.update(v for v, _, _ in e.offset.terms)
                    elif isinstance(e, LoadAt):
                        found.update(x.var for x in walk_unique(e.index) if isinstance(x, Var))
                    elif isinstance(e, Var):
                        direct.add(e.var)
                found.update(v for v, extent in enumerate(self.domain) if extent != 1 and v not in direct)
        return tuple(sorted(found))

    def loads(self) -> list[Load | LoadAt]:
        """Every distinct load of the kernel, at an affine offset (Load) or a computed index (LoadAt)."""
        return [e for e in walk_unique(*self.exprs()) if isinstance(e, (Load, LoadAt))]

    def buffers(self) -> list[int]:
        """Every buffer the kernel touches."""
        extra = [self.reduce.scratch, self.reduce.workspace] if self.reduce is not None else []
        found = [s.buffer for s in self.stores] + [ld.buffer for ld in self.loads()]
        found += list(self.call.buffers()) if self.call is not None else []
        return sorted(set(found + [b for b in extra if b is not None]))

    def to_text(self, sources: bool = True) -> str:
        head = f"kernel {self.name} over " + " x ".join(f"v{d}<{'N' if n is None else n}"
                                                         for d, n in enumerate(self.domain))
        lines = [head + ("" if self.domain else "()") + "  order " + ",".join(f"v{v}" for v in self.order)]
        if self.schedule is not None:
            lines.append(f"  schedule: {self.schedule}")
        if self.call is not None:
            lines.append(f"  call {self.call}")
        temps = 0  # the reduced value and the stores are evaluated apart: each names its own temporaries
        if self.reduce:
            kind = "matmul " if self.reduce.contraction else f"{self.reduce.scan} scan " if self.reduce.scan else ""
            row = f" in row b{self.reduce.scratch}" if self.reduce.scratch is not None else ""
            if self.reduce.workspace is not None:
                row = f" by GEMM into b{self.reduce.scratch} (workspace b{self.reduce.workspace})"
            defs, (value,) = format_exprs([self.reduce.value])
            lines += [f"  {name} = {text}" for name, text in defs]
            lines.append(f"  acc = {kind}{self.reduce.op} over "
                         f"{', '.join(f'v{a}' for a in self.reduce.axes)}{row} of {value}")
            temps = len(defs)
        indexed = [s.index for s in self.stores if s.index is not None]
        defs, values = format_exprs([s.value for s in self.stores] + indexed, temps)
        lines += [f"  {name} = {text}" for name, text in defs]
        at = iter(values[len(self.stores):])
        for s, value in zip(self.stores, values):
            where = f"    # {s.node} at {s.source}" if sources else ""
            element = f"@{next(at)}" if s.index is not None else s.offset
            lines.append(f"  b{s.buffer}[{element}] {'+=' if s.accumulate else '='} {value}{where}")
        return "\n".join(lines)


@dataclass
class LoopProgram:
    buffers: list
    kernels: list
    fetches: list = field(default_factory=list)  # buffer ids holding each fetch after the call
    inputs: list = field(default_factory=list)  # buffer ids of the feeds, in sorted-name order
    storage: dict = field(default_factory=dict)  # variable/constant buffer id -> its numpy array
    assigns: list = field(default_factory=list)  # (variable buffer, value buffer): var <- value after
    #                                              every kernel ran; loop passes turn them into kernels

    def to_text(self, sources: bool = True) -> str:
        """The readable form (dumps); without `sources` it is what the generated code depends on."""
        lines = [str(b) for b in self.buffers]
        lines += ["", "fetch " + ", ".join(f"b{f}" for f in self.fetches)]
        lines += [f"assign b{var} <- b{value}" for var, value in self.assigns] + [""]
        lines += [k.to_text(sources) for k in self.kernels]
        return "\n".join(lines) + "\n"


class ExprBuilder:
    """The builder `s` handed to each op's `scalar(s, ...)`: it returns expression nodes.

    Python numbers take the other operand's dtype; `index()` is the flat index of the element
    of the node being lowered (`index` is its Affine).
    """

    def __init__(self, index: Affine):
        self._index = index

    @staticmethod
    def _coerce(a: Any, like: Expr) -> Expr:
        return a if isinstance(a, Expr) else Const(np.asarray(a).astype(like.dtype).item(), like.dtype)

    def _bin(self, name: str, a: Any, b: Any, dtype: Any = None) -> Op:
        like = a if isinstance(a, Expr) else b
        a, b = self._coerce(a, like), self._coerce(b, like)
        return Op(name, (a, b), np.dtype(dtype) if dtype is not None else a.dtype)

    def const(self, value, dtype): return Const(np.asarray(value).astype(dtype).item(), np.dtype(dtype))
    def index(self): return Index(self._index)
    def cast(self, x, dtype): return x if x.dtype == np.dtype(dtype) else Op("cast", (x,), np.dtype(dtype))

    def select(self, c, a, b):
        like = a if isinstance(a, Expr) else b
        return Op("select", (c, self._coerce(a, like), self._coerce(b, like)), like.dtype)

    def shr(self, a, bits): return Op("shr", (a, Const(int(bits), a.dtype)), a.dtype)


for _i in INSTRUCTIONS.values():
    if _i.form == "binary":
        setattr(ExprBuilder, _i.name, (lambda n: lambda self, a, b: self._bin(n, a, b))(_i.name))
    elif _i.form == "compare":
        setattr(ExprBuilder, _i.name, (lambda n: lambda self, a, b: self._bin(n, a, b, bool))(_i.name))
    elif _i.form == "unary":
        setattr(ExprBuilder, _i.name, (lambda n: lambda self, x: Op(n, (x,), x.dtype))(_i.name))


class UnsupportedInstruction(NotImplementedError):
    """A program uses an instruction or reduction a backend has no rendering for."""


def check_renderable(lp: LoopProgram, backend: str, renders: Callable[[str, np.dtype], bool],
                     reduces: Callable[[str, np.dtype], bool], calls: Callable[[str], bool] = lambda op: False
                     ) -> None:
    """Raise UnsupportedInstruction naming the first scalar instruction (with its operand dtype),
    reduction or runtime call of `lp` that the backend's `renders(name, dtype)` / `reduces(name, dtype)`
    / `calls(op)` refuses, and where the program uses it. Renderers call it before emitting anything."""
    for k in lp.kernels:
        if k.call is not None and not calls(k.call.op):
            raise UnsupportedInstruction(f"the {backend} backend cannot run the collective '{k.call.op}' (kernel "
                                         f"{k.name}); data-parallel steps run on the llvm backend (in the step) or "
                                         f"the numpy backend (host-side)")
        red = k.reduce
        if red is not None and (red.op not in REDUCTIONS or not reduces(red.op, red.value.dtype)):
            raise UnsupportedInstruction(f"the {backend} backend cannot render the reduction '{red.op}' "
                                         f"over {red.value.dtype} (kernel {k.name})")
        exprs = [(e, f"{s.node} at {s.source}") for s in k.stores for e in (s.value, s.index) if e is not None]
        exprs += [(red.value, k.name)] if red else []
        for s in k.stores:
            if s.accumulate and not renders("add", s.value.dtype):
                raise UnsupportedInstruction(f"the {backend} backend cannot accumulate {s.value.dtype} ({s.node} at "
                                             f"{s.source}, kernel {k.name})")
        seen: set = set()
        for expr, where in exprs:
            for e in walk_unique(expr, skip=seen):
                seen.add(e)
                if isinstance(e, Op):
                    dtype = e.args[0].dtype if e.args else e.dtype
                    if e.name not in INSTRUCTIONS or not renders(e.name, dtype):
                        raise UnsupportedInstruction(f"the {backend} backend cannot render the scalar instruction "
                                                     f"'{e.name}' on {dtype} ({where}, kernel {k.name})")
