"""The optional C extension, a compiled function's per-call path (codegen/llvm/_call.c); everything
else is declared in pyproject.toml. Without a C compiler the install still succeeds and the Python
version of that path runs."""
import numpy
from setuptools import Extension, setup

setup(ext_modules=[
    Extension("codegen.llvm._call", ["codegen/llvm/_call.c"], include_dirs=[numpy.get_include()], optional=True),
])
