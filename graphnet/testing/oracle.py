"""Run a spec on every backend and compare: native backends against the numpy reference, the float64
reference against PyTorch float64 autograd (where torch is installed).

Tolerances are dtype-aware and scaled by the graph's own conditioning: the spec is also run (numpy)
as an all-float32 and an all-float64 twin, and |twin32 - twin64| estimates each element's float32
rounding error (times 2**-29 for float64). An element passes when
    |got - want| <= rtol*|want| + atol*(largest fetched magnitude) + K*estimate,
NaN where the reference has NaN, the same infinity where it has one. Elements on which the twins
disagree about finiteness (an overflow near the threshold) or about a bool/int result (a comparison
decided by rounding) are unstable and not compared. Where a backend still differs, the reference is
run again on inputs moved by a few ulps (`Spec.jitter`): how far that moves it widens the estimate in
the same way, so a result that rounding alone decides (exp(log(x)) != x) is not a failure.

numpy's float32 math is not correctly rounded (its float32 tanh(9.0824757) is 0.99999994, one ulp
below the correctly rounded 1.0), so a discontinuous op (floor, round, sign, a comparison, argmax)
can jump on numpy where a backend with correctly rounded float32 math does not, while the float64
twin jumps with numpy. So at a float32-regime mismatch a third twin runs too, the *rounded twin*: the
float64 twin with every op's result rounded to float32 (`NumpyBackend.rounding`: correctly rounded
float32 arithmetic, op by op, with the same feeds, variables and dropout masks as the float32 twin,
ints and bools untouched). Where it differs from the float64 twin, the estimate widens (and a
finiteness or bool/int disagreement is unstable) as for the float32 twin.
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import graphnet as gn

from .spec import DtypeToken, Spec, build

COMPILE_BUDGET_S = 5.0
K = 8.0


@dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float  # times the largest fetched magnitude


TOLERANCE = {"float32": Tol(1e-5, 1e-6), "float64": Tol(1e-11, 1e-13)}
TORCH_TOLERANCE = Tol(1e-10, 1e-13)
EPS_RATIO = 2.0 ** -29  # float64 epsilon / float32 epsilon


@dataclass
class Failure:
    """One problem with one backend on one spec (`kind`: mismatch, compile error, run error, crash,
    hang, compile budget, reference error, torch mismatch)."""

    backend: str
    kind: str
    detail: str = ""

    @property
    def signature(self) -> str:
        """What must stay the same while the shrinker reduces a spec."""
        if self.kind in ("compile error", "run error", "reference error"):
            return f"{self.backend}: {self.kind}: {self.detail.split(':', 1)[0]}"
        return f"{self.backend}: {self.kind}"


@dataclass
class Result:
    id: str
    failures: list = field(default_factory=list)
    compile_s: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"id": self.id, "failures": [vars(f) for f in self.failures], "compile_s": self.compile_s,
                "notes": self.notes, "seconds": self.seconds}

    @staticmethod
    def from_dict(d: dict) -> "Result":
        return Result(d["id"], [Failure(**f) for f in d["failures"]], d["compile_s"], d["notes"], d["seconds"])


class BackendError(Exception):
    def __init__(self, kind: str, exc: BaseException):
        super().__init__(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        self.kind, self.exc = kind, exc


# ---- running ---------------------------------------------------------------------------------------
def execute(spec: Spec, backend: str, dtype: str | None = None, uniform: bool = False,
            rounding: str | None = None) -> tuple[dict, float]:
    """Compile and call the spec on `backend`: every fetch of every call, and (training) every variable
    afterwards, by name; and the compile time (CPU seconds of the compiling thread). `rounding` (numpy
    backend only): round every float value to this dtype's precision. Raises BackendError."""
    try:
        built = build(spec, dtype, uniform)
    except Exception as e:
        raise BackendError("build error", e) from e
    os.environ["GRAPHNET_NUM_THREADS"] = str(spec.threads)
    start = time.thread_time()  # CPU time: the budget holds the compiler's work, not the machine's load
    try:
        fn = gn.compile([node for _, node in built.fetches], updates=built.updates, backend=backend)
    except Exception as e:
        raise BackendError("compile error", e) from e
    compile_s = time.thread_time() - start
    if rounding is not None:
        fn.executable.rounding = np.dtype(rounding)
    values = {}
    try:
        for c in range(len(spec.batches)):
            out = fn(**built.feeds(spec, c))
            for (name, _), array in zip(built.fetches, out):
                values[f"call{c}/{name}"] = np.array(array, copy=True)
        if spec.mode == "train":
            for name, var in sorted(built.graph.variables.items()):
                values[f"final/{name}"] = var.value
    except Exception as e:
        raise BackendError("run error", e) from e
    return values, compile_s


