"""The counter-based random generator behind dropout.

A value depends only on (seed, step, element index): every backend renders this same scalar
recipe (a murmur3-style integer mix on uint32), so all draw bit-identical masks, and a run replays
exactly from the same seed and step. The dropout op makes the index global (its `rng/offset` input
times the elements per batch row, plus the flat index), so a data-parallel shard draws the masks
of its rows of the whole batch.
"""
from __future__ import annotations

from typing import Any

import numpy as np

_M1, _M2, _M3, _M4 = 0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35, 0x27D4EB2F

_state = {"seed": 0, "rng": np.random.default_rng(0), "dropout": 0}


def set_seed(seed: int) -> None:
    """Fix every random draw: initializers without an explicit seed and dropout keys."""
    _state.update(seed=int(seed), rng=np.random.default_rng(int(seed)), dropout=0)


def numpy_rng() -> np.random.Generator:
    return _state["rng"]


def next_dropout_seed() -> int:
    """A distinct key for each dropout node, derived from the global seed."""
    _state["dropout"] += 1
    return (_state["seed"] * 1000003 + _state["dropout"]) & 0xFFFFFFFF


def _u32(s: Any, value: int):
    return s.const(value & 0xFFFFFFFF, np.uint32)


def _fmix(s: Any, h):
    h = s.xor(h, s.shr(h, 16))
    h = s.mul(h, _u32(s, _M2))
    h = s.xor(h, s.shr(h, 13))
    h = s.mul(h, _u32(s, _M3))
    return s.xor(h, s.shr(h, 16))


def uniform(s: Any, seed: int, step, index, dtype) -> Any:
    """A uniform [0, 1) value of `dtype` for each (seed, step, index) as scalar instructions."""
    key = _fmix(s, s.xor(s.mul(s.cast(step, np.uint32), _u32(s, _M4)), _u32(s, seed * _M1 + 1)))
    bits = _fmix(s, s.xor(s.mul(index, _u32(s, _M1)), key))
    return s.mul(s.cast(s.shr(bits, 8), dtype), s.const(2.0 ** -24, dtype))
