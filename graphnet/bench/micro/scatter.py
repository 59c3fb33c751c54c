"""scatter_add (take's gradient, so every Embedding's) by table size: an Embedding's SGD step with
64-wide rows and a batch of ids of shape (32, 20), on the LLVM backend (on however many threads
GRAPHNET_NUM_THREADS gives it) and the numpy backend.

Per table size: the median milliseconds per call of each backend (`step.per_step`).

    GRAPHNET_NUM_THREADS=1 python -m graphnet.bench.micro.scatter [--rows 1000 10000] [--repeats 5]
"""
from __future__ import annotations

import argparse

import numpy as np

import graphnet as gn

from .step import per_step

WIDTH, IDS = 64, (32, 20)


def embedding_step(rows: int, backend: str):
    """An Embedding's SGD step (lookup, a loss, the weight's scatter-added gradient, the update),
    compiled, and a call of it on fixed random ids."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, rows, size=IDS).astype(np.int64)
    table = gn.variable(f"table{rows}_{backend}", rng.normal(size=(rows, WIDTH)).astype(np.float32))
    i = gn.placeholder("i", (None,) + IDS[1:], np.int64)
    loss = gn.sum(gn.square(gn.take(table, i, 0)))
    fn = gn.compile([loss], updates=gn.optim.SGD(lr=1e-6).minimize(loss), backend=backend)
    return lambda: fn(i=ids)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"{'rows':>7} {'llvm ms':>9} {'numpy ms':>9}")
    for rows in args.rows:
        llvm_ms, numpy_ms = (per_step(embedding_step(rows, b), args.repeats)[0] * 1e3 for b in ("llvm", "numpy"))
        print(f"{rows:>7} {llvm_ms:>9.3f} {numpy_ms:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
