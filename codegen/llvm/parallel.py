"""Parallel-for in generated code, on libgomp's persistent thread pool.

`emit_parallel_for` outlines a loop body over [0, total) into a thread entry and calls it through
`GOMP_parallel`, which reuses the pool's threads (no thread start per call). Each thread computes
its own slice from `omp_get_thread_num`/`omp_get_num_threads`; the calling thread runs slice 0. A
long loop whose body may run any number of times per thread (`chunks`) cuts each slice into chunks
claimed from a counter, so a thread the OS delays (another process on the core) leaves the rest of
its slice to the others instead of holding up the whole team.
Work below a caller-given size, or a build with one thread, calls the body directly, so small
problems never pay for threads ("no threading cliff"), and a process without libgomp gets serial
code that does not reference it.

Loading libgomp, the thread count and a forked child's serial flag are `runtime.py`'s (the names are
re-exported here).
"""
from __future__ import annotations

from typing import Callable

from llvmlite import ir

from codegen.llvm.gemm import GemmSpec, default_blocking, emit_gemm, workspace_bytes
from codegen.llvm.target import TargetInfo

from .runtime import (MAX_DEFAULT_THREADS, SPIN_COUNT, bind_for_jit, load_runtime,  # noqa: F401 (re-exported)
                      num_threads, runtime_failure, serial_flag, serial_flags)
from .runtime import SERIAL_FLAG as _SERIAL_FLAG

PARALLEL_MIN_FLOPS = 10_000_000
"""GEMMs below this many flops (2*M*N*K) stay on one thread: waking a team and re-packing A on every
thread costs more than a second thread saves (graphnet/bench/micro/parallel.py, section "threshold")."""

CHUNKS_PER_THREAD = 8
"""Chunks per thread of a convolution's parallel loop (`emit_parallel_for(chunks=...)`): enough that a
thread delayed by another process hands most of its share to the others, few enough that each chunk's
fixed cost stays small next to its work."""
MIN_CHUNK_ROWS = 1024
"""An implicit GEMM's least rows of C per chunk: each chunk packs all of B (K x N), which a filter
gradient's K (the batch's positions) makes as large as an image, so a short C (its taps) is split
evenly, one piece per thread."""

_I32, _I64, _PTR = ir.IntType(32), ir.IntType(64), ir.PointerType()

Body = Callable[[ir.IRBuilder, ir.Value, ir.Value, ir.Value, list], None]
"""`body(builder, slice, begin, end, captured)`: emit the work for [begin, end) of the range.

`slice` (i64) is the thread's index, below the `threads` the loop was emitted for (use it to
pick per-thread scratch memory); `captured` are the loop's captured values as seen inside the body.
The body must leave the builder in a block without a terminator. It is emitted twice, in the thread
entry and on the serial path, so it should be a call of a function holding the work.
"""


