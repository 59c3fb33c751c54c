"""Loop IR -> OpenCL C: one `__kernel` per loop-IR kernel, plus how to launch each.

Every kernel takes `(long N, [arena, byte offsets of its temporaries], its other buffers)`, N being
the batch size. Its form and sizes come from its `OpenCLSchedule` (schedule.py), which the renderer
follows; a kernel without one is an error:
- "flat": one work-item per element of the (kept) domain; a reduction loops over its reduced vars
  inside the work-item;
- "group": one work-group per kept element: work-items stride over the reduced elements, then
  combine their partial results in local memory;
- "tiled": a GEMM (a matmul, or a convolution as an implicit GEMM: the schedule names the loop vars
  of its rows, columns and depth) in blocks of the result, slices of both operands staged in local
  memory (a conv's image gathered through its window), each work-item holding a W x W block of
  sums in registers; the kernel's stores (bias, activation, optimizer: the fused epilogue) run once
  per output element.
Kernels equal up to which buffers they use share one OpenCL function (pocl compiles each function
on first launch, 0.1-0.3 s: the optimizer update of same-shaped parameters is compiled once).
A work-item computes all its values before it stores any, so in-place updates (a kernel reading and
rewriting the same element) are safe. An accumulating store (`b[@i] += v`, scatter_add) runs in
loops over its serial vars inside one work-item (schedule.py), so no two work-items add into one
element. Scalar instructions map to C through the tables below; bool values are C `bool`, stored
as `uchar`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from graphnet.ops.scalar import REDUCTIONS

from ..loopir import (Acc, Affine, Const, Expr, Index, Kernel, Load, LoadAt, LoopProgram, Op, Size,
                      UnsupportedInstruction, Var, check_renderable, children, walk_unique)
from ..window import Window
from .conv import window_text
from .schedule import Limits, OpenCLSchedule

_CTYPE = {"f4": "float", "f8": "double", "i1": "char", "i2": "short", "i4": "int", "i8": "long",
          "u1": "uchar", "u2": "ushort", "u4": "uint", "u8": "ulong", "b1": "bool"}
_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "xor": "^", "shr": ">>",
          "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
_FLOAT_CALL = {"exp": "exp", "expm1": "expm1", "log": "log", "log1p": "log1p", "sqrt": "sqrt", "abs": "fabs",
               "pow": "pow", "max": "gn_max", "min": "gn_min", "erf": "erf", "floor": "floor", "ceil": "ceil",
               "round": "rint"}  # tanh: _tanh; mod: instruction(); rint rounds half to even (the default mode)
_INT_CALL = {"max": "max", "min": "min", "abs": "gn_iabs"}
_INT_TYPES = (("char", "uchar"), ("short", "ushort"), ("int", "uint"), ("long", "ulong"))

PRELUDE = """\
/* numpy semantics: maximum and minimum propagate NaN (fmax and fmin would drop it) */
#define gn_max(a, b) (((a) > (b) || (a) != (a)) ? (a) : (b))
#define gn_min(a, b) (((a) < (b) || (a) != (a)) ? (a) : (b))
#define gn_iabs(a) ((a) < 0 ? -(a) : (a))
/* numpy's floor modulo from fmod's (or %'s) remainder r: moved into the divisor's sign; a float zero
   takes the divisor's sign */
#define gn_fmod_fix(r, b) ((r) == 0 ? copysign((r), (b)) : (((b) < 0) != ((r) < 0) ? (r) + (b) : (r)))
#define gn_imod_fix(r, b) ((r) != 0 && (((b) < 0) != ((r) < 0)) ? (r) + (b) : (r))
/* integer x^y by squaring, wrapping (in the unsigned type); y < 0 gives x^y truncated toward zero */
#define GN_IPOW(T, U) T gn_ipow_##T(T x, T y) { \
    if (y < 0) return x == 1 ? 1 : (x == (T)-1 ? ((y & 1) ? (T)-1 : 1) : 0); \
    U r = 1, p = (U)x, e = (U)y; \
    while (e) { if (e & 1) r *= p; p *= p; e >>= 1; } \
    return (T)r; }
