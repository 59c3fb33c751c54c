"""The LLVM backend: a compiled function is one native call `graphnet_step(N, buffers)`.

Per call, only the feeds' data pointers are stored into a cached pointer array (parameters,
optimizer state, constants and the arena's temporaries keep their cached addresses), the native step
runs, and the fetched buffers are copied out: `run` on the general path, `call.py`'s fast path (C, or
generated Python without the C extension) for unchanged exact feeds. A call holds the step lock of
the function's variables (`graphnet.function.StepLock`), which also guards the arena and the pointer
array. `check_numerics=True` compiles every node as its own kernel and runs the kernels one by one,
checking each result.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

import graphnet
from graphnet.errors import NumericsError
from graphnet.feeds import FeedSpec
from graphnet.function import StepLock, step_lock, timed
from graphnet.program import Program

from ..memory import StepLayout, allocate, plan_arena
from .. import cache
from ..cache import LLVM_OBJECTS, LLVM_SHARED
from .call import data_pointer, fast_call
from .jit import (Compiler, Library, SharedLibrary, host_target, link_shared, linker, pack_objects, serial_flag_ir,
                  unpack_objects, warm_up)
from .runtime import load_runtime, num_threads

if TYPE_CHECKING:
    from .gemm import GemmSpec

_STEP = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p)
_PROFILED_STEP = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32)
INITIAL_CAPACITY = 64
GEMM_BUILD_COST = 25_000  # a GEMM routine's build, in characters of step IR that take as long (workers.py)
_CODEGEN = os.path.dirname(os.path.dirname(__file__))
# every source the emitted code can depend on: the loop IR, lowering and all of the LLVM backend, read by
# folder so that a new file is covered without being listed
_SOURCES = sorted(os.path.join(folder, name) for folder in (_CODEGEN, os.path.join(_CODEGEN, "llvm"))
                  for name in os.listdir(folder) if name.endswith(".py"))


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


@functools.cache  # the sources are read once per process
def _codegen_digest() -> str:
    """Cached objects are rebuilt when the code generator itself changes."""
    return cache.cache_key(*(_read(p) for p in _SOURCES))


@functools.cache
def _gemm_digest() -> str:
    here = os.path.dirname(__file__)
    return cache.cache_key(*(_read(os.path.join(here, f)) for f in ("gemm.py", "igemm.py", "loops.py", "parallel.py")))


def _build_gemm(compiler: Compiler, threads: int, spec: GemmSpec) -> tuple[bytes, dict[str, float]]:
    from .gemm_library import build_object
    start = time.perf_counter()
    return build_object(compiler, threads, spec), {"GEMM routines": time.perf_counter() - start}


def _apportion(seconds: dict[str, float], wall: float, timings: list[dict[str, float]]) -> None:
    """Add `wall`, the time jobs took in parallel, to `seconds` by phase, in proportion to each phase's
    share of the jobs' own times."""
    total = sum(v for t in timings for v in t.values())
    for timing in timings:
        for phase, value in timing.items():
            seconds[phase] = seconds.get(phase, 0.0) + (wall * value / total if total > 0 else 0.0)


def _host_compiler(shared: bool) -> Compiler:
    """The host's compiler for a step's code: position-independent where it becomes a shared object."""
    return Compiler(host_target(), reloc="pic" if shared else "default")


