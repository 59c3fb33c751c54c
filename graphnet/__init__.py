"""graphnet: a symbolic computation-graph compiler for neural-network training.

Define a static graph of ops, differentiate it symbolically, fuse the optimizer into the step,
and compile the whole training step to native code (LLVM), OpenCL, or the numpy reference.
"""
from . import init, viz
from .autodiff import gradients
from .errors import NumericsError, ShapeError
from .function import Function, compile
from .graph import Graph, Node, get_default_graph, reset_default_graph
from .ops import *  # noqa: F401,F403  (the public op functions: graphnet.ops.__all__, from the registry)
from .random import set_seed
from . import callbacks, layers  # noqa: E402
from .model import Model, Sequential, load_model  # noqa: E402
from . import losses, optim  # noqa: E402  (after the ops they build on)

Tensor = Node
__version__ = "0.1.0"
