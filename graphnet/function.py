"""`gn.compile`: fetches + updates -> pass pipeline -> a backend -> a callable `Function`."""
from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import itertools
import operator
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from . import ops, step_cache
from .batchdim import FixedBatch, fixed_batch
from .errors import ShapeError
from .feeds import FeedSpec
from .graph import Node, Variable, shape_str
from .passes.pipeline import Pass, PassRecord, run_pipeline
from .program import Program
from .step_cache import Interface


class PythonCall:
    """`fn(**feeds)` -> `fn._call(feeds)`: Function's call where the C extension (codegen/llvm/_call.c,
    whose `Callable` does the same without a Python frame) was not built."""

    def __call__(self, **feeds: Any) -> Any:
        return self._call(feeds)


try:
    from codegen.llvm._call import Callable as _CallBase
except ImportError:  # installed without a C compiler
    _CallBase = PythonCall

BACKENDS = {
    "numpy": "codegen.numpy_backend:NumpyBackend",
    "llvm": "codegen.llvm.backend:LLVMBackend",
    "opencl": "codegen.opencl.backend:OpenCLBackend",
}


class StepLock:
    """The lock every compiled function using one group of variables holds while its step runs.

    Variables used by one function form a group, and groups merge when a new function uses variables
    of several: so a function called from several threads, and functions sharing a variable (on any
    backends), run one step at a time, while functions with disjoint variables run in parallel. A
    function with no variables has a group of its own (its buffers still need the lock).

    `with step_lock.hold():` holds it (re-entrant: a backend's `run` takes it again under the
    Function's). A merge gives the absorbed groups' StepLocks the surviving group's `lock` after
    acquiring theirs, so a caller that acquired `self.lock` and still finds it there holds the
    group's lock; one that finds another lock there acquired an absorbed one and must retry (the
    LLVM call paths do the same check).
    """

    __slots__ = ("lock", "root", "members", "serial")
    _serials = itertools.count()

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.root = self  # the group's surviving StepLock; its `members` share its lock
        self.members = [self]
        self.serial = next(StepLock._serials)  # merges acquire groups' locks in this order

    def hold(self) -> "_Held":
        """A context manager holding the group's lock."""
        return _Held(self)

    def absorb(self, other: "StepLock") -> None:
        """Merge `other`'s group into this one (both roots), once no step of either runs."""
        locks = [s.lock for s in sorted((self, other), key=lambda s: s.serial)]
        for lock in locks:
            lock.acquire()
        try:
            for member in other.members:
                member.lock, member.root = self.lock, self
            self.members += other.members
            other.members = []
        finally:
            for lock in reversed(locks):
                lock.release()


class _Held:
    """`StepLock.hold()`: releases the lock it acquired, whatever a merge did meanwhile."""

    __slots__ = ("step_lock", "lock")

    def __init__(self, step_lock: StepLock):
        self.step_lock = step_lock

    def __enter__(self) -> None:
        step_lock = self.step_lock
        lock = step_lock.lock
        lock.acquire()
        while lock is not step_lock.lock:  # merged while this thread waited: the group's lock is another
            lock.release()
            lock = step_lock.lock
            lock.acquire()
        self.lock = lock

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


_merging = threading.Lock()  # one merge of groups at a time


def step_lock(program: Program) -> StepLock:
    """The StepLock of a compiled program's variables (`variables_lock`)."""
    return variables_lock(v.attrs["var"] for v in program.variables)


def variables_lock(variables: Iterable[Variable]) -> StepLock:
    """The StepLock of these variables: their groups merged into one (the oldest group survives),
    joined by the variables in no group yet; a new group where there are none."""
    variables = {id(v): v for v in variables}.values()
    with _merging:
        roots = sorted({id(v.step_lock.root): v.step_lock.root for v in variables if v.step_lock}.values(),
                       key=lambda s: s.serial)
        group = roots[0] if roots else StepLock()
        for other in roots[1:]:
            group.absorb(other)
        for var in variables:
            if var.step_lock is None:
                var.step_lock = group
    return group


