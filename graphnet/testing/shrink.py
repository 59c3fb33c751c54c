"""Shrink a failing spec to a minimal one that still fails the same way, and write it as a standalone
repro script.

Greedy delta debugging: try each simplification (fewer outputs, a simpler mode, a node bypassed by
one of its inputs, a subtree cut off and replaced by a placeholder, simpler leaves, smaller sizes,
fewer and smaller calls, default optimizer options, one thread) and keep the first that still fails
with the same signature (backend and kind); repeat until none does. Candidates run in a child process
(`runner.Worker`), so shrinking a crash or a hang is safe.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterator

import numpy as np

import graphnet as gn

from .oracle import TOLERANCE, Failure, Result, regime
from .runner import Worker
from .spec import (DtypeToken, Leaf, OpNode, Spec, _one_batch_axis, build, differentiable_leaves,
                   float_outputs, prune, resolve, token_of)


def fails_like(result: Result, signature: str) -> bool:
    return any(f.signature == signature for f in result.failures)


def narrowed(spec: Spec, failure: Failure) -> Spec:
    """The spec checking only what the failure needs (its backend; no twin backends)."""
    backends = [failure.backend] if failure.backend in ("llvm", "opencl") else []
    return spec.copy(backends=backends)


def needs_torch(failure: Failure) -> bool:
    return failure.backend == "torch" or failure.kind == "torch mismatch"


def shrink(spec: Spec, failure: Failure, evaluate: Callable[[Spec], Result], budget_s: float = 300.0,
           log: Callable[[str], None] = lambda line: None) -> Spec:
    """The smallest spec found (within `budget_s`) whose evaluation still fails with `failure`'s signature."""
    signature = failure.signature
    best = narrowed(spec, failure)
    if not fails_like(evaluate(best), signature):
        return spec  # (it fails only beside another backend: keep it whole)
    deadline = time.monotonic() + budget_s
    seen = {best.to_json()}
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        for candidate in candidates(best):
            key = candidate.to_json()
            if key in seen or not _valid(candidate, signature):
                continue
            seen.add(key)
            if fails_like(evaluate(candidate), signature):
                log(f"  still fails with {len(candidate.nodes)} ops ({', '.join(candidate.op_names())}), "
                    f"{len(candidate.leaves)} leaves, mode {candidate.mode}, batches {candidate.batches}")
                best, improved = candidate, True
                break
            if time.monotonic() > deadline:
                break
    return best


def _valid(spec: Spec, signature: str) -> bool:
    """Whether a candidate is a well-formed graph: its forward part builds, and so does all of it
    unless building its gradients or updates is what fails."""
    if not spec.outputs:
        return False
    try:
        build(spec.copy(mode="forward"))
    except Exception:
        return False
    if "build error" in signature:
        return True
    try:
        build(spec)
        return True
    except Exception:
        return False


# ---- simplifications ----------------------------------------------------------------------------------
def candidates(spec: Spec) -> Iterator[Spec]:
    """Simpler variants of `spec`, the biggest cuts first."""
    for k in range(len(spec.outputs)):
        if len(spec.outputs) > 1:
            yield prune(_edit(spec, outputs=spec.outputs[:k] + spec.outputs[k + 1:]))
    yield from _simpler_mode(spec)
    nleaves = len(spec.leaves)
    for r in range(nleaves, spec.nvalues):
        yield from (_cut(spec, r),) if _cut(spec, r) is not None else ()
    for r in reversed(range(nleaves, spec.nvalues)):
        for j in dict.fromkeys(spec.node(r).inputs):
            yield _bypass(spec, r, j)
    yield from _simpler_leaves(spec)
    yield from _smaller_sizes(spec)
    yield from _fewer_calls(spec)
    if spec.optimizer:
        for key in spec.optimizer["kwargs"]:
            if key != "lr":
                kwargs = {k: v for k, v in spec.optimizer["kwargs"].items() if k != key}
                yield _edit(spec, optimizer={"name": spec.optimizer["name"], "kwargs": kwargs})
        if spec.optimizer["name"] != "SGD":
            yield _edit(spec, optimizer={"name": "SGD", "kwargs": {"lr": spec.optimizer["kwargs"]["lr"]}})
    if spec.threads != 1:
        yield _edit(spec, threads=1)


def _edit(spec: Spec, **changes) -> Spec:
    return spec.copy(**{k: json.loads(json.dumps(v)) if k in ("outputs", "batches") else v
                        for k, v in changes.items()})


