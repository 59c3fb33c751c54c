"""The compile cache executes what it loads: entries are bound to their key, and only a directory
private to the user is used."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import graphnet as gn
from codegen import cache
from codegen.cache import DiskCache, UnsafeCacheWarning

KEY_A, KEY_B = cache.cache_key("program A"), cache.cache_key("program B")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_warned", set())
    return tmp_path / "cache"


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _files(root) -> set[str]:
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


# ---- entries carry their key -------------------------------------------------------------------
def test_entry_copied_over_another_keys_entry_is_a_miss(cache_dir):
    store = DiskCache("unit", ".o")
    store.store(KEY_A, b"code of A")
    store.store(KEY_B, b"code of B")
    assert store.load(KEY_B) == b"code of B"
    os.makedirs(os.path.dirname(store.entry_path(KEY_B)), exist_ok=True)
    shutil.copyfile(store.entry_path(KEY_A), store.entry_path(KEY_B))
    assert store.load(KEY_B) is None
    assert store.load(KEY_A) == b"code of A"
    store.store(KEY_B, b"code of B")  # the rebuilt payload replaces the foreign entry
    assert store.load(KEY_B) == b"code of B"


@pytest.mark.parametrize("damage", ["empty", "header only", "truncated payload", "flipped payload byte",
                                    "flipped key byte", "no header"])
def test_truncated_or_corrupted_entry_is_a_miss(cache_dir, damage):
    store = DiskCache("unit", ".o")
    store.store(KEY_A, b"x" * 100)
    path = store.entry_path(KEY_A)
    data = bytearray(open(path, "rb").read())
    header_end = data.index(b"\n")
    if damage == "empty":
        data = bytearray()
    elif damage == "header only":
        data = data[:header_end + 1]
    elif damage == "truncated payload":
        data = data[:-1]
    elif damage == "flipped payload byte":
        data[-10] ^= 0x01
    elif damage == "flipped key byte":
        data[data.index(KEY_A.encode())] ^= 0x01
    else:
        data = data[header_end + 1:]
    open(path, "wb").write(bytes(data))
    assert store.load(KEY_A) is None


def test_step_object_of_another_program_is_not_executed(cache_dir):
    x = gn.placeholder("x", (None, 3))
    a = gn.compile(x * 2.0, backend="llvm")
    b = gn.compile(x * 3.0, backend="llvm")
    code = a.executable.code_cache
    shutil.copyfile(code.entry_path(a.executable.key), code.entry_path(b.executable.key))
    again = gn.compile(x * 3.0, backend="llvm")
    assert not again.executable.cache_hit
    feed = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(again(x=feed), feed * 3)
    assert code.load(b.executable.key) is not None  # B's own object again
    assert gn.compile(x * 3.0, backend="llvm").executable.cache_hit


_GEMM_PROGRAM = textwrap.dedent("""
    import json, sys, numpy as np, graphnet as gn
    x = gn.placeholder("x", (None, 64))
    w = gn.variable("w", np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64))
    y = x @ (gn.transpose(w) if sys.argv[1] == "B" else w)
    fn = gn.compile(y, backend="llvm")
    print(json.dumps({"key": fn.executable.key, "y": fn(x=np.ones((5, 64), np.float32)).tolist()}))
