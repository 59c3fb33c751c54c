"""The LLVM backend: IR emission, GEMM generation and JIT compilation."""
