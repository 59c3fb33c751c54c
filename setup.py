"""The optional C extensions: a compiled function's per-call path (codegen/llvm/_call.c), an
epoch's shuffle (graphnet/_shuffle.c) and fit's one-pass data check (graphnet/_datacheck.c);
everything else is declared in pyproject.toml. Without a C compiler the install still succeeds and
the Python version of the per-call path, numpy's shuffle and numpy's data checks run."""
import numpy
from setuptools import Extension, setup

setup(ext_modules=[
    # no floating-point contraction: run_steps' sums must round each product and each sum as Python does
    Extension("codegen.llvm._call", ["codegen/llvm/_call.c"], include_dirs=[numpy.get_include()],
              extra_compile_args=["-ffp-contract=off"], optional=True),
    Extension("graphnet._shuffle", ["graphnet/_shuffle.c"], optional=True),
    Extension("graphnet._datacheck", ["graphnet/_datacheck.c"], optional=True),
])
