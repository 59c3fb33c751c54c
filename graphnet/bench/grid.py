"""The benchmark grid's models (BENCHMARKS.md) as compiled graphnet training steps.

Initial weights come from `peers.grid_params` (and `peers.grid_data` gives the batch), so a graphnet
step starts exactly where the numpy, PyTorch and JAX peers start and their losses compare step by step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from graphnet import losses, ops, optim
from graphnet.function import Function, compile
from graphnet.graph import Graph
from graphnet.ops.sources import placeholder, variable
from graphnet.source import source_of

from .peers import BETAS, EPS, GRID, LR, GridConfig, grid_params

ACTIVATIONS = {"relu": ops.relu, "tanh": ops.tanh}
LOSSES = {
    "bce_logits": lambda z, y: losses.binary_cross_entropy(z, y, from_logits=True),
    "softmax_ce": losses.softmax_cross_entropy,
    "mse": losses.mse,
}


@dataclass
class GridModel:
    step: Function  # forward + backward + optimizer update; returns [loss]
    graph: Graph
    config: GridConfig

    def feeds(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """The step's feeds for one mini-batch (`peers.grid_data` gives the grid's)."""
        return {"x": x, "y": y}


def build_grid_model(name: str, backend: str = "llvm", optimizer: Any = "adam",
                     fuse_optimizer: bool = True) -> GridModel:
    """Compile the training step of grid configuration `name` (tiny, small, medium, large, wide).

    `optimizer` is "adam" (the grid's Adam: lr 1e-3, betas (0.9, 0.999), eps 1e-8), another
    optimizer's name with lr 1e-3, or a `gn.optim` optimizer object; `fuse_optimizer` as in `gn.compile`.
    """
    if name not in GRID:
        raise ValueError(f"unknown grid configuration '{name}' (choose from {', '.join(GRID)})")
    config = GRID[name]
    with Graph() as graph, source_of(f"graphnet/bench/grid.py ({name} model)"):
        x = placeholder("x", (None, config.layers[0]))
        y = placeholder("y", (None, config.layers[-1]))
        h = x
        params = grid_params(config)
        for i, (w, b) in enumerate(params, start=1):
            h = h @ variable(f"W{i}", w) + variable(f"b{i}", b)
            if i < len(params):
                h = ACTIVATIONS[config.activation](h)
        loss = LOSSES[config.loss](h, y)
        updates = _optimizer(optimizer).minimize(loss)
        step = compile([loss], updates=updates, backend=backend, fuse_optimizer=fuse_optimizer)
    return GridModel(step, graph, config)


def _optimizer(optimizer: Any) -> optim.Optimizer:
    if isinstance(optimizer, str):
        hyper = {"betas": BETAS, "eps": EPS} if optimizer.lower() == "adam" else {}
        return optim.get(optimizer, lr=LR, **hyper)
    return optim.get(optimizer)
