"""LLVM IR text -> optimized object code for the host CPU -> callable addresses.

The target machine uses the host's CPU name and feature string read at run time. LLVM tunes
AVX-512 CPUs for 256-bit vectors; where AVX-512 exists `host_target` adds `-prefer-256-bit` to the
feature string so that the loop vectorizer uses 512-bit registers too, as the GEMM generator's
explicit vectors (`TargetInfo.lanes`) do. Objects are loaded into an MCJIT engine (libm symbols
such as log1pf resolve from the process), so a cached object needs no linker.
"""
from __future__ import annotations

import struct
import time

import llvmlite.binding as llvm

from .target import TargetInfo


def host_target(wide: bool | None = None) -> TargetInfo:
    """The host CPU; `wide`: vectorize with 512-bit registers (default: when AVX-512 is present)."""
    host = TargetInfo.host()
    if wide is None:
        wide = host.vector_bits >= 512
    if wide and host.vector_bits >= 512:
        return TargetInfo(host.cpu, host.features + ",-prefer-256-bit", host.vector_bits, host.has_fma,
                          host.vector_registers)
    return host


class Compiler:
    """Parses, optimizes and emits one module at a fixed optimization level."""

    def __init__(self, target: TargetInfo, opt: int = 3, unroll: bool = False):
        self.target, self.opt, self.unroll = target, opt, unroll
        self.tm = target.target_machine(opt=opt)

    @property
    def triple(self) -> str:
        return self.tm.triple

    @property
    def data_layout(self) -> str:
        return str(self.tm.target_data)

    def optimize(self, text: str) -> llvm.ModuleRef:
        module = llvm.parse_assembly(text)
        module.verify()
        pto = llvm.create_pipeline_tuning_options(speed_level=self.opt)
        pto.loop_vectorization = self.opt >= 2
        pto.slp_vectorization = self.opt >= 2
        pto.loop_unrolling = self.unroll
        pb = llvm.create_pass_builder(self.tm, pto)
        pb.getModulePassManager().run(module, pb)
        return module

    def object_code(self, text: str, optimize: bool = True) -> bytes:
        """Object code; `optimize=False` skips the IR pipeline (hand-scheduled code such as the
        GEMM compiles ~10x faster and runs as fast without it)."""
        if optimize:
            return self.emit(self.optimize(text))
        module = llvm.parse_assembly(text)
        module.verify()
        return self.emit(module)

    def compile_timed(self, text: str) -> tuple[bytes, dict[str, float]]:
        """Optimised object code and the seconds spent optimising and emitting (a `workers.py` job)."""
        start = time.perf_counter()
        module = self.optimize(text)
        optimised = time.perf_counter()
        obj = self.emit(module)
        return obj, {"LLVM optimisation": optimised - start, "object emission": time.perf_counter() - optimised}

    def emit(self, module: llvm.ModuleRef) -> bytes:
        """The module's object code (instruction selection and register allocation at `opt`)."""
        return self.tm.emit_object(module)

    def assembly(self, text: str) -> str:
        return self.tm.emit_assembly(self.optimize(text))


class Library:
    """An object file loaded for execution; keep it alive while its addresses are in use."""

    def __init__(self, compiler: Compiler, objects: list[bytes]):
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), compiler.tm)
        for obj in objects:
            self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self.engine.finalize_object()

    def address(self, name: str) -> int:
        address = self.engine.get_function_address(name)
        if not address:
            raise RuntimeError(f"symbol {name} missing from the compiled object")
        return address


def pack_objects(objects: list[bytes]) -> bytes:
    """Several object files as one payload (the object cache's entry for a step compiled in parts)."""
    return b"".join(struct.pack("<Q", len(obj)) + obj for obj in objects)


def unpack_objects(payload: bytes) -> list[bytes]:
    """`pack_objects`'s objects (ValueError where the payload is not such a list)."""
    objects, at = [], 0
    while at < len(payload):
        if at + 8 > len(payload):
            raise ValueError("truncated object list")
        (size,) = struct.unpack_from("<Q", payload, at)
        objects.append(bytes(payload[at + 8:at + 8 + size]))
        at += 8 + size
        if at > len(payload):
            raise ValueError("truncated object list")
    return objects
