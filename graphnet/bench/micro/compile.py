"""Compile time of the grid's training steps, by phase, in fresh processes.

For each grid configuration and round, three child processes each build the model
(`bench/grid.py`: graph construction, autodiff, Adam, then `gn.compile`) and report the seconds and
`Function.compile_seconds`, the breakdown by phase: `cold` with an empty cache directory,
`library warm` with a cache holding only what the first compile on a machine leaves for every later
model (`MACHINE_FOLDERS`, copied from the cold run: the GEMM library and the host CPU's description,
written together by that first compile), and `cached` with the cold run's whole cache. "shared
object" is linking the step's objects and GEMM routines into a shared object (where a linker
exists); in the cold and warm states the parallel section's wall time is split over LLVM
optimisation, object emission and GEMM routines in proportion to the worker jobs' own times. "build" is what no phase covers (graph construction,
autodiff, the Function's set-up, importing the compiler). Children import graphnet
from bytecode, as an installed graphnet does: the run keeps its own bytecode folder (filled by a
warm-up child), so that where the environment says not to write bytecode (PYTHONDONTWRITEBYTECODE)
"build" does not include compiling graphnet's Python sources in every child. "cpu" is the processor
time of the compile (the child and the worker processes it forked, user and system; the child waits
for the workers, which exit on their own after the compile, before reading it): on a shared
machine wall times grow with the load, CPU time much less, so a saving of CPU time is one that holds
whatever the load, while the wall time the worker processes save needs a free core. Medians over
the rounds; the machine may be shared.

With `--against DIR` (another source tree, such as a `git worktree add --detach DIR main`) each
round runs the three states from both trees, alternating which goes first, and the table shows both
and the ratio of this tree's medians to the other's (their children run the same program, `CHILD`,
on each tree's graphnet).

    python -m graphnet.bench.micro.compile [tiny small medium ...] [--rounds 5] [--against DIR]
    graphnet bench --compile [same arguments]
"""
from __future__ import annotations

import argparse
import json
import os
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
MACHINE_FOLDERS = ("gemm", "host")  # the cache's entries for the machine, not for one model


CHILD = """
import json, os, resource, sys, time
def cpu_seconds():  # this process and its exited children (the compile's workers), user and system
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
started = time.perf_counter()
from graphnet.bench.grid import build_grid_model
imported, cpu = time.perf_counter(), cpu_seconds()
model = build_grid_model(sys.argv[1])
total = time.perf_counter() - imported
try:  # the compile's worker processes exit on their own: wait for them, so that their CPU time counts
    while True:
        os.wait()
except ChildProcessError:
    pass
cpu = cpu_seconds() - cpu
phases = dict(model.step.compile_seconds)
phases["build"] = total - sum(phases.values())
print(json.dumps({"total": total, "cpu": cpu, "import": imported - started, "phases": phases,
                  "cache_hit": model.step.executable.cache_hit}))
"""
"""A child's program: build grid model argv[1] once and print its compile times and CPU seconds as JSON."""


def child_env(cache: str, bytecode: str) -> dict[str, str]:
    """A child's environment: the cache folder `cache`, Python's bytecode written to and read from
    the folder `bytecode`."""
    env = dict(os.environ, GRAPHNET_CACHE_DIR=cache, PYTHONPYCACHEPREFIX=bytecode)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_child(name: str, cache: str, bytecode: str, tree: str | None = None) -> dict:
    """One fresh process running `CHILD` on graphnet from `tree` (default: wherever this one's is)."""
    env, cwd = child_env(cache, bytecode), None
    if tree is not None:  # its graphnet first on the path, and no other in the working directory
        env["PYTHONPATH"], cwd = os.path.abspath(tree), tempfile.gettempdir()
    out = subprocess.run([sys.executable, "-c", CHILD, name], env=env, capture_output=True, text=True,
                         check=True, cwd=cwd)
    return json.loads(out.stdout.strip().splitlines()[-1])


def one_round(name: str, bytecode: str, tree: str | None = None) -> dict[str, dict]:
    """The three states of one configuration, each in a fresh process, in order cold, library warm, cached."""
    with tempfile.TemporaryDirectory(prefix="graphnet-compile-") as cold, \
            tempfile.TemporaryDirectory(prefix="graphnet-compile-lib-") as library:
        results = {"cold": run_child(name, cold, bytecode, tree)}
        for folder in MACHINE_FOLDERS:
            if os.path.isdir(os.path.join(cold, folder)):
                shutil.copytree(os.path.join(cold, folder), os.path.join(library, folder))
        results["library warm"] = run_child(name, library, bytecode, tree)
        results["cached"] = run_child(name, cold, bytecode, tree)
    return results


