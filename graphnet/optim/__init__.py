"""Optimizers as graph updates (PyTorch's formulas and defaults; see docs and REFERENCE.md).

`opt.minimize(loss)` returns (variable, new value) pairs for `gn.compile(updates=...)`; the
optimizer-fusion pass (passes/fuse_optimizer.py) then marks each parameter's update as one region.
"""
from __future__ import annotations

from typing import Any

from .adam import Adam, AdamW
from .adaptive import Adadelta, Adagrad, RMSProp
from .base import Optimizer, Updates
from .sgd import SGD, Momentum

RMSprop = RMSProp  # Keras's spelling

BY_NAME = {"sgd": SGD, "momentum": Momentum, "adagrad": Adagrad, "adadelta": Adadelta, "rmsprop": RMSProp,
           "adam": Adam, "adamw": AdamW}


def get(identifier: Any, **hyper: Any) -> Optimizer:
    """An optimizer from a name ("adam", ...; defaults or `hyper`) or an Optimizer (returned as is)."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in BY_NAME:
        return BY_NAME[identifier.lower()](**hyper)
    raise ValueError(f"unknown optimizer {identifier!r} (choose from {', '.join(BY_NAME)} or pass an Optimizer)")


__all__ = ["Optimizer", "Updates", "SGD", "Momentum", "Adagrad", "Adadelta", "RMSProp", "RMSprop", "Adam", "AdamW",
           "get", "BY_NAME"]
