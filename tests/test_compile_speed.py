"""What keeps compiles short (issue #17): the GEMM library (each routine built once per machine, cached
apart, bound once per process; a step links against it), the compile's breakdown by phase, and a
Keras model compiling its evaluation and prediction functions only when first used. Times are
measured by `python -m graphnet.bench.micro.compile`, never asserted here."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import graphnet as gn
from codegen import cache
from codegen.llvm import parallel
from codegen.llvm.gemm_library import GEMMS
from codegen.llvm.jit import SharedLibrary, linker
from codegen.llvm.render import gemm_symbol, required_gemms

PHASES = {"graph passes", "lowering", "loop passes", "cache lookup", "LLVM IR", "LLVM optimisation",
          "object emission", "GEMM routines", "loading"}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path))
    return tmp_path


def _dense(features: int, units: int, seed: int):
    """x @ w + b with a GEMM large enough for a GEMM routine, and its inputs."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((features, units)).astype(np.float32)
    x = rng.standard_normal((96, features)).astype(np.float32)
    with gn.Graph():
        xp = gn.placeholder("x", (None, features))
        fn = gn.compile(xp @ gn.variable("w", w) + 1.0, backend="llvm")
    return fn, x, x @ w + 1.0


@pytest.fixture
def engine(monkeypatch):
    """Steps load into MCJIT engines (as where there is no linker), which link against the bound library."""
    monkeypatch.setattr("codegen.llvm.backend.linker", lambda: None)