@contextlib.contextmanager
def timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    """Add the time the block takes to `seconds[phase]` (a compile's breakdown, `Function.compile_seconds`)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - start


@contextlib.contextmanager
def objects_before_frozen() -> Iterator[None]:
    """The objects the garbage collector tracks when the block starts are left out of its collections
    until the block ends (`gc.freeze`, then `gc.unfreeze`), unless something froze objects already.
    A compile allocates enough objects to set off full collections, and each full collection walks
    every object of the process (the compile's own and all the rest: numpy,
    llvmlite, the user's data); the compile's garbage is still collected as it goes."""
    if gc.get_freeze_count():  # the process (or another compile) froze objects: leave them as they are
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass(frozen=True)
class CompileOptions:
    backend: str = "llvm"
    training: bool = False
    check_numerics: bool = False


def compile(fetches: Any, updates: Any = None, backend: str = "llvm", training: bool | None = None,
            check_numerics: bool = False, passes: Sequence[Pass] | None = None,
            fuse_optimizer: bool = True) -> "Function":
    """Compile `fetches` (a node, list, tuple or dict of nodes) and `updates` into a callable.

    `updates` (pairs (variable, new value), a dict, or an optimizer's result) are applied in place
    after the fetches are computed. `training` (default: True when updates are given) enables dropout.
    `fuse_optimizer=False` leaves out the optimizer-fusion pass: each update becomes a kernel of its
    own that reads the gradient from memory (same numbers; for comparisons and debugging).
    """
    with objects_before_frozen():
        return _compile(fetches, updates, backend, training, check_numerics, passes, fuse_optimizer)


def _compile(fetches: Any, updates: Any, backend: str, training: bool | None, check_numerics: bool,
             passes: Sequence[Pass] | None, fuse_optimizer: bool) -> "Function":
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    training = updates is not None if training is None else bool(training)
    flat, rebuild = _flatten(fetches)
    pairs = _update_pairs(updates)
    if training:
        pairs = _with_rng_step(flat, pairs)
    gradients = dict(getattr(updates, "gradients", {}))  # an optimizer's: where its fused updates start
    seconds: dict[str, float] = {}
    written = Program(flat, pairs, gradients=gradients)
    options = CompileOptions(backend, training, check_numerics)
    module, cls = BACKENDS[backend].split(":")
    backend_class = getattr(importlib.import_module(module), cls)
    user_nodes = flat + [var for var, _ in pairs]
    user_placeholders = list(user_nodes[0].graph.placeholders.values()) if user_nodes else ()

    optimised: list = []

    def optimise() -> tuple[Program, list[PassRecord]]:
        """The graph passes' result, run once (on a cache hit, when the function or backend first asks)."""
        if not optimised:
            optimised.append(run_pipeline(written, passes, training=training, fuse_optimizer=fuse_optimizer))
        return optimised[0]

    keyed = None
    if hasattr(backend_class, "from_cache"):  # a backend with a compiled-function cache
        with timed(seconds, "cache lookup"):
            keyed = _step_key(written, backend_class, options, passes, fuse_optimizer)
    cached = _cached_step(keyed, backend_class, options, optimise, seconds) if keyed else None
    if cached is not None:
        interface, executable = cached
        fn = Function(None, executable, rebuild, None, options, user_placeholders, fixed_batch(written.nodes()),
                      interface=interface, optimise=optimise)
    else:
        with _compile_workers(backend_class, options):
            with timed(seconds, "graph passes"):
                program, records = optimise()
            executable = backend_class(program, options)
        # The user's nodes name the op that fixed the batch; a pass may have folded it away.
        fixed = fixed_batch([*written.nodes(), *program.nodes()])
        fn = Function(program, executable, rebuild, records, options, user_placeholders, fixed)
        if keyed and (fixed is None) == (fixed_batch(written.nodes()) is None):  # else a hit could not tell it
            _store_step(keyed, executable, fn.interface)
    for phase, value in getattr(executable, "compile_seconds", {}).items():
        seconds[phase] = seconds.get(phase, 0.0) + value
    fn.compile_seconds = seconds
    if os.environ.get("GRAPHNET_DUMP"):
        from .dump import dump_numbered
        dump_numbered(fn, os.environ["GRAPHNET_DUMP"])
    return fn


def _compile_workers(backend_class: Any, options: CompileOptions) -> contextlib.AbstractContextManager:
    """A backend's context for a compile's graph passes and its own work (the LLVM backend's: worker
    processes that warm LLVM up meanwhile, codegen/llvm/workers.py)."""
    start = getattr(backend_class, "compile_workers", None)
    return start(options) if start is not None else contextlib.nullcontext()


def _step_key(written: Program, backend_class: Any, options: CompileOptions, passes: Any,
              fuse_optimizer: bool) -> tuple[str, step_cache.Fingerprint] | None:
    """The compiled-function cache's key (graphnet/step_cache.py) and fingerprint, or None where it
    does not apply: user passes, check_numerics, an unkeyable program."""
    if passes is not None or options.check_numerics:
        return None
    fp = step_cache.fingerprint(written)
    if fp is None:
        return None
    return step_cache.step_key(fp, options, fuse_optimizer, backend_class.cache_context()), fp


def _cached_step(keyed: tuple[str, step_cache.Fingerprint], backend_class: Any, options: CompileOptions,
                 optimise: Callable, seconds: dict[str, float]) -> tuple[Interface, Any] | None:
    """The compiled step from the compiled-function cache, on the user's variables, or None."""
    with timed(seconds, "cache lookup"):
        entry = step_cache.load(*keyed)
    if entry is None:
        return None
    interface, described, blobs = entry
    lock = variables_lock(interface.variables)
    try:
        executable = backend_class.from_cache(described, blobs, interface.variables, lock, options,
                                              lambda: optimise()[0])
    except (ValueError, KeyError, TypeError, IndexError):
        return None  # an entry that does not fit this graph: a miss
    return None if executable is None else (interface, executable)


def _store_step(keyed: tuple[str, step_cache.Fingerprint], executable: Any, interface: Interface) -> None:
    key, fp = keyed
    try:
        described, blobs = executable.cached_form(fp.variables)
    except KeyError:  # storage the written program's variables do not hold
        return
    step_cache.store(key, interface, fp, described, blobs)


class Function(_CallBase):
    """A compiled function: call it with feeds by placeholder name, `fn(x=..., labels=...)`.

    The call passes the feeds to `self._call`: the backend's shorter path for the common case where it
    has one (`fast_call`), else `_general`. Every step holds `step_lock`, the StepLock of the function's
    variables, so calls from several threads are safe (one step at a time per group of variables).
    `compile_seconds` is where `gn.compile` spent its time, by phase (graph passes, then the backend's).
    """

    def __init__(self, program: Program | None, executable: Any, rebuild: Any, records: list[PassRecord] | None,
                 options: CompileOptions, user_placeholders: Sequence[Node] = (), fixed: FixedBatch | None = None,
                 interface: Interface | None = None, optimise: Callable | None = None):
        """`program` and `records` may be None where `interface` says what calls need and `optimise()`
        gives them when first asked for (a compiled-function cache hit)."""
        self._program, self._records, self._optimise = program, records, optimise
        self.executable, self.options = executable, options
        self._rebuild = rebuild
        self.compile_seconds: dict[str, float] = {}
        self.interface = interface = interface or Interface.of(program)
        self.from_cache = program is None  # loaded whole from the compiled-function cache
        self.feeds = FeedSpec(interface.placeholders, user_placeholders, interface.needs_batch, fixed)
        # A backend's run holds its variables' StepLock (`lock`); around a backend without one, the Function does.
        lock = getattr(executable, "lock", None)
        self.step_lock: StepLock = lock if isinstance(lock, StepLock) else variables_lock(interface.variables)
        self._check, self._run = self.feeds.check, executable.run  # bound once: the per-call path is short
        if lock is not self.step_lock:
            self._run = _locked(executable.run, self.step_lock)
        fast = getattr(executable, "fast_call", None)
        general = weakref.WeakMethod(self._general)  # no cycle through the fast path: arenas free on `del`
        self._call = (fast and fast(self.feeds, rebuild, lambda feeds: general()(feeds))) or self._general
        host = not getattr(executable, "device_resident", False)
        self._host_reads = list(interface.variables) if host else []
        self._host_writes = list(interface.updated) if host else []

    @property
    def program(self) -> Program:
        """The optimised program this function runs (after a cache hit, the passes run when first asked)."""
        if self._program is None:
            self._program, self._records = self._optimise()
        return self._program

    @property
    def records(self) -> list[PassRecord]:
        """Each graph pass's record (its result's text and time)."""
        if self._records is None:
            self._program, self._records = self._optimise()
        return self._records

    @property
    def graph(self):
        """The optimised graph this function runs."""
        nodes = self.program.nodes()
        return nodes[0].graph if nodes else None

    def _general(self, feeds: dict[str, Any]) -> Any:
        """Check (and convert) the feeds, run, rebuild the fetches' structure. A backend may offer a
        shorter path for the common case (`fast_call`) that falls back to this one."""
        return self._rebuild(self._flat_call(feeds))

    def _flat_call(self, feeds: dict[str, Any]) -> list:
        """The general path's step, its fetches as a flat list."""
        arrays, batch = self._check(feeds)
        if Variable.any_mirrors:
            return self._run_coherent(arrays, batch)
        return self._run(arrays, batch)

    def run_steps(self, feeds_by_name: dict[str, np.ndarray], batch_size: int, order: Any = None,
                  steps: int | None = None, *, start: int = 0) -> Any:
        """Run the step on `steps` mini-batches of whole datasets; each fetch comes back stacked per step.

        `feeds_by_name`: for each placeholder whose first dimension is the batch (`None`), the whole
        dataset (the same number of samples in each); for any other placeholder, the value every step
        is fed. Each is an ndarray of the placeholder's dtype, C-contiguous. Step k takes the rows
        `order[j*batch_size:(j+1)*batch_size]` with j = (start + k) mod the number of batches in
        `order` (int64 sample indices, by default 0..n-1; the last batch is short when batch_size does
        not divide its length), so steps past the last batch start over from the first. `steps`
        defaults to the rest of the pass over `order` from batch `start` (the whole of it). Returns the fetches in the function's
        structure, each with a leading axis of one row per step (a scalar loss gives shape (steps,)); a
        fetch whose first dimension is the batch comes back with the steps' rows one after another
        (a model's outputs over a dataset, as `Model.predict` gathers them).

        The results are those of calling the function on each batch in turn (dropout's step counter
        advances once per step; its row offset, `rng/offset`, stays as set for the whole call). The LLVM backend runs each stretch of full batches in one native call
        with the C extension; other backends, and the LLVM one without it, loop in Python. Everything
        is checked before the first step: bad input raises and changes no variable.
        """
        sources, n = self._datasets(feeds_by_name)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"run_steps: batch_size must be a positive integer, got {batch_size!r}")
        return self._run_checked_steps(tuple(sources.values()), int(batch_size), _sample_order(order, n), steps,
                                      start=start)

    def _run_checked_steps(self, values: tuple[np.ndarray, ...], batch_size: int, order: np.ndarray | None = None,
                          steps: int | None = None, *, start: int = 0) -> Any:
        """`run_steps` on arguments that already pass its checks: `values` one array per placeholder in
        placeholder order (as `run_steps` checks them), `batch_size` a positive int, `order` None or a
        C-contiguous int64 array of sample indices (Model.fit's arrays and shuffles, made to pass
        them). The native loop checks its arguments again (no memory is read outside them) and the
        per-batch path checks each batch as a call does."""
        n = len(values[self._first_batched])
        plan = _StepPlan(n if order is None else len(order), batch_size, start, steps)
        if self.feeds.fixed is not None:
            self._require_fixed_batch(plan)
        outs = self._step_outputs(plan.steps, plan.rows)
        native = self._native_steps if not Variable.any_mirrors else None
        if native is not None and 0 < plan.steps <= plan.full - plan.start:  # one stretch of full batches
            native(self._call, values, order, plan.start * batch_size, plan.steps, batch_size, tuple(outs))
            return self._rebuild(outs)
        per_row = self._per_row  # fetches whose first dimension is the batch: their samples' rows
        k = row = 0  # the next step's row of a stacked fetch, and of a batched one
        for j, count, size in plan.segments():
            if native is not None:  # a stretch of full batches, or the short batch: one native call
                native(self._call, values, order, j * batch_size, count, size,
                       tuple(out[row:row + count * size] if rows else out[k:k + count]
                             for out, rows in zip(outs, per_row)))
                k, row = k + count, row + count * size
                continue
            for b in range(j, j + count):  # else one call of the step per batch
                rows = slice(b * batch_size, b * batch_size + size)
                rows = rows if order is None else order[rows]
                batch = {name: a[rows] if batched else a for name, a, batched in zip(self.feeds.names, values,
                                                                                    self._batched)}
                for out, by_row, value in zip(outs, per_row, self._flat_call(batch)):
                    if by_row:
                        out[row:row + size] = value
                    else:
                        out[k] = value
                k, row = k + 1, row + size
        return self._rebuild(outs)

    def _sum_checked_steps(self, values: tuple[np.ndarray, ...], batch_size: int, order: np.ndarray | None,
                           steps: int, start: int, sums: list[float]) -> list[float] | None:
        """`_run_checked_steps` on one stretch of full batches, or on the short last batch alone, of a
        function whose fetches are each one float32 or float64 number, in the native loop, returning each
        fetch's sum instead of its values: `sums` plus value times the batch's size, step by step, in
        float64 (the same products and additions, in the same order, as adding the stacked values:
        Model.fit's epoch sums, bit for bit). None, having run nothing, where the native loop does not
        take them (no C extension, device mirrors, other fetches, a wrap-around or a short batch among
        full ones, another fixed batch size): the caller runs `_run_checked_steps` instead."""
        length = len(values[self._first_batched]) if order is None else len(order)
        full = length // batch_size
        size = batch_size if 0 <= start < start + steps <= full else \
            length - full * batch_size if start == full and steps == 1 else 0  # 0: neither (or no short batch)
        fixed = self.feeds.fixed
        if not size or not self._summable or Variable.any_mirrors or (fixed is not None and fixed.size != size):
            return None
        totals = np.array(sums, dtype=np.float64)
        self._native_steps(self._call, values, order, start * batch_size, steps, size, totals)
        return totals.tolist()

    @functools.cached_property
    def _summable(self) -> bool:
        """Whether the native loop takes `_sum_checked_steps`: each fetch one float32 or float64 number."""
        return self._native_steps is not None and all(
            shape == () and np.dtype(dtype) in (np.float32, np.float64) for shape, dtype in self.interface.fetches)

    def _require_fixed_batch(self, plan: "_StepPlan") -> None:
        """run_steps' batch sizes against the program's fixed batch (if any), all before the first step."""
        fixed = self.feeds.fixed
        wrong = [size for size in plan.sizes() if size != fixed.size] if fixed is not None else ()
        if wrong:
            name = next(n for n, batched in zip(self.feeds.names, self._batched) if batched)
            self.feeds.require_batch(wrong[0], f"run_steps: feed '{name}'")

    @functools.cached_property
    def _batched(self) -> list[bool]:
        """Whether each placeholder's first dimension is the batch (run_steps splits those)."""
        return [bool(shape) and shape[0] is None for shape in self.feeds.shapes]

    @functools.cached_property
    def _first_batched(self) -> int:
        """The first placeholder whose first dimension is the batch (ValueError where none is)."""
        return self._batched.index(True)

    @functools.cached_property
    def _native_steps(self) -> Callable | None:
        """The backend's `run_steps` (all full batches of a stretch in one native call), where the C
        extension's per-call path offers it; None: one call per batch."""
        native = getattr(self.executable, "run_steps", None)
        return native if getattr(self._call, "run_steps", None) is not None else None

    @functools.cached_property
    def _output_shapes(self) -> list[tuple[tuple[int, ...], bool, np.dtype]]:
        """Each fetch's shape without its leading batch dimension where it has one, whether it has
        one, and its dtype (`_step_outputs`); ValueError for a batch dimension that is not the first."""
        shapes = []
        for i, (shape, dtype) in enumerate(self.interface.fetches):
            if None in shape[1:]:
                raise ValueError(f"run_steps gathers a batched fetch's rows along its first dimension: fetch {i} "
                                 f"{shape_str(shape)} has a batch dimension that is not its first")
            per_row = shape[:1] == (None,)
            shapes.append((tuple(shape[1:]) if per_row else tuple(shape), per_row, np.dtype(dtype)))
        return shapes

    @functools.cached_property
    def _per_row(self) -> list[bool]:
        """Whether each fetch's first dimension is the batch (run_steps gathers its rows)."""
        return [shape[:1] == (None,) for shape, _ in self.interface.fetches]

    def _datasets(self, feeds: Any) -> tuple[dict[str, np.ndarray], int]:
        """run_steps' feeds checked (exact names, dtypes, row shapes, C-contiguous, one length), in
        placeholder order, and the number of samples."""
        names = self.feeds.names
        if not isinstance(feeds, dict) or len(feeds) != len(names) or not all(name in feeds for name in names):
            given = sorted(feeds) if isinstance(feeds, dict) else type(feeds).__name__
            raise ValueError(f"run_steps: feeds_by_name must map exactly the placeholders {names} to "
                             f"arrays, got {given}")
        sources, n, first = {}, None, None
        for name, shape, dtype, batched in zip(names, self.feeds.shapes, self.feeds.dtypes, self._batched):
            a = feeds[name]
            if type(a) is not np.ndarray or a.dtype != dtype:
                got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
                raise TypeError(f"run_steps: feed '{name}' must be a numpy array of {dtype}, got {got}")
            if not a.flags.c_contiguous:
                raise ValueError(f"run_steps: feed '{name}' is not C-contiguous (np.ascontiguousarray copies it)")
            if None in shape[1:]:
                raise ValueError(f"run_steps: placeholder '{name}' {shape_str(shape)} has a batch dimension that "
                                 f"is not its first")
            lead = 1 if batched else 0  # the dimensions a dataset's shape must match
            if a.ndim != len(shape) or a.shape[lead:] != shape[lead:]:
                what = "whole datasets of" if batched else "the value of"
                raise ValueError(f"run_steps: feed '{name}' must be {what} {shape_str(shape)}, got "
                                 f"{shape_str(a.shape)}")
            if batched and n is None:
                n, first = len(a), name
            elif batched and len(a) != n:
                raise ValueError(f"run_steps: feed '{name}' has {len(a)} samples but feed '{first}' has {n}")
            sources[name] = a
        if n is None:
            raise ValueError("run_steps: no placeholder has a leading batch dimension (None) to split into batches")
        if n == 0:
            raise ValueError("run_steps: the datasets are empty")
        return sources, n

    def _step_outputs(self, steps: int, rows: int) -> list[np.ndarray]:
        """One array per fetch: a row per step, or for a fetch whose first dimension is the batch, the
        steps' `rows` samples."""
        return [np.empty((rows, *shape) if per_row else (steps, *shape), dtype)
                for shape, per_row, dtype in self._output_shapes]

    def _run_coherent(self, arrays: list, batch: int) -> list:
        """A host backend's step on variables that also live on a device: read the newest values
        first, then tell the device copies what this step wrote (all under the step lock)."""
        with self.step_lock.hold():
            for var in self._host_reads:
                for mirror in var.mirrors:
                    mirror.pull(var)
            out = self._run(arrays, batch)
            for var in self._host_writes:
                for mirror in var.mirrors:
                    mirror.push(var)
            return out

    def dump(self, directory: str) -> str:
        """Write the graph after each pass and the backend's artifacts (loop IR, code) into `directory`."""
        from .dump import dump_function
        return dump_function(self, directory)

    def profile(self, feeds: dict[str, Any], repeats: int = 20):
        """Time each native kernel inside the step on these feeds (the LLVM backend's `profile`); the
        variables are restored afterwards. Returns a `codegen.llvm.profile.Profile` (print it for a table)."""
        if not hasattr(self.executable, "profile"):
            raise TypeError(f"profiling needs the llvm backend, not {self.options.backend}")
        arrays, batch = self._check(feeds)
        variables = {id(v): v for v in [*self.interface.variables, *self.interface.updated]}
        saved = [(var, var.read()) for var in variables.values()]
        try:
            return self.executable.profile(arrays, batch, repeats)
        finally:
            for var, value in saved:
                var.write(value)

    def kernel_map(self) -> dict[Node, str] | None:
        """Node -> native kernel name (pictures draw kernels as clusters); None for the numpy backend."""
        lp = getattr(self.executable, "lp", None)
        if lp is None:
            return None
        from .viz import kernel_map
        return kernel_map(self.program, lp)


def _sample_order(order: Any, n: int) -> np.ndarray | None:
    """run_steps' `order` as C-contiguous int64 indices into n samples (None: 0..n-1 in turn)."""
    if order is None:
        return None
    arr = order if type(order) is np.ndarray else np.asarray(order)
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or len(arr) == 0:
        raise TypeError(f"run_steps: order must be a non-empty 1-d array of integer sample indices, got "
                        f"{arr.dtype} {shape_str(arr.shape)}")
    # as unsigned, a negative int64 is larger than any sample index: one pass checks both ends
    if arr.view(np.uint64).max() >= n if arr.dtype == np.int64 else arr.min() < 0 or arr.max() >= n:
        bad = int(arr.min()) if arr.min() < 0 else int(arr.max())
        raise IndexError(f"run_steps: order holds {bad}, not a sample index (0 to {n - 1})")
    return np.ascontiguousarray(arr, dtype=np.int64)


class _StepPlan:
    """Which batch each of run_steps' steps takes: `length` positions of the order in batches of
    `batch_size` (the last one short when it does not divide), `steps` of them from batch `start` on,
    wrapping around (checked here)."""

    __slots__ = ("batch_size", "full", "short", "batches", "start", "steps", "short_steps", "rows")

    def __init__(self, length: int, batch_size: int, start: Any, steps: Any):
        self.batch_size, self.full, self.short = batch_size, length // batch_size, length % batch_size
        self.batches = self.full + (self.short > 0)
        if type(start) is not int and (isinstance(start, bool) or not isinstance(start, (int, np.integer))) \
                or not 0 <= start < self.batches:
            raise ValueError(f"run_steps: start must be a batch index from 0 to {self.batches - 1}, got {start!r}")
        self.start = int(start)
        if steps is None:
            steps = self.batches - self.start
        elif type(steps) is not int and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer))) \
                or steps < 0:
            raise ValueError(f"run_steps: steps must be an integer >= 0, got {steps!r}")
        self.steps = int(steps)
        # the steps on the short batch: the first at step (full - start) mod batches, then every pass
        first_short = (self.full - self.start) % self.batches
        self.short_steps = 0 if not self.short or first_short >= self.steps else \
            1 + (self.steps - 1 - first_short) // self.batches
        self.rows = (self.steps - self.short_steps) * batch_size + self.short_steps * self.short

    def sizes(self) -> list[int]:
        """The batch sizes the steps take, each once, in the order they first come."""
        first = (self.short, self.batch_size) if self.start == self.full else (self.batch_size, self.short)
        taken = {self.batch_size: self.steps - self.short_steps, self.short: self.short_steps}
        return [size for size in first if taken[size]]

    def segments(self) -> Iterator[tuple[int, int, int]]:
        """(first batch, steps, batch size) in step order: stretches of full batches, each short batch alone."""
        k = 0
        while k < self.steps:
            j = (self.start + k) % self.batches
            count = min(self.steps - k, self.full - j) if j < self.full else 1
            yield j, count, self.batch_size if j < self.full else self.short
            k += count


