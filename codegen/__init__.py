"""Code generation: lowering graphnet graphs to native and OpenCL kernels."""
