"""Loop IR -> LLVM IR (text), one function per kernel plus the entry point.

    void graphnet_step(i64 N, ptr buffers)   calls every kernel in order
    void graphnet_step_profiled(...)         the same, reading a clock between kernels (profile.py)
    void k<i>_<ops>(i64 N, ptr buffers)        one kernel (check_numerics runs them one by one)

Every kernel carries its `LLVMSchedule` (schedule.py: threads, unrolling, GEMM strategy and
epilogue order, scalar loops), which the renderer follows; a kernel without one is an error.
Each kernel's body is an internal function taking its buffers as separate `noalias` pointers (the
memory plan guarantees they do not overlap), so LLVM may vectorize it; the scalar instructions map
to LLVM instructions or intrinsics through the tables below; exp, expm1, log, log1p, tanh, float32
erf and float32 pow are inline branch-free code from vmath.py, which vectorizes (float64 pow and erf,
and float mod (`frem`), still call libm and keep their loops scalar). Integer pow calls a small
internal function (`graphnet_ipow_<type>`, square and multiply). Fast-math is limited to `reassoc` and `contract` on the accumulation of reductions
and matmuls (summation order, fused multiply-add): results differ from the numpy reference by
rounding only, and NaN/Inf flow through as data.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np
from llvmlite import ir

from graphnet.ops.scalar import REDUCTIONS

from . import vmath
from .conv import axis_index, window_load
from .gemm import gemm_symbol
from .igemm import COLS, COLUMN, ROWS, descriptor
from .parallel import column_slice_symbol, emit_parallel_for
from .schedule import LLVMSchedule, Routine
from .target import TargetInfo
from ..collectives import call_descriptor
from ..loopir import (Acc, Const, Expr, Index, Kernel, Load, LoadAt, LoopProgram, Op, Size, UnsupportedInstruction,
                      Var, check_renderable, children, walk_unique)
from ..window import Window, guarded_axes, row_strides

I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
PTR = ir.PointerType()
REDUCE_FLAGS = ("reassoc", "contract")

_FLOAT_BINARY = {"add": "fadd", "sub": "fsub", "mul": "fmul", "div": "fdiv"}
_INT_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "xor": "xor"}
_FLOAT_INTRINSIC = {"sqrt": "llvm.sqrt", "abs": "llvm.fabs", "max": "llvm.maximum", "min": "llvm.minimum",
                    "pow": "llvm.pow", "floor": "llvm.floor", "ceil": "llvm.ceil", "round": "llvm.roundeven"}
_LIBM = {"erf": "erf"}  # libm functions called by name (float: with the suffix f)
_FCMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "=="}
_ICMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
# the runtime functions a call kernel may name (graphnet/distributed/native/collectives.c)
RUNTIME_CALLS = ("allreduce_start", "allreduce_wait", "allreduce_progress")
_DEFINE = re.compile(r'^define internal void @"([^"]+)"', re.M)  # a kernel body's definition, its loop IR goes before
_SCALAR_LOOP = re.compile(r'^(!\d+) = !\{ ?!"graphnet\.(?:scalar|width)\.\d+", (!\d+(?:, !\d+)*) ?\}', re.M)


def value_type(dtype: np.dtype) -> ir.Type:
    if dtype == np.float32:
        return ir.FloatType()
    if dtype == np.float64:
        return ir.DoubleType()
    if dtype.kind == "b":
        return I1
    return ir.IntType(dtype.itemsize * 8)


def storage_type(dtype: np.dtype) -> ir.Type:
    return I8 if dtype.kind == "b" else value_type(dtype)


def is_glue(fn: ir.Function, known: dict[ir.Function, bool]) -> bool:
    """Whether `fn` only sets up and makes calls: no loop (no cycle in its control flow), no
    floating-point value, and no call to a function of the module that LLVM would inline into it and
    that is not glue itself (a serial kernel's body stays inlined into its wrapper). The renderer
    compiles such functions without optimisation (`optnone`): the kernels' wrappers, the thread
    entries of parallel regions, which call the outlined loop nests (`_range`, `_rows`, never
    inlined), the profiled step; a glue kernel body (a region's set-up) is `alwaysinline`, so its
    wrapper runs its optimised code without a call. Their cost per step is a few instructions around
    calls, while LLVM's pipeline and instruction selection cost milliseconds per function. `known`
    memoizes."""
    if fn not in known:
        known[fn] = False  # (a function reached again while deciding it is recursive: not glue)
        known[fn] = _is_glue(fn, known)
    return known[fn]


def _is_glue(fn: ir.Function, known: dict[ir.Function, bool]) -> bool:
    successors: dict[ir.Block, list[ir.Block]] = {}
    for block in fn.blocks:
        successors[block] = []
        for instruction in block.instructions:
            if _is_float(instruction.type) or any(_is_float(op.type) for op in instruction.operands
                                                   if not isinstance(op, ir.Block)):
                return False
            successors[block] += [op for op in instruction.operands if isinstance(op, ir.Block)]
            callee = getattr(instruction, "callee", None)
            if isinstance(callee, ir.Function) and callee.blocks and "noinline" not in callee.attributes \
                    and not is_glue(callee, known):
                return False
    return not _has_cycle(fn.blocks[0], successors)


def _has_cycle(entry: ir.Block, successors: dict[ir.Block, list[ir.Block]]) -> bool:
    """Whether a path from `entry` returns to a block on it (a loop), by depth-first search."""
    on_path, done = {entry}, set()
    stack = [(entry, iter(successors[entry]))]
    while stack:
        block, rest = stack[-1]
        following = next(rest, None)
        if following is None:
            stack.pop()
            on_path.discard(block)
            done.add(block)
        elif following in on_path:
            return True
        elif following not in done:
            on_path.add(following)
            stack.append((following, iter(successors[following])))
    return False


def _is_float(t: ir.Type) -> bool:
    if isinstance(t, ir.VectorType):
        t = t.element
    return isinstance(t, (ir.HalfType, ir.FloatType, ir.DoubleType))


class Renderer:
    def __init__(self, lp: LoopProgram, triple: str = "", datalayout: str = "", threads: int = 1,
                 target: TargetInfo | None = None):
        self.lp, self.threads, self.target = lp, threads, target  # what every kernel must be scheduled for
        self.module = ir.Module("graphnet")
        self.module.triple, self.module.data_layout = triple, datalayout
        self._loops = 0
        self._bodies: set[ir.Function] = set()  # the kernels' bodies, each called by its wrapper only

    def render(self) -> str:
        """The module as LLVM IR text, each kernel preceded by its loop IR as comments."""
        check_renderable(self.lp, "LLVM", renders, lambda op, dtype: renders(REDUCTIONS[op].combine, dtype),
                         calls=RUNTIME_CALLS.__contains__)
        for k in self.lp.kernels:
            s = schedule_of(k)
            if (s.threads, s.target) != (self.threads, self.target):
                raise ValueError(f"kernel {k.name} was scheduled for {s.threads} threads on {s.target}, not for the "
                                 f"renderer's {self.threads} on {self.target}")
        names = [self._kernel(k) for k in self.lp.kernels]
        step = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [I64, PTR]), "graphnet_step")
        b = ir.IRBuilder(step.append_basic_block("entry"))
        for name in names:
            b.call(self.module.get_global(name), step.args)
        b.ret_void()
        self._profiled_step(names)
        glue: dict[ir.Function, bool] = {}
        for fn in self.module.functions:
            if not fn.blocks or fn is step or not is_glue(fn, glue):
                continue
            if fn in self._bodies:  # its wrapper is glue too, and gets the body's optimised code
                fn.attributes.add("alwaysinline")
            else:
                fn.attributes.add("noinline")
                fn.attributes.add("optnone")
        comments = {f"{k.name}_body": "".join(f"; {line}\n" for line in k.to_text().splitlines())
                    for k in self.lp.kernels}
        # one pass over the text: a search of the whole module per kernel grows as kernels squared
        text = _DEFINE.sub(lambda m: comments.get(m.group(1), "") + m.group(0), str(self.module))
        return _SCALAR_LOOP.sub(r"\1 = distinct !{\1, \2}", text)

    def _profiled_step(self, names: list[str]) -> None:
        """`void graphnet_step_profiled(i64 N, ptr buffers, i64* ns, i32 clock)`: the step, reading
        clock_gettime(clock) before the first kernel and after each one into ns[0..] (profile.py)."""
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [I64, PTR, PTR, I32]), "graphnet_step_profiled")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        clock_gettime = self._declare("clock_gettime", I32, [I32, PTR])
        timespec = b.alloca(I64, size=ir.Constant(I32, 2))  # {tv_sec, tv_nsec}, two 64-bit fields on LP64
        timespec.type = PTR  # llvmlite types allocas as typed pointers; LLVM 22 has only ptr

        def stamp(i: int) -> None:
            b.call(clock_gettime, [fn.args[3], timespec])
            sec = b.load(timespec, typ=I64)
            nsec = b.load(b.gep(timespec, [ir.Constant(I64, 1)], source_etype=I64), typ=I64)
            ns = b.add(b.mul(sec, ir.Constant(I64, 1_000_000_000)), nsec)
            b.store(ns, b.gep(fn.args[2], [ir.Constant(I64, i)], source_etype=I64))

        stamp(0)
        for i, name in enumerate(names):
            b.call(self.module.get_global(name), fn.args[:2])
            stamp(i + 1)
        b.ret_void()

    def scalar_loop_id(self) -> ir.Value:
        """Loop metadata keeping a loop scalar: vectorizing libm calls only scalarizes them again,
        at a large cost in compile time. (Made `distinct` and self-referencing in the text.)"""
        self._loops += 1
        off = self.module.add_metadata([ir.MetaDataString(self.module, "llvm.loop.vectorize.enable"),
                                        ir.Constant(I1, 0)])
        return self.module.add_metadata([ir.MetaDataString(self.module, f"graphnet.scalar.{self._loops}"), off])

    def vector_width_loop_id(self, width: int) -> ir.Value:
        """Loop metadata vectorizing a loop `width` lanes wide (LLVM's hint: its tail masked off; made
        `distinct` and self-referencing in the text, as scalar_loop_id's)."""
        self._loops += 1
        hints = [self.module.add_metadata([ir.MetaDataString(self.module, "llvm.loop.vectorize.width"),
                                           ir.Constant(ir.IntType(32), width)]),
                 self.module.add_metadata([ir.MetaDataString(self.module, "llvm.loop.vectorize.enable"),
                                           ir.Constant(I1, 1)]),
                 self.module.add_metadata([ir.MetaDataString(self.module, "llvm.loop.vectorize.predicate.enable"),
                                           ir.Constant(I1, 1)])]
        return self.module.add_metadata([ir.MetaDataString(self.module, f"graphnet.width.{self._loops}"), *hints])

    # ---- declarations -------------------------------------------------------------------
    def _declare(self, name: str, ret: ir.Type, args: list) -> ir.Function:
        fn = self.module.globals.get(name)  # vmath declares intrinsics too
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ret, args), name)
        return fn

    def int_pow_function(self, t: ir.IntType, signed: bool) -> ir.Function:
        """`graphnet_ipow_<s|u><bits>(x, y)`: x^y by squaring, wrapping as numpy; a negative y gives x^y
        truncated toward zero (1, -1 or 0: graphnet.ops.scalar._power)."""
        name = f"graphnet_ipow_{'s' if signed else 'u'}{t.width}"
        fn = self.module.globals.get(name)
        if fn is not None:
            return fn
        fn = ir.Function(self.module, ir.FunctionType(t, [t, t]), name)
        fn.linkage = "internal"
        x, y = fn.args
        one, zero = ir.Constant(t, 1), ir.Constant(t, 0)
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        negative, loop = fn.append_basic_block("negative"), fn.append_basic_block("loop")
        body, done = fn.append_basic_block("body"), fn.append_basic_block("done")
        b.cbranch(b.icmp_signed("<", y, zero) if signed else ir.Constant(I1, 0), negative, loop)
        b.position_at_end(negative)
        odd = b.trunc(y, I1)
        minus_one = b.select(odd, ir.Constant(t, -1), one)
        b.ret(b.select(b.icmp_signed("==", x, one), one,
                       b.select(b.icmp_signed("==", x, ir.Constant(t, -1)), minus_one, zero)))
        b.position_at_end(loop)
        result, base, e = b.phi(t), b.phi(t), b.phi(t)
        for phi, start in ((result, one), (base, x), (e, y)):
            phi.add_incoming(start, fn.blocks[0])
        b.cbranch(b.icmp_unsigned("==", e, zero), done, body)
        b.position_at_end(body)
        result.add_incoming(b.select(b.trunc(e, I1), b.mul(result, base), result), body)
        base.add_incoming(b.mul(base, base), body)
        e.add_incoming(b.lshr(e, one), body)
        b.branch(loop)
        b.position_at_end(done)
        b.ret(result)
        return fn

    def _libm(self, base: str, t: ir.Type) -> ir.Function:
        return self._declare(base + ("f" if isinstance(t, ir.FloatType) else ""), t, [t])

    def _intrinsic(self, base: str, t: ir.Type, arity: int) -> ir.Function:
        suffix = "f32" if isinstance(t, ir.FloatType) else "f64"
        return self._declare(f"{base}.{suffix}", t, [t] * arity)

    # ---- kernels ------------------------------------------------------------------------
    def _kernel(self, k: Kernel) -> str:
        if k.call is not None:
            return self._call(k)
        used = k.buffers()
        body = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [I64] + [PTR] * len(used)), f"{k.name}_body")
        body.linkage = "internal"
        self._bodies.add(body)
        body.args[0].name = "N"
        for arg, buf in zip(body.args[1:], used):
            arg.name = f"b{buf}"
            arg.add_attribute("noalias")
        outer = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [I64, PTR]), k.name)
        outer.attributes.add("noinline")  # the entry point calls kernels; it does not copy them
        b = ir.IRBuilder(outer.append_basic_block("entry"))
        ptrs = [b.load(b.gep(outer.args[1], [ir.Constant(I64, buf)], source_etype=PTR), name=f"b{buf}", typ=PTR)
                for buf in used]
        b.call(body, [outer.args[0]] + ptrs)
        b.ret_void()
        _KernelEmitter(self, k, body, dict(zip(used, body.args[1:]))).emit()
        return k.name


    def _call(self, k: Kernel) -> str:
        """A runtime call kernel: `graphnet_<op>(N, buffers, descriptor)` (collectives.call_descriptor)."""
        desc = call_descriptor(self.lp, k.call)
        table = ir.GlobalVariable(self.module, ir.ArrayType(I64, len(desc)), f"{k.name}_descriptor")
        table.global_constant, table.linkage = True, "private"
        table.initializer = ir.Constant(table.value_type, desc)
        table.type = PTR  # as for allocas: llvmlite types globals as typed pointers; LLVM has only ptr
        outer = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [I64, PTR]), k.name)
        outer.attributes.add("noinline")
        b = ir.IRBuilder(outer.append_basic_block("entry"))
        b.call(self._declare(f"graphnet_{k.call.op}", ir.VoidType(), [I64, PTR, PTR]), [*outer.args, table])
        b.ret_void()
        return k.name


