"""The compiled-function cache (graphnet/step_cache.py): a key from the graph as written, so a hit loads
the whole compiled function without graph passes, lowering or LLVM; everything the code depends on is
in the key, and a damaged or foreign entry is a miss."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphnet as gn
import graphnet.function
from codegen import cache
from codegen.cache import STEPS

RNG = np.random.default_rng(7)
W1 = RNG.standard_normal((5, 8)).astype(np.float32)
W2 = RNG.standard_normal((8, 3)).astype(np.float32)
X = RNG.standard_normal((6, 5)).astype(np.float32)
Y = RNG.standard_normal((6, 3)).astype(np.float32)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_warned", set())
    return tmp_path / "cache"


def train_step(scale=0.5, axis=1, features=5, lr=0.01, dtype=np.float32, optimizer="adam", hyper=None,
               **compile_args):
    """A two-layer MLP's Adam step in a fresh graph: (function, its two weight variables)."""
    with gn.Graph():
        x = gn.placeholder("x", (None, features), dtype)
        y = gn.placeholder("y", (None, 3), dtype)
        w1 = gn.variable("w1", W1[:features].astype(dtype))
        w2 = gn.variable("w2", W2.astype(dtype))
        h = gn.tanh(x @ w1) * gn.constant(np.full(8, scale, dtype))
        loss = gn.mean(gn.sum((h @ w2 - y) ** 2, axis=axis))
        opt = gn.optim.get(optimizer, lr=lr, **(hyper or {}))
        fn = gn.compile({"loss": loss}, updates=opt.minimize(loss), **compile_args)
    return fn, (w1, w2)


def run(fn, weights, steps=3, features=5, dtype=np.float32):
    x, y = X[:, :features].astype(dtype), Y.astype(dtype)
    losses = [fn(x=x, y=y)["loss"] for _ in range(steps)]
    return losses, [w.value for w in weights]


def test_a_hit_runs_no_pass_lowering_or_llvm_and_matches_a_fresh_compile_bit_for_bit(cache_dir, monkeypatch):
    fresh, fresh_weights = train_step()
    assert not fresh.from_cache
    expected = run(fresh, fresh_weights)

    def forbidden(*args, **kwargs):
        raise AssertionError("the compiler ran on a cache hit")

    monkeypatch.setattr(graphnet.function, "run_pipeline", forbidden)
    monkeypatch.setattr("codegen.lower.lower", forbidden)
    monkeypatch.setattr("codegen.llvm.jit.Compiler.optimize", forbidden)
    hit, hit_weights = train_step()
    assert hit.from_cache and hit.executable.cache_hit
    assert not {"graph passes", "lowering", "loop passes", "LLVM IR", "LLVM optimisation"} & set(hit.compile_seconds)
    got = run(hit, hit_weights)  # trains the new graph's own variables
    for a, b in zip(expected[0] + expected[1], got[0] + got[1]):
        assert a.tobytes() == b.tobytes()


def test_a_hits_program_and_loop_program_are_built_when_asked_for(cache_dir):
    fresh, _ = train_step()
    hit, _ = train_step()
    assert hit.from_cache
    assert hit.program.to_text() == fresh.program.to_text()
    assert [r.name for r in hit.records] == [r.name for r in fresh.records]
    assert hit.executable.lp.to_text(sources=False) == fresh.executable.lp.to_text(sources=False)
    assert hit.kernel_map() is not None


@pytest.mark.parametrize("change", [
    {"scale": 0.25},  # a constant's value
    {"axis": 0},  # an attribute
    {"features": 4},  # a shape
    {"hyper": {"betas": (0.8, 0.999)}},  # an optimizer hyper-parameter
    {"hyper": {"eps": 1e-6}},
    {"optimizer": "sgd"},  # another optimizer
    {"dtype": np.float64},
    {"fuse_optimizer": False},
    {"training": False},
])
def test_each_ingredient_of_the_key_changes_it(cache_dir, change):
    train_step()
    assert train_step()[0].from_cache
    changed, weights = train_step(**change)
    assert not changed.from_cache
    again, again_weights = train_step(**change)  # stored under its own key
    assert again.from_cache
    features = change.get("features", 5)
    dtype = change.get("dtype", np.float32)
    expected, got = run(changed, weights, 2, features, dtype), run(again, again_weights, 2, features, dtype)
    for a, b in zip(expected[0] + expected[1], got[0] + got[1]):
        assert a.tobytes() == b.tobytes()


