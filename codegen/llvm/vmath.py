"""exp, expm1, log, log1p, tanh, float32 erf and float32 pow as inline LLVM IR that vectorizes (float or double, scalar or vector).

libm calls keep a loop scalar (one call per element); these are branch-free sequences of arithmetic,
integer bit operations and selects, so the loop vectorizer widens them like any other expression
(and they work as they are on explicit `<N x float>` values). Each reduces the argument with the
exponent (x = n ln2 + r, or x = 2^e m) and evaluates a short Taylor series on the reduced range;
special values (NaN, +-Inf, zero, negative arguments of log, overflow, underflow into denormals)
come out as numpy gives them, through the IEEE arithmetic itself or a final select. Accuracy, as
tests/test_vmath.py checks it: exp, log, log1p within 1.1 ulp and tanh within 1.6 ulp (float32 and
float64), float32 pow 0.5 ulp; tests/test_ops_math.py: expm1 and float32 erf within 1.5 ulp.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from decimal import Decimal, getcontext
from fractions import Fraction

from llvmlite import ir

getcontext().prec = 40
_LN2 = Decimal(2).ln()


@dataclass(frozen=True)
class _Format:
    """What the algorithms need to know about one floating-point format."""

    mant: int           # explicit significand bits
    bias: int
    pack: str           # struct code of the float and of the same-sized integer
    ipack: str
    exp_terms: int      # Taylor degree of expm1 on |r| <= ln2/2
    log_terms: int      # terms of the atanh series in log
    exp_range: tuple    # exp(x) is 0 below and inf above

    def bits(self, v: float) -> int:
        return struct.unpack(self.ipack, struct.pack(self.pack, v))[0]

    def rounded(self, v) -> float:
        return struct.unpack(self.pack, struct.pack(self.pack, float(v)))[0]

    def ln2_parts(self) -> tuple[float, float]:
        """ln2 = hi + lo with hi short enough that n * hi is exact for every exponent n."""
        hi = math.ldexp(round(float(_LN2) * 2 ** (self.mant - 11)), -(self.mant - 11))
        return hi, self.rounded(_LN2 - Decimal(hi))


_F32 = _Format(23, 127, "<f", "<i", 8, 4, (-104.0, 89.0))
_F64 = _Format(52, 1023, "<d", "<q", 13, 10, (-746.0, 710.0))


class _Math:
    """Builds one function's instructions on values of type `t` (float, double or a vector of them)."""

    def __init__(self, b: ir.IRBuilder, t: ir.Type):
        self.b, self.t = b, t
        elem = t.element if isinstance(t, ir.VectorType) else t
        self.lanes = t.count if isinstance(t, ir.VectorType) else 0
        self.f = _F32 if isinstance(elem, ir.FloatType) else _F64
        self.it = self._shape(ir.IntType(32 if self.f is _F32 else 64))

    def _shape(self, elem: ir.Type) -> ir.Type:
        return ir.VectorType(elem, self.lanes) if self.lanes else elem

    def _splat(self, t: ir.Type, value) -> ir.Constant:
        return ir.Constant(t, [value] * t.count) if isinstance(t, ir.VectorType) else ir.Constant(t, value)

    def c(self, value) -> ir.Constant:
        return self._splat(self.t, self.f.rounded(value))

    def i(self, value: int) -> ir.Constant:
        return self._splat(self.it, value)

    def fma(self, a, x, y) -> ir.Value:
        """a * x + y, fused where the target has FMA (the algorithms are accurate either way)."""
        return self.intrinsic("fmuladd", a, x, y)

    def intrinsic(self, name: str, *args) -> ir.Value:
        """A call of llvm.`name` on values of this type (declared by hand: llvmlite cannot for vectors)."""
        t, f32 = self.t, self.f is _F32
        suffix = f"v{self.lanes}" if self.lanes else ""
        full = f"llvm.{name}.{suffix}{'f32' if f32 else 'f64'}"
        module = self.b.module
        fn = module.globals.get(full) or ir.Function(module, ir.FunctionType(t, [t] * len(args)), full)
        return self.b.call(fn, list(args))

    def horner(self, x, coefficients) -> ir.Value:
        acc = self.c(coefficients[-1])
        for k in reversed(coefficients[:-1]):
            acc = self.fma(acc, x, self.c(k))
        return acc

    def lt(self, a, b): return self.b.fcmp_ordered("<", a, b)

    def eq(self, a, b): return self.b.fcmp_ordered("==", a, b)

    def clamp(self, x, lo: float, hi: float) -> ir.Value:
        """x limited to [lo, hi]; NaN stays NaN."""
        b = self.b
        x = b.select(self.lt(x, self.c(lo)), self.c(lo), x)
        return b.select(self.lt(self.c(hi), x), self.c(hi), x)

    def pow2(self, n) -> ir.Value:
        """2^n for an integer n in the normal exponent range."""
        b = self.b
        return b.bitcast(b.shl(b.add(n, self.i(self.f.bias)), self.i(self.f.mant)), self.t)

    def reduce(self, x) -> tuple[ir.Value, ir.Value]:
        """(n, r) with x = n ln2 + r, |r| <= ln2/2, n as an integer; x must be clamped (finite or NaN)."""
        b, f = self.b, self.f
        magic = 1.5 * 2.0 ** f.mant  # adding it rounds to an integer held in the low bits
        shifted = b.fadd(b.fmul(x, self.c(1 / math.log(2))), self.c(magic))
        kf = b.fsub(shifted, self.c(magic))
        n = b.sub(b.bitcast(shifted, self.it), self.i(f.bits(magic)))
        hi, lo = f.ln2_parts()
        r = self.fma(kf, self.c(-hi), x)
        return n, self.fma(kf, self.c(-lo), r)

    def expm1_reduced(self, r) -> ir.Value:
        """e^r - 1 on |r| <= ln2/2: r + r^2 (1/2! + r/3! + ...)."""
        tail = self.horner(r, [1 / math.factorial(k) for k in range(2, self.f.exp_terms + 1)])
        return self.fma(tail, self.b.fmul(r, r), r)

    def exp(self, x) -> ir.Value:
        b = self.b
        x = self.clamp(x, *self.f.exp_range)  # beyond these exp rounds to 0 or overflows anyway
        n, r = self.reduce(x)
        y = b.fadd(self.expm1_reduced(r), self.c(1.0))
        half = b.ashr(n, self.i(1))  # 2^n in two factors: each stays normal, the product rounds once
        return b.fmul(b.fmul(y, self.pow2(half)), self.pow2(b.sub(n, half)))

    def expm1_limited(self, x) -> ir.Value:
        """e^x - 1 for x in [0, (mant + 4) ln2], where tanh needs it (beyond, tanh rounds to 1):
        2^n expm1(r) + (2^n - 1), with every term exact but the last."""
        x = self.clamp(x, 0.0, (self.f.mant + 4) * math.log(2))
        n, r = self.reduce(x)
        scale = self.pow2(n)
        return self.fma(scale, self.expm1_reduced(r), self.b.fsub(scale, self.c(1.0)))

    def expm1(self, x) -> ir.Value:
        """e^x - 1 = 2^n (expm1(r) + (1 - 2^-n)): 1 - 2^-n is exact (or rounds to 1 where 2^-n is below
        half an ulp of 1), so the only roundings are expm1(r)'s, the addition's and the result's (2^n
        applied in two factors, as in exp). Below -(mant + 3) ln2 the result rounds to -1."""
        b, f = self.b, self.f
        n, r = self.reduce(self.clamp(x, -(f.mant + 3) * math.log(2), f.exp_range[1]))
        capped = b.select(b.icmp_signed(">", n, self.i(f.mant + 3)), self.i(f.mant + 3), n)
        t = b.fadd(self.expm1_reduced(r), b.fsub(self.c(1.0), self.pow2(b.neg(capped))))
        half = b.ashr(n, self.i(1))
        y = b.fmul(b.fmul(t, self.pow2(half)), self.pow2(b.sub(n, half)))
        return b.select(self.eq(x, self.c(0.0)), x, y)  # keeps -0

    def erf(self, x) -> ir.Value:
        """float32 erf: x + x R(x^2) for |x| <= ERF_SPLIT, else sign(x) (1 - exp(Q(|x|))), Q approximating
        log(erfc) up to 4, beyond which erf rounds to +-1 (coefficients: ERF_SMALL, ERF_LARGE)."""
        b = self.b
        magnitude = self.intrinsic("fabs", x)
        small = self.fma(x, self.horner(b.fmul(x, x), ERF_SMALL), x)
        q = self.horner(self.clamp(magnitude, ERF_SPLIT, 4.0), ERF_LARGE)
        large = self.intrinsic("copysign", b.fsub(self.c(1.0), self.exp(q)), x)
        return b.select(self.lt(self.c(ERF_SPLIT), magnitude), large, small)

    def tanh(self, x) -> ir.Value:
        """sign(x) * y / (y + 2) with y = expm1(2|x|): relative errors in y shrink in the quotient.
        One correction step removes the rounding of y + 2 and of the division."""
        b = self.b
        y = self.expm1_limited(b.fmul(self.intrinsic("fabs", x), self.c(2.0)))
        d = b.fadd(y, self.c(2.0))
        d_err = b.fsub(y, b.fsub(d, self.c(2.0)))  # y + 2 = d + d_err exactly (|y| <= 2 here or d_err = 0)
        inverse = b.fdiv(self.c(1.0), d)
        t = b.fmul(y, inverse)
        residual = b.fsub(self.fma(b.fneg(t), d, y), b.fmul(t, d_err))  # y - t (y + 2)
        t = self.fma(residual, inverse, t)
        return self.intrinsic("copysign", t, x)

    def log_parts(self, x) -> tuple[ir.Value, ir.Value, ir.Value]:
        """(e, f, s): x = 2^e (1 + f) with 1 + f in [sqrt(1/2), sqrt(2)), e as a float, s = f / (2 + f);
        x positive and normal."""
        b, f = self.b, self.f
        root = f.bits(math.sqrt(0.5))
        bits = b.add(b.bitcast(x, self.it), self.i(f.bits(1.0) - root))  # carries into e when m >= sqrt 2
        e = b.sub(b.ashr(bits, self.i(f.mant)), self.i(f.bias))
        m = b.bitcast(b.add(b.and_(bits, self.i((1 << f.mant) - 1)), self.i(root)), self.t)
        frac = b.fsub(m, self.c(1.0))  # exact
        return b.sitofp(e, self.t), frac, b.fdiv(frac, b.fadd(frac, self.c(2.0)))

    def log1p_reduced(self, frac, s, c) -> ir.Value:
        """log(1 + frac) + c with s = frac / (2 + frac): frac - (frac^2/2 - s (frac^2/2 + R(s^2)) - c)."""
        b = self.b
        z = b.fmul(s, s)
        series = b.fmul(z, self.horner(z, [Fraction(2, 2 * k + 1) for k in range(1, self.f.log_terms + 1)]))
        hfsq = b.fmul(self.c(0.5), b.fmul(frac, frac))
        inner = self.fma(s, b.fadd(hfsq, series), c)
        return b.fsub(frac, b.fsub(hfsq, inner))

    def combine_log(self, e, logm) -> ir.Value:
        hi, lo = self.f.ln2_parts()
        return self.fma(e, self.c(hi), self.fma(e, self.c(lo), logm))

    def log_specials(self, x, result) -> ir.Value:
        """log's value at +inf, zero, negative numbers and NaN (x is the argument of log)."""
        b = self.b
        result = b.select(self.eq(x, self.c(math.inf)), x, result)
        result = b.select(self.eq(x, self.c(0.0)), self.c(-math.inf), result)
        result = b.select(self.lt(x, self.c(0.0)), self.c(math.nan), result)
        return b.select(b.fcmp_unordered("uno", x, x), x, result)

    def log(self, x) -> ir.Value:
        b, f = self.b, self.f
        tiny = self.lt(x, self.c(2.0 ** (1 - f.bias)))  # denormals: scale into the normal range first
        scaled = b.select(tiny, b.fmul(x, self.c(2.0 ** (f.mant + 1))), x)
        e, frac, s = self.log_parts(scaled)
        e = b.fsub(e, b.select(tiny, self.c(f.mant + 1), self.c(0.0)))
        return self.log_specials(x, self.combine_log(e, self.log1p_reduced(frac, s, self.c(0.0))))

    def log1p(self, x) -> ir.Value:
        """log(u) for u = 1 + x rounded, plus the rounding error's share c = (x - (u - 1)) / u."""
        b = self.b
        u = b.fadd(x, self.c(1.0))
        c = b.fdiv(b.fsub(x, b.fsub(u, self.c(1.0))), u)
        e, frac, s = self.log_parts(u)
        result = self.log_specials(u, self.combine_log(e, self.log1p_reduced(frac, s, c)))
        result = b.select(self.eq(x, self.c(0.0)), x, result)  # keeps -0
        return b.select(b.fcmp_unordered("uno", x, x), x, result)

    def pow(self, x, y) -> ir.Value:
        """float32 x^y as exp(y log|x|) in double precision (exact to well under an ulp of float), with
        C99's (numpy's) rules for negative bases, zeros, infinities and NaN."""
        b = self.b
        wide = _Math(b, self._shape(ir.DoubleType()))
        magnitude = self.intrinsic("fabs", x)
        r = wide.exp(b.fmul(b.fpext(y, wide.t), wide.log(b.fpext(magnitude, wide.t))))
        r = b.fptrunc(r, self.t)
        integral = self.eq(self.intrinsic("trunc", y), y)
        half = b.fmul(y, self.c(0.5))
        odd = b.and_(integral, b.fcmp_unordered("!=", self.intrinsic("trunc", half), half))
        negative = b.icmp_signed("<", b.bitcast(x, self.it), self.i(0))  # the sign bit, -0 included
        r = b.select(b.and_(negative, odd), b.fneg(r), r)
        finite_negative = b.and_(self.lt(x, self.c(0.0)), self.lt(self.c(-math.inf), x))
        r = b.select(b.and_(finite_negative, b.not_(integral)), self.c(math.nan), r)
        one = b.or_(self.eq(x, self.c(1.0)), self.eq(y, self.c(0.0)))
        infinite_y = self.eq(self.intrinsic("fabs", y), self.c(math.inf))
        one = b.or_(one, b.and_(self.eq(magnitude, self.c(1.0)), infinite_y))
        return b.select(one, self.c(1.0), r)


