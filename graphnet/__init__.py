"""graphnet: a symbolic computation-graph compiler for neural-network training.

Define a static graph of ops, differentiate it symbolically, fuse the optimizer into the step,
and compile the whole training step to native code (LLVM), OpenCL, or the numpy reference.
"""
from . import init, viz
from .autodiff import gradients
from .errors import NotDifferentiableError, NumericsError, ShapeError
from .function import Function, compile
from .graph import Graph, Node, get_default_graph, reset_default_graph
from .ops import *  # noqa: F401,F403  (the public op functions: graphnet.ops.__all__, from the registry)
from .random import set_seed
from . import callbacks, layers, conv_layers, conv1d_layers, normalization_layers  # noqa: E402  (they register their layers in layers)
from .model import Model, Sequential, load_model  # noqa: E402
from . import losses, optim  # noqa: E402  (after the ops they build on)
from .init import random_normal, random_uniform, truncated_normal  # noqa: E402  (TF1's initial values)
from .layers import Input  # noqa: E402

# Keras's and TF1's spellings: `import graphnet as keras` reaches keras.optimizers.Adam,
# keras.models.load_model, keras.Input; TF1's reduce_* are the same reductions.
from . import model as models  # noqa: E402
optimizers = optim
reduce_sum, reduce_mean, reduce_max, reduce_min, reduce_prod, reduce_logsumexp = sum, mean, max, min, prod, logsumexp

Tensor = Node
__version__ = "0.1.0"