""" + "".join(f"GN_IPOW({t}, {u})\nGN_IPOW({u}, {u})\n" for t, u in _INT_TYPES)


def ctype(dtype: np.dtype) -> str:
    return _CTYPE[np.dtype(dtype).str[1:]]


def storage_ctype(dtype: np.dtype) -> str:
    return "uchar" if np.dtype(dtype).kind == "b" else ctype(dtype)


Count = tuple  # (static factor, power of N): static * N**nexp


def count(extents) -> Count:
    extents = list(extents)
    return math.prod(e for e in extents if e is not None), sum(e is None for e in extents)


@dataclass(frozen=True)
class Launch:
    """How to enqueue one kernel. Per NDRange dimension: items to cover (a Count), items one
    work-group covers, and the work-group's size in that dimension."""

    name: str
    shape: str  # flat | group | tiled
    dims: tuple  # ((Count, per_group, local), ...)
    buffers: tuple  # buffer ids, in argument order after N (temps first, as arena offsets)
    temps: int  # how many of `buffers` are arena temporaries

    @property
    def local_size(self) -> tuple:
        return tuple(local for _, _, local in self.dims)

    def global_size(self, batch: int) -> tuple:
        return tuple(max(1, -(-(static * batch ** nexp) // per)) * local for (static, nexp), per, local in self.dims)


def render(lp: LoopProgram, limits: Limits) -> tuple[str, list[Launch], bool]:
    """(OpenCL C source, one Launch per kernel in order, whether the source needs float64), each kernel
    as its schedule says (a schedule that does not fit `limits` is refused)."""
    check_renderable(lp, "OpenCL", renders, lambda op, dtype: renders(REDUCTIONS[op].combine, dtype))
    for k in lp.kernels:
        _check_fits(k, schedule_of(k), limits)
    bodies, launches, double = [], [], False
    functions: dict[str, str] = {}  # code -> the name of the first kernel with that code
    for k in lp.kernels:
        writer = _KernelWriter(lp, k)
        code = writer.code()
        name = functions.setdefault(code, writer.name)
        text = code.replace("{name}", name, 1) if name == writer.name else f"/* runs {name} */\n"
        bodies.append(writer.comment() + text)
        launches.append(Launch(name, *writer.launch))
        double |= writer.double
    head = "#pragma OPENCL EXTENSION cl_khr_fp64 : enable\n" if double else ""
    return head + PRELUDE + "\n" + "\n".join(bodies), launches, double


def schedule_of(k: Kernel) -> OpenCLSchedule:
    """The kernel's OpenCL schedule; rendering an unscheduled kernel is an error (schedule_opencl sets it)."""
    if not isinstance(k.schedule, OpenCLSchedule):
        raise ValueError(f"kernel {k.name} has no OpenCL schedule (run codegen.opencl.schedule.schedule_opencl)")
    return k.schedule


def _check_fits(k: Kernel, s: OpenCLSchedule, limits: Limits) -> None:
    """Refuse a schedule made for a larger device than this one."""
    local = 0
    if s.form == "tiled":
        rm, rn, w, tsk = s.tile
        local = tsk * (rm + rn) * w * k.reduce.value.dtype.itemsize
    if s.local > limits.max_work_group_size or local > limits.local_mem_size:
        raise ValueError(f"kernel {k.name}'s schedule ({s}) does not fit the device: work-groups of at most "
                         f"{limits.max_work_group_size}, {limits.local_mem_size} bytes of local memory")


def _extent(e) -> str:
    return "N" if e is None else str(e)


def _count_text(c: Count) -> str:
    static, nexp = c
    return "*".join(([str(static)] if static != 1 or not nexp else []) + ["N"] * nexp)


def literal(value, dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return "true" if value else "false"
    if dtype.kind == "f":
        v = float(value)
        if math.isnan(v):
            return "NAN" if dtype == np.float32 else "(double)NAN"
        if math.isinf(v):
            text = "INFINITY" if dtype == np.float32 else "(double)INFINITY"
            return text if v > 0 else "(-" + text + ")"
        text = f"{v:.9g}" if dtype == np.float32 else repr(v)
        text += "" if any(c in text for c in ".e") else ".0"
        return text + "f" if dtype == np.float32 else text
    v = int(value)
    if dtype.kind == "u":
        return f"({ctype(dtype)}){v}u" if dtype.itemsize < 4 else f"{v}u" + ("L" if dtype.itemsize == 8 else "")
    if dtype.itemsize == 8:
        return f"({v + 1}L - 1L)" if v == -2 ** 63 else f"{v}L"
    if v == -2 ** 31:
        return "(-2147483647 - 1)"
    return f"({ctype(dtype)}){v}" if dtype.itemsize < 4 else (f"({v})" if v < 0 else str(v))


def _identity(op: str, dtype: np.dtype) -> str:
    return literal(REDUCTIONS[op].identity(dtype), dtype)


def _combine(op: str, dtype: np.dtype, a: str, b: str) -> str:
    return instruction(REDUCTIONS[op].combine, dtype, dtype, [a, b])


def instruction(name: str, src: np.dtype, dst: np.dtype, args: list[str]) -> str | None:
    """OpenCL C for scalar instruction `name` on operands of dtype `src` giving `dst` (None: no rendering)."""
    if name == "cast":
        return f"({args[0]} != {literal(0, src)})" if dst.kind == "b" else f"({ctype(dst)})({args[0]})"
    if name == "select":
        return f"({args[0]} ? {args[1]} : {args[2]})"
    if name == "neg":  # parenthesised: `-` before a negative literal would read as `--`
        return f"(-({args[0]}))"
    if name == "tanh" and src.kind == "f":
        return _tanh(args[0], src)
    if name == "div" and src.kind in "iu":  # x / 0 gives 0 and MIN / -1 wraps, as on LLVM (C leaves both undefined)
        a, b = args[:2]
        wrap = f"{b} == {literal(-1, src)} ? (-({a})) : " if src.kind == "i" else ""
        return f"({b} == {literal(0, src)} ? {literal(0, src)} : {wrap}{a} / {b})"
    if name == "mod":
        return _mod(args[0], args[1], src)
    if name == "pow" and src.kind in "iu":
        return f"gn_ipow_{ctype(src)}({args[0]}, {args[1]})"
    if name in _INFIX:
        return f"({args[0]} {_INFIX[name]} {args[1]})"
    table = _FLOAT_CALL if src.kind == "f" else _INT_CALL
    if name in table:
        return f"{table[name]}({', '.join(args)})"
    if name == "abs" and src.kind in "ub":
        return args[0]
    return None


def renders(name: str, src: np.dtype) -> bool:
    """Whether `instruction` renders `name` on operands of dtype `src`."""
    return instruction(name, np.dtype(src), np.dtype(src), ["a", "b", "c"]) is not None


def _mod(a: str, b: str, dtype: np.dtype) -> str:
    """numpy's floor modulo; on integers x % 0 (and MIN % -1) give 0 instead of trapping."""
    if dtype.kind == "f":
        return f"gn_fmod_fix(fmod({a}, {b}), {b})"
    zero = literal(0, dtype)
    if dtype.kind == "u":
        return f"({b} == {zero} ? {zero} : {a} % {b})"
    return f"({b} == {zero} || {b} == {literal(-1, dtype)} ? {zero} : gn_imod_fix({a} % {b}, {b}))"


def _tanh(x: str, dtype: np.dtype) -> str:
    """tanh that reaches +-1: beyond |x| = (mant + 3)/2 * ln2, tanh(x) rounds to +-1 (its distance
    from 1, about 2 exp(-2|x|), is under half an ulp of 1), but pocl's float tanh stays one ulp
    short even at +-inf; a NaN fails the comparison and goes to tanh."""
    limit = (np.finfo(dtype).nmant + 3) / 2 * math.log(2)
    one = literal(1.0, dtype)
    return f"(fabs({x}) > {literal(limit, dtype)} ? copysign({one}, {x}) : tanh({x}))"


class _KernelWriter:
    def __init__(self, lp: LoopProgram, k: Kernel):
        self.lp, self.k, self.s = lp, k, schedule_of(k)
        self.name = re.sub(r"\W", "_", k.name)  # kernel names carry variable names ("rng/step")
        self.lines: list[str] = []
        self.double = False
        self.temp = 0
        used = sorted({s.buffer for s in k.stores} | {ld.buffer for ld in k.loads()})
        temps = [b for b in used if lp.buffers[b].kind == "temp"]
        self.buffers = tuple(temps + [b for b in used if b not in temps])
        self.ntemps = len(temps)
        self.param = {b: f"p{j}" for j, b in enumerate(self.buffers)}  # positional: equal kernels share code
        red = k.reduce
        self.kept = [v for v in range(len(k.domain)) if (red is None or v not in red.axes) and v not in self.s.serial]
        self.shape = self.s.form

    # ---- text helpers -------------------------------------------------------------------
    def ctype(self, dtype: np.dtype) -> str:
        self.double |= np.dtype(dtype) == np.float64
        return ctype(dtype)

    def emit(self, line: str, depth: int) -> None:
        self.lines.append("    " * depth + line)

    def offset(self, aff: Affine, names: dict) -> str:
        parts = []
        for var, coef, nexp in aff.terms:
            factors = [names[var]] + ([str(coef) if coef > 0 else f"({coef})"] if coef != 1 else []) + ["N"] * nexp
            parts.append("*".join(factors))
        parts += ["*".join([f"({coef}L)"] + ["N"] * nexp) for coef, nexp in aff.base]
        return " + ".join(parts) or "0"

    def decompose(self, index: str, variables: list, depth: int) -> None:
        """Declare loop vars `variables` (row-major) from the flat index variable `index`."""
        live = [v for v in variables if self.k.domain[v] != 1]
        for v in variables:
            if self.k.domain[v] == 1:
                self.emit(f"const long v{v} = 0;", depth)
        for i, v in enumerate(reversed(live)):
            if i == len(live) - 1:
                self.emit(f"const long v{v} = {index};", depth)
            else:
                e = _extent(self.k.domain[v])
                self.emit(f"const long v{v} = {index} % {e}; {index} /= {e};", depth)

    # ---- scalar expressions -------------------------------------------------------------
    def value(self, e: Expr, memo: dict, depth: int, names: dict | None = None) -> str:
        """C text of `e`; every load and instruction becomes a named local, declared once per distinct node
        in the scope `memo` belongs to (a reduction's loop body, the stores)."""
        for node in walk_unique(e, skip=memo):
            memo[node] = self.node(node, [memo[a] for a in children(node)], depth, names or _VARS)
        return memo[e]

    def node(self, e: Expr, args: list[str], depth: int, names: dict) -> str:
        """One node as C text given its operands' texts: a literal, or a local declared here."""
        if isinstance(e, Const):
            self.ctype(e.dtype)
            return literal(e.value, e.dtype)
        if isinstance(e, Acc):
            return "acc"
        if isinstance(e, Size):
            return f"(({self.ctype(e.dtype)})N)"
        if isinstance(e, Var):
            return names[e.var]
        if isinstance(e, Window):
            text = window_text(e, self.k.domain, self.param[e.buffer], names, literal(e.fill, e.dtype))
        elif isinstance(e, (Load, LoadAt)):
            at = self.offset(e.offset, names) if isinstance(e, Load) else args[0]
            text = f"{self.param[e.buffer]}[{at}]"  # a computed index is clamped where it was built
            if e.dtype.kind == "b":
                text = f"({text} != 0)"
        elif isinstance(e, Index):
            text = f"(uint)({self.offset(e.offset, names)})"
        else:
            text = self.op(e, args)
        name = f"t{self.temp}"
        self.temp += 1
        self.emit(f"const {self.ctype(e.dtype)} {name} = {text};", depth)
        return name

    def op(self, e: Op, args: list[str]) -> str:
        text = instruction(e.name, e.args[0].dtype, e.dtype, args)
        if text is None:  # check_renderable refuses such programs before rendering
            raise UnsupportedInstruction(f"scalar instruction {e.name} on {e.args[0].dtype} has no OpenCL C rendering")
        return text

    def stores(self, depth: int) -> None:
        memo: dict = {}
        values = [(s, self.value(s.value, memo, depth), None if s.index is None else self.value(s.index, memo, depth))
                  for s in self.k.stores]
        for s, v, index in values:
            if s.value.dtype.kind == "b":
                v = f"(uchar)({v})"
            at = self.offset(s.offset, _VARS) if index is None else index
            self.emit(f"{self.param[s.buffer]}[{at}] {'+=' if s.accumulate else '='} {v};", depth)

    # ---- kernels ------------------------------------------------------------------------
    def code(self) -> str:
        """The kernel as C with its name left as `{name}`: kernels equal up to their buffers render
        to equal text, so one function serves them all (pocl compiles each function separately)."""
        getattr(self, "_" + self.shape)()
        dtype = {b: storage_ctype(self.lp.buffers[b].dtype) for b in self.buffers}
        args = ["const long N"] + (["__global uchar* arena"] if self.ntemps else [])
        args += [f"const ulong o{j}" for j in range(self.ntemps)]
        args += [f"__global {dtype[b]}* {self.param[b]}" for b in self.buffers[self.ntemps:]]
        head = ["__kernel void {name}(" + ", ".join(args) + ") {"]
        for j, b in enumerate(self.buffers[:self.ntemps]):
            head.append(f"    __global {dtype[b]}* p{j} = (__global {dtype[b]}*)(arena + o{j});")
        for b in self.buffers:
            self.ctype(self.lp.buffers[b].dtype)
        return "\n".join(head + self.lines + ["}", ""])

    def comment(self) -> str:
        """The loop IR of the kernel and which buffer each parameter is."""
        params = ", ".join(f"{self.param[b]}=b{b}" for b in self.buffers)
        return "".join(f"/* {line} */\n" for line in self.k.to_text().splitlines() + [f"  {params}"])

    def _set_launch(self, dims: tuple) -> None:
        self.launch = (self.shape, dims, self.buffers, self.ntemps)

    def _flat(self) -> None:
        k, red = self.k, self.k.reduce
        size = self.s.local
        total = count(k.domain[v] for v in self.kept)
        self._set_launch(((total, size, size),))
        self.emit("long i = get_global_id(0);", 1)
        self.emit(f"if (i >= {_count_text(total)}) return;", 1)
        self.decompose("i", self.kept, 1)
        if red is not None and red.scan:
            self._scan(red)
            return
        if red is not None:
            t = self.ctype(red.value.dtype)
            self.emit(f"{t} acc = {_identity(red.op, red.value.dtype)};", 1)
            for depth, v in enumerate(red.axes, start=1):
                self.emit(f"for (long v{v} = 0; v{v} < {_extent(k.domain[v])}; ++v{v}) {{", depth)
            inner = len(red.axes) + 1
            x = self.value(red.value, {}, inner)
            self.emit(f"acc = {_combine(red.op, red.value.dtype, 'acc', x)};", inner)
            for depth in range(len(red.axes), 0, -1):
                self.emit("}", depth)
        self._serial_stores()

    def _serial_stores(self) -> None:
        """The stores, inside loops over the schedule's serial vars (in ascending order) if any."""
        serial = self.s.serial
        for depth, v in enumerate(serial, start=1):
            self.emit(f"for (long v{v} = 0; v{v} < {_extent(self.k.domain[v])}; ++v{v}) {{", depth)
        self.stores(len(serial) + 1)
        for depth in range(len(serial), 0, -1):
            self.emit("}", depth)

    def _scan(self, red) -> None:
        """The work-item's running result over the scan's var (backwards for a reverse scan), stored
        after every step."""
        (v,), dtype = red.axes, red.value.dtype
        n = _extent(self.k.domain[v])
        self.emit(f"{self.ctype(dtype)} acc = {_identity(red.op, dtype)};", 1)
        self.emit(f"for (long s = 0; s < {n}; ++s) {{", 1)
        self.emit(f"const long v{v} = {f'{n} - 1 - s' if red.scan == 'reverse' else 's'};", 2)
        x = self.value(red.value, {}, 2)
        self.emit(f"acc = {_combine(red.op, dtype, 'acc', x)};", 2)
        self.stores(2)
        self.emit("}", 1)

    def _group(self) -> None:
        k, red = self.k, self.k.reduce
        size = self.s.local
        t, dtype = self.ctype(red.value.dtype), red.value.dtype
        self._set_launch(((count(k.domain[v] for v in self.kept), 1, size),))
        self.emit(f"__local {t} part[{size}];", 1)
        self.emit("long g = get_group_id(0);", 1)
        self.emit("const int lid = get_local_id(0);", 1)
        self.decompose("g", self.kept, 1)
        self.emit(f"{t} acc = {_identity(red.op, dtype)};", 1)
        total = _count_text(count(k.domain[v] for v in red.axes))
        self.emit(f"for (long r = lid; r < {total}; r += {size}) {{", 1)
        self.emit("long i = r;", 2)
        self.decompose("i", list(red.axes), 2)
        x = self.value(red.value, {}, 2)
        self.emit(f"acc = {_combine(red.op, dtype, 'acc', x)};", 2)
        self.emit("}", 1)
        self.emit("part[lid] = acc;", 1)
        self.emit("barrier(CLK_LOCAL_MEM_FENCE);", 1)
        self.emit(f"for (int s = {size // 2}; s > 0; s >>= 1) {{", 1)
        self.emit(f"if (lid < s) part[lid] = {_combine(red.op, dtype, 'part[lid]', 'part[lid + s]')};", 2)
        self.emit("barrier(CLK_LOCAL_MEM_FENCE);", 2)
        self.emit("}", 1)
        self.emit("if (lid != 0) return;", 1)
        self.emit("acc = part[0];", 1)
        self.stores(1)

    def _tiled(self) -> None:
        """The GEMM of the schedule's roles (rows, columns, depth) over the sum's two factors, A (rows
        x depth) and B (depth x columns): each work-group computes a TM x TN block of the result
        (TM = RM*W rows, TN = RN*W columns) from TSK-deep slices of A and B staged in local memory,
        each element's loop vars decomposed from its row, column and depth index (row-major, as
        `decompose`) and its factor evaluated there (zero past the edges; a window's load is guarded
        by its own test); each of its RM x RN work-items accumulates W x W results in registers,
        strided by RM and RN so that neighbouring work-items touch neighbouring columns. The stores
        (the fused epilogue) run once per result element, any var of no role being 0."""
        k, red = self.k, self.k.reduce
        a, b = red.value.args
        dtype = red.value.dtype
        t = self.ctype(dtype)
        rm, rn, w, tsk = self.s.tile
        tm, tn = rm * w, rn * w
        rows, cols, depth = self.s.gemm
        extents = [count(k.domain[v] for v in role) for role in (rows, cols, depth)]
        n_rows, n_cols, n_depth = (_count_text(c) for c in extents)
        self._set_launch(((extents[1], tn, rn), (extents[0], tm, rm)))
        zero = literal(0, dtype)
        emit = self.emit
        emit(f"__local {t} As[{tsk}][{tm}];", 1)
        emit(f"__local {t} Bs[{tsk}][{tn}];", 1)
        emit(f"const int tx = get_local_id(0), ty = get_local_id(1), lid = ty * {rn} + tx;", 1)
        emit(f"const long row0 = get_group_id(1) * {tm}, col0 = get_group_id(0) * {tn};", 1)
        emit(f"{t} accs[{w}][{w}];", 1)
        emit(f"for (int wm = 0; wm < {w}; ++wm) for (int wn = 0; wn < {w}; ++wn) accs[wm][wn] = {zero};", 1)
        emit(f"for (long k0 = 0; k0 < {n_depth}; k0 += {tsk}) {{", 1)
        self._stage(f"As[l % {tsk}][l / {tsk}]", tm * tsk, a, t, zero,
                    (("row", f"row0 + l / {tsk}", n_rows, rows), ("kd", f"k0 + l % {tsk}", n_depth, depth)))
        self._stage(f"Bs[l / {tn}][l % {tn}]", tn * tsk, b, t, zero,
                    (("kd", f"k0 + l / {tn}", n_depth, depth), ("col", f"col0 + l % {tn}", n_cols, cols)))
        emit("barrier(CLK_LOCAL_MEM_FENCE);", 2)
        emit(f"for (int kk = 0; kk < {tsk}; ++kk) {{", 2)
        emit(f"{t} av[{w}], bv[{w}];", 3)
        emit(f"for (int i = 0; i < {w}; ++i) {{ av[i] = As[kk][ty + i * {rm}]; bv[i] = Bs[kk][tx + i * {rn}]; }}", 3)
        emit(f"for (int wm = 0; wm < {w}; ++wm) for (int wn = 0; wn < {w}; ++wn) "
             "accs[wm][wn] += av[wm] * bv[wn];", 3)
        emit("}", 2)
        emit("barrier(CLK_LOCAL_MEM_FENCE);", 2)
        emit("}", 1)
        emit(f"for (int wm = 0; wm < {w}; ++wm) for (int wn = 0; wn < {w}; ++wn) {{", 1)
        emit(f"long row = row0 + ty + wm * {rm}, col = col0 + tx + wn * {rn};", 2)
        emit(f"if (row >= {n_rows} || col >= {n_cols}) continue;", 2)
        self.decompose("row", list(rows), 2)
        self.decompose("col", list(cols), 2)
        self._roleless_vars(2)
        emit(f"const {t} acc = accs[wm][wn];", 2)
        self.stores(2)
        emit("}", 1)

    def _roleless_vars(self, depth: int) -> None:
        """Declare 0 the loop vars of no GEMM role (a one-group conv's group var: its extent is 1)."""
        for v in range(len(self.k.domain)):
            if not any(v in role for role in self.s.gemm):
                self.emit(f"const long v{v} = 0;", depth)

    def _stage(self, slot: str, size: int, factor: Expr, t: str, zero: str, indices: tuple) -> None:
        """The loop filling one local tile of `size` elements: the work-items stride over them;
        element l goes to `slot`, its value `factor` at the loop vars decomposed from each (name,
        index, extent, vars) of `indices`, or zero where an index passes its extent."""
        self.emit(f"for (int l = lid; l < {size}; l += {self.s.local}) {{", 2)
        self.emit(f"long {', '.join(f'{name} = {index}' for name, index, _, _ in indices)};", 3)
        self.emit(f"{t} x = {zero};", 3)
        self.emit(f"if ({' && '.join(f'{name} < {extent}' for name, _, extent, _ in indices)}) {{", 3)
        for name, _, _, variables in indices:
            self.decompose(name, list(variables), 4)
        self._roleless_vars(4)
        self.emit(f"x = {self.value(factor, {}, 4)};", 4)
        self.emit("}", 3)
        self.emit(f"{slot} = x;", 3)
        self.emit("}", 2)


class _Vars(dict):
    def __missing__(self, var: int) -> str:
        return f"v{var}"


_VARS = _Vars()