def _simpler_mode(spec: Spec) -> Iterator[Spec]:
    if spec.mode == "train":
        yield _edit(spec, mode="grad", optimizer=None, batches=spec.batches[:1])
    if spec.mode == "grad":
        yield _edit(spec, mode="forward")
    if spec.mode != "forward" and spec.loss != "sum":
        yield _edit(spec, loss="sum")


def _bypass(spec: Spec, r: int, j: int) -> Spec:
    """Value r replaced by its input j everywhere."""
    out = spec.copy()
    out.nodes = [OpNode(n.op, tuple(j if i == r else i for i in n.inputs), n.attrs) for n in out.nodes]
    out.outputs = list(dict.fromkeys(j if o == r else o for o in out.outputs))
    return prune(out)


def _cut(spec: Spec, r: int) -> Spec | None:
    """Value r replaced by a new placeholder of its shape and dtype (its subtree dropped)."""
    try:
        node = build(spec.copy(mode="forward")).values[r]
    except Exception:
        return None
    if sum(d is None for d in node.shape) > 1:
        return None
    nleaves = len(spec.leaves)
    shift = lambda i: nleaves if i == r else (i + 1 if i >= nleaves else i)  # noqa: E731
    out = spec.copy()
    dtype = node.dtype
    leaf = Leaf("placeholder", node.shape, token_of(dtype, spec.dtype), bound=2 if dtype.kind == "b" else 4)
    out.leaves = out.leaves + [leaf]
    out.nodes = [OpNode(n.op, tuple(shift(i) for i in n.inputs), n.attrs) for n in spec.nodes]
    out.outputs = list(dict.fromkeys(shift(o) for o in spec.outputs))
    return prune(out)


def _simpler_leaves(spec: Spec) -> Iterator[Spec]:
    for i, leaf in enumerate(spec.leaves):
        changes = []
        if leaf.special:
            changes.append({"special": 0.0})
        if leaf.kind != "placeholder":
            changes.append({"kind": "placeholder"})
        if leaf.dtype in ("float", "other") and (leaf.low, leaf.high) != (-2.0, 2.0):
            changes.append({"low": -2.0, "high": 2.0})
        if leaf.dtype == "other":
            changes.append({"dtype": "float"})
        for change in changes:
            out = spec.copy()
            for k, v in change.items():
                setattr(out.leaves[i], k, v)
            yield out


def _smaller_sizes(spec: Spec) -> Iterator[Spec]:
    sizes = sorted({d for leaf in spec.leaves for d in leaf.shape if d is not None and d > 1}, reverse=True)
    for d in sizes:
        for new in dict.fromkeys([1, 2, d - 1]):
            if new < d:
                yield _resized(spec, d, new)


def _resized(spec: Spec, old: int, new: int) -> Spec:
    out = spec.copy()
    for leaf in out.leaves:
        leaf.shape = tuple(new if d == old else d for d in leaf.shape)
    for n in out.nodes:
        if "shape" in n.attrs:
            n.attrs["shape"] = tuple(new if d == old else d for d in n.attrs["shape"])
    return out


def _fewer_calls(spec: Spec) -> Iterator[Spec]:
    b = spec.batches
    if len(b) > 1:
        for k in range(len(b)):
            yield _edit(spec, batches=b[:k] + b[k + 1:])
    for k, size in enumerate(b):
        for new in (1, 2):
            if new < size:
                yield _edit(spec, batches=b[:k] + [new] + b[k + 1:])


