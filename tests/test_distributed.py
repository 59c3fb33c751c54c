"""Data-parallel training over MPI (graphnet.distributed, issue #18).

The tests marked `mpi` start `mpirun -n 2 python tests/distributed_cases.py <case>` in a subprocess
with a timeout and compare what the ranks wrote with single-process training in this process (which
never joins an MPI world, so its optimizers do not reduce). Where MPI cannot start they skip with
the reason. The others check the pieces alone: sharding, the loop IR's collective calls, refusals.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import graphnet as gn
from codegen.llvm.gemm_schedule import loop_passes
from codegen.lower import lower
from codegen.memory import live_ranges
from graphnet.distributed import shard_offsets, shard_order
from graphnet.ops.collective import allreduce

import distributed_cases as cases

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LAUNCH_TIMEOUT = 180  # seconds for one mpirun job on a busy machine; faults must end well before it


# ---- launching under mpirun ----------------------------------------------------------------
def mpirun_command(n: int) -> list[str]:
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return ["mpirun", *root, "--oversubscribe", "-n", str(n)]


def _env() -> dict[str, str]:
    env = dict(os.environ, GRAPHNET_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + HERE)
    return env


@pytest.fixture(scope="module")
def mpi():
    """Skip (saying why) unless `mpirun -n 2` starts two Python ranks that see each other."""
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun not found (pip install 'graphnet[mpi]')")
    pytest.importorskip("mpi4py")
    probe = "from mpi4py import MPI; assert MPI.COMM_WORLD.Get_size() == 2"
    try:
        done = subprocess.run(mpirun_command(2) + [sys.executable, "-c", probe], capture_output=True, text=True,
                              timeout=120, env=_env())
    except subprocess.TimeoutExpired:
        pytest.skip("mpirun -n 2 did not start within 120 s")
    if done.returncode != 0:
        pytest.skip(f"mpirun -n 2 cannot start here: {done.stderr.strip()[-300:]}")


def launch(case: str, out, *args: str, ranks: int = 2, env: dict | None = None
           ) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(mpirun_command(ranks) + [sys.executable, os.path.join(HERE, "distributed_cases.py"), case,
                                                    str(out), *args],
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env={**_env(), **(env or {})})
    return done, time.monotonic() - started


def ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ---- equality with one process, determinism ------------------------------------------------------
@pytest.fixture(scope="module")
def two_step_runs(mpi, tmp_path_factory):
    runs = []
    for _ in range(2):
        out = tmp_path_factory.mktemp("steps")
        done, _ = launch("steps", out)
        ok(done)
        runs.append([dict(np.load(out / f"steps_{r}.npz")) for r in range(2)])
    return runs


def assert_trained_as_one_process(ranks: list[dict], prefix: str, reference: dict[str, np.ndarray]) -> None:
    for name, want in reference.items():
        got = ranks[0][f"{prefix}/{name}"]
        assert np.array_equal(got, ranks[1][f"{prefix}/{name}"]), f"{name}: the ranks' parameters differ"
        assert relative_error(got, want) < 1e-6, name


@pytest.mark.parametrize("backend", ["llvm", "numpy"])
def test_two_ranks_train_as_one_process_on_the_global_batch(two_step_runs, backend):
    """20 Adam steps, 16 rows per rank, equal single-process steps on the 32-row batch (rel 1e-6)."""
    assert_trained_as_one_process(two_step_runs[0], backend, cases.train_steps(backend))


@pytest.mark.parametrize("backend", ["llvm", "numpy"])
def test_two_ranks_with_dropout_train_as_one_process(two_step_runs, backend):
    """The same with dropout and a short last global batch (11 + 10 rows): each rank's masks are the
    single process's masks of its rows of the global batch."""
    reference = cases.train_steps(backend, dropout=cases.DROPOUT, last=cases.LAST_BATCH)
    assert_trained_as_one_process(two_step_runs[0], f"{backend}+dropout", reference)


def test_runs_are_bit_identical(two_step_runs):
    first, second = two_step_runs
    for key in first[0]:
        assert np.array_equal(first[0][key], second[0][key]), key


def test_progress_calls_change_no_bit(two_step_runs):
    """The same 20 steps compiled without the progress calls between kernels give the same bits."""
    for ranks in two_step_runs:
        for rank in ranks:
            for key in (k for k in rank if k.startswith("llvm/")):
                assert np.array_equal(rank[key], rank[key.replace("llvm/", "llvm-no-progress/")]), key


