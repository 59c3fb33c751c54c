"""The benchmark harness: peers train and agree, statistics helpers, tables, and one end-to-end run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graphnet.bench import ceilings, runner
from graphnet.bench.peers import GRID, PEERS, PeerUnavailable, grid_data


def test_grid_flops_follow_benchmarks_md():
    assert GRID["tiny"].flops == 6 * 32 * (2 * 3 + 3 * 1)
    assert GRID["wide"].flops == 6 * 512 * (1024 * 4096 * 2)


def test_grid_data_matches_each_loss():
    _, y = grid_data(GRID["tiny"])
    assert set(np.unique(y)) <= {0.0, 1.0}
    _, y = grid_data(GRID["small"])
    assert np.all(y.sum(axis=1) == 1)
    x, y = grid_data(GRID["wide"])
    assert x.dtype == y.dtype == np.float32 and y.shape == (512, 1024)


@pytest.mark.parametrize("config", ["tiny", "small", "medium"])
def test_numpy_peer_loss_decreases(config):
    peer = PEERS["numpy"](GRID[config])
    losses = [float(peer.step()) for _ in range(30)]
    assert losses[-1] < losses[0]
    assert all(np.isfinite(losses))


@pytest.mark.parametrize("loss", ["bce_logits", "softmax_ce", "mse"])
def test_numpy_peer_loss_gradients_match_finite_differences(loss):
    """(Adam hides a wrongly scaled gradient, so the peers' agreement on losses cannot show one.)"""
    from graphnet.bench.peers import _loss_and_grad
    config = runner.GridConfig("check", (4, 3), 5, "relu", loss)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 3))
    y = np.eye(3)[rng.integers(0, 3, 5)] if loss == "softmax_ce" else (rng.random((5, 3)) < 0.5).astype(float)
    _, grad = _loss_and_grad(config, z, y)
    h, numeric = 1e-6, np.zeros_like(z)
    for i in np.ndindex(z.shape):
        step = np.zeros_like(z)
        step[i] = h
        numeric[i] = (_loss_and_grad(config, z + step, y)[0] - _loss_and_grad(config, z - step, y)[0]) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("config", ["tiny", "small", "medium", "wide"])
def test_numpy_and_torch_peers_agree_on_first_losses(config):
    pytest.importorskip("torch")
    if config == "wide":
        config = runner.GridConfig("wide-narrow", (16, 64, 8), 32, "tanh", "mse")  # wide's activation and loss
    else:
        config = GRID[config]
    ours, theirs = PEERS["numpy"](config), PEERS["torch"](config)
    for _ in range(4):
        np.testing.assert_allclose(float(ours.step()), float(theirs.step()), rtol=2e-5)


def test_jax_peer_agrees_with_numpy():
    pytest.importorskip("jax")
    ours, theirs = PEERS["numpy"](GRID["tiny"]), PEERS["jax"](GRID["tiny"])
    for _ in range(3):
        np.testing.assert_allclose(float(ours.step()), float(theirs.step()), rtol=1e-5)


def test_graphnet_system_trains_the_same_model_as_the_peers():
    system = runner.graphnet_system(GRID["small"], "numpy")
    peer = PEERS["numpy"](GRID["small"])
    for _ in range(3):
        (loss,) = system.step()
        np.testing.assert_allclose(float(loss), float(peer.step()), rtol=2e-5)
    assert system.compile_cold > 0 and system.compile_warm is None  # the numpy backend has no cache


def test_missing_peer_is_reported_not_raised(monkeypatch):
    def unavailable(config):
        raise PeerUnavailable("not installed here")
    monkeypatch.setitem(runner.PEERS, "torch", unavailable)
    result = runner.measure_config(GRID["tiny"], ["torch", "numpy"], repeats=2, min_time=1e-3)
    assert result["torch"]["error"] == "not available: not installed here"
    assert result["numpy"]["median"] > 0


def test_failing_system_is_reported_not_raised(monkeypatch):
    def broken(config):
        def step():
            raise FloatingPointError("nan in the loss")
        return runner.Peer("torch", "0", "1", step)
    monkeypatch.setitem(runner.PEERS, "torch", broken)
    result = runner.measure_config(GRID["tiny"], ["torch", "numpy"], repeats=2, min_time=1e-3)
    assert result["torch"] == {"error": "FloatingPointError: nan in the loss"}
    assert result["numpy"]["repeats"] == 2


