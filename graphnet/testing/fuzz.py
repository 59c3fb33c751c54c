"""The differential fuzzer's command: `python -m graphnet.testing.fuzz --graphs 10000 --seed 0
--opencl-every 10 --jobs 2` (also `graphnet fuzz ...`).

Generates graphs (generate.py), checks each on numpy, LLVM (every graph), OpenCL (every n-th) and
torch float64 in child processes (runner.py), explains failures by the known-bug list (known.py),
shrinks the others to minimal repro scripts (shrink.py) and prints a summary: rate, failures by
kind, the slowest compiles. A compile over the budget (5 s of CPU time, so that a loaded machine
does not count) is a failure. Exit status 1 when any
failure is unexplained.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .generate import PROFILES, generate
from .known import explain
from .oracle import COMPILE_BUDGET_S, Failure, Result, opencl_available, torch_available
from .runner import Worker, run_many
from .spec import Spec


@dataclass
class Summary:
    """What a fuzz run found."""

    graphs: int = 0
    seconds: float = 0.0
    failures: list = field(default_factory=list)  # (spec or None for a grid model, failure) not in known.py
    known: collections.Counter = field(default_factory=collections.Counter)  # known bug -> failures
    compiles: list = field(default_factory=list)  # (seconds, spec id, backend), native backends
    notes: collections.Counter = field(default_factory=collections.Counter)
    backends: collections.Counter = field(default_factory=collections.Counter)

    @property
    def rate(self) -> float:
        return self.graphs / self.seconds if self.seconds else 0.0

    def add(self, spec: Spec, result: Result) -> None:
        self.graphs += 1
        self.backends.update(["numpy"] + list(spec.backends))
        for failure in result.failures:
            bug = explain(spec, failure)
            if bug:
                self.known[bug] += 1
            else:
                self.failures.append((spec, failure))
        for backend, seconds in result.compile_s.items():
            if backend != "numpy":
                self.compiles.append((seconds, spec.id, backend))
        self.notes.update(result.notes)

    def report(self, slowest: int = 5) -> str:
        lines = [f"{self.graphs} graphs in {self.seconds:.0f} s ({self.rate:.2f} graphs/s); checked on "
                 + ", ".join(f"{b} {n}" for b, n in self.backends.most_common())]
        by_kind = collections.Counter(f.signature for _, f in self.failures)
        example = {f.signature: spec.id if spec else "grid" for spec, f in reversed(self.failures)}
        lines.append(f"unexplained failures: {len(self.failures)}"
                     + "".join(f"\n  {n:5d}  {sig}  (e.g. {example[sig]})" for sig, n in by_kind.most_common()))
        if self.known:
            lines.append("explained by known bugs (known.py):"
                         + "".join(f"\n  {n:5d}  {name}" for name, n in self.known.most_common()))
        if self.compiles:
            top = sorted(self.compiles, reverse=True)[:slowest]
            lines.append("slowest compiles (CPU): " + ", ".join(f"{s:.2f} s ({b}, graph {i})" for s, i, b in top))
        for note, n in self.notes.most_common(4):
            lines.append(f"note ({n}x): {note}")
        return "\n".join(lines)


def native_backends(index: int, opencl_every: int) -> list[str]:
    backends = ["llvm"] if importlib.util.find_spec("llvmlite") else []
    if opencl_every and index % opencl_every == 0 and opencl_available():
        backends.append("opencl")
    return backends


def fuzz(graphs: int, seed: int = 0, start: int = 0, profile: str = "default", opencl_every: int = 10,
         jobs: int = 1, batch: int = 40, timeout_s: float = 120.0, use_torch: bool = True,
         budget_s: float = COMPILE_BUDGET_S, progress: Callable[[Summary], None] | None = None) -> Summary:
    """Check graphs start..start+graphs-1 of run `seed`; compiles use a fresh, private cache."""
    use_torch = use_torch and torch_available()
    specs = [generate(seed, i, PROFILES[profile], native_backends(i, opencl_every))
             for i in range(start, start + graphs)]
    summary = Summary()
    cache = tempfile.mkdtemp(prefix="graphnet-fuzz-cache-")
    began = time.perf_counter()

    def on_result(spec: Spec, result: Result) -> None:
        summary.add(spec, result)
        summary.seconds = time.perf_counter() - began
        if progress:
            progress(summary)

    try:
        run_many(specs, jobs, batch, timeout_s, use_torch, budget_s, {"GRAPHNET_CACHE_DIR": cache}, on_result)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    summary.seconds = time.perf_counter() - began
    return summary


def shrink_all(summary: Summary, out: str, limit: int, budget_s: float, timeout_s: float,
               log: Callable[[str], None] = print) -> list[str]:
    """Shrink the first failure of each signature (at most `limit`) and write repro_<k>.py/.json."""
    from .shrink import repro_script, shrink_failure, verify
    shrunk: dict[str, list[set]] = collections.defaultdict(list)  # signature -> op sets of its repros
    written: list[str] = []
    for spec, failure in summary.failures:
        if len(written) >= limit:
            break
        if any(ops <= set(spec.op_names()) for ops in shrunk[failure.signature]):
            continue  # most likely the bug of that repro again
        log(f"shrinking {spec.id} ({failure.signature}) ...")
        with tempfile.TemporaryDirectory(prefix="graphnet-fuzz-cache-") as cache:
            small = shrink_failure(spec, failure, timeout_s=timeout_s, budget_s=budget_s,
                                   env={"GRAPHNET_CACHE_DIR": cache}, log=log)
        shrunk[failure.signature].append(set(small.op_names()))
        script = repro_script(small, failure)
        k = len(written)
        path = os.path.join(out, f"repro_{k}.py")
        with open(path, "w") as f:
            f.write(script)
        with open(os.path.join(out, f"repro_{k}.json"), "w") as f:
            f.write(small.to_json())
        ok = verify(script, failure, timeout_s)
        log(f"  -> {path}: {len(small.nodes)} ops ({', '.join(small.op_names())}), mode {small.mode}; "
            f"the script {'reproduces it' if ok else 'does NOT reproduce it on its own'}")
        written.append(path)
    return written


def grid_compile_times(timeout_s: float = 300.0) -> list[tuple[float, str, str]]:
    """Compile each benchmark-grid model's training step (LLVM, and OpenCL where available) in a child
    process with a fresh cache: (seconds, model, backend)."""
    import subprocess
    code = ("import json, time, sys\nfrom graphnet.bench.grid import build_grid_model\n"
            "from graphnet.bench.peers import GRID\n"
            "out = []\nfor b in sys.argv[1:]:\n    for name in GRID:\n        t = time.thread_time()\n"
            "        build_grid_model(name, backend=b)\n        out.append((time.thread_time() - t, name, b))\n"
            "print(json.dumps(out))\n")
    backends = ["llvm"] + (["opencl"] if opencl_available() else [])
    with tempfile.TemporaryDirectory() as cache:
        proc = subprocess.run([sys.executable, "-c", code, *backends], capture_output=True, text=True,
                              timeout=timeout_s, env={**os.environ, "GRAPHNET_CACHE_DIR": cache})
    if proc.returncode:
        raise RuntimeError(f"compiling the grid failed:\n{proc.stderr[-2000:]}")
    return [tuple(row) for row in json.loads(proc.stdout.strip().splitlines()[-1])]


def build_parser(prog: str = "python -m graphnet.testing.fuzz") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--graphs", type=int, default=1000, help="graphs to generate and check (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="run seed: the same seed gives the same graphs")
    p.add_argument("--start", type=int, default=0, help="index of the first graph (to resume or split a run)")
    p.add_argument("--profile", choices=list(PROFILES), default="default", help="graph sizes (default: %(default)s)")
    p.add_argument("--opencl-every", type=int, default=10, metavar="N",
                   help="also check every N-th graph on OpenCL, 0 for never (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="child processes at a time (default: %(default)s)")
    p.add_argument("--batch", type=int, default=40, help="graphs per child process (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one graph may take before it counts as "
                                                                "a hang (default: %(default)s)")
    p.add_argument("--budget", type=float, default=COMPILE_BUDGET_S, help="compile-time budget in seconds")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch float64 comparison")
    p.add_argument("--out", default="fuzz-out", help="folder for failures.jsonl and repro scripts")
    p.add_argument("--shrink", type=int, default=10, metavar="N", help="shrink at most N distinct failures")
    p.add_argument("--shrink-budget", type=float, default=300.0, help="seconds per shrink (default: %(default)s)")
    p.add_argument("--grid", action="store_true", help="also hold the benchmark grid's compiles to the budget")
    p.add_argument("--replay", metavar="FILE", help="check one saved spec (.json, or a failures.jsonl line) "
                                                    "and print the result")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m graphnet.testing.fuzz") -> int:
    return run(build_parser(prog).parse_args(argv))


def run(args: argparse.Namespace) -> int:
    if args.replay:
        return _replay(args)
    os.makedirs(args.out, exist_ok=True)
    step = max(1, args.graphs // 20)

    def progress(s: Summary) -> None:
        if s.graphs % step == 0 or s.graphs == args.graphs:
            print(f"[{s.graphs:6d}/{args.graphs}] {s.rate:.2f} graphs/s, {len(s.failures)} unexplained failures, "
                  f"{sum(s.known.values())} known", flush=True)

    summary = fuzz(args.graphs, args.seed, args.start, args.profile, args.opencl_every, args.jobs, args.batch,
                   args.timeout, not args.no_torch, args.budget, progress)
    failures_path = os.path.join(args.out, "failures.jsonl")
    with open(failures_path, "w") as f:
        for spec, failure in summary.failures:
            f.write(json.dumps({"spec": json.loads(spec.to_json()), "failure": vars(failure)}) + "\n")
    if args.grid:
        grid = grid_compile_times()
        print("grid compiles: " + ", ".join(f"{name} {b} {s:.2f} s" for s, name, b in sorted(grid, reverse=True)))
        for seconds, name, backend in grid:
            if seconds > args.budget:
                failure = Failure(backend, "compile budget", f"grid model {name}: {seconds:.2f} s of CPU time")
                summary.failures.append((None, failure))
    print(summary.report())
    shrinkable = Summary(failures=[(s, f) for s, f in summary.failures if s is not None])
    if shrinkable.failures and args.shrink:
        shrink_all(shrinkable, args.out, args.shrink, args.shrink_budget, args.timeout)
    if summary.failures:
        print(f"failures written to {failures_path}")
    return 1 if summary.failures else 0


def _replay(args: argparse.Namespace) -> int:
    with open(args.replay) as f:
        data = json.loads(f.readline())
    spec = Spec.from_json(data.get("spec", data))
    with Worker(args.timeout, use_torch=not args.no_torch and torch_available(), budget_s=args.budget) as worker:
        result = worker.run(spec)
    for failure in result.failures:
        known = explain(spec, failure)
        print(f"{failure.signature}{f' (known: {known})' if known else ''}\n{failure.detail}")
    print(f"{spec.id}: {len(result.failures)} failures; compile times "
          + ", ".join(f"{b} {s:.2f} s" for b, s in result.compile_s.items()))
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
