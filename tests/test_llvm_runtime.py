"""The LLVM backend's runtime: disk cache, dumps, check_numerics, bad feeds, arena growth."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphnet as gn


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def model(width: int = 4):
    x = gn.placeholder("x", (None, 3))
    w = gn.variable("w", np.linspace(-1, 1, 3 * width, dtype=np.float32).reshape(3, width))
    y = gn.tanh(x @ w)
    loss = gn.mean(y * y)
    (g,) = gn.gradients(loss, [w])
    return x, w, y, loss, [(w, w - 0.5 * g)]


def test_cache_miss_then_hit(cache_dir):
    x, w, y, loss, updates = model()
    first = gn.compile(y, backend="llvm")
    second = gn.compile(y, backend="llvm")
    assert not first.executable.cache_hit and second.executable.cache_hit
    feed = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(first(x=feed), second(x=feed))
    assert os.path.exists(first.executable.code_cache.entry_path(first.executable.key))


def test_cache_key_depends_on_constants_and_shapes(cache_dir):
    x = gn.placeholder("x", (None, 3))
    a = gn.compile(x * 0.1234567, backend="llvm")
    b = gn.compile(x * 0.1234568, backend="llvm")
    assert a.executable.key != b.executable.key
    assert not b.executable.cache_hit
    with gn.Graph():
        z = gn.placeholder("x", (None, 4))
        c = gn.compile(z * 0.1234567, backend="llvm")
    assert c.executable.key != a.executable.key


def test_corrupted_entry_is_detected_and_rebuilt(cache_dir):
    x, w, y, loss, updates = model()
    fn = gn.compile(y, backend="llvm")
    cache = fn.executable.code_cache
    path = cache.entry_path(fn.executable.key)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    again = gn.compile(y, backend="llvm")
    assert not again.executable.cache_hit
    feed = np.ones((3, 3), np.float32)
    np.testing.assert_allclose(again(x=feed), np.tanh(feed @ w.value), rtol=1e-6)
    assert cache.load(fn.executable.key) is not None  # rewritten whole
    open(path, "wb").write(b"")  # truncated
    assert not gn.compile(y, backend="llvm").executable.cache_hit


def test_concurrent_processes_share_the_cache(cache_dir):
    script = textwrap.dedent("""
        import numpy as np, graphnet as gn
        x = gn.placeholder("x", (None, 3))
        w = gn.variable("w", np.arange(12, dtype=np.float32).reshape(3, 4) / 10)
        fn = gn.compile(gn.sigmoid(x @ w) * 2, backend="llvm")
        print(repr(fn(x=np.ones((5, 3), np.float32)).sum()))
    """)
    env = dict(os.environ, GRAPHNET_CACHE_DIR=str(cache_dir))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    assert len({out for out, _ in outputs}) == 1
    entries = [f for _, _, files in os.walk(cache_dir) for f in files]
    assert entries and not any(f.startswith(".tmp-") for f in entries)


def test_dump_has_loop_ir_llvm_ir_with_source_lines_and_vector_assembly(cache_dir, tmp_path):
    x = gn.placeholder("x", (None, 256))
    w = gn.variable("w", np.ones(256, np.float32))
    fn = gn.compile(gn.sum(x * w + 1.5, 1), backend="llvm")
    out = tmp_path / "dump"
    fn.dump(str(out))
    loopir = (out / "loopir.txt").read_text()
    llvm_ir = (out / "module.ll").read_text()
    asm = (out / "module.s").read_text()
    assert "kernel k0" in loopir and "acc = sum" in loopir
    here = f"{os.path.basename(__file__)}:"
    assert here in loopir and here in llvm_ir  # comments name the user's line
    assert "@\"graphnet_step\"" in llvm_ir
    assert "zmm" in asm or "ymm" in asm


def test_check_numerics_names_node_and_line(cache_dir):
    x = gn.placeholder("x", (None, 2))
    y = gn.log(x - 1.0)  # the offending line
    line = f"{os.path.basename(__file__)}:{sys._getframe().f_lineno - 1}"
    fn = gn.compile(y * 2, backend="llvm", check_numerics=True)
    fn(x=np.full((3, 2), 2.0, np.float32))
    with pytest.raises(gn.NumericsError, match="log") as info:
        fn(x=np.array([[2.0, 0.5]], np.float32))
    assert line in str(info.value)
    fn(x=np.array([[np.nan, 2.0]], np.float32))  # non-finite input: nothing is blamed


def test_bad_feeds_are_rejected_or_converted_and_never_corrupt(cache_dir):
    x, w, y, loss, updates = model()
    step = gn.compile(loss, updates, backend="llvm")
    before = w.value
    bad = [np.ones((2, 4), np.float32), np.ones((2,), np.float32), np.ones((2, 3, 1), np.float32), "abc",
           np.array([["a", "b", "c"]]), np.ones((0, 3), np.float32), [[1, 2], [3]], None]
    for value in bad:
        with pytest.raises((ValueError, TypeError)):
            step(x=value)
    with pytest.raises((ValueError, TypeError)):
        step(z=np.ones((2, 3)))
    np.testing.assert_array_equal(w.value, before)
    fortran = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(4, 3) / 12)
    readonly = np.ones((4, 3), np.float32)
    readonly.setflags(write=False)
    strided = np.ones((8, 3), np.float32)[::2]
    ref = gn.compile(loss, backend="numpy")
    for value in (fortran, readonly, strided, [[0.5, 0.5, 0.5]]):
        expected = ref(x=value)
        np.testing.assert_allclose(step(x=value), expected, rtol=1e-5)


def test_arena_grows_for_larger_batches(cache_dir):
    x, w, y, loss, updates = model(width=40)
    fn = gn.compile(y, backend="llvm")
    ref = gn.compile(y, backend="numpy")
    capacity = fn.executable.plan.capacity
    for batch in (3, capacity * 3 + 1, 1, capacity):
        feed = np.random.default_rng(batch).normal(size=(batch, 3)).astype(np.float32)
        np.testing.assert_allclose(fn(x=feed), ref(x=feed), rtol=1e-5, atol=1e-6)
    assert fn.executable.plan.capacity > capacity


def test_temporaries_share_arena_memory(cache_dir):
    x = gn.placeholder("x", (None, 64))
    h = x
    for i in range(6):
        h = gn.matmul(gn.tanh(h), gn.variable(f"w{i}", np.eye(64, dtype=np.float32)))
    fn = gn.compile(h, backend="llvm")
    plan, lp = fn.executable.plan, fn.executable.lp
    total = sum(lp.buffers[b].elements(plan.capacity) * lp.buffers[b].dtype.itemsize for b in plan.offsets)
    assert plan.nbytes < total / 2
    feed = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    expected = feed
    for _ in range(6):
        expected = np.tanh(expected)
    np.testing.assert_allclose(fn(x=feed), expected, rtol=1e-5, atol=1e-6)


def test_fetching_sources_and_assigning_from_feeds(cache_dir):
    x = gn.placeholder("x", (None, 2))
    v = gn.variable("v", np.zeros(2, np.float32))
    count = gn.variable("count", np.int32(5))
    fetches = [x, v, gn.constant(np.arange(3, dtype=np.float32)), gn.batch_size(x), x > 0.5, count]
    updates = [(v, gn.sum(x, 0)), (count, count + np.int32(2))]
    llvm_fn = gn.compile(fetches, updates, backend="llvm")
    feed = np.array([[0.25, 1.0], [0.75, 2.0], [1.0, -1.0]], np.float32)
    first = llvm_fn(x=feed)
    np.testing.assert_array_equal(first[0], feed)
    np.testing.assert_array_equal(first[1], [0, 0])
    np.testing.assert_array_equal(first[2], [0, 1, 2])
    assert first[3] == 3 and first[4].dtype == bool and first[4].tolist() == (feed > 0.5).tolist()
    assert first[5] == 5 and count.value == 7
    np.testing.assert_array_equal(v.value, feed.sum(0))
    assert llvm_fn(x=feed[:1])[1].tolist() == feed.sum(0).tolist()


def test_calls_from_several_threads_with_growing_batches(cache_dir):
    from concurrent.futures import ThreadPoolExecutor
    x, w, y, loss, updates = model(width=32)
    fn = gn.compile(y, backend="llvm")
    feeds = [np.random.default_rng(b).normal(size=(b, 3)).astype(np.float32) for b in (5, 300, 7, 900, 2, 1500)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda f: fn(x=f), feeds * 3))
    for f, r in zip(feeds * 3, results):
        np.testing.assert_allclose(r, np.tanh(f @ w.value), rtol=1e-5, atol=1e-6)


def test_integer_division_by_zero_does_not_trap(cache_dir):
    a = gn.placeholder("a", (None,), np.int32)
    b = gn.placeholder("b", (None,), np.int32)
    fn = gn.compile(gn.divide(a, b), backend="llvm")
    out = fn(a=np.array([7, -7, 5, np.iinfo(np.int32).min], np.int32), b=np.array([2, 2, 0, -1], np.int32))
    assert out[:2].tolist() == [3, -3]


def test_each_kernel_body_is_preceded_by_its_loop_ir(cache_dir):
    x = gn.placeholder("x", (None, 8))
    fn = gn.compile([gn.sum(gn.exp(x), 1), gn.max(x, 0), gn.softmax(x)], backend="llvm")
    text = fn.executable.ir_text
    kernels = fn.executable.lp.kernels
    assert len(kernels) >= 3
    for k in kernels:
        head = f'define internal void @"{k.name}_body"'
        comment = "".join(f"; {line}\n" for line in k.to_text().splitlines())
        assert text.count(head) == 1 and comment + head in text
