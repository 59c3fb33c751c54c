"""The compiled-function cache: a key from the graph as the user wrote it, so a hit skips the compiler.

`gn.compile` keys a function on its written program (before any pass) and everything else its code
depends on: each node's op, attributes, shape, dtype, id and batch fixing, constants by content,
variables by position (shape, dtype, trainable; not value, which is run-time storage), the fetches,
updates and optimizer gradients, the compile options, the backend's own context (for LLVM: target
CPU and features, thread count) and a digest of graphnet's and codegen's source and of numpy's and
llvmlite's versions. A hit returns the entry a miss stored: the function's interface (placeholders
it needs, variables it reads and updates, fetch shapes) and the backend's description of its
compiled step (for LLVM: the object's key in the object cache, buffers, constants' bytes, GEMM
routines), which binds to the user's own variables and placeholders.

Where the key cannot hold everything the code depends on, nothing is cached here (`fingerprint`
returns None): user passes and ops defined outside graphnet (code the digest does not cover),
check_numerics (errors name optimised nodes), collectives (every rank checks its lowered program), an
attribute of a type the key cannot spell, a batch fixed by a pass rather than by the user's nodes.

Entries live in the disk cache's `steps` namespace and follow its rules (`codegen/cache.py`: the
header names the full key and the payload's checksum, private directories, atomic writes, LRU
eviction). An entry that does not decode or does not fit the user's graph is a miss.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from codegen.cache import SOURCES, STEPS, cache_key
from codegen.memory import shape_from_json

from .graph import Constant, Node, Variable, ancestors
from .program import Program

_UNCACHEABLE_OPS = {"allreduce"}  # lowering registers it with the collectives runtime


class Unkeyable(Exception):
    """An attribute whose value the key cannot spell exactly."""


@dataclass
class Fingerprint:
    """A written program's canonical text and what positions in it stand for."""

    text: str
    variables: list[Variable]  # by position of first use in the text
    placeholders: dict[str, Node]  # the written program's, by name


@dataclass
class Interface:
    """What calling a compiled function needs of its program: the placeholders it reads (by name
    order), the variables it reads and updates, its fetches' shapes and dtypes."""

    placeholders: list[Node]
    variables: list[Variable]
    updated: list[Variable]
    fetches: list[tuple[tuple, np.dtype]]
    needs_batch: bool

    @classmethod
    def of(cls, program: Program) -> "Interface":
        placeholders = sorted(program.placeholders, key=lambda p: p.attrs["name"])
        needs_batch = any(None in n.shape or n.op.name == "batch_size" for n in program.nodes())
        return cls(placeholders, _unique(v.attrs["var"] for v in program.variables),
                   [v.attrs["var"] for v, _ in program.updates], [(f.shape, f.dtype) for f in program.fetches],
                   needs_batch)


def fingerprint(written: Program) -> Fingerprint | None:
    """The program's canonical text, or None where the key cannot cover what its code depends on."""
    nodes = ancestors(written.outputs + list(written.gradients) + list(written.gradients.values()))
    position = {n: i for i, n in enumerate(nodes)}
    variables: dict[int, int] = {}  # id(Variable) -> position
    lines = []
    try:
        for n in nodes:
            if n.op.name in _UNCACHEABLE_OPS or not type(n.op).__module__.startswith("graphnet."):
                return None  # (an op defined outside graphnet: its code is not in the source digest)
            attrs = _canon(n.attrs, variables)
            lines.append(f"{n.id} {n.op.name} {[position[x] for x in n.inputs]} {attrs} {n.shape} {n.dtype.str} "
                         f"{n.fixes_batch}")
    except Unkeyable:
        return None
    pos = lambda n: position[n]  # noqa: E731
    lines.append(f"fetch {[pos(f) for f in written.fetches]}")
    lines.append(f"update {[(pos(v), pos(x)) for v, x in written.updates]}")
    lines.append(f"gradients {[(pos(p), pos(g)) for p, g in written.gradients.items()]}")
    lines.append(f"regions {sorted((pos(n), r) for n, r in written.regions.items())}")
    by_id = {id(v): v for n in nodes if n.op.name == "variable" for v in [n.attrs["var"]]}
    return Fingerprint("\n".join(lines), [by_id[i] for i in variables],
                       {n.attrs["name"]: n for n in nodes if n.op.name == "placeholder"})


