"""Before/after per kernel: `step.profile` of a grid model's or convnet's LLVM step from two or more
source trees, one long-lived worker process per tree (compiled once), the trees alternating round by
round (in reversed order every other round) so machine drift hits them alike; prints each kernel's
median, min and max and its ratio to the first tree's.

Kernels are matched by what they compute (`k12_conv2d_relu` -> `conv2d_relu#2`, the second such kernel),
as kernel numbers differ between trees; the kernels copying into or zeroing borders (names ending in
`border`) are summed.

    python -m graphnet.bench.micro.abprofile /tmp/before . --config cifar --threads 2 --rounds 8
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

WORKER = """
import json, sys
name = sys.argv[1]
try:
    from graphnet.bench.convnets import NETS, data, graphnet_function, initial_weights
except ImportError:
    NETS = {}
if name in NETS:
    net = NETS[name]
    x, y = data(net)
    feeds, step = dict(x=x, y=y), graphnet_function(net, initial_weights(net))
else:
    from graphnet.bench.grid import build_grid_model
    from graphnet.bench.peers import GRID, grid_data
    model = build_grid_model(name, "llvm")
    feeds, step = model.feeds(*grid_data(GRID[name])), model.step
for _ in range(3):
    step(**feeds)
print("ready", flush=True)
for line in sys.stdin:
    prof = step.profile(feeds, repeats=int(line))
    print(json.dumps({"step": prof.step, **{k.name: k.seconds for k in prof.kernels}}), flush=True)
"""


def roles(times: dict) -> dict:
    """Kernel times keyed by what the kernel computes (`conv2d_relu#2`), border copies summed."""
    out, seen = {"step": times["step"], "borders (all)": 0.0}, {}
    for name, seconds in times.items():
        if name == "step":
            continue
        base = re.sub(r"^k\d+_", "", name)
        if base.endswith("border"):
            out["borders (all)"] += seconds
            continue
        seen[base] = seen.get(base, 0) + 1
        out[f"{base}#{seen[base]}"] = seconds
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", help="source trees (git worktrees); ratios are to the first")
    parser.add_argument("--config", default="cifar", help="a grid model or lenet, cifar")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=8, help="profiled steps per round")
    parser.add_argument("--min-us", type=float, default=100.0, help="hide kernels under this median")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as caches:  # an empty compile cache per tree
        results = run(args, caches)
    report(args, results)


def run(args: argparse.Namespace, caches: str) -> list[list[dict]]:
    """Each tree's `roles` per round."""
    workers = []
    for i, tree in enumerate(args.trees):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), GRAPHNET_NUM_THREADS=args.threads,
                   GRAPHNET_CACHE_DIR=os.path.join(caches, str(i)))
        worker = subprocess.Popen([sys.executable, "-c", WORKER, args.config], cwd=tree, env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if worker.stdout.readline().strip() != "ready":
            raise SystemExit(f"{tree}: the worker did not start")
        workers.append(worker)
    results: list[list[dict]] = [[] for _ in workers]
    for r in range(args.rounds):
        for i in (range(len(workers)) if r % 2 == 0 else reversed(range(len(workers)))):
            workers[i].stdin.write(f"{args.repeats}\n")
            workers[i].stdin.flush()
            results[i].append(roles(json.loads(workers[i].stdout.readline())))
    for worker in workers:
        worker.stdin.close()
        worker.wait()
    return results


def report(args: argparse.Namespace, results: list[list[dict]]) -> None:
    load = open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"
    print(f"{args.config}, {args.threads} thread(s), {args.rounds} rounds x {args.repeats} steps, load {load}; "
          f"us: median [min-max], ratio to the first tree")
    for key in results[0][0]:
        if not all(key in rounds[0] for rounds in results):
            continue
        medians = [statistics.median(d[key] for d in rounds) for rounds in results]
        if key != "step" and medians[0] * 1e6 < args.min_us:
            continue
        cells = "  ".join(f"{m * 1e6:9.0f} [{min(d[key] for d in rounds) * 1e6:.0f}-"
                          f"{max(d[key] for d in rounds) * 1e6:.0f}]" for m, rounds in zip(medians, results))
        ratios = " ".join(f"{m / medians[0]:.3f}" for m in medians[1:])
        print(f"{key[:36]:36s} {cells}  {ratios}")


if __name__ == "__main__":
    main()