@pytest.mark.parametrize("ranks, thread", [(2, "0"), (3, "0"), (2, "20")])
def test_the_runtime_ring_sums_every_size_exactly_on_every_rank(mpi, tmp_path, ranks, thread):
    """Buffers of 1 to 300001 elements (fewer than the ranks, uneven chunks, rendezvous messages),
    float32 and float64, in place and copied, in 4 KiB buckets, three steps: the exact sums; also
    with the runtime's progress thread (every 20 us)."""
    done, _ = launch("ring", tmp_path, ranks=ranks, env={"GRAPHNET_MPI_PROGRESS_THREAD": thread})
    ok(done)
    results = [dict(np.load(tmp_path / f"ring_{r}.npz")) for r in range(ranks)]
    values = [[cases.ring_values(r, n, t) for n in cases.RING_SIZES for t in (np.float32, np.float64)]
              for r in range(ranks)]
    want = [sum(v[j] for v in values) for j in range(len(values[0]))]
    want += [sum(v[j] * 2.0 for v in values).astype(w.dtype) for j, w in enumerate(want)]
    for step in range(3):
        for j, w in enumerate(want):
            for r in range(ranks):
                got = results[r][f"{step}/{j}"]
                assert got.dtype == w.dtype and np.array_equal(got, w), (step, j, r)


# ---- Model.fit ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fit_run(mpi, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    done, _ = launch("fit", out)
    ok(done)
    return out, done, [dict(np.load(out / f"fit_{r}.npz")) for r in range(2)]


def test_fit_matches_one_process_and_writes_on_rank_0(fit_run):
    out, done, ranks = fit_run
    assert done.stdout.count("Epoch 1/2") == 1, done.stdout  # rank 0 prints, rank 1 does not
    assert os.path.exists(out / "checkpoint_by_rank0.npz") and not os.path.exists(out / "checkpoint_by_rank1.npz")
    for key in ranks[0]:
        assert np.array_equal(ranks[0][key], ranks[1][key]), key  # metrics averaged, decisions shared
    gn.reset_default_graph()
    model = cases.keras_model()
    history = cases.fit(model, 2, callbacks=[gn.callbacks.EarlyStopping(monitor="val_loss", patience=1)])
    for i, want in enumerate(model.get_weights()):
        assert relative_error(ranks[0][f"w{i}"], want) < 1e-6, i
    for key in ("loss", "val_loss", "accuracy"):
        np.testing.assert_allclose(ranks[0][key], history.history[key], rtol=1e-5)


def test_fit_with_dropout_matches_one_process(mpi, tmp_path):
    """Full global batches and a short last one (11 + 10 rows), through run_steps and batch by batch."""
    done, _ = launch("fit_dropout", tmp_path)
    ok(done)
    ranks = [dict(np.load(tmp_path / f"fit_dropout_{r}.npz")) for r in range(2)]
    for how in ("run_steps", "by_batch"):
        gn.reset_default_graph()
        for i, want in enumerate(cases.fit_dropout(how == "by_batch")):
            got = ranks[0][f"{how}/w{i}"]
            assert np.array_equal(got, ranks[1][f"{how}/w{i}"]), (how, i)
            assert relative_error(got, want) < 1e-6, (how, i)


def test_a_model_saved_by_two_ranks_resumes_in_one_process(fit_run):
    out, _, _ = fit_run
    resumed = gn.load_model(str(out / "model.npz"))
    cases.fit(resumed, 3, initial_epoch=2)
    gn.reset_default_graph()
    uninterrupted = cases.keras_model()
    cases.fit(uninterrupted, 3)
    for got, want in zip(resumed.get_weights(), uninterrupted.get_weights()):
        assert relative_error(got, want) < 1e-5


# ---- faults -----------------------------------------------------------------------------------------
def test_a_rank_raising_ends_the_job_with_its_error(mpi, tmp_path):
    done, seconds = launch("raise", tmp_path)
    assert done.returncode != 0
    assert "rank 1 raised RuntimeError: rank 1 fails on purpose" in done.stderr
    assert seconds < 90


def test_a_killed_rank_ends_the_job(mpi, tmp_path):
    done, seconds = launch("kill", tmp_path)
    assert done.returncode != 0
    assert seconds < 90


def test_a_stalled_rank_ends_the_job_at_the_deadline(mpi, tmp_path):
    done, seconds = launch("stall", tmp_path, "5")
    assert done.returncode != 0
    assert "waited 5 s for a gradient allreduce" in done.stderr
    assert seconds < 90


