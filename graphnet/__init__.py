"""graphnet: a symbolic computation-graph compiler for neural-network training.

Define a static graph of ops, differentiate it symbolically, fuse the optimizer into the step,
and compile the whole training step to native code (LLVM), OpenCL, or the numpy reference.
"""
from . import init, viz
from .autodiff import gradients
from .errors import NumericsError, ShapeError
from .function import Function, compile
from .graph import Graph, Node, get_default_graph, reset_default_graph
from .ops import (abs, add, batch_size, broadcast_to, cast, clip, constant, divide, dropout, equal, exp,
                  greater, greater_equal, leaky_relu, less, less_equal, log, log_softmax, matmul, max, maximum,
                  mean, minimum, multiply, negative, not_equal, one_hot, ones_like, placeholder, power, relu,
                  reshape, sigmoid, sign, softmax, softplus, sqrt, stop_gradient, subtract, sum, tanh, transpose,
                  variable, where, zeros_like)
from .random import set_seed
from . import callbacks, layers  # noqa: E402
from .model import Model, Sequential, load_model  # noqa: E402
from . import losses, optim  # noqa: E402  (after the ops they build on)

Tensor = Node
__version__ = "0.1.0"