class _KernelEmitter:
    def __init__(self, r: Renderer, k: Kernel, fn: ir.Function, ptrs: dict):
        self.r, self.k, self.fn, self.ptrs = r, k, fn, ptrs
        self.s: LLVMSchedule = k.schedule
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.N = fn.args[0]
        self.vars: dict[int, ir.Value] = {}
        self.acc: ir.Value | None = None

    def extent(self, var: int) -> ir.Value:
        d = self.k.domain[var]
        return self.N if d is None else ir.Constant(I64, d)

    def loop(self, var: int, body, scalar: bool = False, bounds: tuple | None = None) -> None:
        """A counted loop over `var` (or over `bounds` = (begin, end) of it), written out once per
        value where the schedule unrolls it."""
        b = self.b
        if bounds is None and var in self.s.unroll:
            for c in range(self.k.domain[var]):
                self.vars[var] = ir.Constant(I64, c)
                body()
            return
        begin, end = bounds or (ir.Constant(I64, 0), self.extent(var))
        pre = b.block
        head = self.fn.append_basic_block(f"v{var}")
        inner = self.fn.append_basic_block(f"v{var}.body")
        done = self.fn.append_basic_block(f"v{var}.end")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64, name=f"v{var}")
        i.add_incoming(begin, pre)
        b.cbranch(b.icmp_signed("<", i, end), inner, done)
        b.position_at_end(inner)
        self.vars[var] = i
        body()
        i.add_incoming(b.add(i, ir.Constant(I64, 1), flags=["nuw", "nsw"]), b.block)
        latch = b.branch(head)
        if scalar:
            latch.set_metadata("llvm.loop", self.r.scalar_loop_id())
        elif self.s.narrow and self.s.narrow[0] == var:
            latch.set_metadata("llvm.loop", self.r.vector_width_loop_id(self.s.narrow[1]))
        b.position_at_end(done)

    def nest(self, variables, body, scalar: bool = False) -> None:
        if not variables:
            body()
        else:
            self.loop(variables[0], lambda: self.nest(variables[1:], body, scalar), scalar)

    def parallel_nest(self, variables, body, scalar: bool, inside: tuple = ()) -> None:
        """`nest`, with the outermost loop split over the thread pool where the schedule says so
        (at run time: below its minimum work, the elements of `variables` and of the loops `inside`
        the body, it runs on the caller)."""
        if self.s.parallel is None:
            self.nest(variables, body, scalar)
            return
        outer = variables[0]
        if outer != self.s.parallel:
            raise AssertionError(f"{self.k.name}: the schedule splits v{self.s.parallel}, the loop nest starts "
                                 f"with v{outer}")
        work = ir.Constant(I64, 1)
        for v in [*variables, *inside]:
            work = self.b.mul(work, self.extent(v))
        part = self.range_function(f"{self.k.name}_range", variables, body, scalar)

        def slice_body(builder, slice_, begin, end, captured):
            builder.call(part, [captured[0], begin, end] + captured[1:])

        emit_parallel_for(self.r.module, self.b, f"{self.k.name}.par", self.extent(outer), slice_body,
                          [self.N] + [self.ptrs[x] for x in self.ptrs], self.s.threads, work=work,
                          min_work=self.s.min_work)

    def range_function(self, name: str, variables: list[int], body, scalar: bool) -> ir.Function:
        """`void name(i64 N, i64 begin, i64 end, ptr noalias b...)` (the kernel's buffers, in `self.ptrs`'
        order): the nest over `variables`, the outermost one over [begin, end). A parallel region's thread
        entry calls it rather than holding the loop itself: the pointers it loads from its frame are not
        `noalias`, so LLVM could not hoist a broadcast value's load and arithmetic out of the loop, would
        vectorize it behind run-time alias checks, and its loop vectorizer takes time exponential in the
        depth of such a loop-invariant expression (its uniformity check follows every path through it,
        and vmath's functions use their argument several times). It is never inlined: the region's
        thread entry and its serial path both call it, and an inlined nest would be optimised,
        vectorised and emitted once per caller."""
        saved = (self.b, self.fn, self.N, self.ptrs)
        buffers = list(self.ptrs)
        fn = ir.Function(self.r.module, ir.FunctionType(ir.VoidType(), [I64] * 3 + [PTR] * len(buffers)), name)
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        for arg in fn.args[3:]:
            arg.add_attribute("noalias")
        self.b, self.fn, self.N = ir.IRBuilder(fn.append_basic_block("entry")), fn, fn.args[0]
        self.ptrs = dict(zip(buffers, fn.args[3:]))
        self.loop(variables[0], lambda: self.nest(variables[1:], body, scalar), scalar, (fn.args[1], fn.args[2]))
        self.b.ret_void()
        self.b, self.fn, self.N, self.ptrs = saved
        return fn

    def entry_alloca(self, t: ir.Type, name: str) -> ir.Value:
        """A stack slot in the current function's entry block (a static alloca, which LLVM keeps in a
        register), wherever the builder is."""
        with self.b.goto_entry_block():
            return self.b.alloca(t, name=name)

    def offset(self, aff) -> ir.Value:
        terms = []
        for var, coef, nexp in [*aff.terms, *((None, coef, nexp) for coef, nexp in aff.base)]:
            term = ir.Constant(I64, coef) if var is None else self.vars[var]
            if coef != 1 and var is not None:
                term = self.b.mul(term, ir.Constant(I64, coef), flags=["nsw"])
            for _ in range(nexp):
                term = self.b.mul(term, self.N, flags=["nsw"])
            terms.append(term)
        if not terms:
            return ir.Constant(I64, 0)
        total = terms[0]
        for term in terms[1:]:
            total = self.b.add(total, term, flags=["nsw"])
        return total

    def element(self, buffer: int, offset: ir.Value, dtype: np.dtype) -> ir.Value:
        return self.b.gep(self.ptrs[buffer], [offset], inbounds=True, source_etype=storage_type(dtype))

    # ---- the kernel body ----------------------------------------------------------------
    def emit(self) -> None:
        k, b, s = self.k, self.b, self.s
        red = k.reduce
        slow_value, slow_stores = s.scalar_reduce, s.scalar_stores
        if s.transpose:
            x, y, _ = s.transpose
            self.parallel_nest([v for v in k.order if v not in (x, y)], self.transpose, False, inside=(x, y))
        elif red is None:
            self.parallel_nest(list(k.order), self.stores, slow_stores)
        elif s.gemm is not None:
            dtype = red.value.dtype

            def from_c():  # self.b: this may run in the parallel loop's outlined function
                index = ir.Constant(I64, 0)  # C is row-major over the kept vars
                for var in sorted(s.gemm.epilogue):
                    index = self.b.add(self.b.mul(index, self.extent(var)), self.vars[var])
                self.acc = self.b.load(self.element(red.scratch, index, dtype), typ=value_type(dtype))
                self.stores()
            if s.gemm.direct is not None:
                s.gemm.direct.emit(self, red, s.threads)
                if not s.gemm.direct.fused:
                    self.parallel_nest(list(s.gemm.epilogue), from_c, slow_stores)
            elif s.gemm.routine[4]:
                self.implicit_gemm(red)
                self.parallel_nest(list(s.gemm.epilogue), from_c, slow_stores)
            elif s.gemm.by_columns:
                self.gemm_by_columns(red, from_c, slow_stores)
            else:
                self.gemm(red)
                self.parallel_nest(list(s.gemm.epilogue), from_c, slow_stores)
        elif red.scan:
            self.scan(red, slow_value or slow_stores)
        elif red.scratch is None:
            kept = [v for v in k.order if v not in red.axes]

            def reduce_into_register():
                b = self.b  # the range function's, where the kept loops are split over threads
                slot = self.entry_alloca(value_type(red.value.dtype), "acc")

                def accumulate():
                    b.store(self.combine(red, b.load(slot, typ=slot.allocated_type), self.expr_root(red.value)), slot)
                if s.sum_block:
                    self.acc = self.blocked_sum(red, slot, accumulate, slow_value)
                else:
                    b.store(self.identity(red), slot)
                    self.nest(list(red.axes), accumulate, slow_value)
                    self.acc = b.load(slot, typ=slot.allocated_type)
                self.stores()
            self.parallel_nest(kept, reduce_into_register, slow_value or slow_stores, inside=red.axes)
        else:
            inner = k.order[-1]
            outer = [v for v in k.order[:-1] if v not in red.axes]
            dtype = red.value.dtype

            def cell():
                return self.element(red.scratch, self.vars[inner], dtype)

            def accumulate():
                b.store(self.combine(red, b.load(cell(), typ=value_type(dtype)), self.expr_root(red.value)), cell())

            totals = b.alloca(ir.DoubleType(), size=ir.Constant(I64, k.domain[inner]), name="totals") \
                if s.sum_block else None

            def reduce_into_row():
                if s.sum_block:
                    self.blocked_row_sum(red, inner, cell, totals, accumulate, slow_value)
                else:
                    self.loop(inner, lambda: b.store(self.identity(red), cell()))
                    self.nest(list(red.axes) + [inner], accumulate, slow_value)

                def finish():
                    self.acc = b.load(cell(), typ=value_type(dtype))
                    self.stores()
                self.loop(inner, finish, slow_stores)
            self.nest(outer, reduce_into_row, slow_value or slow_stores)
        b.ret_void()

    def transpose(self) -> None:
        """A transposing copy's (schedule.transpose_tile) loops over x and y at the outer loops' values:
        per tile of `lanes` x's, one vector load of the lanes*Y contiguous elements it reads, then per
        y a shuffle picking every Y-th of them and a contiguous vector store; the x's past the last
        whole tile in tiles of halving widths (x's extent is static), a last single x by scalar copies.
        A window's (a zero-bordered copy) x's outside its axis, and every x where another axis is
        outside, store its fill in vectors."""
        x, y, lanes = self.s.transpose
        st, b = self.k.stores[0], self.b
        load, extent, t = st.value, self.k.domain[y], storage_type(st.value.dtype)
        size = load.dtype.itemsize  # the alignment of one element
        count = self.k.domain[x]
        lo, hi, inside = 0, count, None
        if isinstance(load, Window):
            for coord, dim, guarded in zip(load.coords, load.shape, guarded_axes(load, self.k.domain)):
                if coord.terms and coord.terms[0][0] == x:
                    lo = min(max(-coord.const, 0), count)
                    hi = min(max(dim - coord.const, lo), count)
                elif guarded:
                    ok = axis_index(self, coord, self.N if dim is None else ir.Constant(I64, dim), True)[1]
                    inside = ok if inside is None else b.and_(inside, ok)

        def address() -> ir.Value:
            if not isinstance(load, Window):
                return self.offset(load.offset)
            total = ir.Constant(I64, 0)
            for coord, dim, stride in zip(load.coords, load.shape, row_strides(load.shape)):
                step = ir.Constant(I64, stride[0])
                for _ in range(stride[1]):
                    step = b.mul(step, self.N, flags=["nsw"])
                index = axis_index(self, coord, None, False)[0]
                total = b.add(total, b.mul(index, step, flags=["nsw"]), flags=["nsw"])
            return total

        def tile(start: ir.Value, width: int) -> None:
            self.vars[x], self.vars[y] = start, ir.Constant(I64, 0)
            at = self.element(load.buffer, address(), load.dtype)
            if _power_of_two(extent) and _power_of_two(width) and width * extent >= 2 * lanes:
                rows = unshuffled(at, width * extent)
            else:
                block = b.load(at, typ=ir.VectorType(t, width * extent), align=size)
                rows = [b.shuffle_vector(block, ir.Constant(block.type, ir.Undefined),
                                         _mask([c + extent * i for i in range(width)])) for c in range(extent)]
            for c, row in enumerate(rows):
                self.vars[y] = ir.Constant(I64, c)
                b.store(row, self.element(st.buffer, self.offset(st.offset), st.value.dtype), align=size)

        def unshuffled(at: ir.Value, count: int) -> list:
            """The rows of a power-of-two tile: its vectors deinterleaved log2(Y) times, each step's vector
            the even or the odd elements of two (one two-register permute each: LLVM's lowering of one
            shuffle of the whole tile takes about twice as many), then each y's row a slice of them."""
            vectors = [b.load(b.gep(at, [ir.Constant(I64, i * lanes)], inbounds=True, source_etype=t),
                              typ=ir.VectorType(t, lanes), align=size) for i in range(count // lanes)]
            for _ in range(extent.bit_length() - 1):
                pairs = list(zip(vectors[0::2], vectors[1::2]))
                vectors = [b.shuffle_vector(u, v, _mask(list(range(parity, 2 * lanes, 2))))
                           for parity in (0, 1) for u, v in pairs]
            width = count // extent
            return [b.shuffle_vector(vectors[c * width // lanes], ir.Constant(vectors[0].type, ir.Undefined),
                                     _mask(list(range(c * width % lanes, c * width % lanes + width))))
                    if width < lanes else vectors[c] for c in range(extent)]

        def fill(start: ir.Value, width: int) -> None:
            self.vars[x] = start
            for c in range(extent):
                self.vars[y] = ir.Constant(I64, c)
                b.store(ir.Constant(ir.VectorType(t, width), [ir.Constant(t, _filled(load.fill, t))] * width),
                        self.element(st.buffer, self.offset(st.offset), st.value.dtype), align=size)

        def runs(begin: int, end: int, piece) -> None:  # x in [begin, end): whole tiles, then halving widths
            whole = (end - begin) // lanes
            if whole:
                self.counted(ir.Constant(I64, whole), lambda j: piece(
                    b.add(b.mul(j, ir.Constant(I64, lanes), flags=["nuw", "nsw"]), ir.Constant(I64, begin)), lanes))
            done, width = begin + whole * lanes, lanes // 2
            while done < end:
                if width >= 2 and done + width <= end:
                    piece(ir.Constant(I64, done), width)
                    done += width
                elif width < 2:
                    if piece is fill:
                        fill(ir.Constant(I64, done), 1)
                    else:
                        self.vars[x] = ir.Constant(I64, done)
                        self.loop(y, self.stores, True)
                    done += 1
                width = max(width // 2, 1)

        def copy() -> None:
            runs(0, lo, fill)
            runs(lo, hi, tile)
            runs(hi, count, fill)
        if inside is None:
            copy()
        else:
            with b.if_else(inside) as (then, otherwise):
                with then:
                    copy()
                with otherwise:
                    runs(0, count, fill)

    def blocked_sum(self, red, slot, accumulate, scalar: bool) -> ir.Value:
        """The schedule's blocked float32 sum: the reduced loop `var` runs in blocks of `iterations`,
        each block (with the reduced loops inside it) summed in `slot` (vector lanes once vectorized),
        and every block's sum is added to a float64 total, rounded once at the end. Returns the sum."""
        b, (var, iterations) = self.b, self.s.sum_block
        at = red.axes.index(var)
        outer, inner = list(red.axes[:at]), list(red.axes[at + 1:])
        total = self.entry_alloca(ir.DoubleType(), "total")
        b.store(ir.Constant(ir.DoubleType(), 0.0), total)

        def block(j):
            b.store(self.identity(red), slot)
            self.loop(var, lambda: self.nest(inner, accumulate, scalar), scalar, self.block_bounds(j, iterations, var))
            part = b.fpext(b.load(slot, typ=slot.allocated_type), ir.DoubleType())
            b.store(b.fadd(b.load(total, typ=ir.DoubleType()), part), total)

        def blocks():
            n = self.extent(var)
            self.counted(b.udiv(b.add(n, ir.Constant(I64, iterations - 1)), ir.Constant(I64, iterations)), block)
        self.nest(outer, blocks, scalar)
        return b.fptrunc(b.load(total, typ=ir.DoubleType()), ir.FloatType())

    def blocked_row_sum(self, red, inner: int, cell, totals: ir.Value, accumulate, scalar: bool) -> None:
        """The schedule's blocked float32 sum into the scratch row (cells over `inner`): per block of the
        reduced loop `var`, the row of float32 sums starts at zero, accumulates, and is added into the
        row of float64 `totals` (on the stack), which is rounded back into the row at the end."""
        b, (var, iterations) = self.b, self.s.sum_block
        at = red.axes.index(var)
        outer, inside = list(red.axes[:at]), list(red.axes[at + 1:]) + [inner]
        f64 = ir.DoubleType()

        def total():
            return b.gep(totals, [self.vars[inner]], inbounds=True, source_etype=f64)

        def add_block():
            part = b.fpext(b.load(cell(), typ=ir.FloatType()), f64)
            b.store(b.fadd(b.load(total(), typ=f64), part), total())

        def block(j):
            self.loop(inner, lambda: b.store(self.identity(red), cell()))
            self.loop(var, lambda: self.nest(inside, accumulate, scalar), scalar, self.block_bounds(j, iterations, var))
            self.loop(inner, add_block)

        def blocks():
            n = self.extent(var)
            self.counted(b.udiv(b.add(n, ir.Constant(I64, iterations - 1)), ir.Constant(I64, iterations)), block)
        self.loop(inner, lambda: b.store(ir.Constant(f64, 0.0), total()))
        self.nest(outer, blocks, scalar)
        self.loop(inner, lambda: b.store(b.fptrunc(b.load(total(), typ=f64), ir.FloatType()), cell()))

    def block_bounds(self, j: ir.Value, size: int, var: int) -> tuple[ir.Value, ir.Value]:
        """[j * size, min((j + 1) * size, extent)) of loop var `var`."""
        b, n = self.b, self.extent(var)
        begin = b.mul(j, ir.Constant(I64, size))
        end = b.add(begin, ir.Constant(I64, size))
        return begin, b.select(b.icmp_signed("<", end, n), end, n)

    def counted(self, count: ir.Value, body) -> None:
        """for (j = 0; j < count; ++j) body(j), a loop of no loop var (the blocks of a blocked sum)."""
        b = self.b
        pre = b.block
        head, inner, done = (self.fn.append_basic_block(f"blocks{suffix}") for suffix in ("", ".body", ".end"))
        b.branch(head)
        b.position_at_end(head)
        j = b.phi(I64, name="block")
        j.add_incoming(ir.Constant(I64, 0), pre)
        b.cbranch(b.icmp_signed("<", j, count), inner, done)
        b.position_at_end(inner)
        body(j)
        j.add_incoming(b.add(j, ir.Constant(I64, 1), flags=["nuw", "nsw"]), b.block)
        b.branch(head)
        b.position_at_end(done)

    def scan(self, red, scalar: bool) -> None:
        """For each kept element, a running result in a register over the scan's var (walked backwards
        for a reverse scan), storing after every step."""
        b, (var,) = self.b, red.axes
        slot = b.alloca(value_type(red.value.dtype), name="acc")

        def step():
            if red.scan == "reverse":
                self.vars[var] = b.sub(b.sub(self.extent(var), ir.Constant(I64, 1)), self.vars[var])
            self.acc = self.combine(red, b.load(slot, typ=slot.allocated_type), self.expr_root(red.value))
            b.store(self.acc, slot)
            self.stores()

        def run():
            b.store(self.identity(red), slot)
            self.loop(var, step, scalar)
        self.nest([v for v in self.k.order if v != var], run, scalar)

    def gemm(self, red) -> None:
        """C = op(A) @ op(B) by the GEMM routine (codegen/llvm/gemm.py), into the scratch buffer."""
        a, b = red.contraction
        name = gemm_symbol(*self.s.gemm.routine)
        fn = self.r._declare(name, ir.VoidType(), [I64] * 3 + [PTR] * 4)
        self.b.call(fn, [self.extent(0), self.extent(1), self.extent(2), self.ptrs[a.buffer], self.ptrs[b.buffer],
                         self.ptrs[red.scratch], self.ptrs[red.workspace]])

    def implicit_gemm(self, red) -> None:
        """C = window @ B by the implicit GEMM routine (codegen/llvm/igemm.py), given the kernel's
        geometry descriptor (a constant table), into the scratch buffer."""
        window, other = red.contraction
        desc = descriptor(self.k)
        table = ir.GlobalVariable(self.r.module, ir.ArrayType(I64, len(desc)), f"{self.k.name}_geometry")
        table.global_constant, table.linkage = True, "private"
        table.initializer = ir.Constant(table.value_type, desc)
        table.type = PTR  # llvmlite types globals as typed pointers; LLVM has only ptr

        def product(variables) -> ir.Value:
            out = ir.Constant(I64, 1)
            for var in variables:
                out = self.b.mul(out, self.extent(var))
            return out
        fn = self.r._declare(gemm_symbol(*self.s.gemm.routine), ir.VoidType(), [I64] * 3 + [PTR] * 5)
        self.b.call(fn, [product(ROWS), self.extent(COLUMN), product(COLS), self.ptrs[window.buffer],
                         self.ptrs[other.buffer], self.ptrs[red.scratch], self.ptrs[red.workspace], table])

    def gemm_by_columns(self, red, epilogue, scalar: bool) -> None:
        """The GEMM and its epilogue in one parallel region (the schedule's "by columns"): each
        thread computes a block of C's columns, meets the others at a barrier, then applies the
        epilogue to a block of rows."""
        a, b = red.contraction
        gemm = self.s.gemm
        if self.s.parallel != 1:
            raise AssertionError(f"{self.k.name}: a GEMM by columns splits v1 (C's columns), not v{self.s.parallel}")
        name = gemm_symbol(*gemm.routine)
        columns = self.r._declare(column_slice_symbol(name), ir.VoidType(), [I64] * 3 + [PTR] * 4 + [I64] * 2)
        grain, stride = gemm.grain, gemm.stride
        saved = (self.b, self.fn, self.N, self.ptrs)
        buffers = list(self.ptrs)
        outer, inner = gemm.epilogue
        tail = self.range_function(f"{self.k.name}_rows", [outer, inner], epilogue, scalar)

        def slice_body(builder, slice_, begin, end, captured):
            self.N, ptrs = captured[0], dict(zip(buffers, captured[1:]))
            ws = builder.gep(ptrs[red.workspace], [builder.mul(slice_, ir.Constant(I64, stride))],
                             inbounds=True, source_etype=I8)
            m = self.extent(0)
            builder.call(columns, [m, self.extent(1), self.extent(2), ptrs[a.buffer], ptrs[b.buffer],
                                   ptrs[red.scratch], ws, begin, end])
            team = builder.sext(builder.call(self.r._declare("omp_get_num_threads", I32, []), []), I64)
            with builder.if_then(builder.icmp_signed(">", team, ir.Constant(I64, 1))):
                builder.call(self.r._declare("GOMP_barrier", ir.VoidType(), []), [])
            span = self.extent(outer)
            rows = builder.sdiv(builder.add(span, builder.sub(team, ir.Constant(I64, 1))), team)
            first = builder.mul(slice_, rows)
            first = builder.select(builder.icmp_signed("<", first, span), first, span)
            last = builder.add(first, rows)
            last = builder.select(builder.icmp_signed("<", last, span), last, span)
            builder.call(tail, [self.N, first, last] + captured[1:])

        flops = self.b.mul(self.b.mul(self.b.mul(self.extent(0), self.extent(1)), self.extent(2)),
                           ir.Constant(I64, 2))
        emit_parallel_for(self.r.module, self.b, f"{self.k.name}.par", self.extent(1), slice_body,
                          [self.N] + [self.ptrs[x] for x in buffers], self.s.threads, grain=grain, work=flops,
                          min_work=self.s.min_work, every_thread=True)
        self.b, self.fn, self.N, self.ptrs = saved

    def identity(self, red) -> ir.Value:
        dtype = red.value.dtype
        value = REDUCTIONS[red.op].identity(dtype)
        return ir.Constant(value_type(dtype), float(value) if dtype.kind == "f" else int(value))

    def combine(self, red, acc: ir.Value, x: ir.Value) -> ir.Value:
        name, dtype = REDUCTIONS[red.op].combine, red.value.dtype
        if name == "add" and dtype.kind == "f":  # a sum may be reassociated (vector lanes, FMA)
            return self.b.fadd(acc, x, flags=REDUCE_FLAGS)
        return _rule(name, dtype)(self, [acc, x], dtype)

    def expr_root(self, e: Expr) -> ir.Value:
        memo: dict = {}
        if isinstance(e, Op) and e.name == "mul" and self.k.reduce is not None and self.k.reduce.contraction \
                and e.dtype.kind == "f":
            a, c = (self.expr(x, memo) for x in e.args)
            return self.b.fmul(a, c, flags=("contract",))
        return self.expr(e, memo)

    def stores(self) -> None:
        """Every store's value (and computed index), then the stores; an accumulating one adds its value
        to the element's (in the order of the iterations: no reassociation)."""
        memo: dict = {}
        values = [(s, self.expr(s.value, memo), None if s.index is None else self.expr(s.index, memo))
                  for s in self.k.stores]
        for s, v, index in values:
            dtype = s.value.dtype
            at = self.element(s.buffer, self.offset(s.offset) if index is None else index, dtype)
            if s.accumulate:
                v = _rule("add", dtype)(self, [self.b.load(at, typ=value_type(dtype)), v], dtype)
            if dtype.kind == "b":
                v = self.b.zext(v, I8)
            self.b.store(v, at)

    # ---- scalar expressions -------------------------------------------------------------
    def expr(self, e: Expr, memo: dict) -> ir.Value:
        """The value of `e` in the current block. `memo` maps the nodes already emitted in this block (one
        memo per place values are evaluated: a reduction's inner loop body, a store body) to their values,
        so each distinct node is emitted once there, and never reused where its block does not dominate."""
        for node in walk_unique(e, skip=memo):
            memo[node] = self.node(node, [memo[a] for a in children(node)])
        return memo[e]

    def node(self, e: Expr, args: list) -> ir.Value:
        """One node's instructions, given its operands' values."""
        b = self.b
        if isinstance(e, Const):
            t = value_type(e.dtype)
            if e.dtype.kind == "f":
                return ir.Constant(t, float(e.value))
            bits = int(e.value) & ((1 << t.width) - 1)  # two's complement in the signed range LLVM's parser expects
            return ir.Constant(t, bits - (1 << t.width) if t.width > 1 and bits >> (t.width - 1) else bits)
        if isinstance(e, Window):
            return window_load(self, e, value_type(e.dtype))
        if isinstance(e, (Load, LoadAt)):  # a LoadAt's index is clamped into the buffer where it was built
            at = self.offset(e.offset) if isinstance(e, Load) else args[0]
            v = b.load(self.element(e.buffer, at, e.dtype), typ=storage_type(e.dtype))
            return b.trunc(v, I1) if e.dtype.kind == "b" else v
        if isinstance(e, Var):
            return self.vars[e.var]
        if isinstance(e, Index):
            return b.trunc(self.offset(e.offset), I32)
        if isinstance(e, Size):
            return self.convert(self.N, np.dtype(np.int64), e.dtype)
        if isinstance(e, Acc):
            return self.acc
        return self.op(e, args)

    def op(self, e: Op, args: list) -> ir.Value:
        rule = _rule(e.name, e.args[0].dtype)
        if rule is None:  # check_renderable refuses such programs before rendering
            raise UnsupportedInstruction(f"scalar instruction {e.name} on {e.args[0].dtype} has no LLVM lowering")
        return rule(self, args, e.dtype)

    def int_div(self, x: ir.Value, y: ir.Value, signed: bool) -> ir.Value:
        """x / 0 gives 0 and MIN / -1 wraps, instead of trapping (SIGFPE)."""
        b = self.b
        zero, one = ir.Constant(y.type, 0), ir.Constant(y.type, 1)
        by_zero = b.icmp_unsigned("==", y, zero)
        safe = b.select(by_zero, one, y)
        if signed:
            minus_one = b.icmp_signed("==", safe, ir.Constant(y.type, -1))
            quotient = b.select(minus_one, b.neg(x), b.sdiv(x, b.select(minus_one, one, safe)))
        else:
            quotient = b.udiv(x, safe)
        return b.select(by_zero, zero, quotient)

    def int_mod(self, x: ir.Value, y: ir.Value, signed: bool) -> ir.Value:
        """Floor modulo (the divisor's sign, as numpy): x % 0 and MIN % -1 give 0 instead of trapping."""
        b = self.b
        zero, one = ir.Constant(y.type, 0), ir.Constant(y.type, 1)
        trivial = b.icmp_unsigned("==", y, zero)
        if signed:
            trivial = b.or_(trivial, b.icmp_signed("==", y, ir.Constant(y.type, -1)))
        safe = b.select(trivial, one, y)
        if not signed:
            return b.urem(x, safe)
        rem = b.srem(x, safe)
        fix = b.and_(b.icmp_signed("!=", rem, zero), b.icmp_signed("<", b.xor(rem, safe), zero))
        return b.select(fix, b.add(rem, safe), rem)

    def float_mod(self, x: ir.Value, y: ir.Value) -> ir.Value:
        """numpy's float modulo: fmod (exact), moved into the divisor's sign; a zero takes the divisor's sign."""
        b = self.b
        zero = ir.Constant(x.type, 0.0)
        rem = b.frem(x, y)
        fix = b.and_(b.fcmp_ordered("!=", rem, zero), b.xor(b.fcmp_ordered("<", y, zero), b.fcmp_ordered("<", rem, zero)))
        rem = b.select(fix, b.fadd(rem, y), rem)
        signed_zero = b.call(self.r._intrinsic("llvm.copysign", x.type, 2), [zero, y])
        return b.select(b.fcmp_ordered("==", rem, zero), signed_zero, rem)

    def int_pow(self, x: ir.Value, y: ir.Value, signed: bool) -> ir.Value:
        return self.b.call(self.r.int_pow_function(x.type, signed), [x, y])

    def convert(self, v: ir.Value, src: np.dtype, dst: np.dtype) -> ir.Value:
        b, t = self.b, value_type(dst)
        if src == dst:
            return v
        if dst.kind == "b":
            return b.fcmp_unordered("!=", v, ir.Constant(v.type, 0.0)) if src.kind == "f" else \
                b.icmp_unsigned("!=", v, ir.Constant(v.type, 0))
        if src.kind == "f" and dst.kind == "f":
            return b.fpext(v, t) if dst.itemsize > src.itemsize else b.fptrunc(v, t)
        if src.kind == "f":
            return b.fptosi(v, t) if dst.kind == "i" else b.fptoui(v, t)
        if dst.kind == "f":
            return b.sitofp(v, t) if src.kind == "i" else b.uitofp(v, t)
        if dst.itemsize > src.itemsize:
            return b.sext(v, t) if src.kind == "i" else b.zext(v, t)
        if dst.itemsize < src.itemsize:
            return b.trunc(v, t)
        return v


Rule = Callable[["_KernelEmitter", list, np.dtype], ir.Value]  # (emitter, operands, result dtype) -> value


def _rule(name: str, src: np.dtype) -> Rule | None:
    """How scalar instruction `name` on operands of dtype `src` becomes LLVM IR (None: it does not)."""
    if name == "cast":
        return lambda em, args, dst: em.convert(args[0], src, dst)
    if name == "select":
        return lambda em, args, dst: em.b.select(*args)
    if src.kind == "f":
        if name in _FLOAT_BINARY:
            return lambda em, args, dst: getattr(em.b, _FLOAT_BINARY[name])(*args)
        if name == "neg":
            return lambda em, args, dst: em.b.fneg(args[0])
        if vmath.provides(name, src):
            return lambda em, args, dst: vmath.emit(em.b, name, *args)
        if name in _FLOAT_INTRINSIC:
            return lambda em, args, dst: em.b.call(em.r._intrinsic(_FLOAT_INTRINSIC[name], args[0].type, len(args)),
                                                   args)
        if name in _LIBM:
            return lambda em, args, dst: em.b.call(em.r._libm(_LIBM[name], args[0].type), args)
        if name == "mod":
            return lambda em, args, dst: em.float_mod(*args)
        if name in _FCMP:
            return lambda em, args, dst: em.b.fcmp_ordered(_FCMP[name], *args)
        if name == "ne":
            return lambda em, args, dst: em.b.fcmp_unordered("!=", *args)
        return None
    signed = src.kind == "i"
    icmp = "icmp_signed" if signed else "icmp_unsigned"
    if src.kind == "b":
        return (lambda em, args, dst: em.b.icmp_unsigned(_ICMP[name], *args)) if name in ("eq", "ne") else None
    if name in _INT_BINARY:
        return lambda em, args, dst: getattr(em.b, _INT_BINARY[name])(*args)
    if name in _ICMP:
        return lambda em, args, dst: getattr(em.b, icmp)(_ICMP[name], *args)
    if name == "neg":
        return lambda em, args, dst: em.b.neg(args[0])
    if name == "div":
        return lambda em, args, dst: em.int_div(*args, signed)
    if name == "mod":
        return lambda em, args, dst: em.int_mod(*args, signed)
    if name == "pow":
        return lambda em, args, dst: em.int_pow(*args, signed)
    if name == "shr":
        return lambda em, args, dst: (em.b.ashr if signed else em.b.lshr)(*args)
    if name in ("max", "min"):
        return lambda em, args, dst: em.b.select(getattr(em.b, icmp)({"max": ">", "min": "<"}[name], *args), *args)
    if name == "abs":
        if not signed:
            return lambda em, args, dst: args[0]
        return lambda em, args, dst: em.b.select(em.b.icmp_signed("<", args[0], ir.Constant(args[0].type, 0)),
                                                 em.b.neg(args[0]), args[0])
    return None


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _mask(picks: list) -> ir.Constant:
    """A shufflevector mask picking these lanes."""
    return ir.Constant(ir.VectorType(ir.IntType(32), len(picks)), picks)


def _filled(value: float, t: ir.Type):
    """A window's fill as a constant of storage type `t`."""
    return int(value) if isinstance(t, ir.IntType) else float(value)


def renders(name: str, src: np.dtype) -> bool:
    """Whether the LLVM renderer lowers scalar instruction `name` on operands of dtype `src`."""
    return _rule(name, np.dtype(src)) is not None


def schedule_of(k: Kernel) -> LLVMSchedule:
    """The kernel's LLVM schedule; rendering an unscheduled kernel is an error (schedule_llvm sets it)."""
    if not isinstance(k.schedule, LLVMSchedule):
        raise ValueError(f"kernel {k.name} has no LLVM schedule (run codegen.llvm.schedule.schedule_llvm)")
    return k.schedule


def required_gemms(lp: LoopProgram) -> list[Routine]:
    """Every GEMM routine the program's kernels call, as their schedules name them."""
    found = {schedule_of(k).gemm.routine for k in lp.kernels
             if schedule_of(k).gemm is not None and schedule_of(k).gemm.routine is not None}
    return sorted(found, key=lambda r: (*r[:3], r[3] or 0, r[4]))
