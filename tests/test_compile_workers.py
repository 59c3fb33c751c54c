"""Parallel compilation (issue #17): a step module split into parts (codegen/llvm/split.py) compiled in
forked worker processes with the GEMM routines it needs (codegen/llvm/workers.py). The objects are the
same bytes whichever process built them; a child that fails or hangs is a fallback, not an error."""
from __future__ import annotations

import functools
import os
import re
import sys
import threading
import time
import types

import numpy as np
import pytest

import graphnet as gn
from codegen.cache import LLVM_OBJECTS, LLVM_SHARED
from codegen.llvm import workers
from codegen.llvm.jit import Compiler, Library, host_target, linker, pack_objects, unpack_objects
from codegen.llvm.split import PART_CHARS, part_count, split_module


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _mlp_step(seed: int = 0):
    """A small training step with GEMMs, row reductions and an optimizer: several kernels."""
    rng = np.random.default_rng(seed)
    with gn.Graph():
        x, y = gn.placeholder("x", (None, 48)), gn.placeholder("y", (None, 10))
        w1 = gn.variable("w1", rng.standard_normal((48, 64)).astype(np.float32) * 0.1)
        w2 = gn.variable("w2", rng.standard_normal((64, 10)).astype(np.float32) * 0.1)
        loss = gn.losses.softmax_cross_entropy(gn.relu(x @ w1) @ w2, y)
        step = gn.compile([loss], updates=gn.optim.Adam(1e-2).minimize(loss), backend="llvm")
    feeds = {"x": rng.standard_normal((64, 48)).astype(np.float32),
             "y": np.eye(10, dtype=np.float32)[rng.integers(0, 10, 64)]}
    return step, feeds, (w1, w2)


def _compiled(monkeypatch, tmp_path, name: str, processes: str, parts: int, shared: bool = False):
    """The step's code as the disk cache holds it (its objects for MCJIT, or its shared object) and
    three steps' losses."""
    monkeypatch.setenv("GRAPHNET_COMPILE_WORKERS", processes)
    monkeypatch.setenv("GRAPHNET_CACHE_DIR", str(tmp_path / name))
    monkeypatch.setattr("codegen.llvm.split.part_count", lambda text: parts)
    monkeypatch.setattr(workers, "FORK_AVERSE", ())  # JAX or mpi4py may be loaded by another test module
    if not shared:
        monkeypatch.setattr("codegen.llvm.backend.linker", lambda: None)
    step, feeds, _ = _mlp_step()
    assert step.executable.shared is shared and not step.executable.cache_hit
    code = LLVM_SHARED.load(step.executable.key) if shared else unpack_objects(LLVM_OBJECTS.load(step.executable.key))
    monkeypatch.undo()
    return code, [float(step(**feeds)[0]) for _ in range(3)]


def _counting_forks(monkeypatch) -> list:
    forks, real = [], workers._fork
    monkeypatch.setattr(workers, "_fork", lambda *a: forks.append(1) or real(*a))
    return forks


@pytest.mark.skipif(workers.workers() < 2, reason="one CPU, or forking is unsafe here")
def test_a_parallel_compile_gives_the_serial_compiles_objects_and_numbers(monkeypatch, tmp_path):
    serial, serial_losses = _compiled(monkeypatch, tmp_path, "serial", "1", 3)
    forks = _counting_forks(monkeypatch)
    parallel, parallel_losses = _compiled(monkeypatch, tmp_path, "parallel", "2", 3)
    assert forks
    whole, whole_losses = _compiled(monkeypatch, tmp_path, "whole", "1", 1)
    assert len(parallel) == 3 and parallel == serial  # bit-identical objects
    assert len(whole) == 1
    assert serial_losses == parallel_losses == whole_losses  # and the split module computes the same
    assert np.isfinite(serial_losses).all() and serial_losses[0] != serial_losses[-1]  # it trains


@pytest.mark.skipif(linker() is None, reason="no linker here: steps load into MCJIT engines")
@pytest.mark.skipif(workers.workers() < 2, reason="one CPU, or forking is unsafe here")
def test_a_parallel_compile_gives_the_serial_compiles_shared_object_and_numbers(monkeypatch, tmp_path):
    serial, serial_losses = _compiled(monkeypatch, tmp_path, "serial", "1", 3, shared=True)
    forks = _counting_forks(monkeypatch)
    parallel, parallel_losses = _compiled(monkeypatch, tmp_path, "parallel", "2", 3, shared=True)
    assert forks
    _, engine_losses = _compiled(monkeypatch, tmp_path, "engine", "1", 1)
    assert serial == parallel and serial[:4] == b"\x7fELF"
    assert serial_losses == parallel_losses == engine_losses


