"""Training-step benchmark of the convolutional configurations of BENCHMARKS.md (lenet, cifar):
graphnet's LLVM step against PyTorch eager (NCHW) and a JAX jit of the whole step (NHWC, donated
buffers), interleaved in one process, one thread each (set before the libraries load). Reports the
median per-step time (min-max over the repeats), GFLOP/s at BENCHMARKS.md's FLOP count and the share
of one core's FMA peak (native/fma_peak.c).

    GRAPHNET_NUM_THREADS=1 python -m graphnet.bench.micro.cnn [lenet cifar] [--repeats 7]
"""
from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np  # noqa: E402

from ..ceilings import FmaPeak  # noqa: E402
from ..convnets import NETS, ConvNet, data, graphnet_function, initial_weights, jax_step, torch_step  # noqa: E402
from .step import per_step  # noqa: E402


def graphnet_step(net: ConvNet, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray):
    step = graphnet_function(net, weights)
    return lambda: step(x=x, y=y)


SYSTEMS = {"graphnet": graphnet_step, "torch": torch_step, "jax": jax_step}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nets", nargs="*", default=list(NETS), choices=list(NETS))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    peak = max(FmaPeak.calibrated(1).gflops() for _ in range(3))
    print(f"one core's FMA peak {peak:.1f} GFLOP/s; threads: graphnet {os.environ.get('GRAPHNET_NUM_THREADS', '?')}, "
          f"torch 1, jax 1")
    results = {}
    for name in args.nets:
        net = NETS[name]
        weights, (x, y) = initial_weights(net), data(net)
        steps = {}
        for system, make in SYSTEMS.items():
            try:
                steps[system] = make(net, weights, x, y)
            except ImportError as e:
                print(f"{system}: not installed ({e})")
        times = {s: [] for s in steps}
        for _ in range(args.repeats):  # interleaved: machine drift hits every system alike
            for system, step in steps.items():
                times[system].append(per_step(step, 1)[0])
        print(f"\n{name}: {net.flops / 1e6:.0f} MFLOP/step, batch {net.batch}")
        for system, ts in times.items():
            median = float(np.median(ts))
            gflops = net.flops / median / 1e9
            print(f"  {system:9s} {median * 1e3:8.2f} ms ({min(ts) * 1e3:.2f}-{max(ts) * 1e3:.2f})  "
                  f"{gflops:6.1f} GFLOP/s  {100 * gflops / peak:5.1f}% of peak")
            results[(name, system)] = median
    return results


if __name__ == "__main__":
    main()
