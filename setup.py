"""The optional C extensions, a compiled function's per-call path (graphnet/_callable.c,
codegen/llvm/_call.c); everything else is declared in pyproject.toml. Without a C compiler the
install still succeeds and the Python versions of both run."""
import numpy
from setuptools import Extension, setup

setup(ext_modules=[
    Extension("graphnet._callable", ["graphnet/_callable.c"], optional=True),
    Extension("codegen.llvm._call", ["codegen/llvm/_call.c"], include_dirs=[numpy.get_include()], optional=True),
])
