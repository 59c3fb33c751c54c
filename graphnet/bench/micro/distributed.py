"""Data-parallel scaling: the grid's medium and large steps on 1 and 2 MPI ranks (one thread each),
measured, and an alpha-beta cost model of the same steps on up to 64 nodes.

Measured per configuration (the grid's batch per rank: weak scaling, as data-parallel jobs run; step
and allreduce times are the fastest of the repeats, the variants taking turns so that a disturbance
of the shared machine hits each alike; kernel times the profile's medians):
- `plain`: the step without communication (each rank's compute alone);
- `in-step` (design a): the LLVM step with its bucketed allreduces (codegen/collectives.py: the
  runtime's ring, progress calls between kernels); `exposed` = in-step - plain; its profile's
  `waits` is the time inside the start, progress and wait calls; with one rank the step has no calls
  (World.reduce_gradients: nothing to reduce), so in-step is the plain step;
- `no progress`: the same step without the progress calls (`collectives.PROGRESS = False`);
- `MPI_Iallreduce`: the in-step step with its buckets reduced by Open MPI's MPI_Iallreduce (in place)
  instead of the runtime's ring (`graphnet_collectives_use_mpi`);
- `alone`: the same buckets reduced by blocking in-place MPI_Allreduce calls (Open MPI's tuned
  choice) with nothing else running: the communication to hide; `overlap` = 1 - exposed / alone;
- `split` (design b): a gradients-only step, one host-side allreduce (mpi4py) of all gradients, then
  an update step fed with them: the cost of cutting the step at a bucket boundary.
And the allreduce latency/bandwidth between the ranks (alpha, beta: t = alpha + beta * bytes).

The model replays the 2-rank in-step profile's kernels in order (its compute kernels: each rank's
compute while the other rank computes too): a bucket enters a serial link when its start kernel
runs, takes T(bytes, p) there, and its wait kernel blocks until it is done. T is ring (2(p-1) alpha
+ 2 (p-1)/p bytes/B) or tree (binomial reduce then broadcast: 2 log2(p) (alpha + bytes/B)).
Assumptions: one rank per node, the network's alpha and bandwidth B as stated, communication
progressing in the background (a NIC or progress thread), the reduction's arithmetic free.

    python -m graphnet.bench.micro.distributed [medium large] [--repeats 30] [--out docs/benchmarks]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..grid import build_grid_model
from ..peers import GRID, grid_data

NETWORKS = {"25 Gb/s": (25e9 / 8, 5e-6), "100 Gb/s": (100e9 / 8, 5e-6)}  # bytes/s, alpha (s) per message
NODES = (1, 2, 4, 8, 16, 32, 64)
SIZES = [4 << k for k in range(0, 22, 3)]  # 4 B .. 8 MiB


# ---- the cost model ------------------------------------------------------------------------
def ring_seconds(nbytes: int, p: int, bandwidth: float, alpha: float) -> float:
    """Ring allreduce: reduce-scatter then allgather, 2(p-1) steps of nbytes/p each."""
    return 0.0 if p == 1 else 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes / bandwidth


def tree_seconds(nbytes: int, p: int, bandwidth: float, alpha: float) -> float:
    """Binomial-tree reduce then broadcast: 2 ceil(log2 p) steps of the whole message."""
    return 0.0 if p == 1 else 2 * math.ceil(math.log2(p)) * (alpha + nbytes / bandwidth)


@dataclass(frozen=True)
class Kernel:
    kind: str  # compute | start | wait | progress (the model ignores progress calls)
    seconds: float
    bucket: int = -1
    nbytes: int = 0


def model_step(kernels: list[Kernel], allreduce: Callable[[int], float]) -> float:
    """The step's time when bucket b's allreduce takes allreduce(bytes) on a serial link (see above)."""
    clock, link, done = 0.0, 0.0, {}
    for k in kernels:
        if k.kind == "start":
            link = max(link, clock) + allreduce(k.nbytes)
            done[k.bucket] = link
        elif k.kind == "wait":
            clock = max(clock, done[k.bucket])
        clock += k.seconds if k.kind == "compute" else 0.0
    return clock


def efficiency(kernels: list[Kernel], p: int, network: str, algorithm: str) -> float:
    """Weak-scaling efficiency: compute time over the modelled step time on p nodes."""
    bandwidth, alpha = NETWORKS[network]
    cost = ring_seconds if algorithm == "ring" else tree_seconds
    compute = sum(k.seconds for k in kernels if k.kind == "compute")
    return compute / model_step(kernels, lambda n: cost(n, p, bandwidth, alpha))


# ---- measurement (one process per rank, under mpirun) -----------------------------------------
def _best_seconds(fn: Callable[[], Any], repeats: int, barrier: Callable[[], None]) -> float:
    """The fastest of `repeats` calls, each after a barrier (on a shared machine the fastest is the
    least disturbed; medians mostly measure the other users)."""
    return _taking_turns({"fn": fn}, repeats, barrier)["fn"]


def _taking_turns(fns: dict[str, Callable[[], Any]], repeats: int, barrier: Callable[[], None]) -> dict[str, float]:
    """Each function's fastest of `repeats` calls, the functions taking turns, each call after a
    barrier; each round in a shuffled order (the same on every rank: its seed is the round), so that
    no function always finds the caches as one other function left them."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for i in np.random.default_rng(r).permutation(len(names)):
            fn = fns[names[i]]
            barrier()
            started = time.perf_counter()
            fn()
            times[names[i]].append(time.perf_counter() - started)
    return {name: min(t) for name, t in times.items()}


