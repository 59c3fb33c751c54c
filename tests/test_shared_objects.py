"""Steps as shared objects (issue #17, codegen/llvm/jit.py): where a linker exists a step's objects and
its GEMM routines are linked into one shared object, so that a compiled-function cache hit in a fresh
process loads it with the dynamic loader and imports no llvmlite.binding; a forked child runs its
parallel regions serially (the shared object's own serial flag); a failure to link or load falls back
to an MCJIT engine."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphnet as gn
from codegen.llvm import jit, parallel, workers
from codegen.llvm.jit import SharedLibrary, linker

pytestmark = pytest.mark.skipif(linker() is None, reason="no linker here: steps load into MCJIT engines")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


_PROCESS = textwrap.dedent("""
    import json, os, sys, numpy as np, graphnet as gn
    with gn.Graph():
        x = gn.placeholder("x", (None, 1024))
        w = gn.variable("w", np.full((1024, 64), 0.01, np.float32))
        fn = gn.compile([gn.tanh(x) * 2.0, gn.sum(x @ w)], backend="llvm")
    feed = np.linspace(-1, 1, 512 * 1024, dtype=np.float32).reshape(512, 1024)  # parallel regions (2 threads)
    got = fn(x=feed)
    pid = os.fork()  # after the parent's regions started libgomp's pool
    if pid == 0:
        again = fn(x=feed)
        os._exit(0 if all(np.array_equal(a, b) for a, b in zip(got, again)) else 3)
    child = os.waitpid(pid, 0)[1]
    out = {"hit": fn.from_cache, "library": type(fn.executable.library).__name__,
           "binding": "llvmlite.binding" in sys.modules, "ir": "llvmlite.ir" in sys.modules, "child": child,
           "values": [a.tobytes().hex() for a in got]}
    with gn.Graph():
        gn.compile(gn.exp(gn.placeholder("z", (None, 3))), backend="llvm")
    print(json.dumps(out | {"second_binding": "llvmlite.binding" in sys.modules}))
""")


def _fresh(cache_dir) -> dict:
    env = dict(os.environ, GRAPHNET_CACHE_DIR=str(cache_dir), GRAPHNET_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", _PROCESS], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_hit_in_a_fresh_process_loads_the_shared_object_without_llvm(cache_dir):
    miss, hit = _fresh(cache_dir), _fresh(cache_dir)
    assert not miss["hit"] and miss["library"] == "SharedLibrary" and miss["binding"]
    assert hit["hit"] and hit["library"] == "SharedLibrary" and not hit["binding"] and not hit["ir"]
    assert miss["child"] == hit["child"] == 0  # a forked child's regions ran serially, same numbers
    assert hit["values"] == miss["values"]


@pytest.mark.skipif(workers.workers() < 2, reason="one CPU, or forking is unsafe here: one process compiles")
def test_a_miss_compiles_in_workers_that_load_llvm_while_the_process_runs_its_graph_passes(cache_dir):
    """Where the disk cache holds what the first compile on a machine writes (the GEMM library, the
    host's description), a compile in a fresh process starts its worker processes first; they load LLVM
    while it runs the graph passes (codegen/llvm/workers.py: `early`), and it never loads LLVM itself."""
    from graphnet.bench.micro.compile import MACHINE_FOLDERS
    cold = _fresh(cache_dir)
    for entry in os.listdir(cache_dir):
        if entry not in MACHINE_FOLDERS:
            shutil.rmtree(cache_dir / entry)
    warm = _fresh(cache_dir)
    assert not warm["hit"] and warm["library"] == "SharedLibrary" and not warm["binding"]
    assert warm["child"] == 0 and warm["values"] == cold["values"]
    assert warm["second_binding"]  # a later compile loads LLVM here, for the workers it forks to inherit


_KERAS_PROCESS = textwrap.dedent("""
    import json, sys, numpy as np, graphnet as gn
    gn.set_seed(0)
    model = gn.Sequential([gn.layers.Input((4,)), gn.layers.Dense(8, activation="relu"), gn.layers.Dense(3)])
    model.compile("adam", gn.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.linspace(-1, 1, 64 * 4, dtype=np.float32).reshape(64, 4)
    history = model.fit(x, np.arange(64) % 3, batch_size=16, epochs=2, verbose=0)
    print(json.dumps({"hit": model.train_function.from_cache, "binding": "llvmlite.binding" in sys.modules,
                      "compiler": sorted({"codegen.loopir", "codegen.lower", "codegen.llvm.render"} & set(sys.modules)),
                      "loss": history.history["loss"]}))
""")


def test_a_cached_keras_model_fits_without_llvm_in_a_fresh_process(cache_dir):
    """fit's first call imports graphnet.distributed (its hook under MPI), which needs LLVM and the
    compiler only under MPI: a model served from the compiled-function cache trains without importing
    llvmlite.binding or the compiler's modules."""
    env = dict(os.environ, GRAPHNET_CACHE_DIR=str(cache_dir))
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _KERAS_PROCESS], capture_output=True, text=True, timeout=300,
                              env=env)
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    miss, hit = runs
    assert not miss["hit"] and miss["binding"]
    assert hit["hit"] and not hit["binding"] and hit["compiler"] == []
    assert hit["loss"] == miss["loss"]


