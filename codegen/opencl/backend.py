"""The OpenCL backend: the loop IR rendered to OpenCL C (render.py), run on one device.

Parameters and optimizer state live on the device across calls (one `DeviceCopy` per variable
and device, registered as the variable's mirror so `value` and `assign` stay coherent), constants
are uploaded once, temporaries share one arena buffer laid out by codegen/memory.py. A call
uploads the feeds, enqueues every kernel (arguments are set once; only N changes with the batch)
and reads the fetched buffers back. `check_numerics=True` compiles every node as its own kernel
and checks each result after its kernel ran. A call holds the step lock of the function's variables
(`graphnet.function.StepLock`): it owns the feed buffers, the arena, the kernels' arguments and the
variables' device copies until its results are read back.
"""
from __future__ import annotations

import numpy as np

from graphnet.errors import NumericsError
from graphnet.function import step_lock
from graphnet.program import Program

from ..loopir import LoopProgram
from ..loop_passes import loop_pass_texts
from ..lower import lower
from ..memory import plan_arena
from .render import render
from .schedule import loop_passes
from .runtime import device_copy, runtime

INITIAL_CAPACITY = 64


class OpenCLBackend:
    device_resident = True  # variables live on the device; host copies are synchronised through mirrors

    def __init__(self, program: Program, options, device: str | None = None):
        self.rt = rt = runtime(device)
        self.cl = rt.cl
        self.check = options.check_numerics
        self.lp, self.loop_records = lower(program, fuse=not self.check, loop_passes=loop_passes(rt.limits))
        self.source, self.launches, double = render(self.lp, rt.limits)
        if double and not rt.fp64:
            raise RuntimeError(f"this function computes in float64, which the OpenCL device {rt.device.name} does "
                               "not support (no cl_khr_fp64): use float32 or choose another device "
                               "(GRAPHNET_OPENCL_DEVICE)")
        self.program, self.cache_hit = rt.build(self.source)
        self.kernels = [self.cl.Kernel(self.program, launch.name) for launch in self.launches]
        variables = {n.attrs["name"]: n.attrs["var"] for n in program.variables}
        written = {s.buffer for k in self.lp.kernels for s in k.stores}
        self.fixed: dict[int, object] = {}  # buffer id -> device buffer that never moves
        self.copies, self.written = [], []  # (Variable, DeviceCopy) of the variables used / written
        for b in self.lp.buffers:
            if b.kind == "variable":
                var = variables[b.name]
                copy = device_copy(rt, var)
                self.copies.append((var, copy))
                if b.id in written:
                    self.written.append((var, copy))
                self.fixed[b.id] = copy.buffer
            elif b.kind == "constant":
                self.fixed[b.id] = rt.buffer(0, np.ascontiguousarray(self.lp.storage[b.id], b.dtype))
        self.batch = None
        self.lock = step_lock(program)
        self._layout(INITIAL_CAPACITY)

    # ---- buffers ------------------------------------------------------------------------
    def _layout(self, capacity: int) -> None:
        """(Re)allocate the arena and the feed buffers for batches up to `capacity`; set kernel arguments."""
        self.plan = plan_arena(self.lp, capacity)
        self.arena = self.rt.buffer(self.plan.nbytes)
        self.feeds = {b: self.rt.buffer(self.lp.buffers[b].elements(capacity) * self.lp.buffers[b].dtype.itemsize)
                      for b in self.lp.inputs}
        for kernel, launch in zip(self.kernels, self.launches):
            args = [np.int64(self.batch or 1)]
            if launch.temps:
                args.append(self.arena)
                args += [np.uint64(self.plan.offsets[b]) for b in launch.buffers[:launch.temps]]
            args += [self.feeds[b] if b in self.feeds else self.fixed[b] for b in launch.buffers[launch.temps:]]
            kernel.set_args(*args)

    def _set_batch(self, batch: int) -> None:
        self.batch = batch
        for kernel in self.kernels:
            kernel.set_arg(0, np.int64(batch))
        self.sizes = [(launch.global_size(batch), launch.local_size) for launch in self.launches]

    def read(self, buffer: int, batch: int) -> np.ndarray:
        """A fresh host array holding a buffer's current device value."""
        b = self.lp.buffers[buffer]
        out = np.empty(tuple(batch if d is None else d for d in b.shape), b.dtype)
        if out.nbytes:
            if buffer in self.plan.offsets:
                self.cl.enqueue_copy(self.rt.queue, out, self.arena, src_offset=self.plan.offsets[buffer])
            else:
                source = self.feeds[buffer] if buffer in self.feeds else self.fixed[buffer]
                self.cl.enqueue_copy(self.rt.queue, out, source)
        return out

    # ---- calls --------------------------------------------------------------------------
    def run(self, arrays: list[np.ndarray], batch: int) -> list[np.ndarray]:
        with self.lock.hold():
            return self._run(arrays, batch)

    def _run(self, arrays: list[np.ndarray], batch: int) -> list[np.ndarray]:
        cl, queue = self.cl, self.rt.queue
        if batch > self.plan.capacity:
            self._layout(max(batch, 2 * self.plan.capacity))
            self.batch = None
        if batch != self.batch:
            self._set_batch(batch)
        for var, copy in self.copies:
            copy.refresh(var)
        for b, a in zip(self.lp.inputs, arrays):
            if a.nbytes:
                cl.enqueue_copy(queue, self.feeds[b], np.ascontiguousarray(a), is_blocking=False)
        if self.check:
            self._run_checked(batch)
        else:
            for kernel, (global_size, local_size) in zip(self.kernels, self.sizes):
                cl.enqueue_nd_range_kernel(queue, kernel, global_size, local_size)
        for var, copy in self.written:
            copy.changed(var)
        results = [self.read(f, batch) for f in self.lp.fetches]
        queue.finish()
        return results

    def _run_checked(self, batch: int) -> None:
        def finite(buffer: int) -> bool:
            return self.lp.buffers[buffer].dtype.kind != "f" or bool(np.all(np.isfinite(self.read(buffer, batch))))

        for k, kernel, (global_size, local_size) in zip(self.lp.kernels, self.kernels, self.sizes):
            inputs_finite = all(finite(ld.buffer) for ld in k.loads())
            self.cl.enqueue_nd_range_kernel(self.rt.queue, kernel, global_size, local_size)
            for s in k.stores:
                if inputs_finite and not finite(s.buffer):
                    raise NumericsError(f"{s.node} produced a non-finite value (kernel {k.name}, created at "
                                        f"{s.source})")

    def artifacts(self) -> dict[str, str]:
        return {**loop_pass_texts(self.loop_records), "loopir.txt": self.lp.to_text(),
                "kernels.cl": f"/* rendered for {self.rt.description} */\n" + self.source}