# ---- the repro script -----------------------------------------------------------------------------
def repro_script(spec: Spec, failure: Failure) -> str:
    """A standalone Python script that rebuilds the spec with the public API, runs it on the numpy
    reference and the failing backend, and exits with status 1 while the failure persists."""
    built = _built_for_repro(spec)
    names = _value_names(spec)
    dt = lambda dtype: f"np.{np.dtype(dtype).name}"  # noqa: E731
    body = []
    for i, leaf in enumerate(spec.leaves):
        node = built.values[i]
        if leaf.kind == "placeholder":
            body.append(f"{names[i]} = gn.placeholder({names[i]!r}, {tuple(leaf.shape)!r}, {dt(node.dtype)})")
        elif leaf.kind == "variable":
            trainable = "" if node.dtype.kind == "f" else ", trainable=False"
            body.append(f"{names[i]} = gn.variable({names[i]!r}, {_array(node.value)}{trainable})")
        else:
            body.append(f"{names[i]} = gn.constant({_array(node.attrs['value'].array)}, {dt(node.dtype)})")
    for k, n in enumerate(spec.nodes):
        r = len(spec.leaves) + k
        body.append(f"{names[r]} = {_expr(n, [names[i] for i in n.inputs], spec.dtype)}")
    body.append(f"fetches = [{', '.join(names[r] for r in spec.outputs)}]")
    body += _loss_code(spec, built, names)
    body.append("return g, gn.compile(fetches, updates=updates, backend=backend)")
    feeds = [built.feeds(spec, c) for c in range(len(spec.batches))]
    feed_text = ",\n    ".join("{" + ", ".join(f"{k!r}: {_array(v)}" for k, v in f.items()) + "}" for f in feeds)
    tol = TOLERANCE[regime(spec)]
    backend = failure.backend if failure.backend in ("llvm", "opencl") else "numpy"
    detail = failure.detail.strip().splitlines()[0][:300] if failure.detail.strip() else ""
    lines = [
        f'"""graphnet fuzz repro {spec.id}: {failure.signature}',
        f"{detail}",
        f"",
        f"Run: python this_file.py  (exit status 1 while the failure persists). The spec, for",
        f"`python -m graphnet.testing.fuzz --replay FILE.json`, is SPEC below.",
        f'"""',
        "import os",
        "import sys",
        "import time",
        "",
        "import numpy as np",
        "from numpy import inf, nan  # noqa: F401",
        "",
        f'os.environ["GRAPHNET_NUM_THREADS"] = "{spec.threads}"',
        "import graphnet as gn  # noqa: E402",
        "",
        f"SPEC = {spec.to_json()!r}",
        f"TRAIN = {spec.mode == 'train'}",
        f"FEEDS = [\n    {feed_text},\n]",
        "",
        "",
        "def build(backend):",
        "    with gn.Graph() as g:",
        *["        " + line for line in body],
        "",
        "",
        "def run(backend):",
        "    start = time.perf_counter()",
        "    g, fn = build(backend)",
        "    compile_s = time.perf_counter() - start",
        "    values = {}",
        "    for c, feeds in enumerate(FEEDS):",
        "        for k, array in enumerate(fn(**feeds)):",
        "            values[f'call{c}/fetch{k}'] = np.array(array, copy=True)",
        "    if TRAIN:",
        "        for name, var in sorted(g.variables.items()):",
        "            values[f'final/{name}'] = var.value",
        "    return values, compile_s",
        "",
        "",
        "def same(key, got, want, top):",
        "    if want.dtype.kind != 'f':",
        "        np.testing.assert_array_equal(got, want, err_msg=key)",
        "    else:",
        f"        np.testing.assert_allclose(got, want, rtol={tol.rtol!r}, atol={tol.atol!r} * top, err_msg=key)",
        "",
        "",
        'if __name__ == "__main__":',
        *_main_code(failure, backend),
    ]
    return "\n".join(lines) + "\n"


def _built_for_repro(spec: Spec):
    """The built spec, or (where differentiating or training it is what fails) its forward part."""
    try:
        return build(spec)
    except Exception:
        built = build(spec.copy(mode="forward"))
        if spec.mode != "forward" and spec.loss == "weighted":  # the grad_ys feeds the loss code declares
            for k, r in enumerate(float_outputs(spec, built.values)):
                out = built.values[r]
                built.grad_ys.append((f"gy{k}", gn.placeholder(f"gy{k}", _one_batch_axis(out.shape), out.dtype,
                                                               graph=built.graph)))
        return built


def _main_code(failure: Failure, backend: str) -> list[str]:
    if failure.kind == "torch mismatch" or failure.backend == "torch":
        return ["    from graphnet.testing.oracle import check",
                "    from graphnet.testing.spec import Spec",
                "    result = check(Spec.from_json(SPEC))",
                "    for f in result.failures:",
                "        print(f.signature, f.detail)",
                "    sys.exit(1 if result.failures else 0)"]
    if failure.kind == "mismatch":
        return ["    want, _ = run('numpy')",
                f"    got, _ = run({backend!r})",
                "    top = max([float(np.max(np.abs(v[np.isfinite(v)]), initial=0)) for v in want.values()",
                "               if v.dtype.kind == 'f'] + [1e-30])",
                "    for key in want:",
                "        same(key, got[key], want[key], top)",
                "    print('no mismatch')"]
    if failure.kind == "compile budget":
        return [f"    _, seconds = run({backend!r})",
                "    print(f'compiled in {seconds:.2f} s')",
                "    sys.exit(1 if seconds > 5 else 0)"]
    return [f"    run({backend!r})  # {failure.kind}", "    print('ran without error')"]


