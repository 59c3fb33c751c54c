"""What the direct convolutions' emitters share (rowconv.py, kconv.py, colconv.py, tapconv.py): the
vector type of a dtype and lane count, the IR helpers their loops use, and the parallel loop that
calls a direct conv's function on each thread's share (in chunks, over images) of its outer range."""
from __future__ import annotations

import math

from llvmlite import ir

from .gemm import _SUFFIX, _declare, _intrinsic
from .loops import carried_loop, for_range
from .parallel import CHUNKS_PER_THREAD, PARALLEL_MIN_FLOPS, emit_parallel_for

MIN_CHUNK_FLOPS = 4_000_000
"""A direct conv's least work per chunk of images: each chunk is a call of its own, whose fixed cost a
small conv's few images (lenet's first: 0.17 MFLOP per image) do not hide."""

I64, I32 = ir.IntType(64), ir.IntType(32)
PTR = ir.PointerType()


class VectorEmitter:
    """Base of a direct conv's emitter: `t` (the element type), `vt` (a vector of `lanes` of them), and
    helpers at the builder `b` (set by the emitter when it opens its function)."""

    b: ir.IRBuilder

    def __init__(self, module: ir.Module, dtype: str, lanes: int) -> None:
        self.module, self.dtype, self.lanes = module, dtype, lanes
        self.t = ir.FloatType() if dtype == "float32" else ir.DoubleType()
        self.vt = ir.VectorType(self.t, lanes)
        self.align = 4 if dtype == "float32" else 8

    def open_function(self, name: str, pointers: list[str]) -> ir.Function:
        """`void name(i64 N, i64 begin, i64 end, ptr noalias <pointers>...)`, internal and noinline (the
        parallel loop's threads and its serial path call it), its builder `b` at its entry."""
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [I64] * 3 + [PTR] * len(pointers)), name)
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        fn.attributes.add("nounwind")
        for arg, arg_name in zip(fn.args, ("N", "begin", "end", *pointers)):
            arg.name = arg_name
            if isinstance(arg.type, ir.PointerType):
                arg.add_attribute("noalias")
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        return fn

    def _i(self, value: int) -> ir.Value:
        return ir.Constant(I64, value)

    def splat(self, scalar: ir.Value) -> ir.Value:
        """A vector of `lanes` copies of scalar."""
        one = self.b.insert_element(ir.Constant(self.vt, ir.Undefined), scalar, ir.Constant(I32, 0))
        return self.b.shuffle_vector(one, ir.Constant(self.vt, ir.Undefined),
                                     ir.Constant(ir.VectorType(I32, self.lanes), [0] * self.lanes))

    def fma(self, x: ir.Value, y: ir.Value, acc: ir.Value) -> ir.Value:
        name = f"llvm.fma.v{self.lanes}{_SUFFIX[self.dtype]}"
        return self.b.call(_intrinsic(self.module, name, self.vt, 3), [x, y, acc])

    def prefetch_for_write(self, at: ir.Value) -> None:
        """Asks for the cache line at pointer `at` in L1, writable (a hint: no fault, no effect on
        values), so a store that comes later does not wait for memory."""
        fn = _declare(self.module, "llvm.prefetch.p0", ir.VoidType(), [PTR, I32, I32, I32])
        self.b.call(fn, [at, ir.Constant(I32, 1), ir.Constant(I32, 3), ir.Constant(I32, 1)])  # write, keep, data

    def vector_load(self, base: ir.Value, at: ir.Value, mask) -> ir.Value:
        """The vector at base[at], its lanes outside `mask` zero (all read where mask is None)."""
        ptr = self.b.gep(base, [at], inbounds=True, source_etype=self.t)
        if mask is None:
            return self.b.load(ptr, typ=self.vt, align=self.align)
        name = f"llvm.masked.load.v{self.lanes}{_SUFFIX[self.dtype]}.p0"
        fn = _declare(self.module, name, self.vt, [PTR, I32, mask.type, self.vt])
        return self.b.call(fn, [ptr, ir.Constant(I32, self.align), mask, ir.Constant(self.vt, None)])

    def pair_load(self, base: ir.Value, low: ir.Value, high: ir.Value, mask) -> ir.Value:
        """A vector whose low half is base[low..] and high half base[high..] (each half's lanes outside
        `mask`, a half's mask, zero; all read where mask is None)."""
        t = ir.VectorType(self.t, self.lanes // 2)
        halves = []
        for at in (low, high):
            ptr = self.b.gep(base, [at], inbounds=True, source_etype=self.t)
            if mask is None:
                halves.append(self.b.load(ptr, typ=t, align=self.align))
                continue
            name = f"llvm.masked.load.v{self.lanes // 2}{_SUFFIX[self.dtype]}.p0"
            fn = _declare(self.module, name, t, [PTR, I32, mask.type, t])
            halves.append(self.b.call(fn, [ptr, ir.Constant(I32, self.align), mask, ir.Constant(t, None)]))
        return self.b.shuffle_vector(*halves, ir.Constant(ir.VectorType(I32, self.lanes), list(range(self.lanes))))

    def half_mask(self, count: int):
        """The mask of a half vector's first `count` lanes (None: all of them)."""
        half = self.lanes // 2
        return None if count == half else ir.Constant(ir.VectorType(ir.IntType(1), half),
                                                      [i < count for i in range(half)])

    def loop(self, start, stop, name: str, step: int = 1):
        return for_range(self.b, start, stop, step, name)

    def carried(self, count: int, init: list, body, name: str) -> list:
        return carried_loop(self.b, count, init, body, name)


def kernel_flops(em) -> ir.Value:
    """At em's builder: 2 x the kernel's whole domain (a multiply-add per point), N for each batch extent."""
    work = ir.Constant(I64, 2 * math.prod(d for d in em.k.domain if d is not None))
    for _ in range(em.k.domain.count(None)):
        work = em.b.mul(work, em.N)
    return work


def call_in_parallel(em, fn: ir.Function, name: str, outer: ir.Value, args: list, threads: int,
                     work: ir.Value) -> None:
    """At em's builder: `fn(args[0], begin, end, *args[1:])` on each thread's share [begin, end) of
    range(outer), in one parallel region where `work` (FLOPs) is worth it, else serially. Over the
    images (the kernel's v0 the batch) each share is cut into chunks of at least MIN_CHUNK_FLOPS that a
    thread done early may take from the others (parallel.py); a few taps or tiles split evenly."""
    def body(b: ir.IRBuilder, slice_: ir.Value, begin: ir.Value, end: ir.Value, captured: list) -> None:
        b.call(fn, [captured[0], begin, end] + captured[1:])
    emit_parallel_for(em.r.module, em.b, f"{em.k.name}.{name}", outer, body, args, threads, work=work,
                      min_work=PARALLEL_MIN_FLOPS, chunks=CHUNKS_PER_THREAD if em.k.domain[0] is None else 0,
                      min_chunk=-(-MIN_CHUNK_FLOPS // (2 * math.prod(d for d in em.k.domain if d is not None))))