def test_the_learning_rate_is_a_variable_so_another_one_hits_and_is_used(cache_dir, monkeypatch, tmp_path):
    train_step(lr=0.01)
    hit, weights = train_step(lr=0.02)
    assert hit.from_cache
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path / "elsewhere"))
    fresh, fresh_weights = train_step(lr=0.02)
    assert not fresh.from_cache
    expected, got = run(fresh, fresh_weights), run(hit, weights)
    for a, b in zip(expected[0] + expected[1], got[0] + got[1]):
        assert a.tobytes() == b.tobytes()


def test_the_thread_count_is_in_the_key(cache_dir, monkeypatch):
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "1")
    train_step()
    assert train_step()[0].from_cache
    monkeypatch.setenv("GRAPHNET_NUM_THREADS", "2")
    two, _ = train_step()
    assert not two.from_cache and two.executable.threads == 2


def test_variables_bind_by_position_and_sharing_is_in_the_key(cache_dir):
    def program(shared: bool):
        with gn.Graph():
            x = gn.placeholder("x", (None, 2))
            a = gn.variable("a", np.ones((2, 2), np.float32))
            b = a if shared else gn.variable("b", np.ones((2, 2), np.float32))
            return gn.compile(x @ a, updates=[(b, b * 2.0)]), a, b

    program(False)
    fn, a, b = program(False)
    assert fn.from_cache
    out = fn(x=np.ones((1, 2), np.float32))
    np.testing.assert_array_equal(out, [[2.0, 2.0]])
    np.testing.assert_array_equal(b.value, 2 * np.ones((2, 2)))
    np.testing.assert_array_equal(a.value, np.ones((2, 2)))
    shared, a, _ = program(True)
    assert not shared.from_cache
    shared(x=np.ones((1, 2), np.float32))
    np.testing.assert_array_equal(a.value, 2 * np.ones((2, 2)))


def test_user_passes_and_check_numerics_are_not_served_from_this_cache(cache_dir):
    train_step()
    assert not train_step(check_numerics=True)[0].from_cache
    assert not train_step(passes=[])[0].from_cache
    assert not train_step(passes=[])[0].from_cache


def test_an_op_defined_outside_graphnet_is_not_served_from_this_cache(cache_dir, monkeypatch):
    train_step()
    with gn.Graph():
        tanh = type(gn.tanh(gn.placeholder("x", (None, 1))).op)
    monkeypatch.setattr(tanh, "__module__", "user_ops")  # its code is not in graphnet's source digest
    assert not train_step()[0].from_cache


def _entry() -> str:
    paths = [os.path.join(d, f) for d, _, fs in os.walk(STEPS.directory()) for f in fs]
    assert len(paths) == 1
    return paths[0]


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "empty", "bad json", "foreign entry"])
def test_a_damaged_or_foreign_entry_is_a_miss_that_recompiles(cache_dir, damage):
    fresh, weights = train_step()
    expected = run(fresh, weights)
    path = _entry()
    data = bytearray(open(path, "rb").read())
    header = data.index(b"\n")
    if damage == "flipped byte":
        data[header + 10] ^= 0x20
    elif damage == "truncated":
        data = data[:len(data) - 7]
    elif damage == "empty":
        data = b""
    elif damage == "bad json":  # a well-formed entry (right key and checksum) whose description is wrong
        payload = data[header + 1:].replace(b'"storage": [[', b'"storage": [[99, ')
        data = cache._header(os.path.basename(path)[:-len(STEPS.suffix)], bytes(payload)) + b"\n" + payload
    else:  # another program's entry copied over this one's
        train_step(scale=0.25)
        entries = [os.path.join(d, f) for d, _, fs in os.walk(STEPS.directory()) for f in fs]
        other = [e for e in entries if e != path]
        data = open(other[0], "rb").read()
    open(path, "wb").write(bytes(data))
    again, again_weights = train_step()
    assert not again.from_cache
    got = run(again, again_weights)
    for a, b in zip(expected[0] + expected[1], got[0] + got[1]):
        assert a.tobytes() == b.tobytes()
    assert train_step()[0].from_cache  # the entry was stored again, whole