def test_a_step_links_against_the_gemm_library_bound_once_per_process(cache_dir, engine):
    first, x1, want1 = _dense(160, 96, 0)
    second, x2, want2 = _dense(128, 80, 1)  # another model, the same routine
    routines = required_gemms(first.executable.lp)
    assert routines and routines == required_gemms(second.executable.lp)
    assert gemm_symbol(*routines[0]) in GEMMS.bound()
    assert first.executable.private_gemms == second.executable.private_gemms == []
    np.testing.assert_allclose(first(x=x1), want1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(second(x=x2), want2, rtol=1e-4, atol=1e-4)


def test_a_fresh_process_stores_its_gemm_routines_in_the_librarys_own_cache_folder(cache_dir):
    """In a fresh process (this one may have bound its routines already, from another cache folder)."""
    script = ("import numpy as np, graphnet as gn\n"
              "with gn.Graph():\n"
              "    x = gn.placeholder('x', (None, 160))\n"
              "    fn = gn.compile(x @ gn.variable('w', np.ones((160, 96), np.float32)), backend='llvm')\n"
              "fn(x=np.ones((96, 160), np.float32))\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, env=dict(os.environ))
    assert cache.info()["namespaces"]["gemm"]["entries"] >= 1


@pytest.mark.skipif(not parallel.load_runtime(), reason=str(parallel.runtime_failure()))
def test_another_build_of_a_bound_routine_is_linked_into_the_step(cache_dir, monkeypatch, engine):
    """A routine bound for one thread count, needed built for another: the step loads its own copy
    (only one build of a symbol can be the process's) and computes with it."""
    private = []
    for count in (2, 1):
        monkeypatch.setenv("GRAPHNET_NUM_THREADS", str(count))
        fn, x, want = _dense(160, 96, 0)
        assert fn.executable.threads == count
        np.testing.assert_allclose(fn(x=x), want, rtol=1e-4, atol=1e-4)
        private.append(fn.executable.private_gemms)
    assert [p for p in private if not p] in ([], [[]]) and any(private)


@pytest.mark.skipif(linker() is None, reason="no linker here")
def test_a_shared_step_holds_its_gemm_routines_from_the_librarys_cache_folder(cache_dir):
    """Where a linker makes shared objects, a step's holds the GEMM routines it calls (their objects
    built once per machine in the library's cache folder), so loading it binds nothing process-wide."""
    bound = GEMMS.bound()
    first, x1, want1 = _dense(160, 96, 0)
    entries = cache.info()["namespaces"]["gemm"]["entries"]
    second, x2, want2 = _dense(128, 80, 1)  # another model, the same routine: built once
    assert first.executable.shared and second.executable.shared and GEMMS.bound() == bound
    assert entries >= 1 and cache.info()["namespaces"]["gemm"]["entries"] == entries
    assert isinstance(first.executable.library, SharedLibrary)
    np.testing.assert_allclose(first(x=x1), want1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(second(x=x2), want2, rtol=1e-4, atol=1e-4)


def test_compile_reports_its_time_by_phase(cache_dir):
    with gn.Graph():
        x = gn.placeholder("x", (None, 4))
        cold = gn.compile(gn.exp(x) * 3.0, backend="llvm")
        cached = gn.compile(gn.exp(x) * 3.0, backend="llvm")
    assert PHASES <= set(cold.compile_seconds) and all(v >= 0 for v in cold.compile_seconds.values())
    assert not {"LLVM IR", "LLVM optimisation", "object emission"} & set(cached.compile_seconds)
    assert set(gn.compile(x + 1.0, backend="numpy").compile_seconds) == {"graph passes"}


def _model():
    model = gn.Sequential([gn.layers.Input((3,)), gn.layers.Dense(4, activation="relu"), gn.layers.Dense(1)])
    model.compile("adam", "mse")
    return model


def test_a_model_compiles_evaluation_and_prediction_on_first_use(cache_dir):
    model = _model()
    x = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)
    model.fit(x, y, epochs=1, verbose=0)
    assert set(model._functions) == {"train"}
    model.evaluate(x, y)
    assert set(model._functions) == {"train", "eval"}
    model.predict(x)
    assert set(model._functions) == {"train", "eval", "predict"}
    model.fit(x, y, epochs=1, verbose=0, validation_split=0.5)  # validation uses the eval function compiled above
    assert set(model._functions) == {"train", "eval", "predict"}


def test_a_compile_prints_no_pass_records_that_a_dump_reads(cache_dir, monkeypatch):
    """Graph and loop pass records are printed for dumps, not on every compile; a dump still gets the
    graph after each graph pass and the loop IR after each loop pass."""
    from codegen.loopir import LoopProgram
    from graphnet.program import Program
    printed = []
    for cls in (Program, LoopProgram):
        monkeypatch.setattr(cls, "to_text", lambda self, *a, _f=cls.to_text, **k: printed.append(type(self)) or
                            _f(self, *a, **k))
    with gn.Graph():
        x = gn.placeholder("x", (None, 4))
        w = gn.variable("w", np.ones((4, 3), np.float32))
        loss = gn.mean(gn.tanh(x @ w))
        fn = gn.compile(loss, updates=gn.optim.Adam(0.1).minimize(loss), backend="llvm")
    assert printed == [LoopProgram]  # the object cache's key
    backend = fn.executable
    records = backend.loop_records
    assert records[0].name == "lower" and len(records) > 2
    assert records[-1].text == re.sub(r"kernel k\d+_", "kernel ", backend.lp.to_text())  # numbered after the passes
    assert records[0].text != records[-1].text  # each record is the loop IR after its own pass
    assert [r.text for r in fn.records] == [r.program.to_text() for r in fn.records]


def test_a_compile_leaves_the_objects_before_it_out_of_full_collections():
    """gn.compile freezes the objects the garbage collector tracks when it starts (a full collection
    set off by the compile's allocations walks every object of the process) and unfreezes them at its
    end, even when it fails; objects frozen before it (by the user) are left frozen."""
    import gc
    seen = []

    def probe(program):
        seen.append(gc.get_freeze_count())
        return program

    def failing(program):
        raise RuntimeError("pass failed")

    with gn.Graph():
        x = gn.placeholder("x", (None, 3))
        gn.compile([gn.mean(x * 2.0)], backend="numpy", passes=[probe])
        assert seen[0] > 0 and gc.get_freeze_count() == 0
        with pytest.raises(RuntimeError, match="pass failed"):
            gn.compile([gn.mean(x * 3.0)], backend="numpy", passes=[failing])
        assert gc.get_freeze_count() == 0
        gc.freeze()
        try:
            gn.compile([gn.mean(x * 4.0)], backend="numpy", passes=[probe])
            assert seen[-1] > 0 and gc.get_freeze_count() > 0  # (a freed object leaves the count)
        finally:
            gc.unfreeze()