def mixed(spec: Spec) -> bool:
    """Whether the spec uses both float dtypes (then its twins differ from it)."""
    return any(leaf.dtype == "other" for leaf in spec.leaves) or any(
        isinstance(v, DtypeToken) and v == "other" for n in spec.nodes for v in n.attrs.values())


def regime(spec: Spec) -> str:
    """The tolerance regime: float32 wherever float32 computes any part of the graph."""
    return "float32" if spec.dtype == "float32" or mixed(spec) else "float64"


# ---- comparing ---------------------------------------------------------------------------------------
def error_estimate(a: np.ndarray | None, b: np.ndarray | None, shape: tuple,
                   scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(estimate, unstable) for each element from two references that differ by rounding only (the
    float32 and float64 twins, or a run and its jittered copy): |a - b| * scale, and where they
    disagree about finiteness or a bool/int result."""
    est, unstable = np.zeros(shape), np.zeros(shape, bool)
    if a is None or b is None or a.shape != shape or b.shape != shape:
        return est, unstable
    if a.dtype.kind != "f" or b.dtype.kind != "f":
        return est, np.asarray(a != b)
    a, b = a.astype(np.float64), b.astype(np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    with np.errstate(all="ignore"):
        est = np.where(both, np.abs(a - b), 0.0) * scale
    same = (np.isnan(a) & np.isnan(b)) | (a == b)
    return est, ~both & ~same


def compare(name: str, got: Any, want: np.ndarray, lo: np.ndarray | None, hi: np.ndarray | None,
            tol: Tol, scale: float, top: float = 1.0, jittered: list | None = None,
            rounded: np.ndarray | None = None) -> str | None:
    """None if `got` matches `want` (see the module docstring), else what differs. `top` is the
    largest magnitude among the graph's fetched values (the absolute tolerance's scale); `jittered`
    are the reference's values on inputs moved by a few ulps (their spread widens the estimate);
    `rounded` is the rounded twin's value (its distance from `hi` widens it as `lo`'s does)."""
    got = np.asarray(got)
    if got.shape != want.shape:
        return f"{name}: shape {got.shape}, want {want.shape}"
    if got.dtype != want.dtype:
        return f"{name}: dtype {got.dtype}, want {want.dtype}"
    est, unstable = error_estimate(lo, hi, want.shape, scale)
    if rounded is not None:
        e, u = error_estimate(rounded, hi, want.shape, scale)
        est, unstable = np.maximum(est, e), unstable | u
    for other in jittered or ():
        e, u = error_estimate(want, other, want.shape, 1.0)
        est, unstable = np.maximum(est, e), unstable | u
    if want.dtype.kind != "f":
        bad = (got != want) & ~unstable
        bound = np.zeros(want.shape)
    else:
        g, w = got.astype(np.float64), want.astype(np.float64)
        finite = np.isfinite(w)
        bound = tol.rtol * np.abs(np.where(finite, w, 0)) + tol.atol * top + K * est
        with np.errstate(all="ignore"):
            close = finite & np.isfinite(g) & (np.abs(g - w) <= bound)
        same = ~finite & ((np.isnan(w) & np.isnan(g)) | (w == g))
        bad = ~(close | same) & ~unstable
    if not bad.any():
        return None
    k = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f" at {k}" if k else ""
    return (f"{name}: {int(bad.sum())}/{bad.size} elements differ{where}: got {got[k]!r}, want {want[k]!r} "
            f"(tol {float(bound[k]):.3g})")


def magnitude(values: dict) -> float:
    """The largest finite float magnitude among `values` (at least 1e-30)."""
    top = 1e-30
    for v in values.values():
        v = np.asarray(v)
        if v.dtype.kind == "f" and v.size:
            finite = np.abs(v[np.isfinite(v)])
            top = max(top, float(finite.max()) if finite.size else 0.0)
    return top


def compare_all(got: dict, want: dict, lo: dict | None, hi: dict | None, tol: Tol, scale: float,
                keys: list | None = None, jittered: list = (), rounded: dict | None = None) -> list[str]:
    top = magnitude(want)
    problems = []
    for key in keys if keys is not None else want:
        if key not in got:
            problems.append(f"{key}: missing")
            continue
        p = compare(key, got[key], want[key], (lo or {}).get(key), (hi or {}).get(key), tol, scale, top,
                    [j[key] for j in jittered if key in j], (rounded or {}).get(key))
        if p:
            problems.append(p)
    return problems


# ---- the whole check -------------------------------------------------------------------------------------
def check(spec: Spec, use_torch: bool = True, budget_s: float = COMPILE_BUDGET_S,
          progress: Callable[[str], None] = lambda stage: None) -> Result:
    """Run `spec` on numpy (and its twins), each of `spec.backends`, and torch; collect failures.
    `progress(backend)` is called before each backend runs (a crash or hang is attributed to it)."""
    start = time.perf_counter()
    progress("numpy")
    result = Result(spec.id)
    try:
        want, result.compile_s["numpy"] = execute(spec, "numpy")
        lo = want if spec.dtype == "float32" and not mixed(spec) else execute(spec, "numpy", "float32", True)[0]
        hi = want if spec.dtype == "float64" and not mixed(spec) else execute(spec, "numpy", "float64", True)[0]
    except BackendError as e:
        result.failures.append(Failure("numpy", "reference error", f"{e.kind}: {e}\n{_tail(e.exc)}"))
        result.seconds = time.perf_counter() - start
        return result
    reg = regime(spec)
    scale = 1.0 if reg == "float32" else EPS_RATIO
    jittered = rounded = None  # computed at the first mismatch
    for backend in spec.backends:
        progress(backend)
        try:
            got, result.compile_s[backend] = execute(spec, backend)
        except BackendError as e:
            kind = "compile error" if e.kind == "compile error" else "run error"
            result.failures.append(Failure(backend, kind, f"{e}\n{_tail(e.exc)}"))
            continue
        problems = compare_all(got, want, lo, hi, TOLERANCE[reg], scale)
        if problems:  # is the reference itself that sensitive? (a comparison of equal values, ...)
            jittered = jittered if jittered is not None else _jittered(spec)
            rounded = rounded if rounded is not None else _rounded_twin(spec, reg)
            problems = compare_all(got, want, lo, hi, TOLERANCE[reg], scale, jittered=jittered, rounded=rounded)
        noise = noise_gradient(spec) if problems else None
        if noise:  # steps after the first follow rounding noise: compare what the first call computed
            result.notes.append(f"training compared before the first update only: {noise}")
            first = [k for k in want if k.startswith("call0/")]
            problems = compare_all(got, want, lo, hi, TOLERANCE[reg], scale, first, jittered, rounded)
        if problems:
            result.failures.append(Failure(backend, "mismatch", "\n".join(problems[:4])))
        if result.compile_s[backend] > budget_s:
            result.failures.append(Failure(backend, "compile budget",
                                           f"compiled in {result.compile_s[backend]:.2f} s of CPU time "
                                           f"(budget {budget_s:g} s)"))
    if use_torch:
        progress("torch")
        _check_torch(spec, hi, lo, result)
    result.seconds = time.perf_counter() - start
    return result


JITTER_RUNS = 3


def _jittered(spec: Spec, dtype: str | None = None, uniform: bool = False) -> list[dict]:
    """The reference on JITTER_RUNS copies of the inputs moved by a few ulps each."""
    runs = []
    for k in range(1, JITTER_RUNS + 1):
        try:
            runs.append(execute(spec.copy(jitter=k), "numpy", dtype, uniform)[0])
        except BackendError:
            pass
    return runs


def _rounded_twin(spec: Spec, reg: str) -> dict:
    """The rounded twin (see the module docstring): in the float32 regime, the all-float64 reference
    with every float value rounded to float32; empty in the float64 regime (or where it cannot run)."""
    if reg != "float32":
        return {}
    try:
        return execute(spec, "numpy", "float64", True, rounding="float32")[0]
    except BackendError:
        return {}


SCALE_FREE = ("Adam", "AdamW", "RMSProp", "Adagrad")  # optimizers dividing a step by the gradient's size


def noise_gradient(spec: Spec) -> str | None:
    """Why training `spec` is ill-conditioned, or None: an optimizer that divides by the gradient's
    own size turns a gradient element that is only rounding noise (the mean of a softmax has none)
    into a full step whose sign is the noise's, which differs between correct backends."""
    if spec.mode != "train" or spec.optimizer["name"] not in SCALE_FREE:
        return None
    probe = spec.copy(mode="grad", batches=spec.batches[:1])
    try:
        lo, hi = execute(probe, "numpy", "float32", True)[0], execute(probe, "numpy", "float64", True)[0]
    except BackendError:
        return None
    grads = {k: v for k, v in hi.items() if k.startswith("call0/dv")}
    eps = float(np.finfo(np.float32 if regime(spec) == "float32" else np.float64).eps)
    floor = 10 * eps * magnitude(grads)
    for key, g in sorted(grads.items()):
        noise = np.abs(g) <= K * np.abs(lo[key].astype(np.float64) - g) + floor
        if noise.any():
            return f"{spec.optimizer['name']} normalises {key[len('call0/d'):]}'s gradient, rounding noise at " \
                   f"{int(noise.sum())} of {noise.size} elements"
    return None


