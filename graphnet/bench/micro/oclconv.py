"""OpenCL conv kernels flat against tiled (issue #15): each convolution kernel of the lenet and cifar
training steps (forward, input gradient, filter gradient with its fused Adam update) timed in the
same process, rendered flat (a work-item per output element) and tiled (the implicit GEMM of
codegen/opencl/schedule.py), interleaved, and the whole step. Reports per kernel the median time of
one launch (min-max over the repeats) and tiled/flat, their sum, and the median step. On pocl (a
CPU device) this shows the tiled rendering is sane, not what a GPU would gain. pocl's threads:
POCL_MAX_PTHREAD_COUNT (default here 1).

    python -m graphnet.bench.micro.oclconv [lenet cifar] [--repeats 7] [--launches 5]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("POCL_MAX_PTHREAD_COUNT", "1")

import numpy as np  # noqa: E402

from codegen.opencl import schedule  # noqa: E402

from ..convnets import NETS, ConvNet, data, graphnet_function, initial_weights  # noqa: E402

CONV_OPS = ("conv2d", "conv2d_input_grad", "conv2d_filter_grad")


def compiled_step(net: ConvNet, tiled: bool):
    """The net's OpenCL training step (a callable of no arguments) with its convs rendered tiled or
    flat, and its backend; run once (kernel arguments set)."""
    saved = schedule.TILE_CONVS
    schedule.TILE_CONVS = tiled
    try:
        fn = graphnet_function(net, initial_weights(net), backend="opencl")
    finally:
        schedule.TILE_CONVS = saved
    x, y = data(net)
    fn(x=x, y=y)
    return (lambda: fn(x=x, y=y)), fn.executable


def conv_kernels(backend) -> dict[str, int]:
    """Conv kernel name -> its index in the step."""
    return {k.name: i for i, k in enumerate(backend.lp.kernels) if any(op in k.name for op in CONV_OPS)}


def launch_seconds(backend, index: int, launches: int) -> float:
    """Seconds per launch of kernel `index`, over `launches` back-to-back launches."""
    cl, queue = backend.cl, backend.rt.queue
    kernel, (global_size, local_size) = backend.kernels[index], backend.sizes[index]
    queue.finish()
    start = time.perf_counter()
    for _ in range(launches):
        cl.enqueue_nd_range_kernel(queue, kernel, global_size, local_size)
    queue.finish()
    return (time.perf_counter() - start) / launches


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nets", nargs="*", default=list(NETS), choices=list(NETS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--launches", type=int, default=5)
    args = parser.parse_args(argv)
    results = {}
    for name in args.nets:
        net = NETS[name]
        compiled = {"flat": compiled_step(net, False), "tiled": compiled_step(net, True)}
        steps = {form: backend for form, (_, backend) in compiled.items()}
        print(f"\n{name} b{net.batch} on {steps['tiled'].rt.description}, POCL_MAX_PTHREAD_COUNT="
              f"{os.environ.get('POCL_MAX_PTHREAD_COUNT')}")
        kernels = conv_kernels(steps["tiled"])
        assert kernels == conv_kernels(steps["flat"])
        times = {(kernel, form): [] for kernel in [*kernels, "step"] for form in steps}
        for _ in range(args.repeats):  # interleaved: machine drift hits both forms alike
            for kernel, index in kernels.items():
                for form, backend in steps.items():
                    times[kernel, form].append(launch_seconds(backend, index, args.launches))
            for form, (step, _) in compiled.items():
                start = time.perf_counter()
                step()
                times["step", form].append(time.perf_counter() - start)
        total = {form: 0.0 for form in steps}
        for kernel, index in kernels.items():
            med = {form: float(np.median(times[kernel, form])) for form in steps}
            for form in steps:
                total[form] += med[form]
            spans = "  ".join(f"{form} {med[form] * 1e3:8.2f} ms ({min(times[kernel, form]) * 1e3:.2f}-"
                              f"{max(times[kernel, form]) * 1e3:.2f})" for form in steps)
            print(f"  {kernel:40s} {spans}  tiled/flat {med['tiled'] / med['flat']:.2f}")
            print(f"    {steps['tiled'].lp.kernels[index].schedule}")
        print(f"  {'all conv kernels':40s} flat {total['flat'] * 1e3:8.2f} ms  tiled {total['tiled'] * 1e3:8.2f} ms  "
              f"tiled/flat {total['tiled'] / total['flat']:.2f}")
        step = {form: float(np.median(times["step", form])) for form in steps}
        print(f"  {'the whole training step':40s} flat {step['flat'] * 1e3:8.2f} ms  "
              f"tiled {step['tiled'] * 1e3:8.2f} ms  tiled/flat {step['tiled'] / step['flat']:.2f}")
        results[name] = {"times": times, "total": total}
    return results


if __name__ == "__main__":
    main()
