"""Compile time of the grid's training steps, by phase, in fresh processes.

For each grid configuration and round, three child processes each build the model
(`bench/grid.py`: graph construction, autodiff, Adam, then `gn.compile`) and report the seconds and
`Function.compile_seconds`, the breakdown by phase: `cold` with an empty cache directory,
`library warm` with a cache holding only the GEMM library (the cache's `gemm` folder, copied from
the cold run), and `cached` with the cold run's whole cache. "shared object" is linking the step's
objects and GEMM routines into a shared object (where a linker exists); in the cold and warm states
the parallel section's wall time is split over LLVM optimisation, object emission and GEMM routines
in proportion to the worker jobs' own times. "build" is what no phase covers (graph construction,
autodiff, the Function's set-up, importing the compiler). Children import graphnet
from bytecode, as an installed graphnet does: the run keeps its own bytecode folder (filled by a
warm-up child), so that where the environment says not to write bytecode (PYTHONDONTWRITEBYTECODE)
"build" does not include compiling graphnet's Python sources in every child. "cpu" is the processor
time of the compile (the child and the worker processes it forked, user and system): on a shared
machine wall times grow with the load, CPU time much less, so a saving of CPU time is one that holds
whatever the load, while the wall time the worker processes save needs a free core. Medians over
the rounds; the machine may be shared.

    python -m graphnet.bench.micro.compile [tiny small medium ...] [--rounds 5]
    graphnet bench --compile [same arguments]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from ..peers import GRID

DEFAULT_CONFIGS = ("tiny", "small", "medium")
STATES = ("cold", "library warm", "cached")
PHASES = ("graph passes", "lowering", "loop passes", "cache lookup", "LLVM IR", "LLVM optimisation",
          "object emission", "GEMM routines", "shared object", "loading")
TARGETS = {"medium": {"cold": 0.5, "library warm": 0.3, "cached": 0.03}}  # issue #17's, in seconds


def child(name: str) -> None:
    """Build grid model `name` once and print its compile times as JSON (runs in a fresh process)."""
    started = time.perf_counter()
    from ..grid import build_grid_model
    imported = time.perf_counter()
    cpu = cpu_seconds()
    model = build_grid_model(name)
    total = time.perf_counter() - imported
    cpu = cpu_seconds() - cpu
    phases = dict(model.step.compile_seconds)
    phases["build"] = total - sum(phases.values())
    print(json.dumps({"total": total, "cpu": cpu, "import": imported - started, "phases": phases,
                      "cache_hit": model.step.executable.cache_hit}))


def cpu_seconds() -> float:
    """Processor seconds, user and system, of this process and of its children that have exited
    (the compile's worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def child_env(cache: str, bytecode: str) -> dict[str, str]:
    """A child's environment: the cache folder `cache`, Python's bytecode written to and read from
    the folder `bytecode`."""
    env = dict(os.environ, GRAPHNET_CACHE_DIR=cache, PYTHONPYCACHEPREFIX=bytecode)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_child(name: str, cache: str, bytecode: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "graphnet.bench.micro.compile", "--child", name],
                         env=child_env(cache, bytecode), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def one_round(name: str, bytecode: str) -> dict[str, dict]:
    """The three states of one configuration, each in a fresh process, in order cold, library warm, cached."""
    with tempfile.TemporaryDirectory(prefix="graphnet-compile-") as cold, \
            tempfile.TemporaryDirectory(prefix="graphnet-compile-lib-") as library:
        results = {"cold": run_child(name, cold, bytecode)}
        if os.path.isdir(os.path.join(cold, "gemm")):
            shutil.copytree(os.path.join(cold, "gemm"), os.path.join(library, "gemm"))
        results["library warm"] = run_child(name, library, bytecode)
        results["cached"] = run_child(name, cold, bytecode)
    return results


def warm_up(name: str, bytecode: str) -> None:
    """One unrecorded compile that writes the bytecode of every module a compile imports."""
    with tempfile.TemporaryDirectory(prefix="graphnet-compile-") as cache:
        run_child(name, cache, bytecode)


def medians(runs: list[dict]) -> dict:
    phases = {p for r in runs for p in r["phases"]}
    return {"total": statistics.median(r["total"] for r in runs),
            "cpu": statistics.median(r.get("cpu", 0.0) for r in runs),
            "phases": {p: statistics.median(r["phases"].get(p, 0.0) for r in runs) for p in phases}}


def table(results: dict[str, dict[str, dict]], rounds: int) -> str:
    columns = list(PHASES) + ["build"]
    lines = [f"Compile time in ms (medians of {rounds} rounds, each state in a fresh process)", "",
             "| config | state | total | cpu | " + " | ".join(columns) + " |", "|---" * (len(columns) + 4) + "|"]
    for name, states in results.items():
        for state, m in states.items():
            target = TARGETS.get(name, {}).get(state)
            total = f"{m['total'] * 1e3:.0f}" + (f" (target {target * 1e3:.0f})" if target else "")
            cells = [f"{m['phases'][p] * 1e3:.1f}" if p in m["phases"] else "-" for p in columns]
            lines.append(f"| {name} | {state} | {total} | {m['cpu'] * 1e3:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graphnet bench --compile", description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=list(DEFAULT_CONFIGS), help="grid rows (default: tiny small "
                                                                                    "medium)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per configuration (default 5)")
    parser.add_argument("--json", help="write the raw measurements here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    unknown = [c for c in args.configs if c not in GRID]
    if unknown or args.rounds < 1:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}" if unknown else "--rounds must be >= 1")
    runs: dict[str, dict[str, list]] = {name: {s: [] for s in STATES} for name in args.configs}
    with tempfile.TemporaryDirectory(prefix="graphnet-bytecode-") as bytecode:
        warm_up(args.configs[0], bytecode)
        for _ in range(args.rounds):  # configurations interleaved, so machine drift hits all alike
            for name in args.configs:
                for state, result in one_round(name, bytecode).items():
                    runs[name][state].append(result)
    results = {name: {s: medians(r) for s, r in states.items()} for name, states in runs.items()}
    print(table(results, args.rounds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
