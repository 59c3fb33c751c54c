"""The optional C extension (codegen/llvm/_call.c, a compiled step's per-call path); everything else is
declared in pyproject.toml. Without a C compiler the install still succeeds and uses the Python path."""
import numpy
from setuptools import Extension, setup

setup(ext_modules=[Extension("codegen.llvm._call", ["codegen/llvm/_call.c"], include_dirs=[numpy.get_include()],
                             optional=True)])