def _value_names(spec: Spec) -> list[str]:
    prefix = {"placeholder": "x", "variable": "v", "constant": "c"}
    return [f"{prefix[leaf.kind]}{i}" for i, leaf in enumerate(spec.leaves)] + \
           [f"n{len(spec.leaves) + k}" for k in range(len(spec.nodes))]


API_SOURCE = {
    "api:mean": "gn.mean({0}, axis={axes!r}, keepdims={keepdims!r})",
    "api:mse": "gn.losses.mse({0}, {1})",
    "api:bce_logits": "gn.losses.binary_cross_entropy({0}, {1}, from_logits=True)",
    "api:bce": "gn.losses.binary_cross_entropy({0}, {1})",
    "api:softmax_ce": "gn.losses.softmax_cross_entropy({0}, {1}, reduction='none')",
    "api:matmul_t": "{0} @ {1}.T",
}


def _expr(n: OpNode, args: list[str], base: str) -> str:
    if n.op in API_SOURCE:
        attrs = {"axes": (), "keepdims": False, **n.attrs}
        return API_SOURCE[n.op].format(*args, **attrs)
    if not n.attrs and getattr(gn, n.op, None) is not None and getattr(gn, n.op) is getattr(gn.ops, n.op, None) \
            and n.op not in ("matmul", "where", "cast", "transpose", "reshape"):
        return f"gn.{n.op}({', '.join(args)})"
    attrs = "".join(f", {k}={_attr(v, base)}" for k, v in n.attrs.items())
    return f"gn.ops.apply({n.op!r}, [{', '.join(args)}]{attrs})"


def _attr(value, base: str) -> str:
    if isinstance(value, DtypeToken):
        return f"np.dtype({resolve(value, base).name!r})"
    return repr(value)


def _loss_code(spec: Spec, built, names: list[str]) -> list[str]:
    if spec.mode == "forward" or not float_outputs(spec, built.values):
        return ["updates = None"]
    lines, terms = [], []
    for k, r in enumerate(float_outputs(spec, built.values)):
        out = built.values[r]
        term = names[r]
        if spec.loss == "weighted":
            lines.append(f"gy{k} = gn.placeholder('gy{k}', {_one_batch_axis(out.shape)!r}, np.{out.dtype.name})")
            term = f"{term} * gy{k}"
        term = f"gn.{'mean' if spec.loss == 'mean' else 'sum'}({term})"
        if out.dtype != np.dtype(spec.dtype):
            term = f"gn.cast({term}, np.{spec.dtype})"
        terms.append(term)
    lines.append(f"loss = {' + '.join(terms)}")
    lines.append("fetches.append(loss)")
    if spec.mode == "grad":
        wrt = [names[i] for i in differentiable_leaves(spec, built.values)]
        if wrt:
            lines.append(f"fetches += gn.gradients(loss, [{', '.join(wrt)}])")
        lines.append("updates = None")
    else:
        kwargs = dict(spec.optimizer["kwargs"])
        lines.append(f"updates = gn.optim.{spec.optimizer['name']}(**{kwargs!r}).minimize(loss)")
    return lines


def _array(a) -> str:
    a = np.asarray(a)
    return f"np.array({a.tolist()!r}, np.{a.dtype.name})"


# ---- checking that a repro reproduces -------------------------------------------------------------------
def verify(script: str, failure: Failure, timeout_s: float = 120.0) -> bool:
    """Whether the script fails (exit status != 0; for a hang: does not end within timeout_s)."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        proc = subprocess.run([sys.executable, path], capture_output=True, timeout=timeout_s, start_new_session=True)
        return proc.returncode != 0 and failure.kind != "hang"
    except subprocess.TimeoutExpired:
        return failure.kind == "hang"
    finally:
        os.unlink(path)


def shrink_failure(spec: Spec, failure: Failure, timeout_s: float = 60.0, budget_s: float = 300.0,
                   env: dict | None = None, log: Callable[[str], None] = lambda line: None) -> Spec:
    """`shrink` with candidates checked in a child process."""
    with Worker(timeout_s, env, use_torch=needs_torch(failure)) as worker:
        return shrink(spec, failure, worker.run, budget_s, log)
