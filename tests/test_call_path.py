"""The per-call path of a compiled function (feed check fast path, cached feed addresses, fetch
copies): after calls that warm every cache, bad feeds are still refused before native code runs,
results never alias each other, and batch sizes may change from call to call. Every test runs with
the C call path (codegen/llvm/_call.c) and with the generated Python one (its fallback)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import graphnet as gn
import codegen.llvm.call as call_path
from codegen.llvm.backend import data_pointer

BACKENDS = ["numpy", "llvm"]
NATIVE = call_path.native


pytestmark = pytest.mark.usefixtures("private_cache")  # compile cold, in a cache of its own


@pytest.fixture(autouse=True, params=["native", "python"])
def implementation(request, monkeypatch):
    """Which fast path the LLVM functions compiled in the test get."""
    if request.param == "native" and NATIVE is None:
        pytest.skip("the C call path was not built (no C compiler at install time)")
    monkeypatch.setattr(call_path, "native", NATIVE if request.param == "native" else None)
    return request.param


def _takes_the_fast_path(fn) -> bool:
    if call_path.native is not None:
        return isinstance(fn._call, call_path.native.FastCall)
    return "def call" in fn._call.source


def _model(backend: str):
    """A one-layer training step (fetches: loss, predictions) and its weight variable."""
    rng = np.random.default_rng(0)
    with gn.Graph():
        x = gn.placeholder("x", (None, 3))
        y = gn.placeholder("y", (None, 2))
        w = gn.variable("w", rng.standard_normal((3, 2)).astype(np.float32))
        out = x @ w
        loss = gn.losses.mse(out, y)
        step = gn.compile([loss, out], updates=gn.optim.SGD(lr=0.1).minimize(loss), backend=backend)
    return step, w


def _batch(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3)).astype(np.float32), rng.standard_normal((n, 2)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_are_fresh_arrays(backend):
    step, _ = _model(backend)
    x, y = _batch(8)
    first = step(x=x, y=y)
    kept = [r.copy() for r in first]
    second = step(x=x, y=y)
    for a, b, k in zip(first, second, kept):
        assert not np.shares_memory(a, b)
        np.testing.assert_array_equal(a, k)  # the second call changed nothing the caller holds
    assert not np.array_equal(first[0], second[0])  # the weights moved between the calls


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_feeds_are_refused_after_the_fast_path_is_warm(backend):
    step, w = _model(backend)
    x, y = _batch(8)
    step(x=x, y=y)
    before = w.attrs["var"].read()
    bad = [
        (dict(x=x[:, :2].copy(), y=y), "expected shape"),
        (dict(x=x, y=y[:5]), "batch size"),
        (dict(x=x), "missing"),
        (dict(x=x, y=y, z=y), "unknown"),
        (dict(x=x, z=y), "missing feed.*'y'.*unknown feed.*'z'"),  # as many feeds as placeholders
        (dict(x=x[:0], y=y[:0]), "empty batch"),
        (dict(x=x.reshape(-1), y=y), "rank"),
        (dict(x=x, y="abc"), "numeric"),
    ]
    for feeds, mention in bad:
        with pytest.raises((ValueError, TypeError), match=mention):
            step(**feeds)
    np.testing.assert_array_equal(w.attrs["var"].read(), before)  # refused before anything ran


def test_an_array_reshaped_in_place_is_checked_again():
    step, _ = _model("llvm")
    x, y = _batch(8)
    step(x=x, y=y)
    address = x.ctypes.data
    x.resize((12, 2), refcheck=False)  # the same object and buffer, now the wrong shape (`x.shape =` is deprecated)
    assert x.ctypes.data == address
    with pytest.raises(ValueError, match="expected shape"):
        step(x=x, y=y)


def test_converted_feeds_give_the_same_results():
    """Non-contiguous, float64 and read-only feeds take the general path and match contiguous ones."""
    x, y = _batch(8)
    reference = _model("llvm")[0](x=x, y=y)
    ro = x.copy()
    ro.flags.writeable = False
    wide = np.zeros((8, 6), np.float32)
    wide[:, ::2] = x
    for feed in (np.asfortranarray(x), x.astype(np.float64), ro, wide[:, ::2], x.tolist()):
        got = _model("llvm")[0](x=feed, y=y)
        for g, r in zip(got, reference):
            np.testing.assert_array_equal(g, r)


def test_batch_sizes_change_between_calls():
    """Partial batches, a batch beyond the arena's first capacity, new array objects each call."""
    steps = {b: _model(b)[0] for b in BACKENDS}
    data_x, data_y = _batch(300, seed=1)
    for start, stop in [(0, 32), (32, 39), (39, 71), (71, 72), (72, 272), (272, 300), (0, 32)]:
        x, y = data_x[start:stop], data_y[start:stop]
        got, expected = steps["llvm"](x=x, y=y), steps["numpy"](x=x, y=y)
        assert got[1].shape == (stop - start, 2)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_data_pointer_matches_numpy():
    base = np.arange(40, dtype=np.float32).reshape(8, 5)
    ro = base.copy()
    ro.flags.writeable = False
    for a in (base, base[3:], base[:, 1:], base.T, ro, np.zeros(0, np.int8), np.ones((), np.float64)):
        assert data_pointer(a) == a.ctypes.data