def test_the_compile_breakdown_covers_the_parallel_section(monkeypatch, cache_dir):
    monkeypatch.setenv("GRAPHNET_COMPILE_WORKERS", "2")
    monkeypatch.setattr("codegen.llvm.split.part_count", lambda text: 2)
    step, _, _ = _mlp_step()
    seconds = step.compile_seconds
    assert seconds["LLVM optimisation"] > 0 and seconds["object emission"] > 0
    assert {"graph passes", "lowering", "LLVM IR", "GEMM routines", "loading"} <= set(seconds)


def _fresh_module(text: str, parts: int) -> list[str]:
    names = [line.split('"')[1] for line in text.splitlines() if line.startswith('define void @"k')]
    return split_module(text, [[n] for n in names] + [["graphnet_step", "graphnet_step_profiled"]], parts)


def test_split_parts_declare_what_other_parts_define_and_link_in_one_engine(cache_dir):
    step, feeds, _ = _mlp_step(1)
    text = step.executable.ir_text
    parts = _fresh_module(text, 3)
    assert len(parts) == 3
    defined = [{line.split('"')[1] for line in p.splitlines() if line.startswith("define void")} for p in parts]
    assert sum(len(d) for d in defined) == sum(1 for line in text.splitlines() if line.startswith("define void"))
    assert not set.intersection(*defined)  # each external function defined once
    assert any('declare void @"k' in p for p in parts)
    compiler = Compiler(host_target())
    library = Library(compiler, [compiler.object_code(p) for p in parts])
    assert library.address("graphnet_step") and library.address("graphnet_step_profiled")


def test_a_module_with_a_global_other_parts_would_duplicate_stays_whole():
    text = ('@"shared" = global i32 0\n'
            'define void @"k0_a"(i64 %".1", ptr %".2") {\n  ret void\n}\n'
            'define void @"graphnet_step"(i64 %".1", ptr %".2") {\n  call void @"k0_a"(i64 %".1", ptr %".2")\n'
            '  ret void\n}\n')
    units = [["k0_a"], ["graphnet_step"]]
    assert split_module(text, units, 2) == [text]
    private = text.replace("= global", "= private global")
    assert len(split_module(private, units, 2)) == 2
    assert split_module(private, [["k0_a"]], 2) == [private]  # units that do not name every definition


def test_pack_objects_round_trips_and_rejects_a_truncated_list():
    objects = [b"abc", b"", b"\x00" * 9]
    assert unpack_objects(pack_objects(objects)) == objects
    with pytest.raises(ValueError):
        unpack_objects(pack_objects(objects)[:-1])


def _tripled(value: bytes, fail_in_child: str = "", parent: int = 0):
    if os.getpid() != parent and fail_in_child == "raise":
        raise RuntimeError("a child's failure")
    if os.getpid() != parent and fail_in_child == "hang":
        time.sleep(60)
    if os.getpid() != parent and fail_in_child == "die":
        os._exit(3)
    return value * 3, {"LLVM optimisation": 0.001}


def _job(value: bytes, fail_in_child: str = ""):
    """A job (data: a module-level function and its arguments) tripling `value`, failing as told in
    any process but this one."""
    return _tripled, (value, fail_in_child, os.getpid())


def test_run_jobs_returns_results_in_order_whichever_process_ran_them():
    children_before = _children()
    jobs = [_job(bytes([i])) for i in range(5)]
    results = workers.run_jobs(jobs, [1, 5, 2, 4, 3], processes=2)
    assert [obj for obj, _ in results] == [bytes([i]) * 3 for i in range(5)]
    assert all(timing == {"LLVM optimisation": 0.001} for _, timing in results)
    assert _children() == children_before and not workers._exiting


@pytest.mark.parametrize("failure", ["raise", "hang"])
def test_a_failed_or_hung_child_s_jobs_run_in_the_parent(monkeypatch, failure):
    monkeypatch.setattr(workers, "CHILD_TIMEOUT", 2.0)
    jobs = [_job(b"a"), _job(b"b", failure), _job(b"c", failure)]
    results = workers.run_jobs(jobs, [10, 1, 1], processes=2)
    assert [obj for obj, _ in results] == [b"aaa", b"bbb", b"ccc"]