def _locked(run: Any, lock: StepLock) -> Any:
    """`run` holding `lock`."""
    def locked_run(arrays: list, batch: int) -> list:
        with lock.hold():
            return run(arrays, batch)
    return locked_run


def _flatten(fetches: Any):
    if isinstance(fetches, Node):
        return [fetches], operator.itemgetter(0)
    if isinstance(fetches, dict):
        keys = list(fetches)
        return [_check_fetch(fetches[k]) for k in keys], lambda out: dict(zip(keys, out))
    if isinstance(fetches, (list, tuple)):
        return [_check_fetch(f) for f in fetches], tuple if type(fetches) is tuple else list
    raise TypeError(f"fetches must be a node, list, tuple or dict of nodes, got {type(fetches).__name__}")


def _check_fetch(f: Any) -> Node:
    if not isinstance(f, Node):
        raise TypeError(f"fetch {f!r} is not a graph node")
    return f


def _update_pairs(updates: Any) -> list[tuple[Node, Node]]:
    if updates is None:
        return []
    items = updates.items() if isinstance(updates, dict) else updates
    if isinstance(items, tuple) and len(items) == 2 and isinstance(items[0], Node) and items[0].op.name == "variable":
        items = [items]  # one pair, as v.assign(expr) returns it
    pairs = []
    for var, value in items:
        if not isinstance(var, Node) or var.op.name != "variable":
            raise TypeError(f"update target {var!r} is not a variable")
        if not isinstance(value, Node):  # a number or array: broadcast to the variable, in its dtype
            value = ops.broadcast_to(ops.promote([var, value])[1], var.shape)
        if value.graph is not var.graph:
            raise ValueError(f"update of {var.name}: value belongs to another graph")
        if value.shape != var.shape or value.dtype != var.dtype:
            raise ShapeError(f"update of {var.name}: value is {value.dtype} {shape_str(value.shape)}, variable is "
                             f"{var.dtype} {shape_str(var.shape)} (value created at {value.source})")
        pairs.append((var, value))
    if len({id(v) for v, _ in pairs}) != len(pairs):
        raise ValueError("a variable is updated twice in one function")
    return pairs


def _with_rng_step(fetches: list[Node], pairs: list[tuple[Node, Node]]) -> list[tuple[Node, Node]]:
    """Training functions that draw dropout masks advance the graph's step counter each call."""
    program = Program(fetches, pairs)
    steps = {n.inputs[1] for n in program.nodes() if n.op.name == "dropout"}
    updated = {v for v, _ in pairs}
    return pairs + [(s, s + np.int32(1)) for s in sorted(steps - updated, key=lambda n: n.id)]