def test_a_hit_whose_object_is_missing_or_foreign_recompiles(cache_dir):
    fresh, _ = train_step()
    os.unlink(fresh.executable.code_cache.entry_path(fresh.executable.key))
    again, _ = train_step()
    assert not again.from_cache and not again.executable.cache_hit
    assert train_step()[0].from_cache


def test_an_unsafe_cache_directory_is_not_read(cache_dir):
    train_step()
    os.chmod(cache_dir, 0o777)
    with pytest.warns(cache.UnsafeCacheWarning):
        fn, _ = train_step()
    assert not fn.from_cache


_FRESH_PROCESS = textwrap.dedent("""
    import json, sys, numpy as np
    sys.path.insert(0, sys.argv[1])
    from test_step_cache import train_step, run
    fn, weights = train_step()
    losses, values = run(fn, weights)
    print(json.dumps({"hit": fn.from_cache, "values": [a.tobytes().hex() for a in losses + values]}))
""")


def test_a_fresh_process_loads_the_function_and_computes_the_same_bits(cache_dir, tmp_path):
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH_PROCESS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    results = [json.loads(subprocess.run([sys.executable, str(script), os.path.dirname(__file__)], env=env, check=True,
                                         capture_output=True, text=True).stdout.splitlines()[-1]) for _ in range(2)]
    assert [r["hit"] for r in results] == [False, True]
    assert results[0]["values"] == results[1]["values"]


def _digest_reading(monkeypatch, stat=None) -> tuple[str, list[str]]:
    """source_digest() computed afresh in this process, and the source files it read."""
    from graphnet import step_cache
    monkeypatch.setattr(step_cache, "_SOURCE_DIGEST", [])
    read, real_open = [], open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: read.append(str(path)) or real_open(path, *a, **k))
    if stat is not None:
        monkeypatch.setattr(step_cache.os, "stat", stat)
    try:
        return step_cache.source_digest(), [p for p in read if p.endswith((".py", ".c"))]
    finally:
        monkeypatch.undo()


def test_the_source_digest_is_remembered_by_the_source_files_stamps(cache_dir, monkeypatch):
    first, read = _digest_reading(monkeypatch)
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(cache_dir))
    again, reread = _digest_reading(monkeypatch)
    assert again == first and read and not reread  # the stamps unchanged: no source file read
    real_stat = os.stat

    class Touched:
        def __init__(self, st):
            self.st, self.st_mtime_ns = st, st.st_mtime_ns + 1

        def __getattr__(self, name):
            return getattr(self.st, name)

    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(cache_dir))
    touched, read = _digest_reading(monkeypatch, lambda p, *a, **k: Touched(real_stat(p, *a, **k)))
    assert touched == first and read  # a file's stamp changed: every file read again (same contents)


def test_the_step_objects_key_covers_every_code_generator_source():
    """An LLVM step object is reused only while the code that emitted it is unchanged: the key's
    digest reads every source of the loop IR, lowering and the LLVM backend (a hand-kept list missed
    the direct convs', the window lowering's and the loop passes' files)."""
    from codegen.llvm import backend
    root = os.path.dirname(os.path.dirname(backend.__file__))
    expected = {os.path.join(folder, name) for folder in (root, os.path.join(root, "llvm"))
                for name in os.listdir(folder) if name.endswith(".py")}
    assert set(backend._SOURCES) == expected
    assert {"lower_conv.py", "window.py", "loop_passes.py", "gemm_schedule.py", "rowconv.py", "direct.py"} <= \
        {os.path.basename(p) for p in backend._SOURCES}