def _note(done: str, name: bytes):
    with open(done, "ab") as f:
        f.write(b"x")
    return name, {"LLVM optimisation": 0.0}


def _wait_for_three(done: str):
    deadline = time.monotonic() + 60
    while os.stat(done).st_size < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    return b"slow:%d" % os.stat(done).st_size, {"LLVM optimisation": 0.0}


def test_a_process_takes_the_next_job_when_it_finishes_one(tmp_path):
    """Each idle worker is sent the next job: while one is held by a job that takes longer than its
    cost said, the other runs every other job (a split fixed in advance would have queued one behind it)."""
    done = str(tmp_path / "done")
    open(done, "wb").close()
    jobs = [(_wait_for_three, (done,))] + [(_note, (done, name)) for name in (b"a", b"b", b"c")]
    results = workers.run_jobs(jobs, [1, 1, 1, 1], processes=2)
    assert [obj for obj, _ in results] == [b"slow:3", b"a", b"b", b"c"]


def _boom():
    raise KeyError("everywhere")


def test_a_job_failing_everywhere_raises_here_and_leaves_no_child(monkeypatch):
    monkeypatch.setattr(workers, "CHILD_TIMEOUT", 30.0)
    children_before = _children()
    with pytest.raises(KeyError):
        workers.run_jobs([(_boom, ()), _job(b"x", "hang")], [10, 1], processes=2)
    assert _children() == children_before


def _children(pid: int | None = None) -> set[str]:
    """The live children of `pid` (default: this process, once the workers exiting on their own have)."""
    if pid is None:
        workers.reap_exited(wait=True)
        pid = os.getpid()
    path = f"/proc/{pid}/task/{pid}/children"
    try:
        return set(open(path).read().split())
    except OSError:
        return set()


def _pids_job():
    return f"{os.getpid()} {os.getppid()}".encode(), {"LLVM optimisation": 0.0}


def _pids(ran: set[str]) -> list[str]:
    return [line.split()[0] for line in ran]


def _warmed(folder: str) -> None:
    with open(os.path.join(folder, str(os.getpid())), "w"):
        pass


@pytest.mark.skipif(workers.workers() < 2, reason="one CPU, or forking is unsafe here")
def test_early_workers_warm_up_before_the_jobs_exist_and_run_them(monkeypatch, tmp_path):
    """`early` forks a worker at once, which runs the warm-up and then forks the other (which inherits
    what it loaded); the next `run_jobs` in its context sends them its jobs (the compiling process
    runs none), and no worker outlives the context."""
    monkeypatch.setattr(workers, "llvm_loaded", lambda: False)
    monkeypatch.setattr(workers, "_started_early", False)  # this process's first compile
    monkeypatch.setattr(workers, "FORK_AVERSE", ())
    monkeypatch.setenv("GRAPHNET_COMPILE_WORKERS", "2")
    children_before = _children()
    with workers.early(functools.partial(_warmed, str(tmp_path))):
        deadline = time.monotonic() + 60
        while not os.listdir(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.01)
        warmed = os.listdir(tmp_path)
        assert len(warmed) == 1 and warmed[0] != str(os.getpid())  # before any job was known
        ran = {obj.decode() for obj, _ in workers.run_jobs([(_pids_job, ())] * 6, [1] * 6)}
        assert ran == {f"{warmed[0]} {os.getpid()}", f"{next(p for p in _pids(ran) if p != warmed[0])} {warmed[0]}"}
        assert workers.run_jobs([_job(b"z")], [1]) == [(b"zzz", {"LLVM optimisation": 0.001})]  # used: here
    assert _children() == children_before and not workers._exiting  # they exit on their own


@pytest.mark.skipif(workers.workers() < 2, reason="one CPU, or forking is unsafe here")
def test_early_workers_are_for_a_process_s_first_compile_where_llvm_is_not_loaded(monkeypatch):
    """A later compile warms up in its own process instead (LLVM loaded once, inherited by the workers
    it forks later); nothing starts where LLVM is loaded or one process compiles."""
    monkeypatch.setattr(workers, "FORK_AVERSE", ())
    monkeypatch.setenv("GRAPHNET_COMPILE_WORKERS", "2")
    ran_here = []
    monkeypatch.setattr(workers, "llvm_loaded", lambda: True)
    monkeypatch.setattr(workers, "_started_early", False)
    with workers.early(lambda: ran_here.append("loaded")):
        assert workers._EARLY.get() is None and not ran_here
    monkeypatch.setattr(workers, "llvm_loaded", lambda: False)
    monkeypatch.setattr(workers, "_started_early", True)  # a compile started workers early before
    with workers.early(lambda: ran_here.append("later")):
        assert workers._EARLY.get() is None and ran_here == ["later"]
    monkeypatch.setattr(workers, "_started_early", False)
    monkeypatch.setenv("GRAPHNET_COMPILE_WORKERS", "1")
    with workers.early(lambda: ran_here.append("serial")):
        assert workers._EARLY.get() is None and ran_here == ["later"]
    assert workers._started_early is False