@pytest.mark.parametrize("backend", BACKENDS)
def test_scalar_placeholders_take_python_and_numpy_scalars(backend):
    with gn.Graph():
        s = gn.placeholder("s", ())
        fn = gn.compile(s * 2.0, backend=backend)
    for value in (1.5, np.float32(1.5), np.float64(1.5), np.array(1.5, np.float32), 1):
        got = fn(s=value)
        assert got.shape == () and got.dtype == np.float32 and float(got) == 2.0 * float(value)


def test_batch_set_only_by_an_optional_feed_is_not_reused():
    x = gn.placeholder("x", (None, 2))
    fn = gn.compile(gn.zeros_like(x))  # reads no input, but its size comes from x
    assert fn(x=np.ones((5, 2), np.float32)).shape == (5, 2)
    assert fn(x=np.ones((5, 2), np.float32)).shape == (5, 2)
    with pytest.raises(ValueError, match="no fed placeholder sets its size"):
        fn()


def test_llvm_functions_take_the_generated_path_and_keep_the_fetch_structure():
    """The specialised call path (codegen/llvm/call.py) returns what the general path returns."""
    rng = np.random.default_rng(3)
    with gn.Graph():
        x = gn.placeholder("input 'x'", (None, 3))  # any placeholder name, quoted in the source
        w = gn.variable("w", rng.standard_normal((3, 2)).astype(np.float32))
        out = x @ w
        fetches = {"node": out, "list": [out, out * 2.0], "tuple": (out,), "dict": {"a": out, "b": out.sum()}}
        functions = {k: (gn.compile(f, backend="llvm"), gn.compile(f, backend="numpy")) for k, f in fetches.items()}
    feed = {"input 'x'": rng.standard_normal((4, 3)).astype(np.float32)}
    for kind, (fast, reference) in functions.items():
        assert _takes_the_fast_path(fast)
        assert call_path.native is not None or "input 'x'" in fast._call.source
        for _ in range(3):  # first call: general path; then the generated one
            got, want = fast(**feed), reference(**feed)
            assert type(got) is type(want), kind
            flat_got = got.values() if isinstance(got, dict) else [got] if isinstance(got, np.ndarray) else got
            flat_want = want.values() if isinstance(want, dict) else [want] if isinstance(want, np.ndarray) else want
            for g, e in zip(flat_got, flat_want):
                np.testing.assert_allclose(g, e, rtol=1e-6)


def test_check_numerics_functions_use_the_general_path():
    with gn.Graph():
        x = gn.placeholder("x", (None, 2))
        fn = gn.compile(x * 2.0, backend="llvm", check_numerics=True)
    assert fn._call == fn._general
    np.testing.assert_array_equal(fn(x=np.ones((2, 2), np.float32)), 2.0)


def test_concurrent_calls_with_different_batches_are_consistent():
    """Threads alternate batch sizes on one function: every result is the one a lone call gives."""
    import threading

    with gn.Graph():
        x = gn.placeholder("x", (None, 3))
        w = gn.variable("w", np.arange(6, dtype=np.float32).reshape(3, 2))
        fn = gn.compile(gn.ops.tanh(x @ w) * 1.0, backend="llvm")
    batches = {n: np.random.default_rng(n).standard_normal((n, 3)).astype(np.float32) for n in (1, 7, 64, 200)}
    expected = {n: np.tanh(b @ w.value) for n, b in batches.items()}
    errors = []

    def worker(seed: int) -> None:
        order = np.random.default_rng(seed).choice(list(batches), 300)
        for n in order:
            got = fn(x=batches[n])
            if got.shape != expected[n].shape or not np.allclose(got, expected[n], rtol=1e-5, atol=1e-6):
                errors.append(n)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_the_generated_path_runs_only_when_the_backend_is_set_for_the_checked_batch():
    """Another thread may check a new batch size (FeedSpec.last) before its run resizes the backend:
    a call seeing that state must take the general path, not run with the other batch's buffers."""
    with gn.Graph():
        x = gn.placeholder("x", (None, 3))
        fn = gn.compile(x * 2.0, backend="llvm")
    eight, five = np.ones((8, 3), np.float32), np.ones((5, 3), np.float32)
    fn(x=eight)
    fn.feeds.last = (5, ((5, 3),))  # checked for 5, the backend still set for 8
    assert fn.executable.batch == 8
    got = fn(x=five)
    assert got.shape == (5, 3) and fn.executable.batch == 5