def emit_parallel_for(module: ir.Module, builder: ir.IRBuilder, name: str, total: ir.Value, body: Body,
                      captured: list[ir.Value], threads: int, *, grain: int = 1,
                      work: ir.Value | None = None, min_work: int = 0, every_thread: bool = False,
                      chunks: int = 0, min_chunk: int = 1) -> None:
    """Run `body` over [0, total) split into at most `threads` slices, at the builder's position.

    Slice bounds are multiples of `grain` (a GEMM's NR or MR, so only the last slice has edge
    tiles). At run time the loop is serial when `work` (i64, default `total`) is below `min_work`
    or the range has a single grain. `threads` <= 1, or no libgomp, emits the body inline.
    `name` names the outlined functions; it must be unique in the module. With `every_thread` each
    thread of the team runs `body`, even on an empty range (a body that meets a barrier needs that).
    With `chunks` > 0 each thread's slice is cut into about `chunks` pieces (grain multiples, at
    least `min_chunk` long unless that exceeds the slice, which is then the piece) that its thread
    claims in order, and a thread done with its own claims the pieces left in the others'
    (`_emit_omp_chunks`): `body` then runs once per claimed piece, with its thread's `slice` (so
    per-thread scratch stays private), and must not meet a barrier.
    """
    if chunks and every_thread:
        raise ValueError("a body that meets a barrier runs once per thread: no chunks")
    if threads <= 1 or not load_runtime():
        body(builder, ir.Constant(_I64, 0), ir.Constant(_I64, 0), total, list(captured))
        return
    # the frame: total, then (with `chunks`) each share's counter of claimed indices, then the captures
    head = [_I64, ir.ArrayType(_I64, threads)] if chunks else [_I64]
    frame = ir.LiteralStructType(head + [v.type for v in captured])
    if chunks:
        omp_fn = _emit_omp_chunks(module, f"{name}.omp", frame, body, grain, chunks, min_chunk)
    else:
        omp_fn = _emit_omp_entry(module, f"{name}.omp", frame, body, grain, every_thread)

    data = _entry_alloca(builder, frame)
    grains = _ceil_div(builder, total, grain)
    team = _min(builder, grains, ir.Constant(_I64, threads))
    if min_work > 0:
        small = builder.icmp_signed("<", total if work is None else work, ir.Constant(_I64, min_work))
        team = builder.select(small, ir.Constant(_I64, 1), team)
    forked = builder.icmp_signed("!=", builder.load(_serial_flag(module), typ=_I32), ir.Constant(_I32, 0))
    team = builder.select(forked, ir.Constant(_I64, 1), team)
    with builder.if_else(builder.icmp_signed(">", team, ir.Constant(_I64, 1))) as (parallel, serial):
        with parallel:
            start = [total, ir.Constant(ir.ArrayType(_I64, threads), [0] * threads)] if chunks else [total]
            for i, value in enumerate(start + list(captured)):
                builder.store(value, _field(builder, frame, data, i))
            gomp = _declare(module, "GOMP_parallel", ir.VoidType(), [_PTR, _PTR, _I32, _I32])
            builder.call(gomp, [omp_fn, data, builder.trunc(team, _I32), ir.Constant(_I32, 0)])
        with serial:
            body(builder, ir.Constant(_I64, 0), ir.Constant(_I64, 0), total, list(captured))


def emit_parallel_gemm(module: ir.Module, name: str, spec: GemmSpec, target: TargetInfo, threads: int,
                       min_flops: int = PARALLEL_MIN_FLOPS) -> ir.Function:
    """`void name(i64 M, i64 N, i64 K, T* A, T* B, T* C, T* workspace)`, emit_gemm's signature, with
    the columns of C split across up to `threads` threads in NR-wide panels.

    The workspace holds `parallel_workspace_bytes(spec, target, threads)`: thread t packs into the
    t-th `workspace_bytes(spec, target)` bytes (a multiple of 64, so every slice stays 64-byte
    aligned). GEMMs under `min_flops` (2*M*N*K at run time; benchmarks and tests pass 0 to force a
    team) run on the caller's thread. The slice routine it calls is exported as
    `column_slice_symbol(name)`.
    """
    if threads <= 1 or not load_runtime():
        return emit_gemm(module, name, spec, target)
    kernel = emit_gemm(module, column_slice_symbol(name), spec, target, columns=True)
    stride = workspace_bytes(spec, target)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [_I64] * 3 + [_PTR] * 4), name=name)
    for arg, arg_name in zip(fn.args, ("M", "N", "K", "A", "B", "C", "workspace")):
        arg.name = arg_name
    fn.attributes.add("nounwind")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    m = ir.Constant(_I64, spec.m) if spec.m is not None else fn.args[0]
    n, k = fn.args[1], fn.args[2]
    flops = b.mul(b.mul(b.mul(m, n), k), ir.Constant(_I64, 2))

    def body(b: ir.IRBuilder, slice_: ir.Value, begin: ir.Value, end: ir.Value, captured: list) -> None:
        ws = b.gep(captured[6], [b.mul(slice_, ir.Constant(_I64, stride))], inbounds=True, source_etype=ir.IntType(8))
        b.call(kernel, captured[:6] + [ws, begin, end])

    emit_parallel_for(module, b, name, n, body, list(fn.args), threads,
                      grain=column_split(spec, target)[0], work=flops, min_work=min_flops)
    b.ret_void()
    return fn


