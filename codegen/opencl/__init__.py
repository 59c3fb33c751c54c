"""The OpenCL backend: the loop IR rendered to OpenCL C and run through pyopencl (optional extra)."""
