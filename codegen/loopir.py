"""The loop-level IR every native backend renders (LLVM here; OpenCL renders the same objects).

A `LoopProgram` is a list of buffers and a list of kernels run in order.

Buffers (`Buffer.kind`): "input" (a feed), "variable" (a parameter or optimizer state: the
persistent `Variable.array`, written in place), "constant" (a read-only array), "temp" (an
intermediate in the arena). Every buffer is dense, row-major, of a static shape in which `None`
is the runtime batch size N.

A kernel is one loop nest over `domain` (extents, `None` = N); loop variable `v<d>` runs over
dimension d. Each `Store` writes `value` at `offset` (an `Affine`: sum of var * stride, a stride
being `coef * N**nexp`, coefficients negative for flips, plus constant `base` terms for slices) of
one buffer. Values are scalar expression trees:

  Const(value, dtype)        Load(buffer, offset, dtype)    Size(dtype): N as a number
  Index(offset): uint32 flat index (dropout's counter)      Acc(dtype): the kernel's reduction result
  Op(name, args, dtype)      name is one of graphnet.ops.scalar.INSTRUCTIONS
  Var(var): loop var v<var> as an int64 value (computed indices: pad, take, scatter_add)
  LoadAt(buffer, index, dtype): a load at the element an int64 expression computes; whoever builds
      it clamps that index into the buffer first (a backend may evaluate a load whose value a
      select discards, so a guard alone does not keep the read inside the buffer)
  Window(...): a Load at per-axis computed coordinates, `fill` outside the buffer (codegen/window.py)

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

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from graphnet.graph import shape_str
from graphnet.ops.scalar import INSTRUCTIONS, REDUCTIONS

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


@dataclass(frozen=True)
class Buffer:
    id: int
    name: str
    kind: str  # input | variable | constant | temp
    shape: tuple
    dtype: np.dtype

    def elements(self, batch: int) -> int:
        return int(np.prod([batch if d is None else d for d in self.shape], dtype=np.int64))

    def __str__(self) -> str:
        return f"b{self.id} {self.kind} {self.name}: {self.dtype} {shape_str(self.shape)}"


class Expr:
    """Base of the scalar expression nodes (immutable; structurally equal nodes compare equal)."""

    dtype: np.dtype


@dataclass(frozen=True)
class Const(Expr):
    value: Any
    dtype: np.dtype

    def __str__(self) -> str:
        return f"{self.value!r}:{self.dtype}"


@dataclass(frozen=True)
class Load(Expr):
    buffer: int
    offset: Affine
    dtype: np.dtype

    def __str__(self) -> str:
        return f"b{self.buffer}[{self.offset}]"


@dataclass(frozen=True)
class Index(Expr):
    offset: Affine
    dtype: np.dtype = np.dtype(np.uint32)

    def __str__(self) -> str:
        return f"index({self.offset})"


@dataclass(frozen=True)
class Size(Expr):
    dtype: np.dtype

    def __str__(self) -> str:
        return f"N:{self.dtype}"


@dataclass(frozen=True)
class Acc(Expr):
    dtype: np.dtype

    def __str__(self) -> str:
        return "acc"


@dataclass(frozen=True)
class Var(Expr):
    var: int
    dtype: np.dtype = np.dtype(np.int64)

    def __str__(self) -> str:
        return f"v{self.var}"


@dataclass(frozen=True)
class LoadAt(Expr):
    buffer: int
    index: Expr  # int64, already clamped into the buffer
    dtype: np.dtype

    def __str__(self) -> str:
        return f"b{self.buffer}[@{self.index}]"


@dataclass(frozen=True)
class Op(Expr):
    name: str
    args: tuple
    dtype: np.dtype

    def __str__(self) -> str:
        extra = f":{self.dtype}" if self.name == "cast" else ""
        return f"{self.name}{extra}(" + ", ".join(str(a) for a in self.args) + ")"


def children(expr: Expr) -> tuple:
    """The operands of an expression node (the one place that knows which kinds have any)."""
    if isinstance(expr, Op):
        return expr.args
    if isinstance(expr, LoadAt):
        return (expr.index,)
    return ()


def with_children(expr: Expr, new: tuple) -> Expr:
    """`expr` with its operands replaced by `new` (in `children`' order)."""
    if isinstance(expr, Op):
        return Op(expr.name, tuple(new), expr.dtype)
    if isinstance(expr, LoadAt):
        return LoadAt(expr.buffer, new[0], expr.dtype)
    return expr


def walk(expr: Expr):
    """Every node of an expression tree (with repeats), parents first."""
    yield expr
    for a in children(expr):
        yield from walk(a)


@dataclass
class Store:
    buffer: int
    offset: Affine
    value: Expr
    node: str  # the graph node computed here, for comments and error messages
    source: str  # the user's file:line that created it


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
    live from start to wait."""
    op: str  # allreduce | allreduce_start | allreduce_wait
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

    def loads(self) -> list[Load | LoadAt]:
        """Every load of the kernel, at an affine offset (Load) or a computed index (LoadAt)."""
        exprs = [s.value for s in self.stores] + ([self.reduce.value] if self.reduce else [])
        return [e for x in exprs for e in walk(x) if isinstance(e, (Load, LoadAt))]

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
        if self.reduce:
            kind = "matmul " if self.reduce.contraction else f"{self.reduce.scan} scan " if self.reduce.scan else ""
            row = f" in row b{self.reduce.scratch}" if self.reduce.scratch is not None else ""
            if self.reduce.workspace is not None:
                row = f" by GEMM into b{self.reduce.scratch} (workspace b{self.reduce.workspace})"
            lines.append(f"  acc = {kind}{self.reduce.op} over "
                         f"{', '.join(f'v{a}' for a in self.reduce.axes)}{row} of {self.reduce.value}")
        for s in self.stores:
            where = f"    # {s.node} at {s.source}" if sources else ""
            lines.append(f"  b{s.buffer}[{s.offset}] = {s.value}{where}")
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
        exprs = [(s.value, f"{s.node} at {s.source}") for s in k.stores] + ([(red.value, k.name)] if red else [])
        for expr, where in exprs:
            for e in walk(expr):
                if isinstance(e, Op):
                    dtype = e.args[0].dtype if e.args else e.dtype
                    if e.name not in INSTRUCTIONS or not renders(e.name, dtype):
                        raise UnsupportedInstruction(f"the {backend} backend cannot render the scalar instruction "
                                                     f"'{e.name}' on {dtype} ({where}, kernel {k.name})")