def rows_slice_symbol(name: str) -> str:
    """The exported row-slice routine of an implicit GEMM `name` (igemm.emit_parallel_conv_gemm)."""
    return f"{name}.rows"


def column_slice_symbol(name: str) -> str:
    """The exported slice routine of `emit_parallel_gemm`'s `name`: emit_gemm's signature plus
    `i64 begin, i64 end`, computing C's columns [begin, end) (`emit_gemm(columns=True)`). Kernels
    with an epilogue call it inside their own parallel region (codegen/llvm/render.py)."""
    return f"{name}.columns"


def column_split(spec: GemmSpec, target: TargetInfo) -> tuple[int, int]:
    """(grain, workspace bytes per thread) with which `emit_parallel_gemm` splits C's columns."""
    return default_blocking(spec, target).nr, workspace_bytes(spec, target)


def parallel_workspace_bytes(spec: GemmSpec, target: TargetInfo, threads: int) -> int:
    """Workspace of `emit_parallel_gemm`: one packing workspace per thread."""
    return max(1, threads) * workspace_bytes(spec, target)


def _emit_omp_entry(module: ir.Module, name: str, frame: ir.LiteralStructType, body: Body,
                    grain: int, every_thread: bool) -> ir.Function:
    """`void name(ptr frame)`, run by every thread of the team: thread t takes grains
    [t*per, (t+1)*per) of ceil(total/grain), per = ceil(grains/team), and runs the body on them with
    the captures unpacked from the frame."""
    fn, b, data, total, tid, team = _omp_function(module, name, frame)
    per = b.mul(_ceil_div(b, _ceil_div(b, total, grain), team), ir.Constant(_I64, grain))
    begin = b.mul(tid, per)
    end = _min(b, b.add(begin, per), total)
    captured = [b.load(_field(b, frame, data, i), typ=t) for i, t in enumerate(frame.elements) if i > 0]
    if every_thread:
        body(b, tid, _min(b, begin, end), end, captured)
    else:
        with b.if_then(b.icmp_signed("<", begin, end)):
            body(b, tid, begin, end, captured)
    b.ret_void()
    return fn