def warm_up(name: str, bytecode: str, tree: str | None = None) -> None:
    """One unrecorded compile that writes the bytecode of every module a compile imports."""
    with tempfile.TemporaryDirectory(prefix="graphnet-compile-") as cache:
        run_child(name, cache, bytecode, tree)


def medians(runs: list[dict]) -> dict:
    phases = {p for r in runs for p in r["phases"]}
    return {"total": statistics.median(r["total"] for r in runs),
            "cpu": statistics.median(r.get("cpu", 0.0) for r in runs),
            "phases": {p: statistics.median(r["phases"].get(p, 0.0) for r in runs) for p in phases}}


def table(results: dict[str, dict[str, dict]], rounds: int) -> str:
    columns = list(PHASES) + ["build"]
    lines = [f"Compile time in ms (medians of {rounds} rounds, each state in a fresh process; cpu: the "
             f"compile's processor time, its worker processes included)", "",
             "| config | state | total | cpu | " + " | ".join(columns) + " |", "|---" * (len(columns) + 4) + "|"]
    for name, states in results.items():
        for state, m in states.items():
            target = TARGETS.get(name, {}).get(state)
            total = f"{m['total'] * 1e3:.0f}" + (f" (target {target * 1e3:.0f})" if target else "")
            cells = [f"{m['phases'][p] * 1e3:.1f}" if p in m["phases"] else "-" for p in columns]
            lines.append(f"| {name} | {state} | {total} | {m['cpu'] * 1e3:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison(results: dict[str, dict[str, dict]], other: dict[str, dict[str, dict]], rounds: int) -> str:
    """`table`'s rows for this tree (`results`) and the other (`other`), each state followed by the
    ratios of this tree's medians to the other's."""
    lines = table({f"{name} (other)": other[name] for name in results} | {
        f"{name} (this)": states for name, states in results.items()}, rounds).splitlines()
    head, rows = lines[:4], lines[4:]
    by_key = {row.split(" | ")[0] + " | " + row.split(" | ")[1]: row for row in rows}
    out = list(head)
    for name, states in results.items():
        for state, m in states.items():
            o = other[name][state]
            out += [by_key[f"| {name} (other) | {state}"], by_key[f"| {name} (this) | {state}"],
                    f"| {name} this/other | {state} | {m['total'] / o['total']:.3f} | "
                    f"{m['cpu'] / o['cpu'] if o['cpu'] else float('nan'):.3f} |"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graphnet bench --compile", description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=list(DEFAULT_CONFIGS), help="grid rows (default: tiny small "
                                                                                    "medium)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per configuration (default 5)")
    parser.add_argument("--against", help="another source tree to measure alternately with this one")
    parser.add_argument("--json", help="write the raw measurements here")
    args = parser.parse_args(argv)
    unknown = [c for c in args.configs if c not in GRID]
    if unknown or args.rounds < 1:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}" if unknown else "--rounds must be >= 1")
    this = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    trees = {"this": None} if args.against is None else {"this": this, "other": args.against}
    runs = {t: {name: {s: [] for s in STATES} for name in args.configs} for t in trees}
    with tempfile.TemporaryDirectory(prefix="graphnet-bytecode-") as bytecode:
        for tree in trees.values():
            warm_up(args.configs[0], bytecode, tree)
        for r in range(args.rounds):  # configurations and trees interleaved, so machine drift hits all alike
            for name in args.configs:
                for t in (list(trees) if r % 2 == 0 else list(reversed(trees))):
                    for state, result in one_round(name, bytecode, trees[t]).items():
                        runs[t][name][state].append(result)
    results = {t: {name: {s: medians(r) for s, r in states.items()} for name, states in by.items()}
               for t, by in runs.items()}
    if args.against is None:
        print(table(results["this"], args.rounds))
    else:
        print(f"this: {this}\nother: {os.path.abspath(args.against)}\n")
        print(comparison(results["this"], results["other"], args.rounds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs if args.against else runs["this"], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