@pytest.mark.skipif(workers.workers() < 2, reason="one CPU, or forking is unsafe here")
def test_early_workers_of_a_failed_compile_are_killed(monkeypatch, tmp_path):
    """The warm worker is killed when the context ends without its jobs (a graph pass raised), and
    the worker it forked dies with it."""
    if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
        pytest.skip("no /proc/PID/task/PID/children here")
    monkeypatch.setattr(workers, "llvm_loaded", lambda: False)
    monkeypatch.setattr(workers, "_started_early", False)
    monkeypatch.setattr(workers, "FORK_AVERSE", ())
    monkeypatch.setenv("GRAPHNET_COMPILE_WORKERS", "2")
    children_before = _children()
    with pytest.raises(ValueError), workers.early(functools.partial(_warmed, str(tmp_path))):
        (first,) = _children() - children_before
        deadline = time.monotonic() + 60
        while not _children(int(first)) and time.monotonic() < deadline:
            time.sleep(0.01)
        (second,) = _children(int(first))
        raise ValueError("a graph pass failed")
    assert _children() == children_before
    deadline = time.monotonic() + 10
    while _alive(second) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(second)


@pytest.mark.skipif(workers.workers() < 2, reason="one CPU, or forking is unsafe here")
@pytest.mark.parametrize("failure", ["die", "hang"])
def test_early_workers_that_die_or_hang_leave_their_jobs_to_this_process_and_no_process_behind(monkeypatch, failure):
    if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
        pytest.skip("no /proc/PID/task/PID/children here")
    monkeypatch.setattr(workers, "llvm_loaded", lambda: False)
    monkeypatch.setattr(workers, "_started_early", False)
    monkeypatch.setattr(workers, "FORK_AVERSE", ())
    monkeypatch.setattr(workers, "CHILD_TIMEOUT", 2.0)
    monkeypatch.setenv("GRAPHNET_COMPILE_WORKERS", "2")
    children_before = _children()
    with workers.early(lambda: None):
        (first,) = _children() - children_before
        deadline = time.monotonic() + 60
        while not _children(int(first)) and time.monotonic() < deadline:
            time.sleep(0.01)
        (second,) = _children(int(first))
        jobs = [_job(b"a", failure), _job(b"b", failure), _job(b"c")]
        assert [obj for obj, _ in workers.run_jobs(jobs, [3, 2, 1])] == [b"aaa", b"bbb", b"ccc"]
    assert _children() == children_before
    deadline = time.monotonic() + 10
    while _alive(second) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(second)


def _alive(pid: str) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def test_workers_is_serial_where_forking_is_unsafe_or_turned_off(monkeypatch):
    monkeypatch.setenv("GRAPHNET_COMPILE_WORKERS", "1")
    assert workers.workers() == 1
    monkeypatch.setenv("GRAPHNET_COMPILE_WORKERS", "many")
    with pytest.raises(ValueError):
        workers.workers()
    monkeypatch.setenv("GRAPHNET_COMPILE_WORKERS", "2")
    monkeypatch.setattr(workers, "FORK_AVERSE", ("a_fork_averse_module",))
    cpus = len(os.sched_getaffinity(0))
    assert workers.workers() == min(2, cpus)
    monkeypatch.setitem(sys.modules, "a_fork_averse_module", types.ModuleType("a_fork_averse_module"))
    assert workers.workers() == 1  # e.g. JAX, whose runtime warns that a fork may deadlock it
    monkeypatch.delitem(sys.modules, "a_fork_averse_module")
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert workers.workers() == 1  # another thread might hold a lock the child needs
    finally:
        stop.set()
        other.join()


def test_assign_balances_longest_first_deterministically():
    assert workers.assign([5, 1, 4, 2, 3], 2) == [[0, 3, 1], [2, 4]]
    assert workers.assign([1, 1], 3) == [[0], [1], []]


