"""Validation of the arrays fed to a compiled function: the boundary native code relies on."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .batchdim import FixedBatch
from .graph import Node, shape_str

_ndarray = np.ndarray


class FeedSpec:
    """The placeholders of a compiled function, checked on every call before anything runs."""

    def __init__(self, placeholders: Sequence[Node], optional: Sequence[Node] = (), needs_batch: bool = False,
                 fixed: FixedBatch | None = None):
        """`optional`: the graph's other placeholders, accepted (and checked) but not needed: a result
        may have a batch dimension without reading any batched input (e.g. a zero gradient), and
        then a fed placeholder still tells its size. `needs_batch`: some result has one. `fixed`: the
        one batch size the program is right for (where N met a static extent), else None."""
        self.nodes = list(placeholders)
        self.names = [p.attrs["name"] for p in self.nodes]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.shapes = [p.shape for p in self.nodes]
        self.dtypes = [np.dtype(p.dtype) for p in self.nodes]
        self.has_batch = any(None in s for s in self.shapes)
        self.optional = {p.attrs["name"]: p for p in optional if p.attrs["name"] not in self.index}
        self.needs_batch = needs_batch
        self.fixed = fixed
        # The fast path: the batch size of the last call that passed the full check and the exact shape
        # each placeholder's feed had then, as one tuple (replaced, never mutated, so a reader in another
        # thread sees a consistent pair). Feeds that match these exactly, with the placeholder's dtype,
        # as C-contiguous ndarrays, pass the same checks, so need no other.
        self.last: tuple[int, tuple[tuple[int, ...], ...]] | None = None

    def check(self, feeds: dict[str, Any]) -> tuple[list[np.ndarray], int]:
        """Return the feeds as contiguous arrays in placeholder order, and the batch size."""
        last = self.last
        if last is not None and len(feeds) == len(self.names):
            batch, shapes = last
            arrays = []
            for name, dtype, shape in zip(self.names, self.dtypes, shapes):
                a = feeds.get(name)
                if type(a) is not _ndarray or a.dtype is not dtype or a.shape != shape or not a.flags.c_contiguous:
                    break
                arrays.append(a)
            else:
                return arrays, batch
        arrays, batch = self._check(feeds)
        if self.fixed is not None:
            self._check_fixed(feeds, batch)
        if (last is None or batch != last[0]) and (self.has_batch or not self.needs_batch):
            # (a batch size set only by an optional feed is never cached: a later call may omit it)
            self.last = (batch, tuple(tuple(batch if x is None else x for x in s) for s in self.shapes))
        return arrays, batch

    def _check(self, feeds: dict[str, Any]) -> tuple[list[np.ndarray], int]:
        """The general path: converts what it can and explains what it cannot."""
        if any(n not in feeds for n in self.names) or any(k not in self.index and k not in self.optional for k in feeds):
            self._names_error(feeds)
        arrays: list[np.ndarray] = []
        batch: list = [None, None]  # size, and the feed it came from
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes):
            arrays.append(self._check_one(name, feeds[name], shape, dtype, batch))
        for name in feeds:
            if name in self.optional:
                self._check_one(name, feeds[name], self.optional[name].shape, self.optional[name].dtype, batch)
        size, source = batch
        if size == 0:
            raise ValueError(f"feed '{source}': empty batch (batch size 0)")
        if size is None and self.needs_batch:
            batched = [f"'{n}'" for n, p in self.optional.items() if None in p.shape]
            raise ValueError("the result has a batch dimension but no fed placeholder sets its size; " +
                             ("feed one of: " + ", ".join(batched) if batched else "the graph has no batched placeholder"))
        return arrays, size or 1

    def _check_fixed(self, feeds: dict[str, Any], batch: int) -> None:
        """ValueError unless a fed batch is the one the program fixed (no batched feed: nothing to check)."""
        placeholders = [*self.nodes, *self.optional.values()]
        fed = [p.attrs["name"] for p in placeholders if None in p.shape and p.attrs["name"] in feeds]
        if fed:
            self.require_batch(batch, f"feed '{fed[0]}'")

    def require_batch(self, batch: int, what: str) -> None:
        """ValueError naming `what` (the feed giving `batch`) unless `batch` is the program's fixed one."""
        if self.fixed is not None and batch != self.fixed.size:
            raise ValueError(self.fixed.mismatch(what, batch))

    def _check_one(self, name: str, value: Any, shape: tuple, dtype: np.dtype, batch: list) -> np.ndarray:
        arr = self._convert(name, value, dtype)
        if arr.ndim != len(shape):
            raise ValueError(f"feed '{name}': expected rank {len(shape)} {shape_str(shape)}, "
                             f"got rank {arr.ndim} {shape_str(arr.shape)}")
        for want, got in zip(shape, arr.shape):
            if want is None:
                if batch[0] is None:
                    batch[:] = [got, name]
                elif got != batch[0]:
                    raise ValueError(f"feed '{name}': batch size {got} differs from feed '{batch[1]}' ({batch[0]})")
            elif want != got:
                raise ValueError(f"feed '{name}': expected shape {shape_str(shape)}, got {shape_str(arr.shape)}")
        return arr

    def _convert(self, name: str, value: Any, dtype: np.dtype) -> np.ndarray:
        if type(value) is np.ndarray and value.dtype == dtype and value.flags.c_contiguous:
            return value
        if isinstance(value, (str, bytes)):
            raise TypeError(f"feed '{name}': expected a numeric array of {dtype}, got {type(value).__name__}")
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as e:
            raise TypeError(f"feed '{name}': cannot convert to an array of {dtype}: {e}") from None
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"feed '{name}': expected a numeric array of {dtype}, got dtype {arr.dtype}")
        if dtype.kind in "iub" and arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise TypeError(f"feed '{name}': expected integers ({dtype}), got non-integral floats")
        if dtype.kind == "b" and arr.dtype.kind != "b":
            raise TypeError(f"feed '{name}': expected bool, got {arr.dtype}")
        if dtype.kind in "iu" and arr.size and arr.dtype.kind in "iuf":
            info = np.iinfo(dtype)
            if arr.min() < info.min or arr.max() > info.max:
                raise TypeError(f"feed '{name}': values outside the range of {dtype} (would wrap around)")
        return np.asarray(arr, dtype=dtype, order="C")  # (ascontiguousarray would make a 0-d array 1-d)

    def _names_error(self, feeds: dict[str, Any]) -> None:
        missing = [n for n in self.names if n not in feeds]
        extra = [k for k in feeds if k not in self.index and k not in self.optional]
        parts = []
        if missing:
            parts.append("missing feed(s) " + ", ".join(f"'{m}' {shape_str(self.shapes[self.index[m]])}" for m in missing))
        if extra:
            parts.append("unknown feed(s) " + ", ".join(f"'{e}'" for e in extra) +
                         " (placeholders: " + ", ".join(self.names) + ")")
        raise ValueError("; ".join(parts))

