"""Implicit GEMM: a convolution kernel (codegen/lower_conv.py) computed by a GEMM routine whose
packing routine gathers the image (im2col without an im2col buffer).

A conv kernel over (v0, v1, v2, group, v4, v5, v6, v7) summing window(image) * other over (v5, v6,
v7) is the GEMM C[M, N] = A[M, K] @ B[K, N] with M = (v0, v1, v2), N = v4 and K = (v5, v6, v7), each
row-major: forward (n, i, j) x (kh, kw, cin), input gradient (n, h, w) x (kh, kw, cout), filter
gradient (kh, kw, cin) x (n, i, j). A[m, k] is the window's element: per image axis a coordinate
(sum of coef * var + const) / div, a zero where it leaves the axis or does not divide (padding,
a strided gradient's skipped positions); B[k, j] is the other operand's element at an affine offset.

The routine is generic: the geometry is a run-time descriptor (`descriptor`, an i64 array), so one
routine per dtype and register tile serves every convolution. At most two image axes may be
guarded (height and width); the others fold into a linear offset. The packing routine splits each
offset into a row part and a column part, tabulated once per block (an odometer: no division per
entry), so an element costs two additions, two range tests and one load; on a vector target with
exact geometry (every divisor 1) those are vector operations and a masked gather per group of rows
(`gather_a`), and B's panel rows are masked loads or gathers (`gather_b`). A strided gradient's
packing (divisors) and scalar targets keep the scalar loops.

Most panels are not packed at all: with exact geometry a panel whose elements all lie inside the
image (the extremes of its rows' and the block's columns' guard coordinates say so) is read in place
by the micro-kernel, A[r, k] at image[row address r + column address k] (`panel_kernel`): the
broadcast it loads anyway, from the image instead of a packed panel, with IN_PLACE_ROWS row addresses
held in registers. gemm_schedule.border_conv_images gives a padded window a zero-bordered copy of its
image, so that every panel of those is inside too.

With at most half a vector of columns (a 6-channel conv in 16 lanes) and k in pairs adjacent in the
image, an in-place K block runs two k per vector (`pair_columns`): each row's two A elements are one
load spread over the lanes, B is packed with its two rows interleaved, and `fold` adds the lane
pairs: half the FMAs and loads.
"""
from __future__ import annotations

import math

from llvmlite import ir

from ..implicit_gemm import COLS, COLUMN, ROWS, operands  # noqa: F401 (shared; callers use igemm.operands)
from ..loopir import Kernel
from ..window import guarded_axes, row_strides
from .gemm import _SUFFIX, Blocking, GemmSpec, _c, _declare, _GemmEmitter, _I32, _PTR, _I64, declare_routine
from .parallel import (CHUNKS_PER_THREAD, MIN_CHUNK_ROWS, PARALLEL_MIN_FLOPS, emit_parallel_for, load_runtime,
                       rows_slice_symbol)
from .target import TargetInfo

IGEMM_MIN_STATIC = 4096  # multiply-adds per batch row below which the direct loop nest beats packing
IN_PLACE_ROWS = 8  # rows of A read in place per micro-kernel loop: their addresses fit x86-64's registers
# The deepest K block, by dtype: a 3x3 conv over 32 channels (K = 288) or 64 (576, two blocks of 288)
# accumulates each C tile in one or two passes; B's packed panel (kc x nc, NC_MAX columns at most, the
# channels of a conv) stays 4 MiB. The blocks' depth is balanced at run time (`k_block_depth`).
KC_MAX = {"float32": 512, "float64": 256}
NC_MAX = 2048

# descriptor layout (i64): row / col decomposition, 4 fields (lin, g1, g2, blin) per var, limits
R1, R2, K1, K2 = 0, 1, 2, 3
ROW_FIELDS, COL_FIELDS, CONST = 4, 16, 28
E1, S1, D1, E2, S2, D2, BJ, GUARDED = 32, 33, 34, 35, 36, 37, 38, 39  # GUARDED: how many axes are
DESCRIPTOR_SIZE = 40

# packing tables, one entry per row of A (rows) or per k (columns) of a block
LIN, G1, G2, BLIN = 0, 1, 2, 3  # fields: linear offset, guarded coordinates 1 and 2, B's offset (columns)
ROW_WIDTH, COL_WIDTH = 4, 5  # ... and last the exact geometry's image address part
ROW_ADDRESS, COL_ADDRESS = ROW_WIDTH - 1, COL_WIDTH - 1


def worth_it(k: Kernel) -> bool:
    """Enough multiply-adds per batch row for packing panels to pay (IGEMM_MIN_STATIC)."""
    return math.prod(d for d in k.domain if d is not None) >= IGEMM_MIN_STATIC