@pytest.mark.parametrize("case, part, line", [
    ("mismatch_shape", "feeds and variables", "W1: float32 (12, 16)"),
    ("mismatch_hyper", "constants (hyper-parameters", "0.999"),
])
def test_ranks_with_different_steps_are_told_what_differs(mpi, tmp_path, case, part, line):
    done, _ = launch(case, tmp_path)
    assert done.returncode != 0
    assert f"compiled a different training step than rank 0: its {part}" in done.stderr, done.stderr[-3000:]
    assert line in done.stderr


# ---- the pieces, in one process -------------------------------------------------------------------
def test_shards_are_disjoint_cover_the_epoch_and_split_each_global_batch():
    order = np.random.default_rng(0).permutation(150)
    shards = [shard_order(order, 32, r, 2) for r in range(2)]
    assert all(dropped == 0 for _, dropped in shards)
    rows = [s for s, _ in shards]
    assert sorted(np.concatenate(rows)) == list(range(150))
    for j in range(4):  # global batch j: rank 0 its first 16 rows, rank 1 the next 16
        np.testing.assert_array_equal(rows[0][16 * j:16 * j + 16], order[32 * j:32 * j + 16])
        np.testing.assert_array_equal(rows[1][16 * j:16 * j + 16], order[32 * j + 16:32 * j + 32])
    assert [len(r) - 64 for r in rows] == [11, 11]  # the last 22 rows, split evenly


def test_shards_need_a_global_batch_divisible_by_the_ranks_and_drop_a_tail_shorter_than_them():
    with pytest.raises(ValueError, match="multiple of the number of ranks"):
        shard_order(np.arange(10), 5, 0, 2)
    rows, dropped = shard_order(np.arange(9), 4, 1, 4)
    assert rows.tolist() == [1, 5] and dropped == 1


