"""Where a compiled step's time goes: the time of each native kernel inside the step.

The LLVM backend's `graphnet_step_profiled` is the ordinary step with the monotonic clock read before
the first kernel and after each one, so every kernel is timed where it runs: after the kernels before
it, with the caches they left (a kernel timed alone, repeatedly, is faster). Each time includes one
clock read (a one-element kernel takes tens of nanoseconds). The profiled steps train like ordinary
calls; `Function.profile` puts every variable back afterwards, so profiling does not change the model.

    prof = step.profile(feeds)      # Function.profile; or `graphnet profile --config medium|lenet|...`
    print(prof)                     # a table: kernel, median us, share, GFLOP/s, nodes and source lines

GFLOP/s is shown for matrix products (2 M N K) and convolutions and their gradients (Kernel.flops: the
useful count of BENCHMARKS.md, not the taps a stride or the padding skips); `graphnet profile` adds each
one's share of the FMA peak measured on the step's threads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class KernelTime:
    """One kernel of the step: its name (`k<i>_<ops>`, as in the loop IR and the generated code), its
    median time, the FLOPs of its matrix product at this batch (None for other kernels), and the graph
    nodes it stores with the user's source lines that created them."""

    name: str
    seconds: float
    flops: int | None
    nodes: tuple[str, ...]
    sources: tuple[str, ...]

    @property
    def gflops(self) -> float | None:
        return self.flops / self.seconds / 1e9 if self.flops and self.seconds > 0 else None


@dataclass(frozen=True)
class Profile:
    """The kernels of one step in execution order; `step` is the median whole step (first clock read
    to last), `batch` the batch size the feeds had."""

    kernels: tuple[KernelTime, ...]
    step: float
    batch: int
    repeats: int
    peak: float | None = None  # the FMA peak in GFLOP/s on the step's threads: adds a "of peak" column

    def table(self, top: int | None = None) -> str:
        """A markdown table, kernels in execution order (`top`: only the slowest ones)."""
        shown = sorted(self.kernels, key=lambda k: -k.seconds)[:top] if top else self.kernels
        lines = [f"step: {self.step * 1e6:.1f} us median of {self.repeats} (batch {self.batch}), "
                 f"{len(self.kernels)} kernels" + (f", the {len(shown)} slowest:" if top else ":"),
                 "", "| kernel | us | share | GFLOP/s |" + (" of peak |" if self.peak else "") + " stores (created at) |",
                 "|---|---|---|---|" + ("---|" if self.peak else "") + "---|"]
        for k in shown:
            share = k.seconds / self.step if self.step > 0 else 0.0
            rate = f"{k.gflops:.1f}" if k.gflops is not None else ""
            of_peak = (f" {k.gflops / self.peak:.0%} |" if k.gflops is not None else " |") if self.peak else ""
            lines.append(f"| {k.name} | {k.seconds * 1e6:.2f} | {share:.1%} | {rate} |{of_peak} {', '.join(k.nodes)} "
                         f"({', '.join(k.sources)}) |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def profile_step(backend: Any, arrays: list[np.ndarray], batch: int, repeats: int) -> Profile:
    """Run the LLVM backend's profiled step `repeats` times on checked feeds (after one warm-up step);
    the caller restores the variables (the steps train)."""
    if backend.check:
        raise TypeError("profiling needs the llvm backend compiled without check_numerics")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    lp = backend.lp
    clock = np.zeros(len(lp.kernels) + 1, np.int64)
    samples = []
    for _ in range(repeats + 1):
        backend.run(arrays, batch, clock)
        samples.append(np.diff(clock))
    times = np.median(np.array(samples[1:]), axis=0) * 1e-9
    steps = [s.sum() for s in samples[1:]]
    kernels = tuple(KernelTime(k.name, float(t), _flops(k, batch), tuple(s.node for s in k.stores),
                               tuple(dict.fromkeys(s.source for s in k.stores)))
                    for k, t in zip(lp.kernels, times))
    return Profile(kernels, float(np.median(steps)) * 1e-9, batch, repeats)


def _flops(kernel: Any, batch: int) -> int | None:
    """A convolution kernel's useful FLOPs (Kernel.flops), or 2 M N K of a kernel whose reduction is a
    matrix product (a None extent is the batch)."""
    if kernel.flops is not None:
        coef, nexp = kernel.flops
        return coef * batch ** nexp
    red = kernel.reduce
    if red is None or red.contraction is None:
        return None
    extents = [batch if d is None else d for d in kernel.domain]
    return 2 * int(np.prod(extents))
