"""Parameter initializers (numpy arrays to pass to `gn.variable`).

Each draws from `gn.set_seed`'s generator unless given a seed. Initializers take `(shape, seed=None,
dtype=float32)` plus keyword options (`normal(shape, stddev=0.1)`, `orthogonal(shape, gain=2.0)`); `BY_NAME`
holds them under Keras's names, with Keras's defaults. `random_normal`, `random_uniform` and
`truncated_normal` take TF1's arguments (`gn.random_normal((2, 3), stddev=0.1)`, also at the top
level): they return an array drawn once, an initial value, not an op drawing at every step.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .random import numpy_rng


def _rng(seed: int | None) -> np.random.Generator:
    return numpy_rng() if seed is None else np.random.default_rng(seed)


def _fans(shape: tuple) -> tuple[int, int]:
    """(fan_in, fan_out) as Keras counts them: a (..., in, out) kernel of more than two axes (a
    convolution's (KH, KW, Cin, Cout)) multiplies both by its receptive field, the leading axes."""
    if len(shape) < 1:
        raise ValueError("initializers need at least a 1-D shape")
    if len(shape) == 1:
        return shape[0], shape[0]
    field = int(np.prod(shape[:-2]))
    return shape[-2] * field, shape[-1] * field


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


def glorot_normal(shape: tuple, seed: int | None = None, dtype: Any = np.float32) -> np.ndarray:
    """Truncated N(0, 2 / (fan_in + fan_out)) at two standard deviations, as Keras draws it."""
    fan_in, fan_out = _fans(tuple(shape))
    return truncated_normal(shape, stddev=np.sqrt(2.0 / (fan_in + fan_out)) / _TRUNCATED_STD, seed=seed, dtype=dtype)


def he_uniform(shape: tuple, seed: int | None = None, dtype: Any = np.float32) -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / fan_in)."""
    fan_in, _ = _fans(tuple(shape))
    a = np.sqrt(6.0 / fan_in)
    return _rng(seed).uniform(-a, a, size=shape).astype(dtype)


def lecun_normal(shape: tuple, seed: int | None = None, dtype: Any = np.float32) -> np.ndarray:
    """Truncated N(0, 1 / fan_in) at two standard deviations."""
    fan_in, _ = _fans(tuple(shape))
    return truncated_normal(shape, stddev=np.sqrt(1.0 / fan_in) / _TRUNCATED_STD, seed=seed, dtype=dtype)


def lecun_uniform(shape: tuple, seed: int | None = None, dtype: Any = np.float32) -> np.ndarray:
    """U(-a, a) with a = sqrt(3 / fan_in)."""
    fan_in, _ = _fans(tuple(shape))
    a = np.sqrt(3.0 / fan_in)
    return _rng(seed).uniform(-a, a, size=shape).astype(dtype)


def normal(shape: tuple, seed: int | None = None, dtype: Any = np.float32, mean: float = 0.0,
           stddev: float = 0.05) -> np.ndarray:
    """N(mean, stddev^2) draws; the defaults are Keras's RandomNormal (its name "normal" / "random_normal")."""
    return _rng(seed).normal(mean, stddev, size=_shape(shape)).astype(dtype)


def uniform(shape: tuple, seed: int | None = None, dtype: Any = np.float32, minval: float = -0.05,
            maxval: float = 0.05) -> np.ndarray:
    """U[minval, maxval) draws; the defaults are Keras's RandomUniform ("uniform" / "random_uniform")."""
    return _rng(seed).uniform(minval, maxval, size=_shape(shape)).astype(dtype)


def orthogonal(shape: tuple, seed: int | None = None, dtype: Any = np.float32, gain: float = 1.0) -> np.ndarray:
    """gain * Q of the QR decomposition of a normal matrix, with Q's columns signed so R's diagonal is
    positive (Q is then uniformly distributed; Keras's Orthogonal). The shape is read as a
    (prod(shape[:-1]), shape[-1]) matrix: orthonormal columns if it is tall, orthonormal rows if wide."""
    shape = _shape(shape)
    if len(shape) < 2:
        raise ValueError(f"orthogonal: needs a shape of rank 2 or more, got {shape}")
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    a = _rng(seed).normal(size=(max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape).astype(dtype)


def random_normal(shape: Any, mean: float = 0.0, stddev: float = 1.0, dtype: Any = np.float32,
                  seed: int | None = None) -> np.ndarray:
    """TF1's `tf.random_normal(shape, mean, stddev)`: an array of N(mean, stddev^2) draws."""
    return _rng(seed).normal(mean, stddev, size=_shape(shape)).astype(dtype)


def random_uniform(shape: Any, minval: float = 0.0, maxval: float = 1.0, dtype: Any = np.float32,
                   seed: int | None = None) -> np.ndarray:
    """TF1's `tf.random_uniform(shape, minval, maxval)`: an array of U[minval, maxval) draws."""
    return _rng(seed).uniform(minval, maxval, size=_shape(shape)).astype(dtype)


def truncated_normal(shape: Any, mean: float = 0.0, stddev: float = 1.0, dtype: Any = np.float32,
                     seed: int | None = None) -> np.ndarray:
    """TF1's `tf.truncated_normal`: N(mean, stddev^2) draws, redrawn until within two stddev of the mean."""
    rng = _rng(seed)
    out = rng.normal(size=_shape(shape))
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = rng.normal(size=int(bad.sum()))
        bad = np.abs(out) > 2
    return (mean + stddev * out).astype(dtype)


_TRUNCATED_STD = 0.87962566103423978  # the standard deviation of N(0, 1) truncated at +-2


def _shape(shape: Any) -> tuple:
    return (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)


BY_NAME = {"glorot_uniform": glorot_uniform, "glorot_normal": glorot_normal, "he_normal": he_normal,
           "he_uniform": he_uniform, "lecun_normal": lecun_normal, "lecun_uniform": lecun_uniform, "zeros": zeros,
           "ones": ones, "normal": normal, "uniform": uniform, "orthogonal": orthogonal,
           "random_normal": lambda shape, seed=None, dtype=np.float32: random_normal(shape, 0.0, 0.05, dtype, seed),
           "random_uniform": lambda shape, seed=None, dtype=np.float32: random_uniform(shape, -0.05, 0.05, dtype, seed),
           "truncated_normal": lambda shape, seed=None, dtype=np.float32: truncated_normal(shape, 0.0, 0.05, dtype,
                                                                                           seed)}
