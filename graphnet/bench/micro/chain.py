"""Compile cost of a chain of multi-use ops (fuzz finding 0:4035): silu(elu(.)) `depth` deep on a
variable, its mean as the loss, one SGD step. elu and silu use their argument more than once, so
the fused kernel's expressions share subexpressions; compile cost must grow linearly with depth.

Per depth: the seconds to lower the program to loop IR (with the shared loop passes), the loop IR's
characters, and the seconds `gn.compile` takes on LLVM (an empty disk cache), each time the least of
`--repeats` runs. Depths stop once one takes longer than `--budget` seconds (tree-shaped IR grew
~14x per step).

    python -m graphnet.bench.micro.chain [--depths 8] [--budget 30] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import graphnet as gn
from codegen.lower import lower


def chain(depth: int) -> tuple[gn.Node, list]:
    """The chain's loss and its SGD updates."""
    x = gn.variable(f"chain{depth}_x", np.ones((3, 4), np.float32))
    h = x
    for _ in range(depth):
        h = gn.silu(gn.elu(h, 0.3))
    loss = gn.mean(h)
    return loss, gn.optim.SGD(lr=0.1).minimize(loss)


def measure(depth: int, repeats: int) -> tuple[float, int, float]:
    """(lowering seconds, loop IR characters, LLVM compile seconds) at `depth`, the times the least of
    `repeats` (each compile with an empty disk cache)."""
    loss, updates = chain(depth)
    program = gn.compile([loss], updates=updates, backend="numpy").program  # after the graph passes
    lowering, compiling = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        lp, _ = lower(program)
        lowering.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory(prefix="graphnet-chain-") as cache:
            os.environ["GRAPHNET_CACHE_DIR"] = cache
            start = time.perf_counter()
            gn.compile([loss], updates=updates, backend="llvm")
            compiling.append(time.perf_counter() - start)
    return min(lowering), len(lp.to_text()), min(compiling)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, default=8)
    parser.add_argument("--budget", type=float, default=30.0, help="stop after a depth slower than this (s)")
    parser.add_argument("--repeats", type=int, default=3, help="times: the least of this many runs")
    args = parser.parse_args(argv)
    print(f"{'depth':>5} {'lower s':>9} {'loop IR chars':>14} {'llvm compile s':>15}")
    for depth in range(1, args.depths + 1):
        lowering, chars, compiling = measure(depth, args.repeats)
        print(f"{depth:>5} {lowering:>9.3f} {chars:>14,} {compiling:>15.3f}", flush=True)
        if lowering + compiling > args.budget:
            print(f"stopped: depth {depth} took over {args.budget:g} s")
            break


if __name__ == "__main__":
    main()
