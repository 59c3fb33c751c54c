"""LLVM IR text -> optimized object code for the host CPU -> callable addresses.

The target machine uses the host's CPU name and feature string read at run time. LLVM tunes
AVX-512 CPUs for 256-bit vectors; where AVX-512 exists `host_target` adds `-prefer-256-bit` to the
feature string so that the loop vectorizer uses 512-bit registers too, as the GEMM generator's
explicit vectors (`TargetInfo.lanes`) do. Where the system has a linker (`linker`), a step's
position-independent objects and its GEMM routines are linked into a shared object (`link_shared`)
that the dynamic loader loads (`SharedLibrary`) without LLVM: a compiled-function cache hit then
imports no llvmlite.binding (about 30 ms) and builds no engine; the host's CPU name and features are
remembered per machine in the disk cache (`host_cpu`) for the same reason, and so are the target triple
and data layout a module's header names (`target_strings`), so that a compile renders its IR without
LLVM while its worker processes load it (`workers.early`). Elsewhere objects load
into an MCJIT engine (`Library`; libm symbols such as log1pf resolve from the process), which needs no
linker. (MCJIT does not load large-code-model position-independent objects that call each other, and
the small code model's 32-bit offsets are only safe where one linker lays out the code.)
"""
from __future__ import annotations

import ctypes
import functools
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import asdict
from typing import TYPE_CHECKING

from ..cache import HOSTS, cache_key
from .runtime import SERIAL_FLAG
from .target import TargetInfo

if TYPE_CHECKING:
    import llvmlite.binding as llvm



def host_target(wide: bool | None = None) -> TargetInfo:
    """The host CPU; `wide`: vectorize with 512-bit registers (default: when AVX-512 is present)."""
    host = host_cpu()
    if wide is None:
        wide = host.vector_bits >= 512
    if wide and host.vector_bits >= 512:
        return TargetInfo(host.cpu, host.features + ",-prefer-256-bit", host.vector_bits, host.has_fma,
                          host.vector_registers)
    return host


def host_cpu() -> TargetInfo:
    """`TargetInfo.host()`, remembered in the disk cache under the CPU's identity (`cpu_identity`), so
    that a process loading cached code asks LLVM nothing."""
    identity = cpu_identity()
    if identity is None:
        return TargetInfo.host()
    return _host_of(identity)


@functools.cache
def _host_of(identity: str) -> TargetInfo:
    key = cache_key("host", identity)
    payload = HOSTS.load(key)
    if payload is not None:
        try:
            return TargetInfo(**json.loads(payload))
        except (ValueError, TypeError):
            pass
    info = TargetInfo.host()
    HOSTS.store(key, json.dumps(asdict(info)).encode())
    return info


@functools.cache
def cpu_identity() -> str | None:
    """The first processor's description in /proc/cpuinfo (vendor, family, model, stepping, microcode,
    flags) and llvmlite's version; None where there is no /proc/cpuinfo."""
    import llvmlite  # (the package's version only: llvmlite.binding loads LLVM)
    try:
        with open("/proc/cpuinfo") as f:
            head = []
            for line in f:
                if not line.strip():
                    break
                head.append(line)
    except OSError:
        return None
    fields = ("vendor_id", "cpu family", "model", "model name", "stepping", "microcode", "flags", "Features",
              "CPU implementer", "CPU architecture", "CPU variant", "CPU part", "CPU revision")
    kept = sorted(line.strip() for line in head if line.split(":")[0].strip() in fields)
    return "\n".join([os.uname().machine, llvmlite.__version__, *kept]) if kept else None