def _canon(value: Any, variables: dict[int, int]) -> str:
    """An exact, type-tagged spelling of an attribute value (so 1, 1.0 and True differ)."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        return "{" + ",".join(f"{_canon(k, variables)}:{_canon(v, variables)}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return type(value).__name__ + "(" + ",".join(_canon(v, variables) for v in value) + ")"
    if isinstance(value, Variable):
        index = variables.setdefault(id(value), len(variables))
        return f"var({index},{value.trainable},{value.array.shape},{value.array.dtype.str})"
    if isinstance(value, Constant):
        return f"const({value.array.dtype.str},{value.array.shape},{_digest(value.array)})"
    if isinstance(value, np.ndarray):
        return f"array({value.dtype.str},{value.shape},{_digest(value)})"
    if isinstance(value, np.dtype):
        return f"dtype({value.str})"
    if isinstance(value, np.generic):
        return f"{value.dtype.str}({value.tobytes().hex()})"
    if isinstance(value, float):
        return f"float({value.hex()})"
    if value is None or isinstance(value, (bool, int, str)):
        return f"{type(value).__name__}({value!r})"
    if isinstance(value, slice):
        return f"slice({_canon((value.start, value.stop, value.step), variables)})"
    raise Unkeyable(type(value).__name__)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _unique(variables) -> list[Variable]:
    return list({id(v): v for v in variables}.values())


_SOURCE_DIGEST: list[str] = []


def source_digest() -> str:
    """graphnet's and codegen's source (every .py and .c file, `__version__` included) and the numpy
    and llvmlite versions the compiler ran with; once per process. The digest is remembered in the
    disk cache under the files' names, sizes, modification times and inodes (a stricter check than
    Python's own bytecode cache makes), so a process whose sources are unchanged reads none of them."""
    if not _SOURCE_DIGEST:
        versions = f"numpy {np.__version__} llvmlite {_llvmlite_version()}"
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        files = []
        for package in ("graphnet", "codegen"):
            for folder, dirs, names in sorted(os.walk(os.path.join(root, package))):
                dirs.sort()
                files += [os.path.join(folder, n) for n in sorted(names) if n.endswith((".py", ".c"))]
        try:
            stats = [(os.path.relpath(p, root), st.st_size, st.st_mtime_ns, st.st_ino) for p in files
                     for st in [os.stat(p)]]
        except OSError:
            stats = None
        key = cache_key("source digest", root, versions, stats) if stats is not None else None
        remembered = SOURCES.load(key) if key else None
        if remembered is not None and len(remembered) == 64:
            _SOURCE_DIGEST.append(remembered.decode())
        else:
            h = hashlib.sha256(versions.encode())
            for path in files:
                h.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
            _SOURCE_DIGEST.append(h.hexdigest())
            if key:
                SOURCES.store(key, _SOURCE_DIGEST[0].encode())
    return _SOURCE_DIGEST[0]


def _llvmlite_version() -> str:
    try:
        import llvmlite
    except ImportError:  # not installed: no LLVM backend to cache for
        return "none"
    return llvmlite.__version__


def step_key(fp: Fingerprint, options: Any, fuse_optimizer: bool, context: Any) -> str:
    """The entry's key: the fingerprint, the compile options, the backend's context, the source digest."""
    return cache_key("step", fp.text, options, fuse_optimizer, context, source_digest())


# ---- entries ------------------------------------------------------------------------------------
def store(key: str, interface: Interface, fp: Fingerprint, backend: dict, blobs: list[bytes]) -> None:
    """Write the entry: a JSON line (the interface by names and positions, the backend's part with
    offsets into the blobs) and the blobs."""
    index = {id(v): i for i, v in enumerate(fp.variables)}
    if not all(id(v) in index for v in interface.variables):
        return  # a variable the written program does not show: nothing to bind it to on a hit
    described = {"placeholders": [[p.attrs["name"], list(p.shape), p.dtype.str] for p in interface.placeholders],
                 "variables": [index[id(v)] for v in interface.variables],
                 "updated": [index[id(v)] for v in interface.updated],
                 "fetches": [[list(s), np.dtype(d).str] for s, d in interface.fetches],
                 "needs_batch": interface.needs_batch}
    offsets = np.cumsum([0] + [len(b) for b in blobs]).tolist()
    head = json.dumps({"interface": described, "backend": backend, "blobs": offsets}).encode()
    STEPS.store(key, head + b"\n" + b"".join(blobs))


def load(key: str, fp: Fingerprint) -> tuple[Interface, dict, list[memoryview]] | None:
    """The entry for `key` bound to the user's nodes and variables, or None (absent, damaged, or not
    fitting this graph)."""
    payload = STEPS.load(key)
    if payload is None:
        return None
    try:
        head, _, data = payload.partition(b"\n")
        entry = json.loads(head)
        offsets = entry["blobs"]
        view = memoryview(data)
        if offsets[-1] != len(data):
            return None
        blobs = [view[a:b] for a, b in zip(offsets, offsets[1:])]
        return _interface(entry["interface"], fp), entry["backend"], blobs
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def _interface(described: dict, fp: Fingerprint) -> Interface:
    """The stored interface on the user's placeholders and variables (ValueError where they differ)."""
    placeholders = []
    for name, shape, dtype in described["placeholders"]:
        p = fp.placeholders[name]
        if p.shape != shape_from_json(shape) or p.dtype != np.dtype(dtype):
            raise ValueError(f"placeholder {name} differs from the entry's")
        placeholders.append(p)
    return Interface(placeholders, [fp.variables[i] for i in described["variables"]],
                     [fp.variables[i] for i in described["updated"]],
                     [(shape_from_json(s), np.dtype(d)) for s, d in described["fetches"]],
                     bool(described["needs_batch"]))


