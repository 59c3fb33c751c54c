"""What the code generators need to know about the CPU they emit for.

Read from llvmlite at run time (`TargetInfo.host()`), or built explicitly to emit for
another CPU (tests use this to run the AVX2 and scalar code paths on an AVX-512 host).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import llvmlite.binding as llvm

_ELEMENT_BITS = {"float32": 32, "float64": 64}


@dataclass(frozen=True)
class TargetInfo:
    """A CPU as the LLVM code generators see it.

    `cpu` and `features` are LLVM's spellings (as `create_target_machine` takes them);
    `vector_bits` is the widest SIMD register the kernels should use (0: scalar code).
    """

    cpu: str
    features: str
    vector_bits: int
    has_fma: bool
    vector_registers: int

    @classmethod
    def host(cls) -> TargetInfo:
        """The machine we are running on."""
        import llvmlite.binding as llvm  # (here: a compiled-function cache hit loads code without LLVM)
        return cls.from_features(llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten())

    @classmethod
    def from_features(cls, cpu: str, features: str) -> TargetInfo:
        """Derive vector width and FMA support from an LLVM feature string ("+avx2,+fma,...")."""
        enabled = {f[1:] for f in features.split(",") if f.startswith("+")}
        if "avx512f" in enabled:
            bits, regs = 512, 32
        elif "avx2" in enabled or "avx" in enabled:
            bits, regs = 256, 16
        elif "sse2" in enabled or "neon" in enabled:
            bits, regs = 128, 16
        else:
            bits, regs = 0, 16
        return cls(cpu, features, bits, "fma" in enabled, regs)

    def lanes(self, dtype: str) -> int:
        """Elements of `dtype` per vector register (1 for scalar code)."""
        return max(1, self.vector_bits // _ELEMENT_BITS[dtype])

    def target_machine(self, opt: int = 3, reloc: str = "default", codemodel: str = "jitdefault") -> llvm.TargetMachine:
        """An LLVM target machine for the default triple with this CPU and these features."""
        import llvmlite.binding as llvm
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        target = llvm.Target.from_default_triple()
        return target.create_target_machine(cpu=self.cpu, features=self.features, opt=opt, reloc=reloc,
                                            codemodel=codemodel)


AVX2 = TargetInfo("haswell", "+avx,+avx2,+fma,+sse2,+sse4.2", 256, True, 16)
"""A typical AVX2 + FMA CPU (for tests and cross-emission)."""

SCALAR = TargetInfo("x86-64", "+sse2", 0, False, 16)
"""Plain scalar code without FMA (the portable fallback)."""
