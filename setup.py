"""The optional C extensions: a compiled function's per-call path (codegen/llvm/_call.c) and an
epoch's shuffle (graphnet/_shuffle.c); everything else is declared in pyproject.toml. Without a C
compiler the install still succeeds and the Python version of the per-call path and numpy's shuffle
run."""
import numpy
from setuptools import Extension, setup

setup(ext_modules=[
    Extension("codegen.llvm._call", ["codegen/llvm/_call.c"], include_dirs=[numpy.get_include()], optional=True),
    Extension("graphnet._shuffle", ["graphnet/_shuffle.c"], optional=True),
])