def test_functions_without_placeholders_take_the_generated_path():
    with gn.Graph():
        counter = gn.variable("counter", np.zeros(3, np.float32))
        fn = gn.compile(counter * 2.0, updates=[(counter, counter + 1.0)], training=False)
    assert _takes_the_fast_path(fn)
    for expected in range(4):  # the first call checks (no feeds), the others take the generated path
        np.testing.assert_array_equal(fn(), 2.0 * expected)
    np.testing.assert_array_equal(counter.value, 4.0)


def test_a_dropped_function_frees_its_arena_without_the_cycle_collector():
    import gc
    import weakref

    with gn.Graph():
        x = gn.placeholder("x", (None, 3))
        fn = gn.compile(x * 2.0, backend="llvm")
    fn(x=np.ones((2, 3), np.float32))
    executable = weakref.ref(fn.executable)
    gc.disable()
    try:
        del fn
        assert executable() is None
    finally:
        gc.enable()


def test_calls_keep_no_references_to_feeds_or_results():
    """Reference counts around the C path: a warm call leaves its feeds and results as it found them."""
    import sys

    step, _ = _model("llvm")
    x, y = _batch(8)
    for _ in range(3):
        step(x=x, y=y)
    feeds = dict(x=x, y=y)
    before = sys.getrefcount(x), sys.getrefcount(y), sys.getrefcount(feeds)
    for _ in range(1000):
        loss, out = step(**feeds)
    assert (sys.getrefcount(x), sys.getrefcount(y), sys.getrefcount(feeds)) == before
    assert sys.getrefcount(out) == 2  # the name and getrefcount's argument: nothing else holds it
    step(x=x.copy(), y=y)
    assert sys.getrefcount(x) == 3  # the name, the feeds dict and getrefcount's argument: no slot keeps a feed


def test_the_fast_path_works_after_a_refused_call():
    """A refused call (the general path raises) leaves no lock held and no stale address behind."""
    step, w = _model("llvm")
    x, y = _batch(8)
    step(x=x, y=y)
    with pytest.raises(ValueError):
        step(x=x[:, :2].copy(), y=y)
    other = _model("llvm")[0]
    other(x=x, y=y)
    np.testing.assert_array_equal(step(x=x, y=y)[0], other(x=x, y=y)[0])


@pytest.mark.parametrize("base", ["C", "Python"])
def test_the_function_call_passes_keyword_arguments_as_one_dict(base):
    import graphnet.function as function

    if base == "C":
        if NATIVE is None:
            pytest.skip("the C call path was not built (no C compiler at install time)")
        callable_base = NATIVE.Callable
    else:
        callable_base = function.PythonCall

    class Recorder(callable_base):
        pass

    fn = Recorder()
    fn._call = lambda feeds: feeds  # Function.__init__ sets it per instance
    assert fn(x=1, y="a") == {"x": 1, "y": "a"} and fn() == {}
    feeds = {"x": 2}
    assert fn(**feeds) == feeds
    with pytest.raises(TypeError):
        fn(1)


def test_the_c_extension_is_built_where_there_is_a_c_compiler():
    """setup.py marks it optional, so a compile error would only print a warning at install time and
    leave every call on the Python path: this is where it shows. Function's base class and the LLVM
    fast path live in one module; the only other extensions are fit's epoch shuffle (graphnet/_shuffle.c)
    and fit's data check (graphnet/_datacheck.c), checked likewise; the benchmarks' and the MPI runtime's
    C files are compiled when first used, not installed."""
    import shutil
    import sysconfig

    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}): the Python call path is the one installed")
    import graphnet.function

    assert NATIVE is not None, "codegen/llvm/_call.c did not build: reinstall with `pip install -e .` and read its warning"
    assert graphnet.function.Function.__mro__[1] is NATIVE.Callable
    root = Path(__file__).resolve().parent.parent
    sources = [p.relative_to(root).as_posix() for d in ("graphnet", "codegen") for p in (root / d).rglob("*.c")]
    runtime_built = ("graphnet/bench/", "graphnet/distributed/native/")  # compiled when used (cc, mpicc)
    assert sorted(s for s in sources if not s.startswith(runtime_built)) == ["codegen/llvm/_call.c",
                                                                          "graphnet/_datacheck.c",
                                                                          "graphnet/_shuffle.c"]
    import graphnet._datacheck  # noqa: F401 (it built)
    import graphnet._shuffle  # noqa: F401 (it built)


def test_without_the_c_extension_every_call_takes_the_python_fallback():
    """An install without a C compiler: Function's base is PythonCall and the LLVM fast path is the
    generated Python one, with the same results as the general path."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys
        sys.modules["codegen.llvm._call"] = None  # as if it was never built: importing it fails
        import numpy as np
        import graphnet as gn
        from graphnet.function import Function, PythonCall
        assert Function.__mro__[1] is PythonCall
        x = gn.placeholder("x", (None, 3))
        fn = gn.compile(x * 2.0, backend="llvm")
        feed = np.arange(6, dtype=np.float32).reshape(2, 3)
        for _ in range(3):
            np.testing.assert_array_equal(fn(x=feed), feed * 2.0)
        assert "def call" in fn._call.source
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