""")


def _run_gemm_program(which: str, cache_dir) -> tuple[int, dict | str]:
    """A fresh process (a GEMM routine that is not what its symbol promises can kill it)."""
    env = dict(os.environ, GRAPHNET_CACHE_DIR=str(cache_dir))
    p = subprocess.run([sys.executable, "-c", _GEMM_PROGRAM, which], env=env, capture_output=True, text=True,
                       timeout=300)
    return p.returncode, json.loads(p.stdout) if p.returncode == 0 else p.stderr[-2000:]


def test_gemm_routine_entry_of_another_routine_is_not_linked(cache_dir):
    w = np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    rc, a = _run_gemm_program("A", cache_dir)
    assert rc == 0, a
    a_files = _files(cache_dir)
    rc, b = _run_gemm_program("B", cache_dir)
    assert rc == 0, b
    b_files = _files(cache_dir) - a_files
    gemm_a = [f for f in a_files if os.path.dirname(os.path.dirname(f)) == os.path.join(cache_dir, "gemm")]
    gemm_b = [f for f in b_files if os.path.dirname(os.path.dirname(f)) == os.path.join(cache_dir, "gemm")]
    assert len(gemm_a) == 1 and len(gemm_b) == 1  # x @ w and x @ w.T call different GEMM routines
    shutil.copyfile(gemm_a[0], gemm_b[0])
    rc, again = _run_gemm_program("B", cache_dir)
    assert rc == 0, again
    np.testing.assert_allclose(again["y"], np.ones((5, 64), np.float32) @ w.T, rtol=1e-5, atol=1e-5)


# ---- the directory must be private -------------------------------------------------------------
def test_cache_directories_and_missing_parents_are_created_private(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "_warned", set())
    root = tmp_path / "made" / "by" / "graphnet"
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(root))
    old = os.umask(0o022)  # a common umask, which leaves plain mkdir's folders readable by all
    try:
        DiskCache("unit", ".o").store(KEY_A, b"code")
    finally:
        os.umask(old)
    entry = DiskCache("unit", ".o").entry_path(KEY_A)
    folders = [tmp_path / "made", tmp_path / "made" / "by", root, root / "unit", os.path.dirname(entry)]
    assert [_mode(f) for f in folders] == [0o700] * len(folders)
    assert _mode(entry) == 0o600


def _unsafe_level(cache_dir, level: str) -> str:
    store = DiskCache("unit", ".o")
    return {"root": str(cache_dir), "namespace": store.directory(),
            "entry folder": os.path.dirname(store.entry_path(KEY_A))}[level]


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
@pytest.mark.parametrize("level", ["root", "namespace", "entry folder"])
def test_group_or_world_writable_cache_is_bypassed_with_one_warning(cache_dir, level, mode):
    store = DiskCache("unit", ".o")
    store.store(KEY_A, b"code of A")
    unsafe = _unsafe_level(cache_dir, level)
    os.chmod(unsafe, mode)
    before = {f: open(f, "rb").read() for f in _files(cache_dir)}
    with pytest.warns(UnsafeCacheWarning) as record:
        assert store.load(KEY_A) is None  # a valid entry, not read
    assert len(record) == 1
    message = str(record[0].message)
    assert unsafe in message and "writable by group or others" in message and f"{mode:04o}" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        assert store.load(KEY_A) is None
        store.store(KEY_A, b"other code")
        if level != "entry folder":  # a private entry folder elsewhere is still safe to use
            store.store(KEY_B, b"code of B")
    assert {f: open(f, "rb").read() for f in _files(cache_dir)} == before  # nothing written


def test_cache_owned_by_another_user_is_bypassed(cache_dir, monkeypatch):
    store = DiskCache("unit", ".o")
    store.store(KEY_A, b"code of A")
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)
    with pytest.warns(UnsafeCacheWarning, match=f"owned by uid {me}, not by the current user"):
        assert store.load(KEY_A) is None
    store.store(KEY_B, b"code of B")
    monkeypatch.setattr(os, "getuid", lambda: me)
    assert store.load(KEY_B) is None and store.load(KEY_A) == b"code of A"


def test_entry_file_writable_by_others_is_a_miss(cache_dir):
    store = DiskCache("unit", ".o")
    store.store(KEY_A, b"code of A")
    os.chmod(store.entry_path(KEY_A), 0o666)
    assert store.load(KEY_A) is None


def test_compile_with_an_unsafe_cache_compiles_in_memory(cache_dir):
    os.makedirs(cache_dir)
    os.chmod(cache_dir, 0o777)
    x = gn.placeholder("x", (None, 64))
    w = gn.variable("w", np.eye(64, dtype=np.float32))
    with pytest.warns(UnsafeCacheWarning, match=str(cache_dir)):
        first = gn.compile(x @ w + 1.0, backend="llvm")
    second = gn.compile(x @ w + 1.0, backend="llvm")
    assert not first.executable.cache_hit and not second.executable.cache_hit
    feed = np.ones((2, 64), np.float32)
    np.testing.assert_array_equal(second(x=feed), feed + 1)
    assert _files(cache_dir) == set()
