"""Before/after: the LLVM training step of grid models and convnets (lenet, cifar) from two source
trees, each call in its own process, alternating per round so machine drift hits both alike; prints
medians and their ratio.

    git worktree add /tmp/before <commit>     # (build its C extension: python setup.py build_ext --inplace)
    python -m graphnet.bench.micro.ab /tmp/before . --threads 1 --rounds 4
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

MEASURE = """
import json, statistics, sys, time
try:
    from graphnet.bench.grid import build_grid_model
    from graphnet.bench.peers import GRID, grid_data
except ImportError:  # trees from before graphnet/bench/ existed
    from graphnet.grid import build_grid_model
    from graphnet.peers import GRID, grid_data
if sys.argv[1] in GRID:
    model = build_grid_model(sys.argv[1], "llvm")
    feeds, step = model.feeds(*grid_data(GRID[sys.argv[1]])), model.step
else:  # a convolutional configuration (graphnet/bench/convnets.py)
    from graphnet.bench.convnets import NETS, data, graphnet_function, initial_weights
    net = NETS[sys.argv[1]]
    x, y = data(net)
    feeds, step = dict(x=x, y=y), graphnet_function(net, initial_weights(net))
for _ in range(3):
    step(**feeds)
start, calls = time.perf_counter(), 0
while time.perf_counter() - start < 0.05:
    step(**feeds)
    calls += 1
loops, times = max(1, calls * 3), []
for _ in range(5):
    t = time.perf_counter()
    for _ in range(loops):
        step(**feeds)
    times.append((time.perf_counter() - t) / loops)
print(json.dumps(statistics.median(times)))
"""


def measure(tree: str, config: str, threads: str, cache: str) -> float:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), GRAPHNET_NUM_THREADS=threads, OMP_NUM_THREADS=threads,
               OPENBLAS_NUM_THREADS=threads, GRAPHNET_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", MEASURE, config], env=env, capture_output=True, text=True,
                         cwd=tempfile.gettempdir(), check=True)
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m graphnet.bench.micro.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("before", help="source tree (a git worktree) of the earlier version")
    p.add_argument("after", help="source tree of the later version")
    p.add_argument("--configs", default="tiny,small,medium,large,wide", help="grid models and/or lenet, cifar")
    p.add_argument("--threads", default="1")
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(argv)
    trees = {"before": args.before, "after": args.after}
    times: dict = {c: {k: [] for k in trees} for c in args.configs.split(",")}
    with tempfile.TemporaryDirectory() as caches:
        for r in range(args.rounds):
            for config in times:
                for name in (list(trees) if r % 2 == 0 else list(reversed(trees))):
                    cache = os.path.join(caches, name)
                    times[config][name].append(measure(trees[name], config, args.threads, cache))
    print(f"{args.threads} thread(s), median of {args.rounds} rounds\n")
    print("| config | before | after | after / before |\n|---|---|---|---|")
    for config, t in times.items():
        before, after = statistics.median(t["before"]), statistics.median(t["after"])
        show = (lambda s: f"{s * 1e6:.2f} us" if s < 1e-3 else f"{s * 1e3:.3f} ms")
        print(f"| {config} | {show(before)} | {show(after)} | {after / before:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
