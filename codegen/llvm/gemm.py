"""A BLIS-style GEMM, C = op(A) @ op(B) in float32/float64, emitted as LLVM IR (no BLAS).

The emitted function runs BLIS's five loops over one call (or one range of C's columns):

    for jc in N range, step NC:              columns of a B panel
      for pc in 0..K, step KC:               K blocks (at least one, so K == 0 still writes C)
        pack B[pc:pc+kc, jc:jc+nc]           into NR-wide micro-panels, zero padded (a small
                                             untransposed B is read in place: B_IN_PLACE_MAX)
        for ic in M range, step MC:
          pack A[ic:ic+mc, pc:pc+kc]         into MR-tall micro-panels, zero padded
          for jr in 0..nc, step NR:
            for ir in 0..mc, step MR:
              micro-kernel: an MR x NR tile of vector accumulators (FMA, broadcast A),
              then the C tile update (stored on the first K block, added after it)

Transposed operands only change the strides the packing routines read with, so there is no
separate transpose copy. The packed panels live in a caller-provided workspace
(`workspace_bytes`); the emitted code allocates nothing but one MR x NR stack tile for edges.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
from llvmlite import ir

from codegen.llvm.loops import for_range
from codegen.llvm.target import TargetInfo

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_PTR = ir.PointerType()
_ELEMENT_TYPES = {"float32": ir.FloatType(), "float64": ir.DoubleType()}
ARows = Callable[[ir.Value, int], list]  # (k, rows) -> A[0..rows-1, k], each across a vector, emitted where called


@dataclass(frozen=True)
class GemmSpec:
    """One GEMM routine: C[M, N] = op(A)[M, K] @ op(B)[K, N], all row-major and contiguous.

    `trans_a`: A is stored as (K, M); `trans_b`: B is stored as (N, K). N and K are runtime
    arguments; M is one too unless `m` bakes it in as a constant (`specialised_m`: the M argument
    is then ignored). `gather` > 0: an implicit GEMM (codegen/llvm/igemm.py) whose A is gathered
    from an image by a run-time geometry descriptor, with register tiles `gather` vectors wide.
    """

    dtype: Literal["float32", "float64"]
    trans_a: bool
    trans_b: bool
    m: int | None = None
    gather: int = 0


@dataclass(frozen=True)
class Blocking:
    """Register tile (mr x nr) and cache blocks (kc, mc, nc); nr is a multiple of the vector
    width, mc of mr and nc of nr. Without `pack_a` (only for an untransposed A) the kernel
    reads A in place, M edge included."""

    mr: int
    nr: int
    kc: int
    mc: int
    nc: int
    pack_a: bool = True


SMALL_M = 32
"""A static M below this gets a GEMM routine of its own (`specialised_m`)."""

B_IN_PLACE_MAX = 1 << 16
"""An untransposed B is read in place, not packed, when it has at most this many elements (K x N) or
when at most two MC row blocks read it: its whole panels straight from B, an N edge still packed (so no
read passes the end of a row). Packing pays off only when many row blocks reuse the packed panels;
a B that stays in cache, or that few row blocks read, costs less read with its row stride than copied."""


def gemm_symbol(dtype: np.dtype, trans_a: bool, trans_b: bool, m: int | None = None, gather: int = 0) -> str:
    """The GEMM routine for these transposes (and a specialised static M, see specialised_m; an
    implicit GEMM's gathering routine with `gather`-vector tiles, see igemm.py)."""
    if gather:
        return f"graphnet_igemm_{np.dtype(dtype).name}_v{gather}"
    static = "" if m is None else f"_m{m}"
    return f"graphnet_gemm_{np.dtype(dtype).name}_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}{static}"


def specialised_m(m: int | None) -> int | None:
    """The M a program's GEMM routine is compiled for: a static M below SMALL_M (such as a 10-class
    output layer's transposed GEMMs), else None (runtime M, one routine shared by all shapes)."""
    return m if m is not None and 0 < m < SMALL_M else None


def default_blocking(spec: GemmSpec, target: TargetInfo) -> Blocking:
    """Tile sizes that keep MR x NR accumulators plus one row of B in the vector registers.

    A static M below SMALL_M is split into equal tiles (10 rows as 5 + 5, not 6 + a 4-row edge):
    every tile then runs the full micro-kernel and none goes through the edge path.
    """
    w = target.lanes(spec.dtype)
    if target.vector_bits == 0:
        mr, nv = 4, 4
    else:
        mr, nv = 6, (4 if target.vector_registers >= 32 else 2)
    kc = 256 if spec.dtype == "float32" else 128
    if spec.m is not None and 0 < spec.m < SMALL_M:
        tiles = -(-spec.m // mr)
        mr = -(-spec.m // tiles)
    nr = nv * w
    return Blocking(mr=mr, nr=nr, kc=kc, mc=(96 // mr) * mr, nc=4096 // nr * nr,
                    pack_a=spec.trans_a)


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _buffer_elements(spec: GemmSpec, blk: Blocking) -> tuple[int, int]:
    """Elements of the packed-B and packed-A buffers (B first, A at the next 64-byte boundary)."""
    mc = blk.mc if spec.m is None else min(blk.mc, _round_up(max(spec.m, 1), blk.mr))
    if not blk.pack_a:
        mc = 0  # A is read in place, edges included
    return blk.kc * blk.nc, blk.kc * mc


def _a_offset_bytes(spec: GemmSpec, blk: Blocking) -> int:
    b_elems, _ = _buffer_elements(spec, blk)
    return _round_up(b_elems * _itemsize(spec.dtype), 64)


def _itemsize(dtype: str) -> int:
    return 4 if dtype == "float32" else 8


def workspace_bytes(spec: GemmSpec, target: TargetInfo, blocking: Blocking | None = None) -> int:
    """Size of the packing workspace one call (or one thread's column range) needs; it must be
    64-byte aligned. `blocking` as in `emit_gemm`."""
    blk = blocking or default_blocking(spec, target)
    _, a_elems = _buffer_elements(spec, blk)
    return _a_offset_bytes(spec, blk) + _round_up(a_elems * _itemsize(spec.dtype), 64)


def emit_gemm(module: ir.Module, name: str, spec: GemmSpec, target: TargetInfo, *, columns: bool = False,
              blocking: Blocking | None = None) -> ir.Function:
    """Emit `void name(i64 M, i64 N, i64 K, T* A, T* B, T* C, T* workspace)` into `module`.

    With `columns` two more arguments `i64 begin, i64 end` restrict the call to C's columns
    [begin, end), so the threads of a pool can each compute a range with a workspace of their own
    (`parallel.emit_parallel_gemm`). A, B and C must not overlap (the pointers are marked noalias);
    the workspace holds `workspace_bytes(spec, target)` bytes. The pointers are LLVM 22 opaque
    `ptr`s; T* in the signature says what they point to. `blocking` replaces `default_blocking`
    (tests use tiny blocks to run several of each loop at small sizes).
    """
    blk = blocking or default_blocking(spec, target)
    w = target.lanes(spec.dtype)
    if blk.nr % w or blk.mc % blk.mr or blk.nc % blk.nr or (spec.trans_a and not blk.pack_a):
        raise ValueError(f"blocking {blk} does not fit vector width {w}")
    fn = declare_routine(module, name, ["A", "B", "C", "workspace"], ["n_begin", "n_end"] if columns else [])
    _GemmEmitter(fn, spec, target, blk, columns).emit()
    return fn


def declare_routine(module: ir.Module, name: str, pointers: list[str], bounds: list[str]) -> ir.Function:
    """`void name(i64 M, i64 N, i64 K, T* pointers..., i64 bounds...)`, the pointers noalias: the
    signature every GEMM routine shares (`bounds`: one thread's share of C, when split)."""
    names = ["M", "N", "K"] + pointers + bounds
    params = [_I64] * 3 + [_PTR] * len(pointers) + [_I64] * len(bounds)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), params), name=name)
    for arg, arg_name in zip(fn.args, names):
        arg.name = arg_name
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    fn.attributes.add("nounwind")
    return fn


class _GemmEmitter:
    """Holds the builder and the IR types while one GEMM function is written."""

    def __init__(self, fn: ir.Function, spec: GemmSpec, target: TargetInfo, blk: Blocking, columns: bool) -> None:
        self.fn, self.spec, self.target, self.blk, self.columns = fn, spec, target, blk, columns
        self.t = _ELEMENT_TYPES[spec.dtype]
        self.w = target.lanes(spec.dtype)
        self.vt = ir.VectorType(self.t, self.w)
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.align = _itemsize(spec.dtype)

    # -- small IR helpers -------------------------------------------------------------------

    def gep(self, ptr: ir.Value, index: ir.Value | int) -> ir.Value:
        return self.b.gep(ptr, [_c(index)], inbounds=True, source_etype=self.t)

    def load(self, ptr: ir.Value, typ: ir.Type) -> ir.Value:
        return self.b.load(ptr, typ=typ, align=self.align)

    def store(self, value: ir.Value, ptr: ir.Value) -> None:
        self.b.store(value, ptr, align=self.align)

    def add(self, x: ir.Value, y: ir.Value | int) -> ir.Value:
        return self.b.add(x, _c(y))

    def mul(self, x: ir.Value, y: ir.Value | int) -> ir.Value:
        return self.b.mul(x, _c(y))

    def min(self, x: ir.Value, y: ir.Value | int) -> ir.Value:
        y = _c(y)
        return self.b.select(self.b.icmp_signed("<", x, y), x, y)

    def less(self, x: ir.Value, y: ir.Value | int) -> ir.Value:
        return self.b.icmp_signed("<", x, _c(y))

    def splat(self, scalar: ir.Value, vt: ir.VectorType) -> ir.Value:
        one = self.b.insert_element(ir.Constant(vt, ir.Undefined), scalar, _I32(0))
        mask = ir.Constant(ir.VectorType(_I32, vt.count), [0] * vt.count)
        return self.b.shuffle_vector(one, ir.Constant(vt, ir.Undefined), mask)

    def fma(self, x: ir.Value, y: ir.Value, acc: ir.Value) -> ir.Value:
        if not self.target.has_fma:
            return self.b.fadd(self.b.fmul(x, y), acc)
        suffix = "f32" if self.spec.dtype == "float32" else "f64"
        return self.b.call(_intrinsic(self.fn.module, f"llvm.fma.v{self.w}{suffix}", self.vt, 3), [x, y, acc])

    def loop(self, start: ir.Value | int, stop: ir.Value | int, step: ir.Value | int = 1, name: str = "i",
             at_least_once: bool = False):
        return for_range(self.b, start, stop, step, name, at_least_once)

    def k_block_depth(self, k: ir.Value) -> ir.Value:
        """The depth of the K loop's blocks at run time: K in the fewest blocks of at most `blk.kc`,
        all of one even depth but the last (K = 288 with kc 256: 144 + 144, not 256 and a thin 32 that
        reloads the whole C tile for a few k). Even, so that a block of an even K can run its k in
        pairs (igemm's `pair_columns`): K = 514 is 258 + 256, not 257 + 257."""
        b, kc = self.b, self.blk.kc
        blocks = b.sdiv(b.add(k, _c(kc - 1)), _c(kc))
        blocks = b.select(self.less(blocks, 1), _c(1), blocks)  # K = 0: one empty block
        depth = b.sdiv(b.add(k, b.sub(blocks, _c(1))), blocks)
        return depth if kc % 2 else b.and_(b.add(depth, _c(1)), _c(-2))

    # -- the loop nest ----------------------------------------------------------------------

    def emit(self) -> None:
        spec, blk, b = self.spec, self.blk, self.b
        args = self.fn.args
        m = _c(spec.m) if spec.m is not None else args[0]
        n, k = args[1], args[2]
        a, bmat, c, ws = args[3:7]
        n_lo, n_hi = (args[7], self.min(args[8], n)) if self.columns else (_c(0), n)
        self.tile = b.alloca(ir.ArrayType(self.t, blk.mr * blk.nr), name="edge_tile")
        self.tile.align = 64
        self.tile.type = _PTR  # llvmlite types allocas as typed pointers; LLVM 22 has only ptr
        b_pack = ws
        a_pack = b.gep(ws, [_c(_a_offset_bytes(spec, blk))], inbounds=True, source_etype=ir.IntType(8))
        # (k stride, row/column stride) of each operand as the packing routines read it
        a_sk, a_sj = (m, _c(1)) if spec.trans_a else (_c(1), k)
        b_sk, b_sj = (_c(1), k) if spec.trans_b else (n, _c(1))
        self.n_dim = n
        in_place = None if spec.trans_b else b.or_(b.icmp_signed("<=", b.mul(k, n), _c(B_IN_PLACE_MAX)),
                                                    b.icmp_signed("<=", m, _c(2 * blk.mc)))

        with self.loop(n_lo, n_hi, blk.nc, "jc") as jc:
            nc = self.min(b.sub(n_hi, jc), blk.nc)
            with self.loop(0, k, blk.kc, "pc", at_least_once=True) as pc:
                kc = self.min(b.sub(k, pc), blk.kc)
                first = b.icmp_signed("==", pc, _c(0))
                b_src = self.gep(bmat, b.add(self.mul(jc, b_sj), self.mul(pc, b_sk)))
                if in_place is None:
                    self.pack(b_pack, b_src, b_sk, b_sj, kc, nc, blk.nr, unit_j=not spec.trans_b)
                else:
                    with b.if_then(b.not_(in_place)):
                        self.pack(b_pack, b_src, b_sk, b_sj, kc, nc, blk.nr, unit_j=True)
                with self.loop(0, m, blk.mc, "ic") as ic:
                    mc = self.min(b.sub(m, ic), blk.mc)
                    a_src = self.gep(a, b.add(self.mul(ic, a_sj), self.mul(pc, a_sk)))
                    if blk.pack_a:
                        self.pack(a_pack, a_src, a_sk, a_sj, kc, mc, blk.mr, unit_j=spec.trans_a)
                    with self.loop(0, nc, blk.nr, "jr") as jr:
                        nr = self.min(b.sub(nc, jr), blk.nr)
                        bp, b_k = self.gep(b_pack, self.mul(jr, kc)), _c(blk.nr)
                        if in_place is not None:
                            bp, b_k = self.b_panel(in_place, bp, b_src, jr, nr, kc, n, b_pack)
                        with self.loop(0, mc, blk.mr, "ir") as ir_:
                            mr = self.min(b.sub(mc, ir_), blk.mr)
                            if blk.pack_a:
                                acc = self.tile_kernel(kc, self.gep(a_pack, self.mul(ir_, kc)), _c(1),
                                                       _c(blk.mr), mr, bp, b_k)
                            else:
                                acc = self.tile_kernel(kc, self.gep(a_src, self.mul(ir_, k)), k, _c(1), mr, bp, b_k)
                            self.update_tile(acc, b.add(ic, ir_), b.add(jc, jr), mr, nr, c, first)
        b.ret_void()

    def b_panel(self, in_place: ir.Value, packed: ir.Value, b_src: ir.Value, jr: ir.Value, nr: ir.Value,
                kc: ir.Value, n: ir.Value, b_pack: ir.Value) -> tuple[ir.Value, ir.Value]:
        """(first element, k stride) of the B panel at column jr: packed, in place, or (an edge read in
        place) packed now into the start of the packing buffer."""
        b = self.b
        whole = b.icmp_signed("==", nr, _c(self.blk.nr))
        with b.if_then(b.and_(in_place, b.not_(whole))):
            self.pack_edge(b_pack, self.gep(b_src, jr), n, _c(1), kc, self.blk.nr, nr)
        direct = b.and_(in_place, whole)
        bp = b.select(direct, self.gep(b_src, jr), b.select(in_place, b_pack, packed))
        return bp, b.select(direct, n, _c(self.blk.nr))

    # -- packing ----------------------------------------------------------------------------

    def pack(self, dst: ir.Value, src: ir.Value, sk: ir.Value, sj: ir.Value, kc: ir.Value,
             count: ir.Value, width: int, unit_j: bool) -> None:
        """Copy a kc x count block (element (k, j) at src[k*sk + j*sj]) into width-wide panels.

        Panel p holds columns p*width.. as dst[p*width*kc + k*width + j], zero padded past `count`.
        """
        b = self.b
        with self.loop(0, count, width, "pack") as j0:
            panel = self.gep(dst, self.mul(j0, kc))
            src0 = self.gep(src, self.mul(j0, sj))
            valid = b.sub(count, j0)
            full = b.icmp_signed(">=", valid, _c(width))
            with b.if_else(full) as (then, otherwise):
                with then:
                    if unit_j:
                        self.pack_rows_vector(panel, src0, sk, kc, width)
                    elif width % self.w == 0 and self.w > 1:
                        self.pack_transposed(panel, src0, sj, kc, width)
                    else:
                        self.pack_columns(panel, src0, sk, sj, kc, width)
                with otherwise:
                    self.pack_edge(panel, src0, sk, sj, kc, width, valid)

    def pack_rows_vector(self, panel: ir.Value, src: ir.Value, sk: ir.Value, kc: ir.Value,
                         width: int) -> None:
        """Full panel whose rows are contiguous in the source: vector copies."""
        with self.loop(0, kc, 1, "pk") as kk:
            row = self.gep(src, self.mul(kk, sk))
            out = self.gep(panel, self.mul(kk, width))
            for v in range(0, width, self.w):
                vt = ir.VectorType(self.t, min(self.w, width - v))
                self.store(self.load(self.gep(row, v), vt), self.gep(out, v))

    def pack_transposed(self, panel: ir.Value, src: ir.Value, sj: ir.Value, kc: ir.Value,
                        width: int) -> None:
        """Full panel whose columns are contiguous in the source (a transposed operand).

        w x w blocks are loaded as w vectors along k, transposed in registers and stored as w
        rows along j; the last kc % w rows are copied one element at a time.
        """
        b, w = self.b, self.w
        k_vec = self.mul(b.sdiv(kc, _c(w)), w)
        with self.loop(0, k_vec, w, "pt") as k0:
            with self.loop(0, width, w, "ptb") as j0:
                columns = [self.load(self.gep(src, b.add(self.mul(sj, self.add(j0, j)), k0)), self.vt)
                           for j in range(w)]
                rows = self.transpose(columns)
                for p, row in enumerate(rows):
                    self.store(row, self.gep(panel, b.add(self.mul(self.add(k0, p), width), j0)))
        with self.loop(k_vec, kc, 1, "ptk") as kk:
            with self.loop(0, width, 1, "ptj") as j:
                value = self.load(self.gep(src, b.add(self.mul(sj, j), kk)), self.t)
                self.store(value, self.gep(panel, b.add(self.mul(kk, width), j)))

    def transpose(self, vectors: list[ir.Value]) -> list[ir.Value]:
        """Transpose a w x w block held in w vectors: log2(w) stages of 2x2 block swaps."""
        w = self.w
        vectors = list(vectors)
        d = w // 2
        while d:
            low = [p if p & d == 0 else w + p - d for p in range(w)]
            high = [p + d if p & d == 0 else w + p for p in range(w)]
            for i in range(w):
                if i & d == 0:
                    x, y = vectors[i], vectors[i + d]
                    vectors[i] = self.b.shuffle_vector(x, y, _mask(low))
                    vectors[i + d] = self.b.shuffle_vector(x, y, _mask(high))
            d //= 2
        return vectors

    def pack_columns(self, panel: ir.Value, src: ir.Value, sk: ir.Value, sj: ir.Value,
                     kc: ir.Value, width: int) -> None:
        """Full panel read one column at a time (scalar code: no vectors to transpose with)."""
        with self.loop(0, width, 1, "pcj") as j:
            col = self.gep(src, self.mul(sj, j))
            with self.loop(0, kc, 1, "pck") as kk:
                value = self.load(self.gep(col, self.mul(kk, sk)), self.t)
                self.store(value, self.gep(panel, self.b.add(self.mul(kk, width), j)))

    def pack_edge(self, panel: ir.Value, src: ir.Value, sk: ir.Value, sj: ir.Value, kc: ir.Value,
                  width: int, valid: ir.Value) -> None:
        """Last, partial panel: columns past `valid` are zero (reads clamped to stay in bounds)."""
        b = self.b
        zero = ir.Constant(self.t, 0.0)
        with self.loop(0, kc, 1, "pe") as kk:
            row = self.gep(src, self.mul(kk, sk))
            out = self.gep(panel, self.mul(kk, width))
            with self.loop(0, width, 1, "pej") as j:
                jj = self.min(b.sub(valid, _c(1)), j)
                value = self.load(self.gep(row, self.mul(jj, sj)), self.t)
                self.store(b.select(self.less(j, valid), value, zero), self.gep(out, j))

    # -- micro-kernel and C update ------------------------------------------------------------

    def tile_kernel(self, kc: ir.Value, ap: ir.Value, a_row: ir.Value, a_k: ir.Value, mr: ir.Value,
                    bp: ir.Value, b_k: ir.Value, a_at: ARows | None = None) -> list[list[ir.Value]]:
        """The MR x NR accumulators of a tile whose first `mr` rows are in C (A[r, k] at
        ap[r * a_row + k * a_k], or where `a_at` says: see micro_kernel). An M edge (mr < MR) runs a micro-kernel of exactly mr rows, reading
        no row past it, and the missing rows are zero: no FMAs on padding (a 128-row batch is 21
        six-row tiles and a 2-row one). A static M that is a multiple of MR has no M edge: only the
        whole tile's micro-kernel is emitted."""
        b, blk = self.b, self.blk
        if not self.m_edges():
            return self.micro_kernel(kc, ap, a_row, a_k, bp, b_k, a_at=a_at)
        zero = ir.Constant(self.vt, None)
        results = []
        with b.if_else(b.icmp_signed("==", mr, _c(blk.mr))) as (then, otherwise):
            with then:
                results.append((self.micro_kernel(kc, ap, a_row, a_k, bp, b_k, a_at=a_at), b.block))
            with otherwise:
                merge = b.append_basic_block("edge.merge")
                dispatch = b.block
                switch = b.switch(mr, merge)
                edge_results = []
                for rows in range(1, blk.mr):
                    block = b.append_basic_block(f"edge{rows}")
                    switch.add_case(_c(rows), block)
                    b.position_at_end(block)
                    acc = self.micro_kernel(kc, ap, a_row, a_k, bp, b_k, rows, a_at)
                    edge_results.append((acc + [[zero] * len(acc[0])] * (blk.mr - rows), b.block))
                    b.branch(merge)
                b.position_at_end(merge)
                edge = self.merge(edge_results + [([[zero] * (blk.nr // self.w)] * blk.mr, dispatch)])
                results.append((edge, b.block))
        return self.merge(results)

    def m_edges(self) -> bool:
        """Whether a tile can have fewer than MR rows: every row block (MC, a multiple of MR) and the
        last one are whole tiles where M is static and a multiple of MR (`default_blocking` splits a
        small static M into equal tiles, 10 rows as 5 + 5)."""
        return self.spec.m is None or self.spec.m % self.blk.mr != 0

    def merge(self, results: list[tuple[list[list[ir.Value]], ir.Block]]) -> list[list[ir.Value]]:
        """Phis joining the accumulator tiles computed in several predecessor blocks."""
        merged = []
        for r in range(self.blk.mr):
            row = []
            for v in range(self.blk.nr // self.w):
                phi = self.b.phi(self.vt)
                for acc, block in results:
                    phi.add_incoming(acc[r][v], block)
                row.append(phi)
            merged.append(row)
        return merged

    def micro_kernel(self, kc: ir.Value, ap: ir.Value, a_row: ir.Value, a_k: ir.Value,
                     bp: ir.Value, b_k: ir.Value, rows: int | None = None, a_at: ARows | None = None
                     ) -> list[list[ir.Value]]:
        """The `rows` x NR tile (default MR) of accumulators summed over kc, as SSA values (phis) at
        loop exit. A[r, k] is read at ap[r * a_row + k * a_k] (packed: a_row = 1, a_k = MR), or is
        what `a_at(k, rows)` emits in the loop body; the B row of k at bp[k * b_k] (packed: b_k = NR;
        in place: b_k = N).
        """
        b, blk, w = self.b, self.blk, self.w
        rows = blk.mr if rows is None else rows
        nv = blk.nr // w
        pre = b.block
        head = b.append_basic_block("k.head")
        body = b.append_basic_block("k.body")
        done = b.append_basic_block("k.done")
        b.branch(head)
        b.position_at_end(head)
        kk = b.phi(_I64, "k")
        kk.add_incoming(_c(0), pre)
        acc = [[b.phi(self.vt, f"acc{r}_{v}") for v in range(nv)] for r in range(rows)]
        zero = ir.Constant(self.vt, None)
        for phi in _flat(acc):
            phi.add_incoming(zero, pre)
        b.cbranch(self.less(kk, kc), body, done)
        b.position_at_end(body)
        brow = self.gep(bp, self.mul(kk, b_k))
        if a_at is None:
            arow = self.gep(ap, self.mul(kk, a_k))
            a_rows = [self.splat(self.load(self.gep(arow, self.mul(a_row, r)), self.t), self.vt) for r in range(rows)]
        else:
            a_rows = a_at(kk, rows)
        bvec = [self.load(self.gep(brow, v * w), self.vt) for v in range(nv)]
        new = []
        for r in range(rows):
            new.append([self.fma(a_rows[r], bvec[v], acc[r][v]) for v in range(nv)])
        kk.add_incoming(self.add(kk, 1), b.block)
        for phi, value in zip(_flat(acc), _flat(new)):
            phi.add_incoming(value, b.block)
        b.branch(head)
        b.position_at_end(done)
        return acc

    def update_tile(self, acc: list[list[ir.Value]], row: ir.Value, col: ir.Value, mr: ir.Value,
                    nr: ir.Value, c: ir.Value, first: ir.Value) -> None:
        """C tile (+)= acc; whole tiles straight from registers, edge tiles via a stack tile."""
        b, blk = self.b, self.blk
        whole = b.and_(b.icmp_signed("==", mr, _c(blk.mr)), b.icmp_signed("==", nr, _c(blk.nr)))
        with b.if_else(whole) as (then, otherwise):
            with then:
                self.update_whole(acc, row, col, c, first)
            with otherwise:
                for r in range(blk.mr):
                    for v, value in enumerate(acc[r]):
                        self.store(value, self.gep(self.tile, r * blk.nr + v * self.w))
                self.update_edge(row, col, mr, nr, c, first)

    def update_whole(self, acc: list[list[ir.Value]], row: ir.Value, col: ir.Value, c: ir.Value,
                     first: ir.Value) -> None:
        """A whole tile from registers, in two versions: the first K block stores without reading C."""
        def tile(overwrite: bool) -> None:
            for r, values in enumerate(acc):
                crow = self.gep(c, self.b.add(self.mul(self.add(row, r), self.n_dim), col))
                for v, value in enumerate(values):
                    self.update(self.gep(crow, v * self.w), value, overwrite, self.w)

        with self.b.if_else(first) as (then, otherwise):
            with then:
                tile(True)
            with otherwise:
                tile(False)

    def update_edge(self, row: ir.Value, col: ir.Value, mr: ir.Value, nr: ir.Value, c: ir.Value,
                    first: ir.Value) -> None:
        """C (+)= the stack tile's first mr rows and nr columns: masked vectors on a vector target, else
        whole vectors and then single elements."""
        b, w = self.b, self.w
        if self.target.vector_bits:
            self.update_edge_masked(row, col, mr, nr, c, first)
            return
        whole_vectors = self.mul(b.sdiv(nr, _c(w)), w)
        with self.loop(0, mr, 1, "er") as r:
            crow = self.gep(c, b.add(self.mul(b.add(row, r), self.n_dim), col))
            trow = self.gep(self.tile, self.mul(r, self.blk.nr))
            for j, width, step in ((_c(0), w, w), (whole_vectors, 1, 1)):
                stop = whole_vectors if width == w else nr
                with self.loop(j, stop, step, "ec") as jj:
                    vt = ir.VectorType(self.t, width)
                    value = self.load(self.gep(trow, jj), vt)
                    self.update(self.gep(crow, jj), value, first, width)

    def update_edge_masked(self, row: ir.Value, col: ir.Value, mr: ir.Value, nr: ir.Value, c: ir.Value,
                           first: ir.Value) -> None:
        b, w = self.b, self.w
        zero = ir.Constant(self.vt, None)
        with self.loop(0, mr, 1, "er") as r:
            crow = self.gep(c, b.add(self.mul(b.add(row, r), self.n_dim), col))
            trow = self.gep(self.tile, self.mul(r, self.blk.nr))
            for v in range(0, self.blk.nr, w):
                columns = ir.Constant(ir.VectorType(_I64, w), list(range(v, v + w)))
                mask = b.icmp_signed("<", columns, self.splat(nr, ir.VectorType(_I64, w)))
                ptr = self.gep(crow, v)
                old = b.select(first, zero, self.masked_load(ptr, mask))
                self.masked_store(b.fadd(self.load(self.gep(trow, v), self.vt), old), ptr, mask)

    def masked_load(self, ptr: ir.Value, mask: ir.Value) -> ir.Value:
        """The vector at ptr where mask, else 0 (masked lanes read nothing)."""
        vt = ir.VectorType(self.t, mask.type.count)
        name = f"llvm.masked.load.v{vt.count}{_SUFFIX[self.spec.dtype]}.p0"
        fn = _declare(self.fn.module, name, vt, [_PTR, _I32, mask.type, vt])
        return self.b.call(fn, [ptr, ir.Constant(_I32, self.align), mask, ir.Constant(vt, None)])

    def masked_store(self, value: ir.Value, ptr: ir.Value, mask: ir.Value) -> None:
        """Store the lanes of `value` where mask (the others write nothing)."""
        name = f"llvm.masked.store.v{mask.type.count}{_SUFFIX[self.spec.dtype]}.p0"
        fn = _declare(self.fn.module, name, ir.VoidType(), [value.type, _PTR, _I32, mask.type])
        self.b.call(fn, [value, ptr, ir.Constant(_I32, self.align), mask])

    def update(self, ptr: ir.Value, value: ir.Value, first: ir.Value | bool, width: int) -> None:
        """Store value (+ old C unless this is the first K block; `first` may be known here, True or
        False, or a runtime flag)."""
        b = self.b
        vt = ir.VectorType(self.t, width)
        if first is False:
            value = b.fadd(value, self.load(ptr, vt))
        elif first is not True:
            value = b.fadd(value, b.select(first, ir.Constant(vt, None), self.load(ptr, vt)))
        self.store(value, ptr)


_SUFFIX = {"float32": "f32", "float64": "f64"}


def _declare(module: ir.Module, name: str, result: ir.Type, params: list) -> ir.Function:
    """An intrinsic declared by hand, once per module (`declare_intrinsic` rejects vector types)."""
    existing = module.globals.get(name)
    return existing if existing is not None else ir.Function(module, ir.FunctionType(result, params), name=name)


def _c(value: ir.Value | int) -> ir.Value:
    return value if isinstance(value, ir.Value) else ir.Constant(_I64, value)


def _mask(indices: list[int]) -> ir.Constant:
    return ir.Constant(ir.VectorType(_I32, len(indices)), indices)


def _flat(rows: list[list[ir.Value]]) -> list[ir.Value]:
    return [value for row in rows for value in row]


def _intrinsic(module: ir.Module, name: str, typ: ir.Type, arity: int) -> ir.Function:
    """A vector intrinsic of `arity` arguments of its result type."""
    return _declare(module, name, typ, [typ] * arity)