def vectors(k: Kernel, target: TargetInfo) -> int:
    """Vectors per register-tile row: enough for N (= Cout or Cin) columns, at most 4."""
    lanes = target.lanes(k.reduce.value.dtype.name)
    return max(1, min(4 if target.vector_registers >= 32 else 2, -(-k.domain[COLUMN] // lanes)))


def blocking(spec: GemmSpec, target: TargetInfo) -> Blocking:
    """A tall register tile for narrow N: MR x (nv vectors) accumulators, nv B vectors and a broadcast
    in the vector registers."""
    w, nv = target.lanes(spec.dtype), spec.gather
    regs = target.vector_registers if target.vector_bits else 16
    mr = max(1, min(24, (regs - nv - 2) // nv))
    kc = KC_MAX[spec.dtype]
    return Blocking(mr=mr, nr=nv * w, kc=kc, mc=max(1, 96 // mr) * mr, nc=NC_MAX // (nv * w) * (nv * w))


def workspace_bytes(spec: GemmSpec, target: TargetInfo) -> int:
    blk = blocking(spec, target)
    item = 4 if spec.dtype == "float32" else 8
    return _round64(blk.kc * blk.nc * item) + _round64(blk.kc * blk.mc * item) + _round64(blk.kc * blk.nr * item)


def _round64(n: int) -> int:
    return -(-n // 64) * 64


def descriptor(k: Kernel) -> list[int]:
    """The run-time geometry of conv kernel `k` (see the layout constants)."""
    w, other = operands(k)
    d = [0] * DESCRIPTOR_SIZE
    d[R1], d[R2], d[K1], d[K2] = k.domain[1], k.domain[2], k.domain[6], k.domain[7]
    guarded = guarded_axes(w, k.domain)
    slots = [i for i, g in enumerate(guarded) if g]
    limits = ((E1, S1, D1, 1), (E2, S2, D2, 2))
    for (e, s, dv, _), _ in zip(limits, range(2)):
        d[e], d[s], d[dv] = 1, 0, 1  # an unused guard: coordinate 0 of an axis of 1
    for axis, (coord, dim, (stride, _)) in enumerate(zip(w.coords, w.shape, row_strides(w.shape))):
        if guarded[axis]:
            e, s, dv, field = limits[slots.index(axis)]
            d[e], d[s], d[dv], scale = dim, stride, coord.div, 1
        else:
            field, scale = 0, stride
        d[CONST + field] += coord.const * scale
        for var, coef in coord.terms:
            if var in ROWS:
                d[ROW_FIELDS + 4 * ROWS.index(var) + field] += coef * scale
            elif var in COLS:
                d[COL_FIELDS + 4 * COLS.index(var) + field] += coef * scale
    d[CONST + 3] = sum(coef for coef, _ in other.offset.base)
    for var, coef, _ in other.offset.terms:
        if var in COLS:
            d[COL_FIELDS + 4 * COLS.index(var) + 3] += coef
        elif var == COLUMN:
            d[BJ] += coef
    d[GUARDED] = len(slots)
    return d


def emit_conv_gemm(module: ir.Module, name: str, spec: GemmSpec, target: TargetInfo, *,
                   rows: bool = False) -> ir.Function:
    """`void name(i64 M, i64 N, i64 K, T* image, T* B, T* C, T* workspace, i64* descriptor)`; with
    `rows`, two more arguments restrict it to C's rows [begin, end) (one thread's share)."""
    fn = declare_routine(module, name, ["A", "B", "C", "workspace", "geometry"], ["m_begin", "m_end"] if rows else [])
    _GatherEmitter(fn, spec, target, blocking(spec, target), rows).emit()  # `columns` there: rows here
    return fn


def emit_parallel_conv_gemm(module: ir.Module, name: str, spec: GemmSpec, target: TargetInfo,
                            threads: int) -> ir.Function:
    """`emit_conv_gemm`'s signature, C's rows split across up to `threads` threads in chunks of
    MR-tall blocks that the threads claim in turn (each chunk packs its own B, so a chunk holds at
    least MIN_CHUNK_ROWS rows). Serial under PARALLEL_MIN_FLOPS."""
    if threads <= 1 or not load_runtime():
        return emit_conv_gemm(module, name, spec, target)
    kernel = emit_conv_gemm(module, rows_slice_symbol(name), spec, target, rows=True)
    stride = workspace_bytes(spec, target)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [_I64] * 3 + [_PTR] * 5), name=name)
    for arg, arg_name in zip(fn.args, ("M", "N", "K", "A", "B", "C", "workspace", "geometry")):
        arg.name = arg_name
    fn.attributes.add("nounwind")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    m, n, k = fn.args[:3]
    flops = b.mul(b.mul(b.mul(m, n), k), _c(2))

    def body(b: ir.IRBuilder, slice_: ir.Value, begin: ir.Value, end: ir.Value, captured: list) -> None:
        ws = b.gep(captured[6], [b.mul(slice_, _c(stride))], inbounds=True, source_etype=ir.IntType(8))
        b.call(kernel, captured[:6] + [ws, captured[7], begin, end])

    emit_parallel_for(module, b, name, m, body, list(fn.args), threads, grain=blocking(spec, target).mr,
                      work=flops, min_work=PARALLEL_MIN_FLOPS, chunks=CHUNKS_PER_THREAD,
                      min_chunk=MIN_CHUNK_ROWS)
    b.ret_void()
    return fn


def parallel_workspace_bytes(spec: GemmSpec, target: TargetInfo, threads: int) -> int:
    """One packing workspace per thread."""
    return max(1, threads) * workspace_bytes(spec, target)


class _GatherEmitter(_GemmEmitter):
    """The GEMM's five loops with gathering packing routines (the micro-kernel and C update are the
    dense GEMM's)."""

    def emit(self) -> None:
        b, blk = self.b, self.blk
        args = self.fn.args
        m, n, k = args[0], args[1], args[2]
        image, bmat, c, ws, geo = args[3:8]
        m_lo, m_hi = (args[8], self.min(args[9], m)) if self.columns else (_c(0), m)
        self.geo = [b.load(b.gep(geo, [_c(i)], inbounds=True, source_etype=_I64), typ=_I64)
                    for i in range(DESCRIPTOR_SIZE)]
        self.tile = b.alloca(ir.ArrayType(self.t, blk.mr * blk.nr), name="edge_tile")
        self.tile.align, self.tile.type = 64, _PTR
        self.row_table = self.table(blk.mc * ROW_WIDTH, "row_table")
        self.col_table = self.table(blk.kc * COL_WIDTH, "col_table")
        self.odometer = [self.table(1, f"digit{i}") for i in range(3)]  # tabulate's (v0, v1, v2)
        self.bound = [self.table(1, f"bound{i}") for i in range(4)]  # bounds' running min / max
        self.in_place = self.table(blk.mc // blk.mr, "in_place")  # per panel of the block: 1 = read A in place
        b_pack = ws
        a_pack = b.gep(ws, [_c(_round64(blk.kc * blk.nc * self.align))], inbounds=True, source_etype=ir.IntType(8))
        pair_pack = b.gep(a_pack, [_c(_round64(blk.kc * blk.mc * self.align))], inbounds=True,
                          source_etype=ir.IntType(8))
        self.pair_flag = self.table(1, "paired")
        g = self.geo
        fast = b.and_(b.icmp_signed("==", g[D1], _c(1)), b.icmp_signed("==", g[D2], _c(1)))
        self.unguarded = b.icmp_signed("==", g[GUARDED], _c(0))
        self.n_dim = n
        with self.loop(0, n, blk.nc, "jc") as jc:
            nc = self.min(b.sub(n, jc), blk.nc)
            depth = self.k_block_depth(k)
            with self.loop(0, k, depth, "pc", at_least_once=True) as pc:
                kc = self.min(b.sub(k, pc), depth)
                first = b.icmp_signed("==", pc, _c(0))
                self.tabulate(self.col_table, pc, kc, g[K1], g[K2], COL_FIELDS, COL_WIDTH, const=True)
                col_bounds = self.bounds(self.col_table, self.guarded(kc), COL_WIDTH)
                paired = self.pair_columns(pair_pack, bmat, jc, kc, nc)
                if paired is not None:
                    # paired, every panel of an unguarded exact geometry reads pair_pack, none B's panels
                    with b.if_then(b.not_(b.and_(paired, b.and_(fast, self.unguarded)))):
                        self.gather_b(b_pack, bmat, jc, kc, nc)
                elif self.target.vector_bits:
                    self.gather_b(b_pack, bmat, jc, kc, nc)
                else:
                    self.pack_b(b_pack, bmat, jc, kc, nc)
                with self.loop(m_lo, m_hi, blk.mc, "ic") as ic:
                    mc = self.min(b.sub(m_hi, ic), blk.mc)
                    self.tabulate(self.row_table, ic, mc, g[R1], g[R2], ROW_FIELDS, ROW_WIDTH, const=False)
                    with self.loop(0, mc, blk.mr, "pa") as p0:
                        self.pack_panel(a_pack, image, p0, kc, mc, fast, col_bounds)
                    with self.loop(0, nc, blk.nr, "jr") as jr:
                        nr = self.min(b.sub(nc, jr), blk.nr)
                        bp = self.gep(b_pack, self.mul(jr, kc))
                        with self.loop(0, mc, blk.mr, "ir") as ir_:
                            mr = self.min(b.sub(mc, ir_), blk.mr)
                            acc = self.panel_kernel(kc, a_pack, image, ir_, mr, mc, bp, paired, pair_pack)
                            self.update_tile(acc, b.add(ic, ir_), b.add(jc, jr), mr, nr, c, first)
        b.ret_void()

    def table(self, entries: int, name: str) -> ir.Value:
        slot = self.b.alloca(ir.ArrayType(_I64, entries), name=name)
        slot.type = _PTR
        return slot

    def entry(self, table: ir.Value, index: ir.Value) -> ir.Value:
        return self.b.gep(table, [index], inbounds=True, source_etype=_I64)

    def field(self, table: ir.Value, width: int, index: ir.Value, f: int) -> ir.Value:
        """Field f of entry `index` of a row or column table."""
        return self.b.load(self.entry(table, self.add(self.mul(index, width), f)), typ=_I64)

    def tabulate(self, table: ir.Value, start: ir.Value, count: ir.Value, x1: ir.Value, x2: ir.Value,
                 fields: int, width: int, const: bool) -> None:
        """table[i * width + f] = field f's part of the offset of index start + i (decomposed into
        three vars over extents (., x1, x2)), plus the descriptor's constants for the columns; the
        last field is the image address part of an exact geometry, lin + g1 * S1 + g2 * S2 (without
        guarded axes g1 = g2 = 0: only lin is computed).

        Only `start` is divided; the vars then advance as an odometer (a division per entry cost more
        than a block's packing)."""
        b = self.b
        v2 = b.srem(start, x2)
        t = b.sdiv(start, x2)
        for slot, value in zip(self.odometer, (b.sdiv(t, x1), b.srem(t, x1), v2)):
            b.store(value, slot)
        with b.if_else(self.unguarded) as (then, otherwise):
            with then:
                self.tabulate_entries(table, count, x1, x2, fields, width, const, guards=False)
            with otherwise:
                self.tabulate_entries(table, count, x1, x2, fields, width, const, guards=True)

    def tabulate_entries(self, table: ir.Value, count: ir.Value, x1: ir.Value, x2: ir.Value, fields: int,
                         width: int, const: bool, guards: bool) -> None:
        b, g, odometer = self.b, self.geo, self.odometer
        with self.loop(0, count, 1, "tab") as i:
            values = [b.load(var, typ=_I64) for var in odometer]
            totals = []
            for f in range(width - 1):
                total = g[CONST + f] if const else _c(0)
                if guards or f not in (G1, G2):
                    for var, value in enumerate(values):
                        total = b.add(total, b.mul(value, g[fields + 4 * var + f]))
                totals.append(total)
            address = b.add(b.mul(totals[G1], g[S1]), b.mul(totals[G2], g[S2])) if guards else _c(0)
            totals.append(b.add(totals[LIN], address))
            for f, total in enumerate(totals):
                self.b.store(total, self.entry(table, self.add(self.mul(i, width), f)))
            v0, v1, v2 = values
            v2 = self.add(v2, 1)
            wrap2 = b.icmp_signed("==", v2, x2)
            v1 = b.add(v1, b.zext(wrap2, _I64))
            wrap1 = b.icmp_signed("==", v1, x1)
            b.store(b.add(v0, b.zext(wrap1, _I64)), odometer[0])
            b.store(b.select(wrap1, _c(0), v1), odometer[1])
            b.store(b.select(wrap2, _c(0), v2), odometer[2])

    def guarded(self, count: ir.Value) -> ir.Value:
        """`count` entries to bound, none when no axis is guarded (every panel is then inside)."""
        return self.b.select(self.unguarded, _c(0), count)

    def bounds(self, table: ir.Value, count: ir.Value, width: int) -> list[ir.Value]:
        """(min g1, max g1, min g2, max g2) over the first `count` entries of a table."""
        b, slots = self.b, self.bound
        for slot, value in zip(slots, (1 << 62, -(1 << 62)) * 2):
            b.store(_c(value), slot)
        with self.loop(0, count, 1, "bd") as i:
            for slot, f, pick in zip(slots, (G1, G1, G2, G2), ("<", ">") * 2):
                value, best = self.field(table, width, i, f), b.load(slot, typ=_I64)
                b.store(b.select(b.icmp_signed(pick, value, best), value, best), slot)
        return [b.load(slot, typ=_I64) for slot in slots]

    def pack_panel(self, dst: ir.Value, image: ir.Value, p0: ir.Value, kc: ir.Value, mc: ir.Value,
                   fast: ir.Value, col_bounds: list[ir.Value]) -> None:
        """Decide how the micro-kernel reads panel p0 of A: in place from the image when the geometry is
        exact and every element of the panel lies inside the image (the guard coordinates are sums of a
        row part and a column part, so their extremes bound the panel), else packed here."""
        b, blk, g = self.b, self.blk, self.geo
        count = self.min(b.sub(mc, p0), blk.mr)
        rows = self.entry(self.row_table, self.mul(p0, ROW_WIDTH))
        rmin1, rmax1, rmin2, rmax2 = self.bounds(rows, self.guarded(count), ROW_WIDTH)
        cmin1, cmax1, cmin2, cmax2 = col_bounds
        within = ir.Constant(ir.IntType(1), 1)
        for low, high, extent in ((b.add(rmin1, cmin1), b.add(rmax1, cmax1), g[E1]),
                                  (b.add(rmin2, cmin2), b.add(rmax2, cmax2), g[E2])):
            within = b.and_(within, b.and_(b.icmp_signed(">=", low, _c(0)), b.icmp_signed("<", high, extent)))
        inside = b.and_(fast, b.or_(self.unguarded, within))
        b.store(b.zext(inside, _I64), self.entry(self.in_place, b.sdiv(p0, _c(blk.mr))))
        panel = self.gep(dst, self.mul(p0, kc))
        with b.if_then(b.not_(inside)):
            with b.if_else(fast) as (then, otherwise):
                with then:
                    if self.target.vector_bits:
                        self.gather_a(panel, image, p0, kc, mc)
                    else:
                        self.pack_a(panel, image, p0, kc, mc, exact=True)
                with otherwise:
                    self.pack_a(panel, image, p0, kc, mc, exact=False)

    def panel_kernel(self, kc: ir.Value, a_pack: ir.Value, image: ir.Value, ir_: ir.Value, mr: ir.Value,
                     mc: ir.Value, bp: ir.Value, paired: ir.Value | None, pair_pack: ir.Value
                     ) -> list[list[ir.Value]]:
        """The tile's accumulators, A read in place (image + row address + column address) or from its
        packed panel, as `pack_panel` decided; in place and `paired`, two k per vector (`pair_columns`)."""
        b, blk = self.b, self.blk
        flag = b.load(self.entry(self.in_place, b.sdiv(ir_, _c(blk.mr))), typ=_I64)
        results = []
        with b.if_else(b.icmp_signed("!=", flag, _c(0))) as (then, otherwise):
            with then:
                last = b.sub(mc, _c(1))
                rows = [self.field(self.row_table, ROW_WIDTH, self.min(b.add(ir_, _c(r)), last), ROW_ADDRESS)
                        for r in range(blk.mr)]
                if paired is None:
                    results.append((self.in_place_kernel(kc, image, rows, mr, bp, 1), b.block))
                else:
                    inner = []
                    with b.if_else(paired) as (two, one):
                        with two:
                            acc = self.in_place_kernel(b.sdiv(kc, _c(2)), image, rows, mr, pair_pack, 2)
                            inner.append(([[self.fold(v) for v in row] for row in acc], b.block))
                        with one:
                            inner.append((self.in_place_kernel(kc, image, rows, mr, bp, 1), b.block))
                    results.append((self.merge(inner), b.block))
            with otherwise:
                acc = self.tile_kernel(kc, self.gep(a_pack, self.mul(ir_, kc)), _c(1), _c(blk.mr), mr, bp, _c(blk.nr))
                results.append((acc, b.block))
        return self.merge(results)

    def in_place_kernel(self, steps: ir.Value, image: ir.Value, rows: list[ir.Value], mr: ir.Value,
                        bp: ir.Value, per_step: int) -> list[list[ir.Value]]:
        """The MR rows of accumulators over `steps` k-steps of `per_step` consecutive k, A read from the
        image at (row address + column address) and spread over a vector (one element, or two
        alternating with `pair_columns`' B), the B panel at bp. The rows run IN_PLACE_ROWS at a time
        (their addresses stay in registers); an edge tile's missing rows repeat its last row
        (computed, never stored)."""
        b, blk = self.b, self.blk
        spread = ir.Constant(ir.VectorType(_I32, self.w), [i % per_step for i in range(self.w)])
        acc = []
        for r0 in range(0, blk.mr, IN_PLACE_ROWS):
            def a_at(kk: ir.Value, count: int, r0: int = r0) -> list[ir.Value]:
                base = self.gep(image, self.field(self.col_table, COL_WIDTH, self.mul(kk, per_step), COL_ADDRESS))
                vt = ir.VectorType(self.t, per_step)
                return [b.shuffle_vector(value, ir.Constant(vt, ir.Undefined), spread)
                        for value in (self.load(self.gep(base, row), vt) for row in rows[r0:r0 + count])]
            count = min(IN_PLACE_ROWS, blk.mr - r0)
            acc += self.rows_if(self.less(_c(r0), mr), count,
                                lambda: self.micro_kernel(steps, None, None, None, bp, _c(blk.nr), count, a_at))
        return acc

    def pair_columns(self, dst: ir.Value, bmat: ir.Value, jc: ir.Value, kc: ir.Value, nc: ir.Value
                     ) -> ir.Value | None:
        """Whether this K block runs two k per vector (None: never, with one-vector tiles only): with
        at most half a vector of columns and k in pairs adjacent in the image (an even kc, each pair of
        column addresses a, a + 1). If so, its B packed for that (`pack_pairs`)."""
        b, w = self.b, self.w
        if w < 2 or self.blk.nr != w:
            return None
        b.store(b.zext(b.and_(self.less(b.mul(nc, _c(2)), w + 1), b.icmp_signed("==", b.srem(kc, _c(2)), _c(0))),
                       _I64), self.pair_flag)
        with self.loop(0, kc, 2, "pair") as kk:
            adjacent = b.icmp_signed("==", self.field(self.col_table, COL_WIDTH, self.add(kk, 1), COL_ADDRESS),
                                     self.add(self.field(self.col_table, COL_WIDTH, kk, COL_ADDRESS), 1))
            b.store(b.and_(b.load(self.pair_flag, typ=_I64), b.zext(adjacent, _I64)), self.pair_flag)
        paired = b.icmp_signed("!=", b.load(self.pair_flag, typ=_I64), _c(0))
        with b.if_then(paired):
            self.pack_pairs(dst, bmat, jc, kc, nc)
        return paired

    def pack_pairs(self, dst: ir.Value, bmat: ir.Value, jc: ir.Value, kc: ir.Value, nc: ir.Value) -> None:
        """B for paired k: lane 2j + e of pair p holds B[2p + e, jc + j] (zero past nc), so that one
        2-element load of A per row feeds both k of a pair (`fold` then adds the lane pairs): two
        masked row loads interleaved where B's columns are contiguous (BJ == 1), else a gather."""
        b, g, w = self.b, self.geo, self.w

        def base(p: ir.Value, e: int) -> ir.Value:
            return self.field(self.col_table, COL_WIDTH, b.add(self.mul(p, 2), _c(e)), BLIN)
        half = ir.Constant(ir.VectorType(_I64, w // 2), list(range(w // 2)))
        contiguous = b.icmp_signed("<", half, self.vsplat(nc, w // 2))
        interleave = ir.Constant(ir.VectorType(_I32, w), [i // 2 + (w // 2) * (i % 2) for i in range(w)])
        column = ir.Constant(ir.VectorType(_I64, w), [i // 2 for i in range(w)])
        odd = ir.Constant(ir.VectorType(ir.IntType(1), w), [i % 2 for i in range(w)])
        ok = b.icmp_signed("<", column, self.vsplat(nc, w))
        offsets = b.mul(b.add(self.vsplat(jc, w), column), self.vsplat(g[BJ], w))
        with b.if_else(b.icmp_signed("==", g[BJ], _c(1))) as (then, otherwise):
            with then:
                with self.loop(0, b.sdiv(kc, _c(2)), 1, "ppl") as p:
                    rows = [self.masked_load(self.gep(bmat, b.add(base(p, e), jc)), contiguous) for e in (0, 1)]
                    self.store(b.shuffle_vector(*rows, interleave), self.gep(dst, self.mul(p, w)))
            with otherwise:
                with self.loop(0, b.sdiv(kc, _c(2)), 1, "ppg") as p:
                    both = b.select(odd, self.vsplat(base(p, 1), w), self.vsplat(base(p, 0), w))
                    self.store(self.masked_gather(bmat, b.add(both, offsets), ok), self.gep(dst, self.mul(p, w)))

    def fold(self, v: ir.Value) -> ir.Value:
        """Lane j of the result = lanes 2j + 2j+1 of a paired accumulator (the upper half is junk)."""
        w = self.w
        half = [[2 * j + e for j in range(w // 2)] * 2 for e in (0, 1)]
        return self.b.fadd(*(self.b.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, w), m)) for m in half))

    def rows_if(self, real: ir.Value, count: int, compute) -> list[list[ir.Value]]:
        """`count` rows of accumulators: compute() where `real`, else zeros (rows past an edge)."""
        b, nv = self.b, self.blk.nr // self.w
        zero = ir.Constant(self.vt, None)
        with b.if_else(real) as (then, otherwise):
            with then:
                acc, computed = compute(), b.block
            with otherwise:
                skipped = b.block
        rows = []
        for r in range(count):
            row = []
            for v in range(nv):
                phi = b.phi(self.vt)
                phi.add_incoming(acc[r][v], computed)
                phi.add_incoming(zero, skipped)
                row.append(phi)
            rows.append(row)
        return rows

    def pack_a(self, panel: ir.Value, image: ir.Value, p0: ir.Value, kc: ir.Value, mc: ir.Value,
               exact: bool) -> None:
        """Panel p0 of the kc x mc block of A (panel[k*MR + r], of the block's dst[p*MR*kc + k*MR + r]),
        gathered from the image; rows past mc and elements outside the image are zero. `exact`: every
        divisor is 1."""
        b, blk, g = self.b, self.blk, self.geo
        zero = ir.Constant(self.t, 0.0)
        last = b.sub(mc, _c(1))
        rows = []
        for r in range(blk.mr):
            row = b.add(p0, _c(r))
            at = self.min(row, last)
            rows.append((self.less(row, mc), *(self.field(self.row_table, ROW_WIDTH, at, f) for f in (LIN, G1, G2))))
        with self.loop(0, kc, 1, "pak") as kk:
            col = [self.field(self.col_table, COL_WIDTH, kk, f) for f in (LIN, G1, G2)]
            out = self.gep(panel, self.mul(kk, blk.mr))
            for r, (ok, lin, g1, g2) in enumerate(rows):
                q1, q2 = b.add(g1, col[G1]), b.add(g2, col[G2])
                inside, h, w = self.inside(q1, q2, exact)
                inside = b.and_(ok, inside)
                address = b.add(b.add(lin, col[LIN]), b.add(b.mul(h, g[S1]), b.mul(w, g[S2])))
                address = b.select(inside, address, _c(0))
                value = self.load(self.gep(image, address), self.t)
                self.store(b.select(inside, value, zero), self.gep(out, r))

    def gather_a(self, panel: ir.Value, image: ir.Value, p0: ir.Value, kc: ir.Value, mc: ir.Value) -> None:
        """`pack_a` for exact geometry (every divisor 1) with vector gathers: per k, each group of
        `lanes_i64` panel rows is one masked gather at (row address + column address), the mask the
        rows' range tests. A row's address and guard coordinates are read from the row table once
        per panel; a column's once per k for all MR rows."""
        b, blk, g = self.b, self.blk, self.geo
        lanes = max(1, self.target.vector_bits // 64)
        groups = [(r0, min(lanes, blk.mr - r0)) for r0 in range(0, blk.mr, lanes)]
        rows = [self.row_vectors(p0, r0, width, mc) for r0, width in groups]
        with self.loop(0, kc, 1, "gak") as kk:
            col = [self.field(self.col_table, COL_WIDTH, kk, f) for f in (G1, G2, COL_ADDRESS)]
            out = self.gep(panel, self.mul(kk, blk.mr))
            for (r0, width), (ok, base, g1, g2) in zip(groups, rows):
                inside = b.and_(ok, b.and_(self.below(b.add(g1, self.vsplat(col[0], width)), g[E1], width),
                                           self.below(b.add(g2, self.vsplat(col[1], width)), g[E2], width)))
                value = self.masked_gather(image, b.add(base, self.vsplat(col[2], width)), inside)
                self.store(value, self.gep(out, r0))

    def row_vectors(self, p0: ir.Value, r0: int, width: int, mc: ir.Value) -> tuple[ir.Value, ...]:
        """(real row, address, guard coordinate 1, 2) of panel rows p0 + r0 .. + width as i1/i64
        vectors; rows past mc read the last row's entry and are not real."""
        b = self.b
        vt = ir.VectorType(_I64, width)
        ok, address, g1, g2 = (ir.Constant(ir.VectorType(ir.IntType(1), width), None), *[ir.Constant(vt, None)] * 3)
        last = b.sub(mc, _c(1))
        for r in range(width):
            row = b.add(p0, _c(r0 + r))
            at = self.min(row, last)
            lane = ir.Constant(_I32, r)
            ok = b.insert_element(ok, self.less(row, mc), lane)
            address, g1, g2 = (b.insert_element(v, self.field(self.row_table, ROW_WIDTH, at, f), lane)
                               for v, f in zip((address, g1, g2), (ROW_ADDRESS, G1, G2)))
        return ok, address, g1, g2

    def gather_b(self, dst: ir.Value, bmat: ir.Value, jc: ir.Value, kc: ir.Value, nc: ir.Value) -> None:
        """`pack_b` with vectors: per k, a panel row of NR columns is one masked gather (a masked
        load where the columns are contiguous, BJ == 1); columns past nc are zero."""
        b, blk, g = self.b, self.blk, self.geo
        lanes = ir.Constant(ir.VectorType(_I64, blk.nr), list(range(blk.nr)))
        with self.loop(0, nc, blk.nr, "gb") as j0:
            panel = self.gep(dst, self.mul(j0, kc))
            ok = b.icmp_signed("<", b.add(self.vsplat(j0, blk.nr), lanes), self.vsplat(nc, blk.nr))
            first = b.add(jc, j0)
            offsets = b.mul(b.add(self.vsplat(first, blk.nr), lanes), self.vsplat(g[BJ], blk.nr))
            with b.if_else(b.icmp_signed("==", g[BJ], _c(1))) as (then, otherwise):
                with then:
                    with self.loop(0, kc, 1, "gbl") as kk:
                        base = self.field(self.col_table, COL_WIDTH, kk, BLIN)
                        value = self.masked_load(self.gep(bmat, b.add(base, first)), ok)
                        self.store(value, self.gep(panel, self.mul(kk, blk.nr)))
                with otherwise:
                    with self.loop(0, kc, 1, "gbg") as kk:
                        base = self.field(self.col_table, COL_WIDTH, kk, BLIN)
                        value = self.masked_gather(bmat, b.add(offsets, self.vsplat(base, blk.nr)), ok)
                        self.store(value, self.gep(panel, self.mul(kk, blk.nr)))

    def vsplat(self, scalar: ir.Value, width: int) -> ir.Value:
        return self.splat(scalar, ir.VectorType(scalar.type, width))

    def below(self, q: ir.Value, extent: ir.Value, width: int) -> ir.Value:
        """0 <= q < extent per lane (unsigned: a negative coordinate is a huge one)."""
        return self.b.icmp_unsigned("<", q, self.vsplat(extent, width))

    def masked_gather(self, base: ir.Value, index: ir.Value, mask: ir.Value) -> ir.Value:
        """base[index] where mask, else 0 (masked lanes read nothing)."""
        width = index.type.count
        vt, pt = ir.VectorType(self.t, width), ir.VectorType(_PTR, width)
        ptrs = self.b.gep(base, [index], inbounds=True, source_etype=self.t)
        ptrs.type = pt  # llvmlite types a vector GEP as one pointer
        name = f"llvm.masked.gather.v{width}{_SUFFIX[self.spec.dtype]}.v{width}p0"
        fn = _declare(self.fn.module, name, vt, [pt, _I32, mask.type, vt])
        return self.b.call(fn, [ptrs, ir.Constant(_I32, self.align), mask, ir.Constant(vt, None)])

    def inside(self, q1: ir.Value, q2: ir.Value, exact: bool) -> tuple[ir.Value, ir.Value, ir.Value]:
        """(is a real element, index on guarded axis 1, on axis 2) of numerators q1, q2."""
        b, g = self.b, self.geo
        if exact:
            ok = b.and_(b.icmp_unsigned("<", q1, g[E1]), b.icmp_unsigned("<", q2, g[E2]))
            return ok, q1, q2
        out, ok = [], ir.Constant(ir.IntType(1), 1)
        for q, e, dv in ((q1, g[E1], g[D1]), (q2, g[E2], g[D2])):
            index = b.sdiv(q, dv)
            divides = b.icmp_signed("==", b.srem(q, dv), _c(0))
            ok = b.and_(ok, b.and_(b.icmp_signed(">=", q, _c(0)), b.and_(divides, b.icmp_signed("<", index, e))))
            out.append(index)
        return ok, out[0], out[1]

    def pack_b(self, dst: ir.Value, bmat: ir.Value, jc: ir.Value, kc: ir.Value, nc: ir.Value) -> None:
        """The kc x nc block of B at column jc as NR-wide panels, each element at the column table's
        offset plus column * BJ; columns past nc are zero."""
        b, blk, g = self.b, self.blk, self.geo
        zero = ir.Constant(self.t, 0.0)
        with self.loop(0, nc, blk.nr, "pb") as j0:
            panel = self.gep(dst, self.mul(j0, kc))
            cols = []
            for j in range(blk.nr):
                col = b.add(j0, _c(j))
                cols.append((self.less(col, nc), b.mul(b.add(jc, col), g[BJ])))
            with self.loop(0, kc, 1, "pbk") as kk:
                base = self.field(self.col_table, COL_WIDTH, kk, BLIN)
                out = self.gep(panel, self.mul(kk, blk.nr))
                for j, (ok, offset) in enumerate(cols):
                    address = b.select(ok, b.add(base, offset), _c(0))
                    value = self.load(self.gep(bmat, address), self.t)
                    self.store(b.select(ok, value, zero), self.gep(out, j))
