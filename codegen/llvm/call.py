"""The per-call path of a compiled native step, for the common case of unchanged exact feeds.

It accepts only what the feed checks' own fast path accepts (`FeedSpec.last`: the exact shapes of the
last fully checked call, the placeholders' dtypes, C-contiguous ndarrays, no extra feeds, no device
mirrors); everything else, including a first call and a new batch size, goes to the general path
(`Function._general`), which converts, explains and raises. Under the function's step lock
(`graphnet.function.StepLock`) it stores each input's data pointer (every call: resize or
__setstate__ moves an array's data and keeps the object), makes one native call and copies the
fetched buffers out.

The path is the C extension's `FastCall` (codegen/llvm/_call.c): a tiny model's native step is far
shorter than the interpreter's work around it. Where the extension was not built (no C compiler at
install time) the same path is Python source specialised to the function, as `dataclasses` writes
each class's `__init__`: the checks unrolled with the placeholders' names, dtypes and slots as
constants. Both accept and refuse the same feeds.
"""
from __future__ import annotations

import ctypes
import sys
from typing import Any, Callable

import numpy as np

from graphnet.feeds import FeedSpec
from graphnet.graph import Variable

try:
    from . import _call as native
except ImportError:  # built without a C compiler: the generated Python path below, the fallback
    native = None


def _data_offset() -> int | None:
    """Where an ndarray object keeps its data pointer (numpy's C ABI: right after the object header),
    confirmed on probe arrays; None where that does not hold. Only CPython's id() is an address."""
    if sys.implementation.name != "cpython":
        return None
    offset = object.__basicsize__
    for probe in (np.zeros(3), np.zeros((2, 5), np.int8)[1:], np.ones(0, np.float32)):
        if probe.ctypes.data != (ctypes.c_void_p.from_address(id(probe) + offset).value or 0):
            return None
    return offset


_DATA_OFFSET = _data_offset()
_read_pointer = ctypes.c_void_p.from_address


def data_pointer(a: np.ndarray) -> int:
    """`a.ctypes.data` read straight from the array object (`ctypes.data` builds a ctypes object per read)."""
    if _DATA_OFFSET is None:
        return a.ctypes.data
    return _read_pointer(id(a) + _DATA_OFFSET).value or 0


def fast_call_source(names: list[str], slots: list[int], n_fetches: int, rebuild_list: bool) -> str:
    """The source of `call(feeds)` for a function with these placeholders (in order, with their buffer
    slots) and fetches."""
    lines = ["def call(feeds):",
             f"    if len(feeds) == {len(names)} and not Variable.any_mirrors and spec.last is not None:",
             "        batch, shapes = spec.last"]
    if names:
        lines.append("        try:")
        lines += [f"            a{i} = feeds[{name!r}]" for i, name in enumerate(names)]
        lines += ["        except KeyError:",
                  "            return general(feeds)"]
    tests = [f"type(a{i}) is ndarray and a{i}.dtype is d{i} and a{i}.shape == shapes[{i}] and a{i}.flags.c_contiguous"
             for i in range(len(names))]
    lines.append(f"        if {' and '.join(tests) or 'True'}:")
    # The lock still found in the StepLock once acquired is the group's (else a merge replaced it: the
    # general path retries). Data pointers are read every call: an array can move its data.
    lines += ["            lock = step_lock.lock",
              "            with lock:",
              "                if lock is step_lock.lock and backend.batch == batch:"]
    pointer = "read_pointer(id(a{i}) + %d).value" % _DATA_OFFSET if _DATA_OFFSET is not None else "a{i}.ctypes.data"
    lines += [f"                    slot_array[{slot}] = " + pointer.format(i=i) for i, slot in enumerate(slots)]
    copies = ", ".join(f"views[{k}].copy()" for k in range(n_fetches))
    result = f"[{copies}]" if rebuild_list else f"rebuild([{copies}])"
    lines += ["                    step(backend.batch_arg, address)",
              "                    views = backend.fetch_views",
              f"                    return {result}",
              "    return general(feeds)"]
    return "\n".join(lines) + "\n"


def fast_call(backend: Any, spec: FeedSpec, rebuild: Callable, general: Callable[[dict], Any]) -> Callable[[dict], Any]:
    """`general(feeds)` with the common case (same shapes as the last checked call) made short: the C
    `FastCall`, or the generated Python path where the extension was not built.

    `backend` provides `lock` (its StepLock), `batch` (and `batch_arg`, the same as a ctypes object),
    `step(batch_arg, slots_arg)`, `slots` (the buffer address table; `slots_arg` its address), `inputs`
    (each feed's slot) and `step_address` (the native step's address).
    """
    if native is not None:
        return native.FastCall(backend, spec, Variable, tuple(spec.names), tuple(spec.dtypes), tuple(backend.inputs),
                               backend.slots_address, backend.step_address, None if rebuild is list else rebuild,
                               general)
    return generated_call(backend, spec, rebuild, general)


def generated_call(backend: Any, spec: FeedSpec, rebuild: Callable,
                   general: Callable[[dict], Any]) -> Callable[[dict], Any]:
    """The fallback of `fast_call`: `fast_call_source` compiled, its constants bound."""
    source = fast_call_source(spec.names, list(backend.inputs), len(backend.lp.fetches), rebuild is list)
    namespace: dict[str, Any] = {
        "Variable": Variable, "ndarray": np.ndarray, "spec": spec, "backend": backend, "step_lock": backend.lock,
        "slot_array": backend.slots, "read_pointer": _read_pointer,
        "step": backend.step, "address": backend.slots_arg, "rebuild": rebuild, "general": general,
        **{f"d{i}": d for i, d in enumerate(spec.dtypes)},
    }
    exec(compile(source, "<graphnet fast call>", "exec"), namespace)
    call = namespace.pop("call")  # (left in its own globals it would be a reference cycle)
    call.source = source
    return call
