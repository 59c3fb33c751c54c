"""The GEMM library: the GEMM routines every compiled step calls, built once and shared.

A routine (one per dtype, transposes and small static M, or per dtype and register tile for the
implicit GEMMs of convolutions; sizes and conv geometry are run-time arguments) is compiled
once per machine (target CPU and features), thread count and generator source, cached on disk (in
the cache's own `gemm` folder, so `graphnet cache info` and the compile benchmark see it apart), and
loaded once per process into an engine of its own; its exported symbols (the routine and, when
threaded, its column slice) are then bound process-wide with `llvm.add_symbol`, so a step's object
resolves them there and a new model compiles and loads only its own kernels.

A symbol name says dtype, transposes and M but not the target or thread count; a process that
compiles for two targets (tests emitting AVX2 code on an AVX-512 host) binds the first build it
loads, and any other build of the same name is loaded into the step's own engine (an object's own
definitions win over process symbols), as every GEMM was before the library.
"""
from __future__ import annotations

import os
import threading

import graphnet

from .. import cache
from ..cache import GEMM_OBJECTS
from .gemm import GemmSpec, gemm_symbol
from .jit import Compiler, Library
from .parallel import column_slice_symbol, emit_parallel_gemm, rows_slice_symbol


class GemmLibrary:
    """The routines bound in this process: symbol -> (the build's key, the engine that holds it)."""

    def __init__(self) -> None:
        self._bound: dict[str, tuple[str, Library]] = {}
        self._lock = threading.Lock()  # two threads compiling models bind each routine once

    def key(self, compiler: Compiler, threads: int, spec: GemmSpec, digest: str) -> str:
        """The disk cache's key of `spec`'s routine built for `compiler`'s target and `threads`."""
        return cache.cache_key("gemm", spec, compiler.target, compiler.reloc, compiler.code_model, threads,
                               graphnet.__version__, digest)

    def needs_build(self, compiler: Compiler, threads: int, spec: GemmSpec, digest: str) -> bool:
        """Whether linking `spec` would compile its routine (neither bound here nor in the disk cache),
        so that a compile can build it beside the step's own code (`workers.py`)."""
        bound = self._bound.get(gemm_symbol(spec.dtype, spec.trans_a, spec.trans_b, spec.m, spec.gather))
        key = self.key(compiler, threads, spec, digest)
        return (bound is None or bound[0] != key) and not os.path.exists(GEMM_OBJECTS.entry_path(key))

    def link(self, compiler: Compiler, threads: int, spec: GemmSpec, digest: str,
             built: bytes | None = None) -> bytes | None:
        """Make `spec`'s routine (built for `compiler`'s target and `threads`) callable from a step
        object: None when its symbols are bound process-wide, else the object for the step's engine.
        `built`: its object, compiled elsewhere (`build_object`), stored in the disk cache here."""
        name = gemm_symbol(spec.dtype, spec.trans_a, spec.trans_b, spec.m, spec.gather)
        key = self.key(compiler, threads, spec, digest)
        if built is not None:
            GEMM_OBJECTS.store(key, built)
        with self._lock:
            bound = self._bound.get(name)
            if bound is not None:
                return None if bound[0] == key else built or object_code(compiler, threads, spec, key)
            import llvmlite.binding as llvm
            library = Library(compiler, [built or object_code(compiler, threads, spec, key)])
            for symbol in (name, column_slice_symbol(name), rows_slice_symbol(name)):
                address = library.engine.get_function_address(symbol)
                if address:
                    llvm.add_symbol(symbol, address)
            self._bound[name] = (key, library)
        return None

    def object(self, compiler: Compiler, threads: int, spec: GemmSpec, digest: str,
               built: bytes | None = None) -> bytes:
        """`spec`'s routine's object for a step's shared object (`jit.link_shared`): `built` (compiled
        elsewhere, stored here), else from the disk cache, else compiled and stored."""
        key = self.key(compiler, threads, spec, digest)
        if built is not None:
            GEMM_OBJECTS.store(key, built)
            return built
        return object_code(compiler, threads, spec, key)

    def bound(self) -> list[str]:
        """The routines bound in this process (their symbols)."""
        return sorted(self._bound)


def object_code(compiler: Compiler, threads: int, spec: GemmSpec, key: str) -> bytes:
    """The routine's object from the disk cache, or compiled and stored."""
    obj = GEMM_OBJECTS.load(key)
    if obj is None:
        obj = build_object(compiler, threads, spec)
        GEMM_OBJECTS.store(key, obj)
    return obj


def build_object(compiler: Compiler, threads: int, spec: GemmSpec) -> bytes:
    """The routine's object, compiled without the IR pipeline (the generator schedules it by hand)."""
    from llvmlite import ir
    module = ir.Module("graphnet_gemm")
    module.triple, module.data_layout = compiler.triple, compiler.data_layout
    from .igemm import emit_parallel_conv_gemm  # (beside the loop IR: imported where a routine is built)
    name = gemm_symbol(spec.dtype, spec.trans_a, spec.trans_b, spec.m, spec.gather)
    emit = emit_parallel_conv_gemm if spec.gather else emit_parallel_gemm
    emit(module, name, spec, compiler.target, threads)
    return compiler.object_code(str(module), optimize=False)


GEMMS = GemmLibrary()