class Compiler:
    """Parses, optimizes and emits one module at a fixed optimization level."""

    def __init__(self, target: TargetInfo, opt: int = 3, unroll: bool = False, reloc: str = "default"):
        """`reloc`: "default" for objects MCJIT loads (`Library`), "pic" for a shared object (`link_shared`)."""
        self.target, self.opt, self.unroll, self.reloc = target, opt, unroll, reloc
        self._tm: llvm.TargetMachine | None = None

    @property
    def code_model(self) -> str:
        """A shared object's code is position-independent with the small code model (RIP-relative data,
        direct calls within it), as a C compiler's -fPIC makes; MCJIT's is absolute (its default)."""
        return "small" if self.reloc == "pic" else "jitdefault"

    @property
    def tm(self) -> llvm.TargetMachine:
        """The target machine (made when first used: loading a shared object needs none)."""
        if self._tm is None:
            self._tm = self.target.target_machine(opt=self.opt, reloc=self.reloc, codemodel=self.code_model)
        return self._tm

    @property
    def triple(self) -> str:
        """The default target triple (every target machine here is made for it), without LLVM where
        the disk cache remembers it (`target_strings`)."""
        return target_strings()[0]

    @property
    def data_layout(self) -> str:
        return target_strings()[1]

    @property
    def settings(self) -> tuple:
        """What makes this compiler: `compiler_for(*settings)` makes an equal one."""
        return self.target, self.opt, self.unroll, self.reloc

    def __reduce__(self):
        # A worker process (`workers.py`) makes each compiler once, with its target machine.
        return compiler_for, self.settings

    def optimize(self, text: str) -> llvm.ModuleRef:
        """The module through LLVM's pipeline at `opt`, after merging identical functions (`merge_functions`)."""
        import llvmlite.binding as llvm
        module = llvm.parse_assembly(text)
        module.verify()
        self.merge_functions(module)
        pto = llvm.create_pipeline_tuning_options(speed_level=self.opt)
        pto.loop_vectorization = self.opt >= 2
        pto.slp_vectorization = self.opt >= 2
        pto.loop_unrolling = self.unroll
        pb = llvm.create_pass_builder(self.tm, pto)
        pb.getModulePassManager().run(module, pb)
        return module

    def merge_functions(self, module: llvm.ModuleRef) -> None:
        """Replace each function that is the same code as another by that one (LLVM's MergeFunctions),
        before the pipeline: kernels that differ only in their buffers (the same loop nest over the same
        shapes, such as two layers' bias updates) are then optimised, vectorised and emitted once."""
        import llvmlite.binding as llvm
        passes = llvm.create_new_module_pass_manager()
        passes.add_merge_functions_pass()
        passes.run(module, llvm.create_pass_builder(self.tm, llvm.create_pipeline_tuning_options()))

    def object_code(self, text: str, optimize: bool = True) -> bytes:
        """Object code; `optimize=False` skips the IR pipeline (hand-scheduled code such as the
        GEMM compiles ~10x faster and runs as fast without it)."""
        return self.emit(self.optimize(text) if optimize else _parsed(text))

    def compile_timed(self, text: str, optimize: bool = True) -> tuple[bytes, dict[str, float]]:
        """Object code, optimised unless `optimize=False`, and the seconds spent optimising and
        emitting (a `workers.py` job)."""
        start = time.perf_counter()
        module = self.optimize(text) if optimize else _parsed(text)
        optimised = time.perf_counter()
        obj = self.emit(module)
        return obj, {"LLVM optimisation": optimised - start, "object emission": time.perf_counter() - optimised}

    def emit(self, module: llvm.ModuleRef) -> bytes:
        """The module's object code (instruction selection and register allocation at `opt`)."""
        return self.tm.emit_object(module)

    def assembly(self, text: str) -> str:
        return self.tm.emit_assembly(self.optimize(text))


def _parsed(text: str) -> llvm.ModuleRef:
    import llvmlite.binding as llvm
    module = llvm.parse_assembly(text)
    module.verify()
    return module


@functools.cache
def compiler_for(target: TargetInfo, opt: int = 3, unroll: bool = False, reloc: str = "default") -> Compiler:
    """One compiler per setting in this process (a worker's: it makes the target machine once)."""
    return Compiler(target, opt, unroll, reloc)


_WARM_UP_IR = """
define void @warm_up(ptr noalias %a, ptr noalias %b, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%next, %loop]
  %p = getelementptr float, ptr %a, i64 %i
  %x = load float, ptr %p
  %y = call float @llvm.fma.f32(float %x, float 2.0, float 1.0)
  %q = getelementptr float, ptr %b, i64 %i
  store float %y, ptr %q
  %next = add i64 %i, 1
  %more = icmp slt i64 %next, %n
  br i1 %more, label %loop, label %exit
exit:
  ret void
}
declare float @llvm.fma.f32(float, float, float)
"""


def warm_up(compiler: Compiler) -> None:
    """What a process's first compile pays once, paid now: LLVM loaded, the target machine of
    `compiler_for(*compiler.settings)` made, a small loop optimised and emitted (a compile worker's
    warm-up, `workers.early`)."""
    compiler_for(*compiler.settings).compile_timed(_WARM_UP_IR)


def target_strings() -> tuple[str, str]:
    """The default target triple and its data layout (a module's header), remembered in the disk cache
    per machine as `host_cpu` is, so that rendering a step's IR needs no LLVM."""
    identity = cpu_identity()
    return _strings_of(identity) if identity is not None else _ask_target_strings()