class LLVMBackend:
    # The compiler's modules (lowering, loop passes, the renderer, the GEMM generator and library, so
    # llvmlite.ir) are imported where a miss uses them: a compiled-function cache hit (`from_cache`)
    # loads a step without them.
    def __init__(self, program: Program, options):
        from ..collectives import prepare_collectives
        from .render import required_gemms
        self._setup(options)
        self.program = program
        with timed(self.compile_seconds, "lowering"):
            self._lp, timings = self._lower(snapshots=False)
        loop_seconds = sum(r.seconds for r in timings)
        self.compile_seconds.update({"lowering": self.compile_seconds["lowering"] - loop_seconds,
                                     "loop passes": loop_seconds})
        prepare_collectives(self.lp)  # a data-parallel step: the MPI runtime's symbols, every rank's agreement
        self.layout = StepLayout.of(self.lp)
        self.gemms = required_gemms(self.lp)
        # A shared object where a linker makes one (none for a step calling the MPI runtime, whose
        # symbols only MCJIT engines see); MCJIT where that fails.
        runtime_calls = any(k.call is not None for k in self.lp.kernels)
        if not (self.shared and not runtime_calls and self._load_shared(step_lock(program))):
            self._use_engine()
            objects, built = self._step_objects()
            self._load(objects, step_lock(program), built)

    def _setup(self, options, shared: bool | None = None) -> None:
        self.check = options.check_numerics
        self.compile_seconds: dict[str, float] = {}  # by phase (Function.compile_seconds)
        self.shared = linker() is not None if shared is None else shared  # a shared object, else MCJIT
        self.compiler = _host_compiler(self.shared)
        self.threads = num_threads() if load_runtime() else 1  # GEMMs split columns over libgomp's pool
        self._ir_text: str | None = None
        self._loop_records: list | None = None

    def _use_engine(self) -> None:
        """Compile for an MCJIT engine (no shared object)."""
        if self.shared:
            self.shared, self.compiler = False, Compiler(self.compiler.target)
            self._ir_text = None

    @staticmethod
    def compile_workers(options) -> contextlib.AbstractContextManager:
        """The context of a compile's graph passes and backend: the compile's worker processes, started
        at its beginning to load and warm LLVM up beside them (`workers.early`)."""
        from .workers import early
        return early(functools.partial(warm_up, _host_compiler(linker() is not None)))

    @staticmethod
    def cache_context() -> tuple:
        """What a step's code depends on besides its program and graphnet's source (the compiled-function
        cache's key, graphnet/step_cache.py): the target CPU and features, the thread count."""
        return host_target(), num_threads() if load_runtime() else 1

    @classmethod
    def from_cache(cls, described: dict, blobs: list, variables: list, lock: StepLock, options,
                   program: Callable[[], Program]) -> "LLVMBackend | None":
        """The step a compiled-function cache entry describes (`cached_form`), on the user's
        `variables`; None where its code is not in the disk cache (or is damaged, or does not load).
        `program` gives the optimised program where a dump or profile asks for the loop program."""
        self = cls.__new__(cls)
        self._setup(options, shared=described["shared"] is True)
        self._program, self._program_of, self._lp = None, program, None
        self.layout = StepLayout.from_json(described["layout"], blobs, variables)
        self.gemms = [(np.dtype(d).name, bool(ta), bool(tb), m if m is None else int(m), int(gather))
                      for d, ta, tb, m, gather in described["gemms"]]
        self.key = described["object"]
        if not isinstance(self.key, str):
            return None
        self.cache_hit = True
        if self.shared:  # the step and its GEMM routines as one shared object: no LLVM in this process
            with timed(self.compile_seconds, "cache lookup"):
                image = LLVM_SHARED.load(self.key)
            return self if image is not None and self._attach_shared(image, lock) else None
        with timed(self.compile_seconds, "cache lookup"):
            payload = LLVM_OBJECTS.load(self.key)
            objects = unpack_objects(payload) if payload is not None else None
        if not objects:
            return None
        self._load(objects, lock)
        return self

    def cached_form(self, variables: list) -> tuple[dict, list[bytes]]:
        """What `from_cache` needs, JSON-able, and the constants' bytes (`variables` name the storage)."""
        layout, blobs = self.layout.to_json(variables)
        gemms = [[np.dtype(d).name, ta, tb, m, gather] for d, ta, tb, m, gather in self.gemms]
        return {"layout": layout, "gemms": gemms, "object": self.key, "shared": self.shared}, blobs

    @property
    def code_cache(self) -> cache.DiskCache:
        """The disk cache holding this step's code under `key`: its shared object, or its objects."""
        return LLVM_SHARED if self.shared else LLVM_OBJECTS

    def _load_shared(self, lock: StepLock) -> bool:
        """The step as a shared object (`jit.link_shared`: its objects and its GEMM routines), from the
        disk cache or compiled, linked and stored, then loaded; False where linking or loading fails."""
        self._set_key()
        with timed(self.compile_seconds, "cache lookup"):
            image = LLVM_SHARED.load(self.key)
        self.cache_hit = image is not None
        if image is None:
            from .gemm_library import GEMMS
            objects, built = self._compile(serial_flag_ir(self.compiler))
            with timed(self.compile_seconds, "GEMM routines"):  # their objects, linked into the step's
                routines = {}
                for g in self.gemms:
                    spec = self._gemm_spec(*g)
                    routines.setdefault(GEMMS.key(self.compiler, self.threads, spec, _gemm_digest()), (spec, g))
                objects += [GEMMS.object(self.compiler, self.threads, spec, _gemm_digest(), built.get(g))
                            for spec, g in routines.values()]
            with timed(self.compile_seconds, "shared object"):
                image = link_shared(objects)
            if image is None:
                return False
            LLVM_SHARED.store(self.key, image)
        return self._attach_shared(image, lock)

    def _attach_shared(self, image: bytes, lock: StepLock) -> bool:
        with timed(self.compile_seconds, "loading"):
            try:
                library = SharedLibrary(image, LLVM_SHARED.private_directory())
            except OSError:
                return False
            self.private_gemms = []
            self._attach(library, lock)
        return True

    @property
    def program(self) -> Program:
        if self._program is None:
            self._program = self._program_of()
        return self._program

    @program.setter
    def program(self, program: Program) -> None:
        self._program = program

    @property
    def lp(self):
        """The loop program (on a compiled-function cache hit, lowered again when first asked for)."""
        if self._lp is None:
            self._lp, self._loop_records = self._lower()
        return self._lp

    @property
    def loop_records(self) -> list:
        """The loop passes' records with the loop IR after each (dumps): a compile lowers without
        printing them, so the first read lowers again (lowering is deterministic)."""
        if self._loop_records is None:
            _, self._loop_records = self._lower()
        return self._loop_records

    def _lower(self, snapshots: bool = True):
        from ..lower import lower
        from .gemm_schedule import loop_passes
        passes = loop_passes(self._gemm_workspace, self.threads, self.compiler.target)
        return lower(self.program, fuse=not self.check, loop_passes=passes, snapshots=snapshots)

    def _load(self, objects: list[bytes], lock: StepLock, built: dict | None = None) -> None:
        """Link the step's objects against the GEMM library, load them and bind the buffers. `built`:
        GEMM routines' objects compiled beside the step's (by GEMM)."""
        from .gemm_library import GEMMS
        built = built or {}
        with timed(self.compile_seconds, "GEMM routines"):
            linked = [(g, GEMMS.link(self.compiler, self.threads, self._gemm_spec(*g), _gemm_digest(), built.get(g)))
                      for g in self.gemms]
        self.private_gemms = [g for g, own in linked if own is not None]  # not the library's build: loaded here
        with timed(self.compile_seconds, "loading"):
            self._attach(Library(self.compiler, [own for _, own in linked if own is not None] + objects), lock)

    def _attach(self, library: Library | SharedLibrary, lock: StepLock) -> None:
        """Take the step's addresses from its loaded code and bind the buffers."""
        self.library = library
        self.step_address = library.address("graphnet_step")
        self.step = _STEP(self.step_address)
        self.profiled_step = _PROFILED_STEP(library.address("graphnet_step_profiled"))
        self.kernels = [_STEP(library.address(k.name)) for k in self.lp.kernels] if self.check else []
        self._bind_buffers(lock)

    def _set_key(self) -> None:
        # The object code is a function of the loop program (every kernel, buffer, shape, dtype and
        # inlined constant, exactly), the target and the flags: key on those rather than on
        # Program.hash(), which prints small constants at six digits.
        with timed(self.compile_seconds, "cache lookup"):
            self.key = cache.cache_key(self.lp.to_text(sources=False), self.compiler.target, self.compiler.opt,
                                       self.compiler.reloc, self.compiler.code_model, self.check, self.threads,
                                       graphnet.__version__, _codegen_digest())

    def _step_objects(self) -> tuple[list[bytes], dict]:
        """The step's objects for an MCJIT engine from the disk cache, or compiled and stored (`_compile`)."""
        self._set_key()
        with timed(self.compile_seconds, "cache lookup"):
            payload = LLVM_OBJECTS.load(self.key)
            try:
                objects = unpack_objects(payload) if payload is not None else None
            except ValueError:
                objects = None
        self.cache_hit = bool(objects)
        if self.cache_hit:
            return objects, {}
        objects, built = self._compile()
        LLVM_OBJECTS.store(self.key, pack_objects(objects))
        return objects, built

    def _compile(self, *unoptimised: str) -> tuple[list[bytes], dict]:
        """The step's object code, in parts (`split.py`; the GEMM routines are the library's), then the
        objects of the modules `unoptimised` (compiled without the IR pipeline), and the objects of the
        GEMM routines no cache holds, compiled beside them in worker processes (`workers.py`)."""
        from .gemm_library import GEMMS
        from .split import part_count, split_module
        from .workers import run_jobs
        seconds = self.compile_seconds
        with timed(seconds, "LLVM IR"):
            text = self.ir_text
            units = [[k.name] for k in self.lp.kernels] + [["graphnet_step", "graphnet_step_profiled"]]
            parts = split_module(text, units, part_count(text))
        missing = [g for g in dict.fromkeys(self.gemms)
                   if GEMMS.needs_build(self.compiler, self.threads, self._gemm_spec(*g), _gemm_digest())]
        jobs = [(self.compiler.compile_timed, (part,)) for part in parts]
        jobs += [(self.compiler.compile_timed, (text, False)) for text in unoptimised]
        jobs += [(_build_gemm, (self.compiler, self.threads, self._gemm_spec(*g))) for g in missing]
        costs = [len(part) for part in parts] + [0] * len(unoptimised) + [GEMM_BUILD_COST] * len(missing)
        start = time.perf_counter()
        results = run_jobs(jobs, costs)
        _apportion(seconds, time.perf_counter() - start, [timing for _, timing in results])
        objects = [obj for obj, _ in results[:len(parts) + len(unoptimised)]]
        return objects, {g: obj for g, (obj, _) in zip(missing, results[len(parts) + len(unoptimised):])}

    def _gemm_spec(self, dtype: np.dtype, trans_a: bool, trans_b: bool, m: int | None, gather: int = 0) -> GemmSpec:
        from .gemm import GemmSpec, specialised_m
        return GemmSpec(np.dtype(dtype).name, trans_a, trans_b, specialised_m(m), gather)

    def _gemm_workspace(self, dtype: np.dtype, trans_a: bool, trans_b: bool, m: int | None, gather: int = 0) -> int:
        from . import igemm
        from .parallel import parallel_workspace_bytes
        spec = self._gemm_spec(dtype, trans_a, trans_b, m, gather)
        if gather:
            return igemm.parallel_workspace_bytes(spec, self.compiler.target, self.threads)
        return parallel_workspace_bytes(spec, self.compiler.target, self.threads)

    @property
    def ir_text(self) -> str:
        if self._ir_text is None:
            from .render import Renderer
            self._ir_text = Renderer(self.lp, self.compiler.triple, self.compiler.data_layout,
                                     self.threads, self.compiler.target).render()
        return self._ir_text

    # ---- buffers ------------------------------------------------------------------------
    def _bind_buffers(self, lock: StepLock) -> None:
        layout = self.layout
        self.slots = (ctypes.c_void_p * max(1, len(layout.buffers)))()
        self.slots_address = ctypes.addressof(self.slots)
        # The call's arguments as ctypes objects, which ctypes passes without converting a Python int.
        self.slots_arg = ctypes.c_void_p(self.slots_address)
        self.keep: dict[int, np.ndarray] = dict(layout.storage)  # arrays whose addresses sit in the slots
        for i, arr in self.keep.items():
            if not arr.flags.c_contiguous or arr.dtype != layout.buffers[i].dtype:
                b = layout.buffers[i]
                raise TypeError(f"buffer {b.name} is not a contiguous {b.dtype} array")
            self.slots[i] = arr.ctypes.data
        self.inputs = list(layout.inputs)
        self.lock = lock
        self._layout(INITIAL_CAPACITY)

    def _layout(self, capacity: int) -> None:
        """(Re)plan and allocate the arena for batches up to `capacity`."""
        self.plan = plan_arena(self.layout, capacity)
        self.arena = allocate(self.plan.nbytes)
        base = self.arena.ctypes.data
        for b, offset in self.plan.offsets.items():
            self.slots[b] = base + offset
        self.views: dict[int, list[np.ndarray]] = {}
        self.batch, self.batch_arg, self.fetch_views = 0, ctypes.c_int64(0), []

    def view(self, buffer: int, batch: int) -> np.ndarray:
        b = self.layout.buffers[buffer]
        shape = tuple(batch if d is None else d for d in b.shape)
        if b.id in self.keep:
            return self.keep[b.id]
        if b.id in self.plan.offsets:
            start = self.plan.offsets[b.id]
            return self.arena[start:start + b.elements(batch) * b.dtype.itemsize].view(b.dtype).reshape(shape)
        raise AssertionError(f"buffer {b} has no storage")

    def _set_batch(self, batch: int) -> None:
        """Grow the arena if needed and select the fetched buffers' views for this batch size."""
        if batch > self.plan.capacity:
            self._layout(max(batch, 2 * self.plan.capacity))
        views = self.views.get(batch)
        if views is None:
            views = self.views[batch] = [self.view(f, batch) for f in self.layout.fetches]
        self.batch, self.batch_arg, self.fetch_views = batch, ctypes.c_int64(batch), views

    # ---- calls --------------------------------------------------------------------------
    def run(self, arrays: list[np.ndarray], batch: int, clock_ns: np.ndarray | None = None) -> list[np.ndarray]:
        """The step on checked feeds; with `clock_ns` (int64, one more than the kernels) it also reads the
        monotonic clock before the first kernel and after each one into it (profile.py)."""
        with self.lock.hold():  # the native call releases the GIL; one call at a time owns the arena
            if batch != self.batch:
                self._set_batch(batch)
            slots = self.slots
            for j, a in enumerate(arrays):  # every call: an array resized in place has moved its data
                slots[self.inputs[j]] = data_pointer(a)
            if self.check:
                self._run_checked(arrays, batch)
            elif clock_ns is None:
                self.step(self.batch_arg, self.slots_arg)
            else:
                if clock_ns.dtype != np.int64 or clock_ns.shape != (self.layout.kernels + 1,):
                    raise ValueError(f"clock_ns must be int64 of shape ({self.layout.kernels + 1},)")
                self.profiled_step(batch, self.slots_address, clock_ns.ctypes.data, time.CLOCK_MONOTONIC)
            views = self.fetch_views
            return [views[0].copy()] if len(views) == 1 else [v.copy() for v in views]

    def run_steps(self, fast: Any, sources: tuple, order: np.ndarray | None, start: int, count: int, batch: int,
                  outs: tuple) -> None:
        """`count` steps on consecutive batches of `batch` rows in one native call (`fast.run_steps`,
        the C `FastCall`'s, which checks its arguments), holding the step lock throughout: taken in C
        where the arena is laid out for `batch` already (`try_run_steps`)."""
        if batch == self.batch and fast.try_run_steps(sources, order, start, count, batch, outs):
            return
        with self.lock.hold():
            if batch != self.batch:
                self._set_batch(batch)
            fast.run_steps(sources, order, start, count, batch, outs)

    def profile(self, arrays: list[np.ndarray], batch: int, repeats: int):
        """Each kernel's time inside the step on checked feeds (`profile.py`); the steps train."""
        from .profile import profile_step
        return profile_step(self, arrays, batch, repeats)

    def fast_call(self, spec: FeedSpec, rebuild: Callable, general: Callable[[dict], Any]) -> Callable[[dict], Any] | None:
        """The function's per-call path specialised to its feeds (`call.py`); none with check_numerics."""
        return None if self.check else fast_call(self, spec, rebuild, general)

    def _run_checked(self, arrays: list[np.ndarray], batch: int) -> None:
        values = {i: a for i, a in zip(self.inputs, arrays)}

        def finite(buffer: int) -> bool:
            v = values.get(buffer)
            v = self.view(buffer, batch) if v is None else v
            return v.dtype.kind != "f" or bool(np.all(np.isfinite(v)))

        for kernel, fn in zip(self.lp.kernels, self.kernels):
            inputs_finite = all(finite(ld.buffer) for ld in kernel.loads())
            fn(batch, self.slots_address)
            for s in kernel.stores:
                if inputs_finite and not finite(s.buffer):
                    raise NumericsError(f"{s.node} produced a non-finite value (kernel {kernel.name}, created at "
                                        f"{s.source})")

    def artifacts(self) -> dict[str, str]:
        from ..loop_passes import loop_pass_texts
        return {**loop_pass_texts(self.loop_records), "loopir.txt": self.lp.to_text(), "module.ll": self.ir_text,
                "module.s": self.compiler.assembly(self.ir_text)}