def _step():
    with gn.Graph():
        x = gn.placeholder("x", (None, 8))
        w = gn.variable("w", np.arange(64, dtype=np.float32).reshape(8, 8) / 64)
        return gn.compile(gn.relu(x @ w) + 1.0, backend="llvm"), np.ones((4, 8), np.float32), w


def test_a_step_that_fails_to_link_loads_into_an_engine(cache_dir, monkeypatch):
    monkeypatch.setattr("codegen.llvm.backend.link_shared", lambda objects: None)
    fn, feed, w = _step()
    assert not fn.executable.shared and not isinstance(fn.executable.library, SharedLibrary)
    np.testing.assert_allclose(fn(x=feed), np.maximum(feed @ w.value, 0) + 1.0, rtol=1e-6)


def test_a_shared_object_that_fails_to_load_falls_back_to_an_engine(cache_dir, monkeypatch):
    def refuse(*args):
        raise OSError("cannot load here")
    monkeypatch.setattr("codegen.llvm.backend.SharedLibrary", refuse)
    fn, feed, w = _step()
    assert not fn.executable.shared
    np.testing.assert_allclose(fn(x=feed), np.maximum(feed @ w.value, 0) + 1.0, rtol=1e-6)
    monkeypatch.setattr("codegen.llvm.backend.SharedLibrary", SharedLibrary)
    again, _, _ = _step()  # the step cache's entry names the engine's objects
    assert again.from_cache and not again.executable.shared
    np.testing.assert_allclose(again(x=feed), np.maximum(feed @ w.value, 0) + 1.0, rtol=1e-6)


def test_a_shared_object_loads_without_a_cache_folder_and_unloads_when_collected(cache_dir):
    fn, feed, w = _step()
    image = fn.executable.code_cache.load(fn.executable.key)
    flags = len(parallel.serial_flags)
    library = SharedLibrary(image, None)  # through a private temporary folder
    assert library.address("graphnet_step") and len(parallel.serial_flags) == flags + 1
    with pytest.raises(RuntimeError):
        library.address("no_such_symbol")
    del library
    assert len(parallel.serial_flags) == flags
    with pytest.raises(OSError):
        SharedLibrary(b"not an ELF file", None)


def test_the_host_cpu_is_remembered_per_machine(cache_dir, monkeypatch):
    if jit.cpu_identity() is None:
        pytest.skip("no /proc/cpuinfo")
    jit._host_of.cache_clear()
    first = jit.host_cpu()  # asks LLVM, stores the answer in this cache folder
    jit._host_of.cache_clear()
    monkeypatch.setattr(jit.TargetInfo, "host", classmethod(lambda cls: pytest.fail("asked LLVM again")))
    assert jit.host_cpu() == first  # read back from the disk cache
    jit._host_of.cache_clear()


def test_the_target_triple_and_data_layout_are_remembered_per_machine(cache_dir, monkeypatch):
    """A step's IR names them in its header; read from the disk cache, rendering needs no LLVM."""
    if jit.cpu_identity() is None:
        pytest.skip("no /proc/cpuinfo")
    jit._strings_of.cache_clear()
    try:
        first = jit.target_strings()  # asks LLVM, stores the answer in this cache folder
        tm = jit.host_cpu().target_machine()
        assert first == (tm.triple, str(tm.target_data))
        jit._strings_of.cache_clear()
        monkeypatch.setattr(jit, "_ask_target_strings", lambda: pytest.fail("asked LLVM again"))
        assert jit.target_strings() == first
        assert jit.Compiler(jit.host_target()).triple == first[0]
    finally:
        jit._strings_of.cache_clear()


def test_graphnet_shared_objects_0_turns_shared_objects_off(monkeypatch):
    monkeypatch.setenv("GRAPHNET_SHARED_OBJECTS", "0")
    linker.cache_clear()
    try:
        assert linker() is None
    finally:
        monkeypatch.delenv("GRAPHNET_SHARED_OBJECTS")
        linker.cache_clear()
    assert linker() is not None