@functools.cache
def _strings_of(identity: str) -> tuple[str, str]:
    key = cache_key("target strings", identity)
    payload = HOSTS.load(key)
    if payload is not None:
        try:
            triple, layout = json.loads(payload)
            if isinstance(triple, str) and isinstance(layout, str):
                return triple, layout
        except (ValueError, TypeError):
            pass
    strings = _ask_target_strings()
    HOSTS.store(key, json.dumps(list(strings)).encode())
    return strings


def _ask_target_strings() -> tuple[str, str]:
    tm = host_cpu().target_machine()
    return tm.triple, str(tm.target_data)


def serial_flag_ir(compiler: Compiler) -> str:
    """A module defining the serial flag: a step's shared object holds one (`link_shared`)."""
    return f'target triple = "{compiler.triple}"\n@"{SERIAL_FLAG}" = global i32 0\n'


class Library:
    """An object file loaded for execution; keep it alive while its addresses are in use."""

    def __init__(self, compiler: Compiler, objects: list[bytes]):
        import llvmlite.binding as llvm
        from .runtime import bind_for_jit
        bind_for_jit()  # the serial flag, where libgomp was loaded before LLVM was
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), compiler.tm)
        for obj in objects:
            self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self.engine.finalize_object()

    def address(self, name: str) -> int:
        address = self.engine.get_function_address(name)
        if not address:
            raise RuntimeError(f"symbol {name} missing from the compiled object")
        return address


class SharedLibrary:
    """A shared object (`link_shared`'s) loaded by the dynamic loader, with its own symbols first and
    its own copy of the serial flag (set where runtime.py sets the process's); unloaded when collected,
    as an engine frees its code."""

    def __init__(self, image: bytes, folder: str | None):
        """Load `image` through a temporary file in `folder`, a private directory (else a private
        temporary one); OSError where it does not load (a folder mounted noexec, a missing symbol)."""
        from . import runtime
        own = folder is None
        folder = tempfile.mkdtemp(prefix="graphnet-so-") if own else folder
        try:
            fd, path = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".so")  # a name never loaded before
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(image)
                self.lib = ctypes.CDLL(path, mode=os.RTLD_LOCAL)
            finally:
                os.unlink(path)  # the mapping keeps the file (and so its inode) while the library is loaded
        finally:
            if own:
                os.rmdir(folder)
        try:
            flag = ctypes.c_int32.in_dll(self.lib, SERIAL_FLAG)
        except ValueError:
            _dlclose(self.lib._handle)
            raise OSError(f"{SERIAL_FLAG} missing from the shared object") from None
        flag.value = runtime.serial_flag()
        runtime.serial_flags.append(flag)
        weakref.finalize(self, _unload, self.lib._handle, flag).atexit = False  # (the process unmaps it at exit)

    def address(self, name: str) -> int:
        try:
            return ctypes.cast(getattr(self.lib, name), ctypes.c_void_p).value
        except AttributeError:
            raise RuntimeError(f"symbol {name} missing from the shared object") from None


def _unload(handle: int, flag: ctypes.c_int32) -> None:
    from . import runtime
    runtime.serial_flags.remove(flag)  # before its memory goes
    _dlclose(handle)


def _dlclose(handle: int) -> None:
    import _ctypes
    _ctypes.dlclose(handle)


@functools.cache
def linker() -> tuple[str, ...] | None:
    """The command that links objects into a shared object here (`ld`, else `cc`), or None (not Linux,
    no linker, or GRAPHNET_SHARED_OBJECTS=0, read once per process): then steps load into MCJIT engines."""
    if not sys.platform.startswith("linux") or os.environ.get("GRAPHNET_SHARED_OBJECTS") == "0":
        return None
    ld, cc = shutil.which("ld"), shutil.which(os.environ.get("CC") or "cc")
    if ld:
        return ld, "-shared", "-Bsymbolic", "-z", "noexecstack"
    return (cc, "-shared", "-nostdlib", "-Wl,-Bsymbolic", "-Wl,-z,noexecstack") if cc else None


def link_shared(objects: list[bytes]) -> bytes | None:
    """Position-independent objects, one of them defining the serial flag (`serial_flag_ir`), linked
    into one shared object whose own definitions bind first (-Bsymbolic; libm and libgomp resolve from
    the process when it loads), or None where there is no linker or linking fails."""
    command = linker()
    if command is None:
        return None
    with tempfile.TemporaryDirectory(prefix="graphnet-link-") as folder:
        paths = []
        for i, obj in enumerate(objects):
            paths.append(os.path.join(folder, f"{i}.o"))
            with open(paths[-1], "wb") as f:
                f.write(obj)
        out = os.path.join(folder, "step.so")
        try:
            done = subprocess.run([*command, "-o", out, *paths], capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return None
        if done.returncode != 0:
            return None
        with open(out, "rb") as f:
            return f.read()


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