# float32 erf's polynomials: near-minimax fits (least squares, reweighted toward the largest error) to
# erf(x)/x - 1 in x^2 on [0, ERF_SPLIT] (relative error 4e-10) and to log(erfc(t)) on [ERF_SPLIT, 4]
# (absolute error 1.2e-8), rounded to float32; lowest degree first.
ERF_SPLIT = 0.921875
ERF_SMALL = (0.12837916612625122, -0.37612634897232056, 0.11283695697784424, -0.026859402656555176,
             0.0052010416984558105, -0.0008142793085426092, 8.37041880004108e-05)
ERF_LARGE = (0.00029429065762087703, -1.1301316022872925, -0.6319952607154846, -0.1099252700805664,
             0.026335585862398148, -0.004730297718197107, 0.000590718409512192, -4.5354943722486496e-05,
             1.6025076092773816e-06)

FUNCTIONS = {"exp": ("float32", "float64"), "expm1": ("float32", "float64"), "log": ("float32", "float64"),
             "log1p": ("float32", "float64"), "tanh": ("float32", "float64"), "erf": ("float32",),
             "pow": ("float32",)}
"""The scalar instructions this module emits inline, and for which dtypes (float64 pow stays with
libm: exp(y log x) in double precision loses up to ~10 bits near overflow; float64 erf too: its
polynomials would need twice the degree)."""


def provides(name: str, dtype) -> bool:
    return str(dtype) in FUNCTIONS.get(name, ())


def emit(b: ir.IRBuilder, name: str, *args: ir.Value) -> ir.Value:
    """`name`(*args) (one of FUNCTIONS) at the builder's position; the arguments are float or double
    scalars or vectors of them, all of one type."""
    math_ = _Math(b, args[0].type)
    if name not in FUNCTIONS or ("float32" if math_.f is _F32 else "float64") not in FUNCTIONS[name]:
        raise ValueError(f"vmath has no {name} for {args[0].type}")
    return getattr(math_, name)(*args)