def _split_step(name: str):
    """Design b: (gradients step, update step, gradient names) without collectives in them."""
    import graphnet as gn
    from ..grid import ACTIVATIONS, LOSSES, _optimizer
    from ..peers import grid_params
    config = GRID[name]
    with gn.Graph():
        x, y = gn.placeholder("x", (None, config.layers[0])), gn.placeholder("y", (None, config.layers[-1]))
        params, h = [], x
        for i, (w, b) in enumerate(grid_params(config), start=1):
            params += [gn.variable(f"W{i}", w), gn.variable(f"b{i}", b)]
            h = h @ params[-2] + params[-1]
            h = ACTIVATIONS[config.activation](h) if i < len(config.layers) - 1 else h
        loss = LOSSES[config.loss](h, y)
        grads = gn.compile([loss] + gn.gradients(loss, params))
        fed = [gn.placeholder(f"g{i}", p.shape) for i, p in enumerate(params)]
        apply = gn.compile([], updates=_optimizer("adam").apply_gradients(list(zip(fed, params))))
    return grads, apply


def _profile(fn: Any, feeds: dict, repeats: int) -> list[Kernel]:
    lp = fn.executable.lp
    profile = fn.profile(feeds, repeats)
    buckets: dict[int, int] = {}
    kernels = []
    for k, t in zip(lp.kernels, profile.kernels):
        if k.call is None:
            kernels.append(Kernel("compute", t.seconds))
        elif k.call.op == "allreduce_progress":
            kernels.append(Kernel("progress", t.seconds))
        else:
            bucket = buckets.setdefault(k.call.request, len(buckets))
            nbytes = sum(lp.buffers[s].elements(0) * lp.buffers[s].dtype.itemsize for s in k.call.srcs)
            kernels.append(Kernel("start" if k.call.op.endswith("start") else "wait", t.seconds, bucket, nbytes))
    return kernels


