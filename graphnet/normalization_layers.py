"""Keras's LayerNormalization, registered in graphnet.layers on import (BatchNormalization, whose
moving statistics make it a state-updating layer, is in conv_layers.py)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import ops
from .graph import Graph, Node, shape_str
from .layers import Layer, register


class LayerNormalization(Layer):
    """Each sample normalized over `axis` (an int or a list; Keras's default the last axis) with
    gn.layer_norm, then scaled by gamma and shifted by beta (trainable, shaped as those axes)."""

    def __init__(self, axis: Any = -1, epsilon: float = 1e-3, center: bool = True, scale: bool = True,
                 name: str | None = None, input_shape: Sequence[int] | None = None, trainable: bool = True):
        super().__init__(name, input_shape, trainable=trainable)
        if not epsilon > 0:
            raise ValueError(f"LayerNormalization: epsilon must be positive, got {epsilon!r}")
        self.axis = [int(a) for a in axis] if isinstance(axis, (list, tuple)) else int(axis)
        self.epsilon, self.center, self.scale = float(epsilon), bool(center), bool(scale)

    def _axes(self, shape: tuple) -> list[int]:
        axes = self.axis if isinstance(self.axis, list) else [self.axis]
        if not axes or any(not -len(shape) <= a < len(shape) or a % len(shape) == 0 for a in axes):
            raise ValueError(f"LayerNormalization: axis {self.axis} is not a feature axis of {shape_str(shape)}")
        return sorted({a % len(shape) for a in axes})

    def weight_shapes(self, input_shapes: list[tuple]) -> dict[str, tuple]:
        (shape,) = self._single(input_shapes)
        params = tuple(shape[a] for a in self._axes(shape))
        return {**({"gamma": params} if self.scale else {}), **({"beta": params} if self.center else {})}

    def compute_output_shape(self, input_shapes: list[tuple]) -> tuple:
        self.weight_shapes(input_shapes)
        return input_shapes[0]

    def build(self, graph: Graph, inputs: list[Node]) -> Node:
        (x,) = inputs
        shapes = self.weight_shapes([x.shape])
        gamma = self._weight(graph, "gamma", lambda: np.ones(shapes["gamma"], x.dtype)) if self.scale else None
        beta = self._weight(graph, "beta", lambda: np.zeros(shapes["beta"], x.dtype)) if self.center else None
        return ops.layer_norm(x, gamma, beta, self._axes(x.shape), self.epsilon)

    def get_config(self) -> dict:
        return {"name": self.name, "axis": self.axis, "epsilon": self.epsilon, "center": self.center,
                "scale": self.scale}


register(LayerNormalization)