def _emit_omp_chunks(module: ir.Module, name: str, frame: ir.LiteralStructType, body: Body,
                     grain: int, chunks: int, min_chunk: int) -> ir.Function:
    """`void name(ptr frame)`, run by every thread of the team. Thread t's even share (the static split's
    slice t) is cut into chunks that it runs in order, each claimed from the share's counter in the
    frame (an atomic add); a thread done with its own share claims the chunks left in the others'
    (t + 1, t + 2, ...). Undisturbed, every thread runs its static slice (the data it wrote in earlier
    loops stays in its cache); a thread delayed by the OS leaves its last chunks to the others. A
    chunk is ceil(grains / (team * chunks)) grains, or if more, min(ceil(min_chunk / grain), a share).
    The body runs on each chunk with the captures unpacked from the frame."""
    fn, b, data, total, tid, team = _omp_function(module, name, frame)
    captured = [b.load(_field(b, frame, data, i), typ=t) for i, t in enumerate(frame.elements) if i > 1]
    grains = _ceil_div(b, total, grain)
    share = _ceil_div(b, grains, team)
    least = _min(b, share, ir.Constant(_I64, -(-min_chunk // grain)))
    size = _ceil_div(b, grains, b.mul(team, ir.Constant(_I64, chunks)))
    size = b.mul(_max(b, size, least), ir.Constant(_I64, grain))
    per = b.mul(share, ir.Constant(_I64, grain))
    entry, shares, claim, run, next_share, done = (b.block, *(fn.append_basic_block(n) for n in
                                                              ("share", "claim", "run", "next", "done")))
    b.branch(shares)
    b.position_at_end(shares)  # shares tid, tid + 1, ... (mod team)
    step = b.phi(_I64, "step")
    step.add_incoming(ir.Constant(_I64, 0), entry)
    owner = b.srem(b.add(tid, step), team)
    counter = b.gep(data, [ir.Constant(_I32, 0), ir.Constant(_I32, 1), owner], inbounds=True, source_etype=frame)
    low = b.mul(owner, per)
    high = _min(b, b.add(low, per), total)
    b.branch(claim)
    b.position_at_end(claim)
    begin = b.add(low, b.atomic_rmw("add", counter, size, "monotonic"))
    b.cbranch(b.icmp_signed("<", begin, high), run, next_share)
    b.position_at_end(run)
    body(b, tid, begin, _min(b, b.add(begin, size), high), captured)
    b.branch(claim)
    b.position_at_end(next_share)
    following = b.add(step, ir.Constant(_I64, 1))
    step.add_incoming(following, next_share)
    b.cbranch(b.icmp_signed("<", following, team), shares, done)
    b.position_at_end(done)
    b.ret_void()
    return fn


def _omp_function(module: ir.Module, name: str, frame: ir.LiteralStructType) -> tuple:
    """A thread entry `void name(ptr frame)` begun: the function, its builder, the frame, the frame's
    total (field 0), and the thread's number and the team's size (i64)."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [_PTR]), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    data = fn.args[0]
    data.name = "frame"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    total = b.load(_field(b, frame, data, 0), typ=_I64)
    tid = b.sext(b.call(_declare(module, "omp_get_thread_num", _I32, []), []), _I64)
    team = b.sext(b.call(_declare(module, "omp_get_num_threads", _I32, []), []), _I64)
    return fn, b, data, total, tid, team


def _min(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed("<", x, y), x, y)


def _max(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed("<", x, y), y, x)


def _ceil_div(b: ir.IRBuilder, x: ir.Value, d: int | ir.Value) -> ir.Value:
    """ceil(x / d), folded where the operands are constants (the region set-up is compiled without
    optimisation: `render.is_glue`)."""
    if isinstance(d, int) and d == 1:
        return x
    if isinstance(d, int) and isinstance(x, ir.Constant) and isinstance(x.constant, int):
        return ir.Constant(_I64, -(-x.constant // d))
    d = d if isinstance(d, ir.Value) else ir.Constant(_I64, d)
    return b.sdiv(b.add(x, b.sub(d, ir.Constant(_I64, 1))), d)


def _field(b: ir.IRBuilder, frame: ir.LiteralStructType, data: ir.Value, i: int) -> ir.Value:
    return b.gep(data, [ir.Constant(_I32, 0), ir.Constant(_I32, i)], inbounds=True, source_etype=frame)


def _entry_alloca(b: ir.IRBuilder, frame: ir.LiteralStructType) -> ir.Value:
    """The captures' frame, allocated once in the entry block (not per loop iteration)."""
    with b.goto_entry_block():
        slot = b.alloca(frame, name="parallel_frame")
    slot.type = _PTR  # llvmlite types allocas as typed pointers; LLVM 22 has only ptr
    return slot


def _serial_flag(module: ir.Module) -> ir.GlobalVariable:
    flag = module.globals.get(_SERIAL_FLAG)
    if flag is None:
        flag = ir.GlobalVariable(module, _I32, name=_SERIAL_FLAG)
    return flag


def _declare(module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    return ir.Function(module, ir.FunctionType(ret, args), name=name)