def worker(names: list[str], repeats: int, out: str) -> None:
    """Runs on every rank: the measurements above, written by rank 0 as JSON."""
    from codegen import collectives
    import graphnet.distributed as dist
    from mpi4py import MPI
    from graphnet.optim import base
    w = dist.init()  # first: every step is built in the process as MPI left it (its allocator hooks)
    reduction, base.GRADIENT_REDUCTION = base.GRADIENT_REDUCTION, None  # optimizers that do not reduce
    try:
        plain = {n: build_grid_model(n) for n in names}
        split = {n: _split_step(n) for n in names}
    finally:
        base.GRADIENT_REDUCTION = reduction
    comm = w.comm
    result: dict[str, Any] = {"ranks": w.size, "configs": {}}
    for n in names:
        config, reduced = GRID[n], build_grid_model(n)
        collectives.PROGRESS = False
        try:
            unprogressed = build_grid_model(n)
        finally:
            collectives.PROGRESS = True
        x, y = grid_data(config, seed=w.rank)
        feeds = {"x": x, "y": y}
        kernels = _profile(reduced.step, feeds, repeats)
        for other in (plain[n], unprogressed):  # the same history as the profiled step before the timing
            other.step.profile(feeds, repeats)
        buffers = {k.bucket: np.ones(k.nbytes // 4, np.float32) for k in kernels if k.kind == "start"}

        def alone() -> None:
            for b in buffers.values():
                comm.Allreduce(MPI.IN_PLACE, b)

        grads, apply = split[n]

        def split_step() -> None:
            values = grads(**feeds)[1:]
            flat = np.concatenate([v.ravel() for v in values])
            comm.Allreduce(flat.copy(), flat)
            parts = np.split(flat / w.size, np.cumsum([v.size for v in values])[:-1])
            apply(**{f"g{i}": p.reshape(v.shape) for i, (p, v) in enumerate(zip(parts, values))})

        library = collectives.RUNTIME.library if w.size > 1 else None

        def with_mpi_iallreduce() -> None:  # the same step, its buckets reduced by Open MPI's MPI_Iallreduce
            library.graphnet_collectives_use_mpi(1)
            reduced.step(**feeds)
            library.graphnet_collectives_use_mpi(0)

        timed = _taking_turns({"plain": lambda: plain[n].step(**feeds), "in_step": lambda: reduced.step(**feeds),
                               "no_progress": lambda: unprogressed.step(**feeds),
                               "mpi_iallreduce": with_mpi_iallreduce if library else lambda: reduced.step(**feeds),
                               "alone": alone, "split": split_step}, repeats, comm.Barrier)
        result["configs"][n] = {**timed, "kernels": [vars(k) for k in kernels],
                                "buckets": [k.nbytes for k in kernels if k.kind == "start"]}
    result["allreduce"] = {s: _best_seconds(lambda s=s: comm.Allreduce(np.ones(s // 4, np.float32),
                                                                          np.empty(s // 4, np.float32)),
                                              repeats, comm.Barrier) for s in SIZES}
    if w.rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)


# ---- the driver ----------------------------------------------------------------------------
def run_ranks(ranks: int, names: list[str], repeats: int) -> dict:
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "result.json")
        env = dict(os.environ, GRAPHNET_NUM_THREADS="1", OMP_NUM_THREADS="1")
        subprocess.run(["mpirun", *root, "--oversubscribe", "-n", str(ranks), sys.executable, "-m", "graphnet.bench.micro.distributed",
                        "--worker", out, "--repeats", str(repeats), *names], check=True, env=env)
        with open(out) as f:
            return json.load(f)


def alpha_beta(times: dict) -> tuple[float, float]:
    """t = alpha + beta * bytes, robust to a disturbed size: alpha the median time of messages up to
    2 KiB, beta the median of (t - alpha) / bytes over messages from 16 KiB."""
    alpha = float(np.median([t for s, t in times.items() if int(s) <= 2048]))
    beta = float(np.median([(t - alpha) / int(s) for s, t in times.items() if int(s) >= 16384]))
    return alpha, beta


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} B"


def report(one: dict, two: dict) -> tuple[str, dict]:
    alpha, beta = alpha_beta(two["allreduce"])
    measured = ", ".join(f"{_size(int(s))} {t * 1e3:.3f} ms" for s, t in two["allreduce"].items())
    lines = [f"Allreduce between the 2 local ranks (fastest of the repeats): {measured}; fit: alpha "
             f"{alpha * 1e6:.1f} us, beta {beta * 1e9:.3f} ns/B ({1 / beta / 1e9:.2f} GB/s).", "",
             "| config | ranks | plain step ms | in-step ms | exposed: in-step - plain (of plain) | no progress ms "
             "(exposed) | MPI_Iallreduce ms (exposed) | waits in profile ms (median) | comm alone ms | overlap: 1 - "
             "exposed / alone | split step ms | buckets (KiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in (one, two):
        for n, r in result["configs"].items():
            waits = sum(k["seconds"] for k in r["kernels"] if k["kind"] != "compute")
            added = r["in_step"] - r["plain"]
            variants = " | ".join(f"{r[v] * 1e3:.2f} ({(r[v] - r['plain']) / r['plain']:.0%})"
                                  for v in ("no_progress", "mpi_iallreduce"))
            overlap = f"{1 - added / r['alone']:.0%}" if result["ranks"] > 1 else "-"
            lines.append(f"| {n} | {result['ranks']} | {r['plain'] * 1e3:.2f} | {r['in_step'] * 1e3:.2f} | "
                         f"{added * 1e3:.2f} ({added / r['plain']:.0%}) | {variants} | {waits * 1e3:.2f} | "
                         f"{r['alone'] * 1e3:.2f} | "
                         f"{overlap} | {r['split'] * 1e3:.2f} | {', '.join(str(b // 1024) for b in r['buckets'])} |")
    curves: dict = {}
    lines += ["", "Modelled weak-scaling efficiency (compute / step), from the 2-rank profile:", "",
              "| config | network | allreduce | " + " | ".join(f"{p} nodes" for p in NODES[1:]) + " |",
              "|---|---|---|" + "---|" * (len(NODES) - 1)]
    for n, r in two["configs"].items():
        kernels = [Kernel(**k) for k in r["kernels"]]
        for network in NETWORKS:
            for algorithm in ("ring", "tree"):
                values = [efficiency(kernels, p, network, algorithm) for p in NODES]
                curves[(n, network, algorithm)] = values
                lines.append(f"| {n} | {network} | {algorithm} | " + " | ".join(f"{v:.0%}" for v in values[1:]) + " |")
    return "\n".join(lines) + "\n", curves


def plot(curves: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (n, network, algorithm), values in curves.items():
        ax.plot(NODES, values, marker="o", linestyle="-" if algorithm == "ring" else "--",
                label=f"{n}, {network}, {algorithm}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(NODES, [str(p) for p in NODES])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("nodes (one rank each, grid batch per rank)")
    ax.set_ylabel("modelled scaling efficiency")
    ax.axhline(0.85, color="grey", linewidth=0.5)
    ax.axhline(0.75, color="grey", linewidth=0.5)
    ax.legend(fontsize=7)
    ax.set_title("graphnet data-parallel step, alpha-beta model (alpha 5 us)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=["medium", "large"])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default=None, help="folder for scaling.md and scaling.png")
    parser.add_argument("--from-json", default=None, help="report a saved scaling.json instead of measuring")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.configs, args.repeats, args.worker)
        return
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        one, two = saved["1"], saved["2"]
    else:
        one, two = (run_ranks(r, args.configs, args.repeats) for r in (1, 2))
    if args.out and not args.from_json:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "scaling.json"), "w") as f:
            json.dump({"1": one, "2": two}, f)
    text, curves = report(one, two)
    print(text)
    if args.out:
        with open(os.path.join(args.out, "scaling.md"), "w") as f:
            f.write(f"`python -m graphnet.bench.micro.distributed {' '.join(args.configs)} --repeats {args.repeats}`"
                    f"\n\n{text}")
        plot(curves, os.path.join(args.out, "scaling.png"))


if __name__ == "__main__":
    main()
