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
from ..convnets import LR, BETAS, EPS, NETS, ConvNet, data, graphnet_function, initial_weights  # noqa: E402,F401
from .step import per_step  # noqa: E402

def graphnet_step(net: ConvNet, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray):
    step = graphnet_function(net, weights)
    return lambda: step(x=x, y=y)


def torch_step(net: ConvNet, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray):
    import torch
    torch.set_num_threads(1)
    F = torch.nn.functional
    params = [torch.tensor(w.transpose(3, 2, 0, 1) if w.ndim == 4 else w.T).contiguous().requires_grad_()
              for w in weights]
    opt = torch.optim.Adam(params, LR, BETAS, EPS)
    tx, ty = torch.tensor(x.transpose(0, 3, 1, 2)).contiguous(), torch.tensor(y)

    def step():
        opt.zero_grad(set_to_none=True)
        h, it = tx, iter(params)
        for item in net.convs:
            h = F.max_pool2d(h, 2) if item == "pool" else F.relu(F.conv2d(h, next(it), next(it), padding=item[2]))
        h = h.permute(0, 2, 3, 1).flatten(1)  # NHWC order, as the dense weights were drawn
        for i in range(len(net.dense)):
            h = F.linear(h, next(it), next(it))
            h = F.relu(h) if i < len(net.dense) - 1 else h
        F.cross_entropy(h, ty).backward()
        opt.step()
    return step


def jax_step(net: ConvNet, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray):
    import jax
    import jax.numpy as jnp

    def loss_fn(params, x, y):
        h, it = x, iter(params)
        for item in net.convs:
            if item == "pool":
                h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
            else:
                h = jax.lax.conv_general_dilated(h, next(it), (1, 1), item[2].upper(),
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
                h = jax.nn.relu(h + next(it))
        h = h.reshape(h.shape[0], -1)
        for i in range(len(net.dense)):
            h = h @ next(it) + next(it)
            h = jax.nn.relu(h) if i < len(net.dense) - 1 else h
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h), y[:, None], axis=1))

    def adam(state, x, y):
        params, m, v, t = state
        grads = jax.grad(loss_fn)(params, x, y)
        t = t + 1
        m = [BETAS[0] * a + (1 - BETAS[0]) * g for a, g in zip(m, grads)]
        v = [BETAS[1] * a + (1 - BETAS[1]) * g * g for a, g in zip(v, grads)]
        c1, c2 = 1 - BETAS[0] ** t, 1 - BETAS[1] ** t
        params = [p - LR / c1 * a / (jnp.sqrt(b) / jnp.sqrt(c2) + EPS) for p, a, b in zip(params, m, v)]
        return params, m, v, t

    fn = jax.jit(adam, donate_argnums=0)
    params = [jnp.asarray(w) for w in weights]
    box = [(params, [jnp.zeros_like(p) for p in params], [jnp.zeros_like(p) for p in params], jnp.float32(0))]
    jx, jy = jnp.asarray(x), jnp.asarray(y)

    def step():
        box[0] = fn(box[0], jx, jy)
        jax.block_until_ready(box[0][0])
    return step


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