@pytest.mark.parametrize("n, global_batch, size", [(150, 32, 2), (150, 32, 4), (9, 4, 4), (45, 12, 3)])
def test_shard_offsets_say_where_each_batch_of_a_shard_starts_in_its_global_batch(n, global_batch, size):
    starts = np.arange(0, n, global_batch)  # each global batch's first position in the epoch
    for rank in range(size):
        rows, _ = shard_order(np.arange(n), global_batch, rank, size)
        offsets = shard_offsets(n, global_batch, rank, size)
        sizes = [len(c) for c in np.split(rows, np.arange(global_batch // size, len(rows), global_batch // size))]
        assert len(offsets) == len(sizes)
        firsts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        np.testing.assert_array_equal(rows[firsts], starts[:len(offsets)] + offsets)


def _reduced_step_program(bucket_bytes: int | None = None):
    """An MLP's Adam step whose gradients go through allreduce, lowered with the LLVM loop passes."""
    with gn.Graph():
        x, y = gn.placeholder("x", (None, 8)), gn.placeholder("y", (None, 1))
        params = [gn.variable(f"W{i}", np.full(s, 0.1, np.float32)) for i, s in enumerate([(8, 32), (32, 32), (32, 1)])]
        h = x
        for W in params:
            h = gn.tanh(h @ W)
        loss = gn.losses.mse(h, y)
        grads = gn.gradients(loss, params)
        updates = gn.optim.Adam(1e-3).apply_gradients([(allreduce(g), p) for g, p in zip(grads, params)])
        fn = gn.compile([loss], updates=updates, backend="numpy")
    passes = loop_passes(lambda *a: 0, threads=1)
    if bucket_bytes is not None:
        from codegen.collectives import overlap_collectives
        at = [p.__name__ for p in passes].index("overlap_collectives")
        passes[at] = overlap_collectives(bucket_bytes)
    lp, _ = lower(fn.program, loop_passes=passes)
    return lp


def test_each_bucket_starts_after_its_gradients_and_is_waited_for_before_its_updates():
    lp = _reduced_step_program(bucket_bytes=32 * 32 * 4)  # W1's gradient alone fills a bucket
    calls = [(i, k.call) for i, k in enumerate(lp.kernels) if k.call is not None]
    starts = [(i, c) for i, c in calls if c.op == "allreduce_start"]
    assert len(starts) == 3 and all(c.op != "allreduce" for _, c in calls)
    ranges = live_ranges(lp)
    for i, c in starts:
        writers = [j for j, k in enumerate(lp.kernels) if any(s.buffer in c.srcs for s in k.stores)]
        assert max(writers) < i  # started once its gradients exist ...
        assert max(writers) == i - 1 or lp.kernels[i - 1].call is not None  # ... and no later
        w = next(j for j, d in calls if d.op == "allreduce_wait" and d.request == c.request)
        readers = [j for j, k in enumerate(lp.kernels) if any(ld.buffer in c.dsts for ld in k.loads())]
        assert w < min(readers) and not any(lp.kernels[j].call is None for j in range(w + 1, min(readers)))
        for b in c.srcs + c.dsts + (c.request,):  # the arena keeps them from start to wait
            assert ranges[b][0] <= i and ranges[b][1] >= w
    first_start = starts[0][0]
    assert any(k.call is None and k.reduce is not None for k in lp.kernels[first_start:])  # backward overlaps


def test_small_gradients_share_a_bucket():
    lp = _reduced_step_program()  # default 1 MiB buckets: all three gradients in one message
    starts = [k.call for k in lp.kernels if k.call is not None and k.call.op == "allreduce_start"]
    assert len(starts) == 1 and len(starts[0].srcs) == 3 and starts[0].staging is not None


def _buckets_of(lp) -> list:
    return [k.call for k in lp.kernels if k.call is not None and k.call.op == "allreduce_start"]


def test_gradients_are_reduced_in_place():
    """Each gradient's kernel writes the allreduce's result: no copy from a source buffer, and no
    kernel besides the optimizer's, the backward pass's and the calls."""
    lp = _reduced_step_program(bucket_bytes=32 * 32 * 4)
    for c in _buckets_of(lp):
        assert c.srcs == c.dsts and c.staging is None
        (writer,) = [k for k in lp.kernels if any(s.buffer == c.srcs[0] for s in k.stores)]
        assert writer.call is None and writer.reduce is not None  # the gradient's own matmul
    assert not any(k.name.split("_", 1)[1].startswith(("assign", "copy")) for k in lp.kernels)


def test_updates_wait_for_their_buckets_in_the_order_the_buckets_started(monkeypatch):
    """The grid's medium step on two ranks: W1's gradient comes last, so its fused update, first in
    the program, runs last, after the other updates that overlap its allreduce."""
    from graphnet.bench.grid import build_grid_model
    from graphnet.distributed.world import World
    from graphnet.optim import base
    monkeypatch.setattr(base, "GRADIENT_REDUCTION", World(_Comm(2), 1.0).reduce_gradients)
    lp, _ = lower(build_grid_model("medium", backend="numpy").step.program,
                  loop_passes=loop_passes(lambda *a: 0, threads=1))
    bucket = {d: i for i, c in enumerate(_buckets_of(lp)) for d in c.dsts}
    read = [max(bucket[ld.buffer] for ld in k.loads() if ld.buffer in bucket)
            for k in lp.kernels if k.call is None and any(ld.buffer in bucket for ld in k.loads())]
    assert len(set(read)) == 2 and read == sorted(read)
    waits = [bucket[k.call.dsts[0]] for k in lp.kernels if k.call is not None and k.call.op == "allreduce_wait"]
    assert waits == sorted(waits)
    last = [k for k in lp.kernels if k.call is None][-1]
    assert last.stores[-1].node.startswith("subtract") and "b2[" in last.to_text()  # W1's update


def test_a_reduced_variable_updated_in_place_is_sent_before_it_is_overwritten():
    """v <- allreduce(v) / 2: the update writes v in place, after the start has read it (the start
    used to be placed after the update, and the wait before the start)."""
    with gn.Graph():
        v = gn.variable("v", np.ones(1000, np.float32))
        fn = gn.compile([], updates=[(v, allreduce(v * 1.0) * 0.5)], backend="numpy")
    lp, _ = lower(fn.program, loop_passes=loop_passes(lambda *a: 0, threads=1))
    ops = [k.call.op if k.call is not None else "update" for k in lp.kernels]
    assert ops == ["allreduce_start", "allreduce_wait", "update"], lp.to_text()


def test_progress_calls_follow_each_kernel_that_runs_while_a_bucket_is_in_flight(monkeypatch):
    from codegen import collectives
    lp = _reduced_step_program(bucket_bytes=32 * 32 * 4)
    flying: set = set()
    for k, following in zip(lp.kernels, lp.kernels[1:] + [None]):
        if k.call is not None and k.call.op == "allreduce_start":
            flying.add(k.call.request)
        elif k.call is not None and k.call.op == "allreduce_wait":
            flying.discard(k.call.request)
        elif k.call is None:
            call = None if following is None else following.call
            assert call is not None if flying else call is None or call.op != "allreduce_progress", k.name
        else:
            assert k.call.op == "allreduce_progress" and flying
            assert collectives.call_descriptor(lp, k.call) == [0, 0, -1, -1]
    assert any(k.call is not None and k.call.op == "allreduce_progress" for k in lp.kernels)
    monkeypatch.setattr(collectives, "PROGRESS", False)
    without = _reduced_step_program(bucket_bytes=32 * 32 * 4)
    assert not any(k.call is not None and k.call.op == "allreduce_progress" for k in without.kernels)
    assert [k.name.split("_", 1)[1] for k in without.kernels] == \
        [k.name.split("_", 1)[1] for k in lp.kernels if k.call is None or k.call.op != "allreduce_progress"]


def test_the_progress_thread_setting_is_checked(monkeypatch):
    from graphnet.distributed.native import progress_thread_microseconds
    monkeypatch.setenv("GRAPHNET_MPI_PROGRESS_THREAD", "50")
    assert progress_thread_microseconds() == 50.0
    for bad in ("-1", "fast", "nan"):
        monkeypatch.setenv("GRAPHNET_MPI_PROGRESS_THREAD", bad)
        with pytest.raises(ValueError, match="GRAPHNET_MPI_PROGRESS_THREAD"):
            progress_thread_microseconds()


class _Comm:
    def __init__(self, size: int):
        self.size = size

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return self.size


def test_a_world_of_one_rank_compiles_the_single_process_step(monkeypatch):
    """One rank has nothing to reduce: its optimizers' step is the plain step, no call in its loop IR."""
    from graphnet.distributed.world import World
    from graphnet.optim import base

    def step_text(reduction) -> str:
        monkeypatch.setattr(base, "GRADIENT_REDUCTION", reduction)
        step, _ = cases.mlp_step("numpy")
        lp, _ = lower(step.program, loop_passes=loop_passes(lambda *a: 0, threads=1))
        return lp.to_text(sources=False)
    one, two = World(_Comm(1), 1.0), World(_Comm(2), 1.0)
    assert step_text(one.reduce_gradients) == step_text(None)
    assert "allreduce" in step_text(two.reduce_gradients)


def test_the_llvm_backend_needs_an_mpi_world_for_a_communicating_step():
    x = gn.variable("v", np.ones(3, np.float32))
    with pytest.raises(RuntimeError, match=r"graphnet.distributed.init\(\)"):
        gn.compile([allreduce(x * 2.0)], backend="llvm")
    with pytest.raises(RuntimeError, match=r"graphnet.distributed.init\(\)"):
        gn.compile([allreduce(x * 2.0)], backend="numpy")()


def test_the_opencl_backend_refuses_collectives():
    pytest.importorskip("pyopencl")
    from codegen.loopir import UnsupportedInstruction
    x = gn.variable("v", np.ones(3, np.float32))
    try:
        with pytest.raises(UnsupportedInstruction, match="cannot run the collective 'allreduce'"):
            gn.compile([allreduce(x * 2.0)], backend="opencl")
    except RuntimeError as e:  # no OpenCL device
        pytest.skip(str(e))


def test_allreduce_needs_a_static_float_shape():
    with pytest.raises(gn.ShapeError, match="static shape"):
        allreduce(gn.placeholder("x", (None, 2)))


def test_the_cost_model_hides_a_bucket_behind_the_kernels_between_its_start_and_wait():
    from graphnet.bench.micro.distributed import Kernel, model_step, ring_seconds, tree_seconds
    assert ring_seconds(1000, 1, 1e9, 1e-6) == 0
    assert ring_seconds(8_000_000, 4, 1e9, 1e-6) == pytest.approx(6e-6 + 2 * 3 / 4 * 8e-3)
    assert tree_seconds(8_000_000, 4, 1e9, 1e-6) == pytest.approx(4 * (1e-6 + 8e-3))
    kernels = [Kernel("compute", 1.0), Kernel("start", 0.0, 0, 100), Kernel("compute", 2.0),
               Kernel("wait", 0.0, 0, 100), Kernel("compute", 1.0)]
    assert model_step(kernels, lambda nbytes: 1.5) == 4.0  # hidden behind the 2 s kernel
    assert model_step(kernels, lambda nbytes: 3.0) == 5.0  # 1 s of it exposed


def test_fit_under_mpi_refuses_a_model_compiled_before_init():
    from graphnet.distributed.fit import require_reduction
    model = cases.keras_model()
    with pytest.raises(RuntimeError, match=r"compiled before graphnet.distributed.init\(\)"):
        require_reduction(model.train_function)