def test_the_part_count_depends_on_the_module_alone_and_is_even():
    assert [part_count("x" * n) for n in (0, PART_CHARS - 1, PART_CHARS, 5 * PART_CHARS - 1, 5 * PART_CHARS)] == \
        [1, 1, 2, 2, 4]


def _twin_step(backend: str):
    """A step whose hidden layers have the same shapes: their bias updates (and several elementwise
    kernels) are the same code on other buffers."""
    rng = np.random.default_rng(3)
    with gn.Graph():
        x, y = gn.placeholder("x", (None, 32)), gn.placeholder("y", (None, 8))
        h = x
        for i in range(3):
            w = gn.variable(f"w{i}", rng.standard_normal((32, 32)).astype(np.float32) * 0.2)
            b = gn.variable(f"b{i}", np.zeros(32, np.float32))
            h = gn.tanh(h @ w + b)
        w_out = gn.variable("w_out", rng.standard_normal((32, 8)).astype(np.float32) * 0.2)
        loss = gn.losses.softmax_cross_entropy(h @ w_out, y)
        step = gn.compile([loss], updates=gn.optim.Adam(1e-2).minimize(loss), backend=backend)
    feeds = {"x": rng.standard_normal((16, 32)).astype(np.float32),
             "y": np.eye(8, dtype=np.float32)[rng.integers(0, 8, 16)]}
    return step, feeds


def test_kernels_differing_only_in_buffers_share_a_part_and_merge_into_one_function(cache_dir):
    """Twin kernels (the same loop nest on other buffers) go to one part, whose optimised module keeps
    one copy of their code; the step still gives the numpy backend's numbers."""
    from codegen.llvm.split import _join_twins, _parse
    step, feeds = _twin_step("llvm")
    reference, _ = _twin_step("numpy")
    text = step.executable.ir_text
    names = [line.split('"')[1] for line in text.splitlines() if line.startswith('define void @"k')]
    units = [[n] for n in names] + [["graphnet_step", "graphnet_step_profiled"]]
    joined, _ = _join_twins(units, _parse(text)[1])
    twins = [u for u in joined if len(u) > 1 and u[0].startswith("k")]
    assert twins, "the hidden layers' kernels should have twins"
    for part in split_module(text, units, 4):
        defined = {line.split('"')[1] for line in part.splitlines() if line.startswith("define void")}
        assert all(set(t) <= defined or not set(t) & defined for t in twins)  # a twin group is never split
    compiler = Compiler(host_target())
    optimised = str(compiler.optimize(text))
    defined = set(re.findall(r'^define [^@]*@"?([\w.]+)"?\(', optimised, re.M))
    ranged = [n for n in names if f'@"{n}_range"' in text]
    kept = [n for n in ranged if f"{n}_range" in defined]
    assert ranged and 0 < len(kept) < len(ranged)  # twins' loop nests merged
    for _ in range(3):
        np.testing.assert_allclose(step(**feeds)[0], reference(**feeds)[0], rtol=1e-5, atol=1e-6)


def test_twin_units_go_to_one_part_and_others_are_balanced_as_before():
    """Units whose internal functions differ only in names (their own, buffer arguments, metadata) are
    one unit to the split: two equal twins would otherwise be the two parts' largest units, one each."""
    def kernel(name: str, buffer: int, scale: str) -> str:
        return (f'define internal void @"{name}_body"(i64 %"N", ptr noalias %"b{buffer}") {{\n'
                f'  %".1" = load float, ptr %"b{buffer}"\n  %".2" = fmul float %".1", {scale}\n'
                f'  store float %".2", ptr %"b{buffer}", !tbaa !{buffer}\n  ret void\n}}\n'
                f'define void @"{name}"(i64 %".1", ptr %".2") {{\n'
                f'  call void @"{name}_body"(i64 %".1", ptr %".2")\n  ret void\n}}\n')
    text = (kernel("k0_scale", 3, "2.0") + kernel("k1_scale", 7, "2.0") + kernel("k2_other", 4, "3.0")
            + 'define void @"graphnet_step"(i64 %".1", ptr %".2") {\n  ret void\n}\n')
    units = [["k0_scale"], ["k1_scale"], ["k2_other"], ["graphnet_step"]]
    parts = split_module(text, units, 2)
    holding = [[u[0] for u in units if f'define void @"{u[0]}"' in p] for p in parts]
    assert len(parts) == 2 and any({"k0_scale", "k1_scale"} <= set(h) for h in holding)
    assert sorted(sum(holding, [])) == sorted(u[0] for u in units)
