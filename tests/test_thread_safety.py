"""Compiled functions called from several threads, and feeds whose buffer moves between calls.

Every function holds the step lock of its variables' group while its step runs: a function called
from several threads, and functions sharing a variable (on any backends), run one step at a time;
functions with disjoint variables have locks of their own. The races below lose updates, mix up
feeds or tear parameter matrices without the lock (sys.setswitchinterval makes the threads switch
often; the large variables keep the GIL released for long in numpy and native code).

An array resized in place (or given a new state with __setstate__) keeps its identity, shape and
dtype but moves its buffer: the next LLVM call must read the new one (the C path, the generated
Python path and the general path).
"""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

import graphnet as gn
import graphnet.function as function
import codegen.llvm.call as call_path
from codegen.numpy_backend import NumpyBackend

pytestmark = pytest.mark.usefixtures("private_cache")


def _opencl_available() -> bool:
    try:
        from codegen.opencl import runtime
        runtime.list_devices()
    except RuntimeError:
        return False
    return True


BACKENDS = ["numpy", "llvm", pytest.param("opencl", marks=pytest.mark.skipif(not _opencl_available(),
                                                                              reason="no OpenCL"))]
SIZE = 1 << 18  # elements per variable: a step on it runs long with the GIL released


@pytest.fixture(autouse=True)
def frequent_switches():
    """Threads switch every few microseconds, so an unlocked read-modify-write is interrupted."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _in_threads(worker, count: int = 4) -> list:
    """Run `worker(index)` in `count` threads; the exceptions they raised."""
    errors: list = []

    def guarded(index: int) -> None:
        try:
            worker(index)
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


# ---- one function from several threads ------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_training_step_called_from_threads_loses_no_updates(backend):
    with gn.Graph():
        counter = gn.variable("counter", np.zeros(SIZE, np.float32))
        step = gn.compile(counter.sum(), updates=[(counter, counter + 1.0)], backend=backend)
    calls = 40
    assert not _in_threads(lambda _: [step() for _ in range(calls)])
    np.testing.assert_array_equal(counter.value, 4 * calls)


class LocklessBackend(NumpyBackend):
    """The numpy backend without a step lock of its own, as a backend written elsewhere may be."""

    def __init__(self, program, options):
        super().__init__(program, options)
        del self.lock

    def run(self, arrays: list, batch: int) -> list:
        env = self.evaluate(arrays, batch)
        results = [np.array(env[f], copy=True) for f in self.program.fetches]
        for var, value in self.program.updates:
            var.attrs["var"].array[...] = env[value]
        return results


def test_the_function_holds_the_lock_around_a_backend_without_one(monkeypatch):
    monkeypatch.setitem(function.BACKENDS, "lockless", f"{__name__}:LocklessBackend")
    test_a_training_step_called_from_threads_loses_no_updates("lockless")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_function_called_from_threads_returns_each_call_its_own_result(backend):
    with gn.Graph():
        x = gn.placeholder("x", (None, 64))
        w = gn.variable("w", np.full(64, 0.5, np.float32))
        fn = gn.compile(x * 2.0 + w, backend=backend)
    feeds = [np.full((SIZE // 64, 64), i, np.float32) for i in range(4)]
    wrong = []

    def worker(i: int) -> None:
        for _ in range(30):
            got = fn(x=feeds[i])
            if not (got.min() == got.max() == 2.0 * i + 0.5):
                wrong.append(i)

    assert not _in_threads(worker)
    assert wrong == []


# ---- functions sharing variables ----------------------------------------------------------------
READER_WRITER = [("llvm", "llvm"), ("numpy", "numpy"), ("numpy", "llvm"), ("llvm", "numpy"),
                 pytest.param("opencl", "opencl", marks=pytest.mark.skipif(not _opencl_available(),
                                                                           reason="no OpenCL"))]


@pytest.mark.parametrize("reader, writer", READER_WRITER)
def test_a_reader_never_sees_a_half_updated_variable(reader, writer):
    """A training step adds 1 to every element of w while a predict function in other threads reads
    it: each read sees w from before or after a step, never a mix of both."""
    with gn.Graph():
        scale = gn.placeholder("scale", ())
        w = gn.variable("w", np.zeros(SIZE, np.float32))
        predict = gn.compile(w * scale, backend=reader)
        train = gn.compile(w.sum(), updates=[(w, w + 1.0)], backend=writer)
    one = np.float32(1.0)
    torn = []
    done = threading.Event()

    def worker(i: int) -> None:
        if i == 0:
            for _ in range(steps):
                train()
            done.set()
            return
        while not done.is_set():
            got = predict(scale=one)
            if got.min() != got.max():
                torn.append((got.min(), got.max()))

    steps = 200
    assert not _in_threads(worker, 3)
    assert torn == []
    np.testing.assert_array_equal(w.value, steps)


def test_value_reads_a_whole_step():
    """`Node.value` (Variable.read) takes the same lock as the steps."""
    with gn.Graph():
        w = gn.variable("w", np.zeros(SIZE, np.float32))
        train = gn.compile(w.sum(), updates=[(w, w + 1.0)], backend="llvm")
    torn = []
    done = threading.Event()

    def worker(i: int) -> None:
        if i == 0:
            for _ in range(100):
                train()
            done.set()
            return
        while not done.is_set():
            got = w.value
            if got.min() != got.max():
                torn.append((got.min(), got.max()))

    assert not _in_threads(worker, 2)
    assert torn == []


def test_functions_sharing_variables_share_one_lock_and_others_do_not():
    """Groups of variables merge when a function uses variables of several: every function of the
    merged group then takes the same lock; functions of disjoint variables keep their own."""
    with gn.Graph():
        a = gn.variable("a", np.zeros(3, np.float32))
        b = gn.variable("b", np.zeros(3, np.float32))
        c = gn.variable("c", np.zeros(3, np.float32))
        x = gn.placeholder("x", (3,))
        fa = gn.compile(a * x, backend="llvm")
        fb = gn.compile(b * x, backend="numpy")
        fc = gn.compile(c * x, backend="llvm")
        pure = [gn.compile(x * 2.0, backend="llvm") for _ in range(2)]
        assert len({id(f.step_lock.lock) for f in (fa, fb, fc, *pure)}) == 5
        fab = gn.compile(a + b, updates=[(a, a + 1.0)], backend="numpy")
    locks = {id(f.step_lock.lock) for f in (fa, fb, fab)}
    assert len(locks) == 1 and id(fc.step_lock.lock) not in locks
    for var in (a, b):
        assert var.attrs["var"].step_lock.lock is fab.step_lock.lock


def test_a_merge_waits_for_a_running_step_of_the_absorbed_group():
    """While a step of b's group runs, compiling a function of a and b cannot hand b's functions
    another lock: the merge waits for the step (here: for the lock it holds)."""
    with gn.Graph():
        a = gn.variable("a", np.zeros(3, np.float32))
        b = gn.variable("b", np.zeros(3, np.float32))
        fa = gn.compile(a * 1.0, backend="numpy")
        fb = gn.compile(b * 1.0, backend="numpy")
        merged = threading.Event()

        def compile_both() -> None:
            gn.compile(a + b, backend="numpy")
            merged.set()

        with fb.step_lock.hold():  # as a running step of fb holds it
            thread = threading.Thread(target=compile_both)
            thread.start()
            assert not merged.wait(0.5)
            assert fb.step_lock.lock is not fa.step_lock.lock
        thread.join()
    assert merged.is_set() and fb.step_lock.lock is fa.step_lock.lock
    np.testing.assert_array_equal(fb(), 0.0)  # the absorbed group's functions take the new lock


@pytest.fixture(params=["native", "python", "general"])
def path(request, monkeypatch):
    """Which call path the LLVM function compiled in the test takes: the C one (_call.c), the
    generated Python one, or Function._general (LLVMBackend.run)."""
    if request.param == "native" and call_path.native is None:
        pytest.skip("the C call path was not built (no C compiler at install time)")
    if request.param != "native":
        monkeypatch.setattr(call_path, "native", None)
    return request.param


def _caller(fn, path: str):
    return (lambda **feeds: fn._general(feeds)) if path == "general" else fn


def test_after_a_merge_the_call_paths_take_the_merged_lock(path):
    """fb's call path has used b's lock; once a function of a and b merged b's group into a's, a
    call of fb waits while a's lock is held."""
    with gn.Graph():
        a = gn.variable("a", np.zeros(3, np.float32))
        b = gn.variable("b", np.ones(3, np.float32))
        x = gn.placeholder("x", (3,))
        fa = gn.compile(a * x, backend="llvm")
        fb = _caller(gn.compile(b * x, backend="llvm"), path)
        feed = np.full(3, 2.0, np.float32)
        for _ in range(3):  # the first call checks, later ones take the path under test
            np.testing.assert_array_equal(fb(x=feed), 2.0)
        gn.compile(a + b, backend="numpy")
    finished = threading.Event()
    thread = threading.Thread(target=lambda: finished.set() if np.all(fb(x=feed) == 2.0) else None)
    with fa.step_lock.hold():
        thread.start()
        assert not finished.wait(0.5)
    thread.join()
    assert finished.is_set()