def _check_torch(spec: Spec, hi: dict, lo: dict, result: Result) -> None:
    from . import torch_ref
    reason = torch_ref.unsupported(spec)
    if reason:
        result.notes.append(f"torch: skipped ({reason})")
        return
    try:
        got = torch_ref.run(spec)
    except torch_ref.Unsupported as e:
        result.notes.append(f"torch: skipped ({e})")
        return
    except Exception as e:
        result.failures.append(Failure("torch", "run error", f"{type(e).__name__}: {e}\n{_tail(e)}"))
        return
    keys = sorted(got)
    overflowed = _overflowed_calls(hi, len(spec.batches))
    if overflowed and spec.mode == "train":
        result.notes.append(f"torch: compared up to call {overflowed[0]}, whose float64 values overflowed")
        keys = [k for k in keys if k.startswith("call") and _call_of(k) <= overflowed[0]]
    elif overflowed and spec.mode == "grad":
        result.notes.append(f"torch: gradients of calls {overflowed} not compared: their float64 values overflowed")
        keys = [k for k in keys if not (_call_of(k) in overflowed and k.split("/")[1].startswith("d"))]
    problems = compare_all(got, hi, lo, hi, TORCH_TOLERANCE, EPS_RATIO, keys=keys)
    jittered = _jittered(spec, "float64", True) if problems else []
    if problems:
        problems = compare_all(got, hi, lo, hi, TORCH_TOLERANCE, EPS_RATIO, keys, jittered)
    noise = noise_gradient(spec) if problems else None
    if noise:
        result.notes.append(f"torch: training compared before the first update only: {noise}")
        first = [k for k in got if k.startswith("call0/")]
        problems = compare_all(got, hi, lo, hi, TORCH_TOLERANCE, EPS_RATIO, first, jittered)
    if problems:
        result.failures.append(Failure("numpy", "torch mismatch", "\n".join(problems[:4])))


def _overflowed_calls(hi: dict, calls: int) -> list[int]:
    """The calls whose float64 reference values hold an inf or NaN (the feeds are finite: specs with
    NaN/Inf feeds skip torch). A gradient through such values, and a training step's update from
    them, spread inf and NaN by the order of their operations, which two correct formulations do not
    share (inf - inf, 0 * inf)."""
    return [c for c in range(calls) if any(_call_of(k) == c and np.asarray(v).dtype.kind == "f"
                                           and not np.isfinite(v).all() for k, v in hi.items())]


def _call_of(key: str) -> int:
    """The call a fetched value's key names (`call2/dx0` -> 2; -1 for `final/...`)."""
    return int(key[4:key.index("/")]) if key.startswith("call") else -1


def _tail(exc: BaseException, lines: int = 6) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip().splitlines()
    return "\n".join(text[-lines:])


def opencl_available() -> bool:
    try:
        import pyopencl as cl
        return bool(cl.get_platforms())
    except Exception:
        return False


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False
