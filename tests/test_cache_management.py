"""The compile cache a user can manage: XDG location, a size limit with least-recently-used eviction,
and `graphnet cache info|clear`."""
from __future__ import annotations

import os

import numpy as np
import pytest

import graphnet as gn
from codegen import cache
from graphnet.cli import main


@pytest.fixture
def empty_root(tmp_path, monkeypatch):
    monkeypatch.delenv("GRAPHNET_CACHE_MAX_BYTES", raising=False)
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path / "c"))
    return tmp_path / "c"


def test_the_location_honours_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("GRAPHNET_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == str(tmp_path / "xdg" / "graphnet")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_root() == os.path.join(os.path.expanduser("~"), ".cache", "graphnet")
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path / "mine"))
    assert cache.cache_root() == str(tmp_path / "mine")


def test_least_recently_used_entries_are_evicted_first(empty_root, monkeypatch):
    store = cache.DiskCache("test", ".bin")
    keys = [cache.cache_key(i) for i in range(4)]
    for i, key in enumerate(keys):
        store.store(key, bytes(1000))
        os.utime(store.entry_path(key), (1000 + i, 1000 + i))  # stored in order 0, 1, 2, 3
    assert store.load(keys[0]) is not None  # a hit makes entry 0 the most recently used
    monkeypatch.setenv("GRAPHNET_CACHE_MAX_BYTES", "3500")
    store.store(cache.cache_key("new"), bytes(1000))  # 5 entries > 3500 bytes: evict down to 2625
    kept = [store.load(k) is not None for k in keys]
    assert kept == [True, False, False, False]
    assert store.load(cache.cache_key("new")) is not None
    assert cache.info()["bytes"] <= 3500 * 3 // 4


def test_info_and_clear_from_the_command_line(empty_root, capsys):
    x = gn.placeholder("x", (None, 3))
    gn.compile(gn.exp(x) * 2.0, backend="llvm")
    state = cache.info()
    assert state["entries"] >= 1 and state["namespaces"]["llvm"]["bytes"] > 0
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(empty_root) in out and "llvm:" in out
    assert main(["cache", "clear"]) == 0
    assert "removed" in capsys.readouterr().out
    assert cache.info()["entries"] == 0


def test_a_bad_size_limit_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("GRAPHNET_CACHE_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="GRAPHNET_CACHE_MAX_BYTES"):
        cache.max_bytes()
