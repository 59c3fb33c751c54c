"""OpenCL devices, program builds cached on disk, and device copies of variables.

pyopencl is an optional dependency: it is imported here on first use, and a missing package or a
machine with no OpenCL platform is reported as a RuntimeError that says what to install.

Device choice: `GRAPHNET_OPENCL_DEVICE` (or the backend's `device` argument) is "P:D" (platform
and device index, as `list_devices()` numbers them) or a substring of the device name; by default
the first GPU, else the first device. One context and in-order queue per device serve every
compiled function, so variables used by several functions share one device copy.

Built programs are cached as binaries in $GRAPHNET_CACHE_DIR/opencl (else
~/.cache/graphnet/opencl), keyed by the source, the device, its driver and the build options;
entries are written atomically and checked on load (checksum and key), so concurrent processes need
no lock, and a cache directory others can write to is not used (codegen/cache.py). pocl is
left to its own cache (keyed by source): asking it for a binary compiles every kernel a second
time, for a generic work-group size, which costs a whole program build to save none.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..cache import OPENCL_BINARIES, cache_key
from .schedule import Limits

INSTALL = ("install it with `pip install graphnet[opencl]` (pyopencl) and an OpenCL driver: "
           "`apt-get install pocl-opencl-icd` runs on the CPU, GPU vendors ship their own")
SELF_CACHING = {"Portable Computing Language"}  # platforms whose binaries are not worth fetching


def _cl():
    try:
        import pyopencl
    except ImportError:
        raise RuntimeError(f"backend='opencl' needs the pyopencl package, which is not installed: {INSTALL}") from None
    return pyopencl


def list_devices() -> list[tuple[str, Any]]:
    """("P:D", device) for every device of every platform."""
    cl = _cl()
    try:
        platforms = cl.get_platforms()
    except cl.LogicError:  # PLATFORM_NOT_FOUND_KHR from the ICD loader
        platforms = []
    found = [(f"{p}:{d}", dev) for p, platform in enumerate(platforms) for d, dev in enumerate(platform.get_devices())]
    if not found:
        raise RuntimeError(f"backend='opencl': pyopencl found no OpenCL platform or device; {INSTALL}")
    return found


def choose_device(spec: str | None = None):
    """The device `spec` (or $GRAPHNET_OPENCL_DEVICE) names; default the first GPU, else the first device."""
    cl = _cl()
    spec = spec or os.environ.get("GRAPHNET_OPENCL_DEVICE") or None
    found = list_devices()
    if spec is None:
        gpus = [dev for _, dev in found if dev.type & cl.device_type.GPU]
        return gpus[0] if gpus else found[0][1]
    for index, dev in found:
        if spec == index or spec.lower() in dev.name.lower():
            return dev
    names = "; ".join(f"{index} {dev.name}" for index, dev in found)
    raise RuntimeError(f"no OpenCL device matches '{spec}' (GRAPHNET_OPENCL_DEVICE takes P:D or part of a "
                       f"name): {names}")


class Runtime:
    """A device with its context, queue and limits."""

    def __init__(self, device):
        cl = self.cl = _cl()
        self.device = device
        self.context = cl.Context([device])
        self.queue = cl.CommandQueue(self.context, device)
        self.limits = Limits(device.max_work_group_size, device.local_mem_size, device.max_compute_units)
        self.fp64 = bool(device.double_fp_config) or "cl_khr_fp64" in device.extensions
        rounded = bool(device.single_fp_config & cl.device_fp_config.CORRECTLY_ROUNDED_DIVIDE_SQRT)
        self.options = ["-cl-fp32-correctly-rounded-divide-sqrt"] if rounded else []

    @property
    def description(self) -> str:
        d = self.device
        return f"{d.name} ({d.platform.name} {d.platform.version}, driver {d.driver_version})"

    def build(self, source: str):
        """(the built program for `source`, whether it came from the disk cache)."""
        cl, d = self.cl, self.device
        key = cache_key(source, d.name, d.version, d.driver_version, d.platform.version, self.options)
        binary = OPENCL_BINARIES.load(key)
        if binary is not None:
            try:
                return cl.Program(self.context, [d], [binary]).build(options=self.options), True
            except cl.Error:
                pass  # a binary the driver no longer accepts: rebuild from source
        program = cl.Program(self.context, source).build(options=self.options, devices=[d])
        if d.platform.name not in SELF_CACHING:
            OPENCL_BINARIES.store(key, program.get_info(cl.program_info.BINARIES)[0])
        return program, False

    def buffer(self, nbytes: int, host: np.ndarray | None = None):
        mf = self.cl.mem_flags
        if host is not None and host.nbytes:
            return self.cl.Buffer(self.context, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=host)
        return self.cl.Buffer(self.context, mf.READ_WRITE, max(nbytes, 64))


_runtimes: dict[Any, Runtime] = {}


def runtime(spec: str | None = None) -> Runtime:
    device = choose_device(spec)
    key = (device.platform.name, device.name, device.int_ptr)
    if key not in _runtimes:
        _runtimes[key] = Runtime(device)
    return _runtimes[key]


class DeviceCopy:
    """A variable's copy on one device, registered in `Variable.mirrors`.

    `host_stale`: a step changed the device copy, `var.array` is old until `pull`.
    `device_stale`: another device changed the variable; refresh before the next step here.
    """

    def __init__(self, rt: Runtime, var):
        self.runtime = rt
        self.buffer = rt.buffer(var.array.nbytes, var.array)
        self.host_stale = self.device_stale = False

    def pull(self, var) -> None:
        if self.host_stale:
            self.runtime.cl.enqueue_copy(self.runtime.queue, var.array, self.buffer)
            self.host_stale = False

    def push(self, var) -> None:
        if var.array.nbytes:
            self.runtime.cl.enqueue_copy(self.runtime.queue, self.buffer, var.array)
        self.host_stale = self.device_stale = False

    def refresh(self, var) -> None:
        """Before a step: bring a value changed on another device here (through the host)."""
        if self.device_stale:
            for mirror in var.mirrors:
                mirror.pull(var)
            self.push(var)

    def changed(self, var) -> None:
        """After a step that wrote the variable here: every other copy is now old."""
        self.host_stale = True
        for mirror in var.mirrors:
            if mirror is not self and isinstance(mirror, DeviceCopy):
                mirror.device_stale = True


def device_copy(rt: Runtime, var) -> DeviceCopy:
    """The variable's copy on `rt`'s device, created (from the host value) on first use."""
    for mirror in var.mirrors:
        if isinstance(mirror, DeviceCopy) and mirror.runtime is rt:
            return mirror
    for mirror in var.mirrors:  # the host must hold the newest value before it is copied
        mirror.pull(var)
    copy = DeviceCopy(rt, var)
    var.add_mirror(copy)
    return copy
