"""fit's data check in one pass: `within(arr, low, high, integral)` accepts an array whose elements are
all finite, in [low, high] and (with `integral`) whole numbers, without numpy's temporaries.

It only accepts: False means "not shown here", and the caller then runs numpy's checks, which name
the problem (or pass an array the scan does not read: not C-contiguous, byte-swapped, float16...).
The C extension `graphnet._datacheck` (setup.py builds it where a C compiler is there) does the scan;
on its first use in a process it is compared with `numpy_within` on `CHECKS`, and any difference (or
no extension) makes `within` say False for every array, leaving numpy's checks alone.
"""
from __future__ import annotations

import math

import numpy as np

_INF = math.inf
CHECKS = (  # (array, low, high, integral): finite and not, bounds inside and outside, each scanned type
    (np.array([0.0, 1.0], np.float32), 0.0, 1.0, False), (np.array([0.5, np.nan], np.float32), -_INF, _INF, False),
    (np.array([[1.0], [-np.inf]]), -_INF, _INF, False), (np.array([1.0, 1.5]), 0.0, 4.0, True),
    (np.array([1.0, 3.0]), 0.0, 2.0, True), (np.arange(300, dtype=np.float32), 0.0, 299.0, True),
    (np.arange(300, dtype=np.float32), -1.0, 298.5, False), (np.array([0, 9], np.int32), 0.0, 9.0, True),
    (np.array([0, 10], np.int64), 0.0, 9.0, True), (np.array([-1, 3], np.int8), 0.0, 9.0, False),
    (np.array([True, False]), 0.0, 1.0, False), (np.array([2 ** 64 - 1], np.uint64), 0.0, 9.0, False),
    (np.zeros(0, np.float32), 0.0, 1.0, False), (np.array([-0.0, 0.5], np.float32), 0.0, 0.5, False),
)
_native = None  # the extension's within, once it agreed with numpy; False: none (numpy's checks alone)


def numpy_within(arr: np.ndarray, low: float, high: float, integral: bool = False) -> bool:
    """The reference: every element finite, in [low, high] and (integral) whole (True when empty)."""
    if arr.size == 0:
        return True
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        return False
    return bool(arr.min() >= low and arr.max() <= high and (not integral or np.all(arr == np.round(arr))))


def _load_native():
    """The extension's within where it matches numpy on `CHECKS`, else False."""
    try:
        from graphnet._datacheck import within as native
    except ImportError:
        return False
    for args in CHECKS:
        if native(*args) != numpy_within(*args):
            return False
    return native


def _never(arr: np.ndarray, low: float, high: float, integral: bool) -> bool:
    return False


def within(arr: np.ndarray, low: float, high: float, integral: bool = False) -> bool:
    """True when every element of `arr` is finite, in [low, high] and (with `integral`) a whole
    number; False when one is not or when the scan cannot tell (see the module's docstring)."""
    global _native
    if _native is None:
        _native = _load_native() or _never
    return _native(arr, low, high, integral)