# ---- a feed's buffer moves between calls --------------------------------------------------------
def _move_buffer(x: np.ndarray, keep: list) -> None:
    """Give `x` (the same object, shape and dtype) its data in another buffer: resize it in place to a
    larger size and back, as in the issue, which moves it where the allocator cannot grow it in
    place; else `__setstate__`, which frees the buffer and allocates a new one, while `keep` takes
    the freed one, so the new one lies elsewhere. The sizes stay small, so freed buffers stay mapped
    (a stale address reads old data rather than crash)."""
    before, size = x.ctypes.data, x.size
    x.resize(16 * size, refcheck=False)
    x.resize(size, refcheck=False)
    for _ in range(8):
        if x.ctypes.data != before:
            return
        x.__setstate__(np.zeros(2 * size, x.dtype).__reduce__()[2])
        keep.append(np.empty(size, x.dtype))
        x.__setstate__(np.zeros(size, x.dtype).__reduce__()[2])
    pytest.fail("the buffer did not move: nothing is tested")


def test_a_feed_whose_buffer_moved_is_read_from_its_new_buffer(path):
    with gn.Graph():
        x = gn.placeholder("x", (None,))
        fn = gn.compile(x * 2.0, backend="llvm")
    call = _caller(fn, path)
    feed = np.full(64, 1.0, np.float32)
    for _ in range(3):  # the first call checks, later ones take the path under test
        np.testing.assert_array_equal(call(x=feed), 2.0)
    keep: list = []
    for value in (3.0, 5.0, 7.0):
        _move_buffer(feed, keep)
        feed[:] = value
        np.testing.assert_array_equal(call(x=feed), 2.0 * value)
