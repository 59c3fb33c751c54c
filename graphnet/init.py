"""Parameter initializers (numpy arrays to pass to `gn.variable`)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .random import numpy_rng


def _rng(seed: int | None) -> np.random.Generator:
    return numpy_rng() if seed is None else np.random.default_rng(seed)


def _fans(shape: tuple) -> tuple[int, int]:
    if len(shape) < 1:
        raise ValueError("initializers need at least a 1-D shape")
    fan_in = shape[0] if len(shape) > 1 else shape[0]
    fan_out = shape[1] if len(shape) > 1 else shape[0]
    return fan_in, fan_out


def glorot_uniform(shape: tuple, seed: int | None = None, dtype: Any = np.float32) -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    fan_in, fan_out = _fans(tuple(shape))
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return _rng(seed).uniform(-a, a, size=shape).astype(dtype)


def he_normal(shape: tuple, seed: int | None = None, dtype: Any = np.float32) -> np.ndarray:
    """N(0, 2 / fan_in) (He et al., 2015), for ReLU layers."""
    fan_in, _ = _fans(tuple(shape))
    return _rng(seed).normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(dtype)


def zeros(shape: tuple, seed: int | None = None, dtype: Any = np.float32) -> np.ndarray:
    return np.zeros(shape, dtype)


def ones(shape: tuple, seed: int | None = None, dtype: Any = np.float32) -> np.ndarray:
    return np.ones(shape, dtype)


BY_NAME = {"glorot_uniform": glorot_uniform, "he_normal": he_normal, "zeros": zeros, "ones": ones}
