"""The ops: the registry (base.py), one file per op family (each registers its ops), and the
public functions (api.py). `from graphnet.ops import *` gives the public functions."""
from __future__ import annotations

from . import api, conv, elementwise, indexing, linalg, movement, nn, reduce, resizing  # noqa: F401  (importing a family registers its ops)
from .api import RNG_OFFSET, RNG_STEP, graph_dropout, rng_offset, rng_step, sum_to  # noqa: F401  (used by other graphnet modules)
from .base import REGISTRY, Example, Op, apply, constant, graph_of, normalize_axes, promote  # noqa: F401
from ..graph import install_op_functions

__all__ = api.public_names() + conv.PUBLIC + resizing.PUBLIC  # conv.py and resizing.py write their own public functions
globals().update({name: getattr(api, name) for name in api.public_names()})
globals().update({name: getattr(conv, name) for name in conv.PUBLIC})
globals().update({name: getattr(resizing, name) for name in resizing.PUBLIC})
install_op_functions(api)