def test_summarize_median_and_range():
    stats = runner.summarize([3.0, 1.0, 2.0, 10.0])
    assert (stats.median, stats.low, stats.high, stats.repeats) == (2.5, 1.0, 10.0, 4)


def test_interleaved_order_rotates_and_covers_every_system():
    rounds = runner.interleaved_order(["a", "b", "c"], 4)
    assert len(rounds) == 4
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert [r[0] for r in rounds] == ["a", "b", "c", "a"]
    assert runner.interleaved_order([], 2) == [[], []]


def test_calibrate_reaches_min_time(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock[0])

    def step():
        clock[0] += 1e-3
    assert runner.calibrate(step, 0.01) == 11  # 1 step: 1 ms, too short; then 1.1 x 10 ms worth
    assert runner.time_loop(step, 5) == pytest.approx(1e-3)


def test_thread_env(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    one = runner.thread_env("1")
    assert one["OPENBLAS_NUM_THREADS"] == one["GRAPHNET_NUM_THREADS"] == one["OMP_NUM_THREADS"] == "1"
    default = runner.thread_env("all")
    assert "OMP_NUM_THREADS" not in default and "GRAPHNET_NUM_THREADS" not in default
    assert default["PATH"] == one["PATH"]


def test_format_time():
    assert runner.format_time(1.49e-3) == "1.49 ms"
    assert runner.format_time(880e-9) == "880 ns"
    assert runner.format_time(None) == "-"
    assert runner.format_stats({"median": 61.9e-6, "low": 60e-6, "high": 1.2e-4}) == "61.9 us (60-120)"


def _entry(median):
    return {"median": median, "low": median * 0.9, "high": median * 1.2, "repeats": 7, "version": "1",
            "threads": "1", "note": "", "compile_cold": 0.5, "compile_warm": 0.1, "first_call": 0.3}


def test_markdown_ratios_and_missing_systems():
    report = {"threads": "1", "cores": 2, "configs": {"small": {
        "graphnet-llvm": _entry(50e-6), "numpy": _entry(100e-6), "torch": {"error": "not available: no torch"},
        "gemm-floor": _entry(25e-6), "ctypes-call": _entry(1e-6), "c-step": _entry(40e-6),
        "fma-peak": _entry(5e-6)}}}
    text = runner.markdown([report], ["graphnet-llvm", "numpy", "torch"])
    lines = text.splitlines()
    assert "| config | graphnet-llvm | numpy | torch | gemm-floor | ctypes-call | c-step | fma-peak |" in lines
    assert ("| small 64-128-10 b64 | 50 us (45-60) | 100 us (90-120) | - | 25 us (22.5-30) | 1 us (0.9-1.2) | "
            "40 us (36-48) | 5 us (4.5-6) |") in lines
    assert ("| config | numpy / graphnet-llvm | torch / graphnet-llvm | best peer / graphnet-llvm | "
            "graphnet-llvm / gemm-floor | graphnet-llvm / ctypes-call | graphnet-llvm / c-step | "
            "graphnet-llvm / fma-peak |") in lines
    assert "| small 64-128-10 b64 | 2.00x | - | 2.00x (numpy) | 2.00x | 50.00x | 1.25x | 10.00x |" in lines
    assert "- small / torch: not available: no torch" in lines
    gflops = GRID["small"].flops / 50e-6 / 1e9
    assert f"| small 64-128-10 b64 | {gflops:.3g} | {gflops / 2:.3g} | - | {gflops * 2:.3g} | {gflops * 1.25:.3g} |" in lines
    peak = GRID["small"].needed_flops / 5e-6 / 1e9
    assert any(line.startswith(f"fma-peak: {peak:.3g} GFLOP/s") for line in lines)


def test_bench_end_to_end_tiny(tmp_path):
    out, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    code = runner.main(["--configs", "tiny", "--systems", "graphnet-numpy,numpy", "--threads", "1",
                        "--repeats", "3", "--min-time", "0.005", "--markdown", str(out), "--json", str(raw)])
    assert code == 0
    lines = out.read_text().splitlines()
    assert "| config | graphnet-numpy | numpy | gemm-floor | ctypes-call | c-step | fma-peak |" in lines
    assert any(line.startswith("| config | numpy / graphnet-numpy |") for line in lines)
    (report,) = json.loads(raw.read_text())["reports"]
    measured = report["configs"]["tiny"]
    for system in ("graphnet-numpy", "numpy", "gemm-floor"):
        assert measured[system]["repeats"] == 3 and measured[system]["low"] <= measured[system]["median"]
    assert measured["graphnet-numpy"]["compile_cold"] > 0


@pytest.mark.parametrize("module", ["graphnet.bench", "graphnet.bench.micro.gemm", "graphnet.bench.micro.parallel",
                                    "graphnet.bench.micro.step", "graphnet.bench.micro.fit", "graphnet.bench.micro.ab",
                                    "graphnet.bench.micro.cnn", "graphnet.bench.micro.chain",
                                    "graphnet.bench.micro.oclconv", "graphnet.bench.micro.abprofile",
                                    "graphnet.bench.micro.convops"])
def test_bench_modules_run_with_python_m(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")


def test_the_fit_benchmark_trains_new_epochs_in_each_call(monkeypatch):
    """micro.fit: every fit call takes the next epochs (new shuffles, as a training run draws them),
    `epochs_per_call` of them, and every measurement is a time per step."""
    import graphnet as gn
    from graphnet.bench.micro import fit as fit_bench
    calls, fit = [], gn.Model.fit

    def recorded(model, *args, **kwargs):
        calls.append((kwargs["initial_epoch"], kwargs["epochs"]))
        return fit(model, *args, **kwargs)
    monkeypatch.setattr(gn.Model, "fit", recorded)
    times = fit_bench.measure("tiny", batches=2, rounds=1, epochs_per_call=3)
    assert set(times) == {"raw", "run_steps", "fit", "fit_unshuffled", "fit_by_batch", "ctypes6", "shuffle"}
    assert all(0 < t < 1 for t in times.values())
    starts = [start for start, _ in calls]
    assert all(end == start + 3 for start, end in calls) and len(set(starts)) == len(starts) == 6


def test_abprofile_matches_kernels_by_what_they_compute_and_sums_the_border_copies():
    from graphnet.bench.micro.abprofile import roles
    got = roles({"step": 9.0, "k3_conv2d_relu": 1.0, "k4_border": 0.5, "k5_conv2d_relu": 2.0, "k6_zero_border": 0.25,
                 "k7_zero_border": 0.25})
    assert got == {"step": 9.0, "borders (all)": 1.0, "conv2d_relu#1": 1.0, "conv2d_relu#2": 2.0}


def test_conv_configurations_count_the_flops_of_benchmarks_md():
    from graphnet.bench.convnets import NETS, initial_weights
    assert round(NETS["lenet"].flops / 1e6) == 108 and round(NETS["cifar"].flops / 1e8) == 98
    shapes = [w.shape for w in initial_weights(NETS["lenet"])][::2]
    assert shapes == [(5, 5, 1, 6), (5, 5, 6, 16), (256, 120), (120, 84), (84, 10)]


def test_the_native_sources_are_package_data():
    """A non-editable install ships exactly what pyproject.toml's package-data names; ceilings compile them."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parent.parent
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {path.relative_to(root) for package, patterns in package_data.items() for pattern in patterns
               for path in (root / package.replace(".", "/")).glob(pattern)}
    sources = {path.relative_to(ceilings.NATIVE.parents[2]) for path in ceilings.NATIVE.glob("*.c")}
    assert {"fma_peak.c", "train_step.c"} <= {path.name for path in sources}
    assert sources <= shipped


@pytest.mark.parametrize("peer", ["torch", "jax"])
def test_conv_peers_train_the_same_lenet_as_graphnet(peer):
    """The grid's convolutional rows: graphnet's step (numpy backend here) and each peer start from the
    same weights and data, so their losses agree step by step."""
    pytest.importorskip(peer)
    ours, theirs = runner.build_system("graphnet-numpy", runner.CONFIGS["lenet"]), \
        runner.build_system(peer, runner.CONFIGS["lenet"])
    for _ in range(3):
        np.testing.assert_allclose(float(theirs.step()), float(ours.step()), rtol=2e-4)


def test_bench_runs_a_conv_configuration(tmp_path):
    out = tmp_path / "bench.md"
    code = runner.main(["--configs", "lenet", "--systems", "graphnet-numpy", "--threads", "1", "--repeats", "2",
                        "--min-time", "0.005", "--markdown", str(out)])
    assert code == 0
    text = out.read_text()
    assert "| lenet 28x28x1 b64 |" in text and "fma-peak" in text
    assert "- lenet / gemm-floor: not available: written for the dense configurations only" in text
    assert runner.parser().parse_args([]).configs == list(GRID) + ["lenet", "cifar"]


def test_compile_benchmark_children_import_graphnet_from_bytecode(monkeypatch, tmp_path):
    """Where the environment says not to write bytecode, the compile benchmark's children still import
    from bytecode (the run's own folder), as an installed graphnet does, so "build" holds no compiling
    of graphnet's sources."""
    from graphnet.bench.micro import compile as compile_bench
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    env = compile_bench.child_env(str(tmp_path / "cache"), str(tmp_path / "bytecode"))
    assert env["GRAPHNET_CACHE_DIR"] == str(tmp_path / "cache")
    subprocess.run([sys.executable, "-c", "import graphnet.bench.micro.compile"], env=env, check=True, timeout=120)
    assert list((tmp_path / "bytecode").rglob("compile.*.pyc"))


def test_compile_benchmark_table_shows_cpu_time_beside_wall_time():
    """The compile benchmark's table gives each state's median CPU time (the child and its workers)
    in its own column after the wall time; runs from before the column existed count as 0."""
    from graphnet.bench.micro import compile as compile_bench
    runs = [{"total": 0.4, "cpu": 0.6, "phases": {"graph passes": 0.01}},
            {"total": 0.5, "cpu": 0.7, "phases": {"graph passes": 0.02}},
            {"total": 0.6, "cpu": 0.9, "phases": {"graph passes": 0.03}}]
    m = compile_bench.medians(runs)
    assert (m["total"], m["cpu"]) == (0.5, 0.7)
    assert compile_bench.medians([{"total": 0.1, "phases": {}}])["cpu"] == 0.0
    text = compile_bench.table({"medium": {"cold": m}}, 3)
    assert "| config | state | total | cpu | graph passes |" in text
    assert "| medium | cold | 500 (target 500) | 700 | 20.0 |" in text


def test_compile_benchmark_compares_two_trees_state_by_state():
    """With --against, each state shows the other tree's row, this tree's, and this/other ratios."""
    from graphnet.bench.micro import compile as compile_bench
    def state(total, cpu):
        return {"total": total, "cpu": cpu, "phases": {"LLVM IR": total / 10}}
    this = {"medium": {"cold": state(0.6, 0.9), "cached": state(0.02, 0.02)}}
    other = {"medium": {"cold": state(0.8, 1.2), "cached": state(0.025, 0.02)}}
    lines = compile_bench.comparison(this, other, 3).splitlines()
    rows = [line for line in lines if line.startswith("| medium")]
    assert [r.split(" | ")[:2] for r in rows] == [
        ["| medium (other)", "cold"], ["| medium (this)", "cold"], ["| medium this/other", "cold"],
        ["| medium (other)", "cached"], ["| medium (this)", "cached"], ["| medium this/other", "cached"]]
    assert rows[1].startswith("| medium (this) | cold | 600 | 900 | ")
    assert rows[2] == "| medium this/other | cold | 0.750 | 0.750 |"
    assert rows[5] == "| medium this/other | cached | 0.800 | 1.000 |"


def test_the_library_warm_compile_keeps_only_the_machines_cache_entries(monkeypatch):
    """micro.compile's `library warm` state: the cold run's GEMM library and host CPU description (what the
    first compile on a machine leaves for every later model), none of the model's own entries."""
    from graphnet.bench.micro import compile as compile_bench
    seen = []

    def child(name, cache, bytecode, tree=None):
        if not seen:  # the cold run fills its cache
            for folder in ("gemm", "host", "llvm", "steps"):
                os.makedirs(os.path.join(cache, folder))
        seen.append(sorted(os.listdir(cache)))
        return {"total": 0.0, "phases": {}}
    monkeypatch.setattr(compile_bench, "run_child", child)
    states = compile_bench.one_round("medium", "unused")
    assert list(states) == ["cold", "library warm", "cached"]
    assert seen == [["gemm", "host", "llvm", "steps"], ["gemm", "host"], ["gemm", "host", "llvm", "steps"]]
