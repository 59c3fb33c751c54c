"""An epoch's shuffle: `epoch_order(seed, epoch, n)` is
`np.random.default_rng([seed, epoch]).permutation(n)`, bit for bit.

The C extension `graphnet._shuffle` (setup.py builds it where a C compiler is there) computes it
without constructing numpy's SeedSequence, PCG64 and Generator. On its first use in a process it is
compared with numpy on `CHECKS` (small orders, so the check costs the same whatever n the call
asks for); any difference (or no extension) makes every call use numpy.
"""
from __future__ import annotations

import numpy as np

CHECKS = ((0, 0, 1), (1, 0, 2), (7, 3, 1000), (2 ** 31 - 1, 99, 4099), (2 ** 40 + 5, 2 ** 33, 517))
_native = None  # the extension's fill, once it agreed with numpy; False: numpy for every call


def entropy_words(values: tuple[int, ...]) -> tuple[int, ...]:
    """The 32-bit words numpy's SeedSequence assembles from non-negative integers: each one's words,
    least significant first (0 is one word)."""
    words: list[int] = []
    for value in values:
        words.append(value & 0xFFFFFFFF)
        value >>= 32
        while value:
            words.append(value & 0xFFFFFFFF)
            value >>= 32
    return tuple(words)


def numpy_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The reference: numpy's permutation for (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _native_order(fill, seed: int, epoch: int, n: int) -> np.ndarray:
    out = np.empty(n, dtype=np.int64)
    fill((seed, epoch) if seed <= 0xFFFFFFFF and epoch <= 0xFFFFFFFF else entropy_words((seed, epoch)), out)
    return out


def _load_native():
    """The extension's fill where it matches numpy on `CHECKS`, else False."""
    try:
        from graphnet._shuffle import fill
    except ImportError:
        return False
    for args in CHECKS:
        if not np.array_equal(_native_order(fill, *args), numpy_order(*args)):
            return False
    return fill


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """`np.random.default_rng([seed, epoch]).permutation(n)` (int64): the rows of an epoch, in order.
    Negative or non-integer arguments go to numpy, which raises its own error."""
    global _native
    if type(seed) is not int or type(epoch) is not int or type(n) is not int or min(seed, epoch, n) < 0:
        return numpy_order(seed, epoch, n)
    if _native is None:
        _native = _load_native()
    if _native is False:
        return numpy_order(seed, epoch, n)
    return _native_order(_native, seed, epoch, n)
