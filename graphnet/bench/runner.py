"""`graphnet bench`: training-step time of graphnet against numpy, PyTorch and JAX (BENCHMARKS.md).

For every thread setting a fresh worker process (this module with `--worker-out`) is started with
the thread environment set before any library loads (OPENBLAS/OMP/MKL_NUM_THREADS,
GRAPHNET_NUM_THREADS) and, for a thread count, pinned to that many cores (JAX heeds only that).
Per configuration the worker builds every system, compiles and warms it up, calibrates a loop of steps lasting at least `--min-time`, then times the systems in
interleaved rounds (the order rotates every round) so machine drift hits all alike. It writes JSON
after each configuration; the parent turns it into markdown tables, a chart and a JSON file.

Four reference points ("ceilings") run alongside the peers: `gemm-floor` (numpy's float32 matmuls
of the step at the same shapes, nothing else) and, compiled with the system C compiler
(ceilings.py), `ctypes-call` (a native no-op called through ctypes with as many array arguments as
the step has: feeds, loss, and each parameter with its two Adam moments), `c-step` (the step written
by hand in plain single-threaded C) and `fma-peak` (the step's FLOPs at the machine's FMA peak).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from graphnet import __version__

from .ceilings import C_STEP_MAX_FLOPS, Ceiling, c_step, ctypes_call, fma_peak
from .convnets import NETS, ConvNet
from .peers import GRID, PEERS, GridConfig, Peer, PeerUnavailable, blas_threads, grid_data

CONFIGS: dict[str, GridConfig | ConvNet] = {**GRID, **NETS}  # the dense rows, then the convolutional ones

GRAPHNET_SYSTEMS = {"graphnet-llvm": ("llvm", True), "graphnet-numpy": ("numpy", True),
                    "graphnet-llvm-unfused": ("llvm", False)}  # unfused: without the optimizer-fusion pass
CEILINGS = ("gemm-floor", "ctypes-call", "c-step", "fma-peak")
DEFAULT_SYSTEMS = "graphnet-llvm,graphnet-numpy,numpy,torch,torch-fused,jax"
SETTLE = 0.02  # seconds of rest before each timed loop, so the previous system's spinning threads go idle
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GRAPHNET_NUM_THREADS")


# ---------------------------------------------------------------------------------------------- statistics

@dataclass(frozen=True)
class Stats:
    """Per-step seconds over the repeats."""

    median: float
    low: float
    high: float
    repeats: int


def summarize(per_step: list[float]) -> Stats:
    return Stats(statistics.median(per_step), min(per_step), max(per_step), len(per_step))


def interleaved_order(names: list[str], repeats: int) -> list[list[str]]:
    """One list per round holding every system once; the start rotates so no system always goes first."""
    n = len(names)
    return [[names[(r + i) % n] for i in range(n)] for r in range(repeats)] if n else [[] for _ in range(repeats)]


def time_loop(step: Callable[[], Any], loops: int) -> float:
    """Seconds per step over `loops` back-to-back steps, garbage collection paused as in timeit."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(loops):
            step()
        return (time.perf_counter() - start) / loops
    finally:
        if enabled:
            gc.enable()


def calibrate(step: Callable[[], Any], min_time: float) -> int:
    """The number of steps that makes one timed loop last at least `min_time` seconds."""
    loops = 1
    while True:
        elapsed = time_loop(step, loops) * loops
        if elapsed >= min_time:
            return loops
        loops = min(loops * 100, max(loops * 2, math.ceil(loops * 1.1 * min_time / max(elapsed, 1e-9))))


# ---------------------------------------------------------------------------------------------- systems

@dataclass
class System(Peer):
    """A timed thing: a peer, a graphnet function or a ceiling, with what to quote about it."""

    compile_cold: float | None = None
    compile_warm: float | None = None
    work: float = 1.0  # configuration steps' worth of work per call of `step`; timings are divided by it


def _peer_system(peer: Peer) -> System:
    return System(peer.name, peer.version, peer.threads, peer.step, peer.note)


def _compiled_cold_then_warm(build: Callable[[], Any], cached: bool) -> tuple[Any, list[float]]:
    """`build()` timed with an empty compile cache (cold), then, where the backend caches, again with it
    filled by the first (warm); the last build and its times."""
    times = []
    with tempfile.TemporaryDirectory(prefix="graphnet-bench-cache-") as cache:
        previous = os.environ.get("GRAPHNET_CACHE_DIR")
        os.environ["GRAPHNET_CACHE_DIR"] = cache
        try:
            for _ in range(2 if cached else 1):
                start = time.perf_counter()
                built = build()
                times.append(time.perf_counter() - start)
        finally:
            if previous is None:
                os.environ.pop("GRAPHNET_CACHE_DIR", None)
            else:
                os.environ["GRAPHNET_CACHE_DIR"] = previous
    return built, times


def _graphnet_threads(backend: str) -> str:
    return os.environ.get("GRAPHNET_NUM_THREADS", f"auto (<= {_cores()})") if backend != "numpy" else blas_threads()


def _graphnet_note(backend: str, fuse_optimizer: bool) -> str:
    return f"backend={backend}" + ("" if fuse_optimizer else ", fuse_optimizer=False")


def graphnet_system(config: GridConfig, backend: str, fuse_optimizer: bool = True) -> System:
    """A graphnet training step, compiled with an empty cache (cold), then again with it filled (warm).

    graphnet is imported here, not at the top, so that a broken build shows as one failed system.
    """
    from .grid import build_grid_model

    cached = backend != "numpy"  # the numpy backend keeps no compile cache
    model, times = _compiled_cold_then_warm(
        lambda: build_grid_model(config.name, backend, fuse_optimizer=fuse_optimizer), cached)
    feeds = model.feeds(*grid_data(config))
    fn = model.step
    name = f"graphnet-{backend}" + ("" if fuse_optimizer else "-unfused")
    return System(name, __version__, _graphnet_threads(backend), lambda: fn(**feeds),
                  _graphnet_note(backend, fuse_optimizer), times[0], times[1] if cached else None)


def gemm_floor(config: GridConfig) -> System:
    """numpy's float32 GEMMs of one step: X@W and X^T@dY per layer, dY@W^T for all but the input layer."""
    rng = np.random.default_rng(0)
    calls = []

    def rand(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    for i, (n_in, n_out) in enumerate(zip(config.layers, config.layers[1:])):
        x, w, dy = rand(config.batch, n_in), rand(n_in, n_out), rand(config.batch, n_out)
        calls.append((x, w, np.empty((config.batch, n_out), np.float32)))
        calls.append((x.T, dy, np.empty((n_in, n_out), np.float32)))
        if i > 0:
            calls.append((dy, w.T, np.empty((config.batch, n_in), np.float32)))

    def step():
        for a, b, out in calls:
            np.matmul(a, b, out=out)

    return System("gemm-floor", np.__version__, blas_threads(), step,
                  "numpy float32 matmuls at the step's shapes (the input layer needs no dX)")


NATIVE_CEILINGS: dict[str, Callable[[GridConfig], Ceiling]] = {
    "ctypes-call": ctypes_call, "c-step": c_step, "fma-peak": fma_peak}


def conv_system(name: str, net: ConvNet) -> System:
    """A system of a convolutional configuration: graphnet (compiled cold, then warm, as graphnet_system),
    torch or jax (convnets.py), the FMA peak; the dense-only references are unavailable."""
    from . import convnets
    weights, (x, y) = convnets.initial_weights(net), convnets.data(net)
    if name in GRAPHNET_SYSTEMS:
        backend, fuse = GRAPHNET_SYSTEMS[name]
        cached = backend != "numpy"
        fn, times = _compiled_cold_then_warm(lambda: convnets.graphnet_function(net, weights, backend, fuse), cached)
        return System(name, __version__, _graphnet_threads(backend), lambda: fn(x=x, y=y),
                      _graphnet_note(backend, fuse), times[0], times[1] if cached else None)
    if name in ("torch", "jax"):
        make = convnets.torch_step if name == "torch" else convnets.jax_step
        try:
            step = make(net, weights, x, y, threads=None) if name == "torch" else make(net, weights, x, y)
            module = __import__(name)
        except ImportError as e:
            raise PeerUnavailable(f"{name} not installed ({e})") from e
        threads = str(module.get_num_threads()) if name == "torch" else "cores in the CPU affinity"
        note = "eager, NCHW, torch.optim.Adam" if name == "torch" else "jax.jit of the whole step, NHWC, donated buffers"
        return System(name, module.__version__, threads, step, note)
    if name == "fma-peak":
        ceiling = fma_peak(net)
        return System(ceiling.name, ceiling.version, ceiling.threads, ceiling.step, ceiling.note, work=ceiling.work)
    raise PeerUnavailable("written for the dense configurations only")


def build_system(name: str, config: GridConfig | ConvNet) -> System:
    if isinstance(config, ConvNet):
        return conv_system(name, config)
    if name in GRAPHNET_SYSTEMS:
        return graphnet_system(config, *GRAPHNET_SYSTEMS[name])
    if name == "gemm-floor":
        return gemm_floor(config)
    if name in NATIVE_CEILINGS:
        ceiling = NATIVE_CEILINGS[name](config)
        return System(ceiling.name, ceiling.version, ceiling.threads, ceiling.step, ceiling.note, work=ceiling.work)
    if name in PEERS:
        return _peer_system(PEERS[name](config))
    raise ValueError(f"unknown system '{name}'")


# ---------------------------------------------------------------------------------------------- worker

def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _load_average() -> float | None:
    """Other processes' load: on a shared machine it explains noisy or slow rounds."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_config(config: GridConfig, names: list[str], repeats: int, min_time: float) -> dict:
    """Build, warm up, calibrate and time every system on one configuration, interleaved."""
    result: dict[str, dict] = {}
    ready: dict[str, tuple[System, int]] = {}
    for name in names:
        try:
            start = time.perf_counter()
            system = build_system(name, config)
            built = time.perf_counter() - start
            start = time.perf_counter()
            system.step()
            first = time.perf_counter() - start
            system.step()
            loops = calibrate(system.step, min_time)
        except PeerUnavailable as e:
            result[name] = {"error": f"not available: {e}"}
            continue
        except Exception as e:  # a failing system is reported, never fatal
            result[name] = {"error": _error(e)}
            _log(f"  {config.name} {name}: failed\n{traceback.format_exc(limit=3)}")
            continue
        result[name] = {"version": system.version, "threads": system.threads, "note": system.note,
                        "compile_cold": system.compile_cold, "compile_warm": system.compile_warm,
                        "setup": built, "first_call": first, "loops": loops}
        ready[name] = (system, loops)
    times: dict[str, list[float]] = {name: [] for name in ready}
    for order in interleaved_order(list(ready), repeats):
        for name in order:
            if "error" in result[name]:
                continue
            system, loops = ready[name]
            time.sleep(SETTLE)
            try:
                times[name].append(time_loop(system.step, loops) / system.work)
            except Exception as e:
                result[name]["error"] = _error(e)
    for name, values in times.items():
        if "error" not in result[name]:
            result[name].update(asdict(summarize(values)))
            _log(f"  {config.name:6} {name:15} {format_time(result[name]['median'])}")
    return result


def run_worker(args: argparse.Namespace) -> None:
    (threads,) = args.threads
    report = {"threads": threads, "cores": _cores(), "python": sys.version.split()[0], "load": {}, "configs": {}}
    pin_threads(threads)
    names = list(dict.fromkeys(args.systems + list(CEILINGS)))
    for config_name in args.configs:
        _log(f"[threads={threads}] {CONFIGS[config_name].label}")
        report["load"][config_name] = _load_average()
        report["configs"][config_name] = measure_config(CONFIGS[config_name], names, args.repeats, args.min_time)
        Path(args.worker_out).write_text(json.dumps(report, indent=1))


def thread_env(threads: str) -> dict[str, str]:
    """The environment of a worker for a thread setting: 'all' leaves every library at its default."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    if threads != "all":
        env.update({var: threads for var in THREAD_VARS})
    return env


def pin_threads(threads: str) -> None:
    """Restrict this process to `threads` cores: XLA sizes its thread pool by the CPU affinity, not by flags."""
    if threads != "all" and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:int(threads)])


def run_threads(args: argparse.Namespace, threads: str) -> dict:
    """One worker process for one thread setting; a crash keeps the configurations finished before it."""
    with tempfile.TemporaryDirectory(prefix="graphnet-bench-") as tmp:
        out = Path(tmp, "report.json")
        command = [sys.executable, "-m", "graphnet.bench", "--configs", ",".join(args.configs),
                   "--systems", ",".join(args.systems), "--threads", threads, "--repeats", str(args.repeats),
                   "--min-time", str(args.min_time), "--worker-out", str(out)]
        done = subprocess.run(command, env=thread_env(threads))
        report = json.loads(out.read_text()) if out.exists() else {"threads": threads, "configs": {}}
    if done.returncode != 0:
        missing = [c for c in args.configs if c not in report["configs"]]
        report["failure"] = f"worker exited with status {done.returncode}; not measured: {', '.join(missing) or '-'}"
    return report


# ---------------------------------------------------------------------------------------------- report

def _unit(seconds: float) -> tuple[str, float]:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return unit, scale
    return "ns", 1e-9


def _number(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def format_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    unit, scale = _unit(seconds)
    return f"{_number(seconds / scale)} {unit}"


def format_stats(entry: dict) -> str:
    """'1.49 ms (1.41-1.62)': the median, then min-max in the median's unit."""
    unit, scale = _unit(entry["median"])
    low, high = _number(entry["low"] / scale), _number(entry["high"] / scale)
    return f"{_number(entry['median'] / scale)} {unit} ({low}-{high})"


def _median(entry: dict | None) -> float | None:
    return entry.get("median") if entry and "error" not in entry else None


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _thread_title(report: dict) -> str:
    threads = report["threads"]
    if threads == "all":
        return f"all threads (library defaults, {report.get('cores', '?')} cores)"
    return f"{threads} thread" + ("" if threads == "1" else "s")


def markdown(reports: list[dict], systems: list[str]) -> str:
    """Tables per thread setting: medians (min-max), GFLOP/s, graphnet's ratios, compile times, versions."""
    names = list(dict.fromkeys(systems + list(CEILINGS)))
    ours = [s for s in names if s in GRAPHNET_SYSTEMS]
    peers = [s for s in names if s not in GRAPHNET_SYSTEMS and s not in CEILINGS]
    lines = ["# graphnet bench", "",
             "Training step (forward + backward + Adam) on the grid of BENCHMARKS.md. Per-step time: median over "
             "the repeats of a timed loop, (min-max); systems interleaved per configuration. GFLOP/s = "
             "6 x batch x sum(in x out) / median.", ""]
    for report in reports:
        configs = report["configs"]
        lines += [f"## {_thread_title(report)}", ""]
        if report.get("load"):
            loads = ", ".join(f"{name} {load:.1f}" for name, load in report["load"].items() if load is not None)
            lines += [f"Machine load (1-minute load average) before each configuration: {loads or 'unknown'} "
                      f"on {report.get('cores', '?')} cores.", ""]
        if report.get("failure"):
            lines += [f"Note: {report['failure']}", ""]
        rows = []
        for name, entries in configs.items():
            row = [CONFIGS[name].label]
            for system in names:
                entry = entries.get(system)
                median = _median(entry)
                row.append("-" if median is None else format_stats(entry))
            rows.append(row)
        lines += ["### Per-step time, median (min-max)", ""] + _table(["config"] + names, rows) + [""]
        rated = [s for s in names if s not in ("ctypes-call", "fma-peak")]
        rows = [[CONFIGS[name].label] + [_gflops(CONFIGS[name], _median(entries.get(s))) for s in rated]
                for name, entries in configs.items()]
        lines += ["### GFLOP/s", ""] + _table(["config"] + rated, rows) + [""]
        peaks = [CONFIGS[name].needed_flops / m for name, entries in configs.items()
                 if (m := _median(entries.get("fma-peak")))]
        if peaks:
            lines += [f"fma-peak: {statistics.median(peaks) / 1e9:.3g} GFLOP/s (median over the configurations), "
                      "the FMA throughput of the threads above; its per-step time is the FLOPs a step must do (the "
                      "count above less the input layer's input gradient) at that rate.", ""]
        for system in ours:
            header = (["config"] + [f"{p} / {system}" for p in peers] + [f"best peer / {system}"]
                      + [f"{system} / {c}" for c in CEILINGS])
            rows = []
            for name, entries in configs.items():
                t = _median(entries.get(system))
                row = [CONFIGS[name].label]
                row += [_ratio(_median(entries.get(p)), t) for p in peers]
                measured = [(m, p) for p in peers if (m := _median(entries.get(p)))]
                best, best_name = min(measured) if measured else (None, "")
                row.append(f"{_ratio(best, t)} ({best_name})" if best and t else "-")
                row += [_ratio(t, _median(entries.get(c))) for c in CEILINGS]
                rows.append(row)
            lines += [f"### {system}: speed-up over each peer (> 1: graphnet faster) and distance to the ceilings",
                      ""] + _table(header, rows) + [""]
        if {"graphnet-llvm", "graphnet-llvm-unfused"} <= set(names):
            rows = [[CONFIGS[name].label, _ratio(_median(entries.get("graphnet-llvm-unfused")),
                                              _median(entries.get("graphnet-llvm")))] for name, entries in configs.items()]
            lines += ["### What the optimizer-fusion pass buys: step time without it / with it", ""] + _table(
                ["config", "graphnet-llvm-unfused / graphnet-llvm"], rows) + [""]
        lines += _compile_table(configs, names) + _systems_table(configs, names)
        errors = [f"- {name} / {system}: {entry['error']}" for name, entries in configs.items()
                  for system, entry in entries.items() if "error" in entry]
        if errors:
            lines += ["Not measured (shown as -):", ""] + errors + [""]
    return "\n".join(lines)


def _gflops(config: GridConfig, seconds: float | None) -> str:
    return "-" if not seconds else f"{config.flops / seconds / 1e9:.3g}"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return "-"
    ratio = numerator / denominator
    return f"{ratio:.2f}x" if ratio < 100 else f"{ratio:.3g}x"


def _compile_table(configs: dict, names: list[str]) -> list[str]:
    """graphnet's build + compile time cold (empty cache) and warm (cached); jax's first call (trace + jit)."""
    columns = [(s, "compile_cold", f"{s} cold") for s in names if s in GRAPHNET_SYSTEMS]
    columns += [(s, "compile_warm", f"{s} warm") for s in names if s in GRAPHNET_SYSTEMS]
    columns += [(s, "first_call", f"{s} first call") for s in names if s.startswith("jax")]
    if not columns:
        return []
    rows = [[CONFIGS[name].label] + [format_time((entries.get(s) or {}).get(key)) for s, key, _ in columns]
            for name, entries in configs.items()]
    return ["### Compile time", "", "graphnet: graph construction + gn.compile, cold = empty GRAPHNET_CACHE_DIR, "
            "warm = cache filled by the cold compile (the numpy backend has no cache); jax: first call of the "
            "jitted step (trace + XLA compile + one step).", ""] + _table(["config"] + [c[2] for c in columns], rows) + [""]


def _systems_table(configs: dict, names: list[str]) -> list[str]:
    rows = []
    for system in names:
        entry = next((e[system] for e in configs.values() if system in e and "error" not in e[system]), None)
        if entry:
            rows.append([system, entry["version"], entry["threads"], entry["note"]])
        else:
            errors = [e[system]["error"] for e in configs.values() if system in e]
            rows.append([system, "-", "-", errors[0] if errors else "not run"])
    return ["### Systems", ""] + _table(["system", "version", "threads", "note"], rows) + [""]


def chart(reports: list[dict], systems: list[str], path: str) -> str | None:
    """Grouped bars per configuration of each system's time over the fastest non-graphnet peer's (log)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no chart"
    names = [s for s in dict.fromkeys(systems + ["gemm-floor"])]
    peers = [s for s in names if s not in GRAPHNET_SYSTEMS and s not in CEILINGS]
    fig, axes = plt.subplots(1, len(reports), figsize=(6 * len(reports), 4.5), squeeze=False)
    for ax, report in zip(axes[0], reports):
        configs = list(report["configs"])
        width = 0.8 / max(len(names), 1)
        for i, system in enumerate(names):
            values = []
            for name in configs:
                entries = report["configs"][name]
                best = min((m for m in (_median(entries.get(p)) for p in peers) if m), default=None)
                t = _median(entries.get(system))
                values.append(t / best if t and best else np.nan)
            ax.bar(np.arange(len(configs)) + (i - (len(names) - 1) / 2) * width, values, width, label=system)
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(configs)), configs)
        ax.set_ylabel("step time / fastest peer's (lower is better)")
        ax.set_title(_thread_title(report))
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# ---------------------------------------------------------------------------------------------- CLI

def _list(choices: Any) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in items if choices is not None and t not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)} (choose from {', '.join(choices)})")
        return items
    return parse


def _threads(text: str) -> list[str]:
    items = _list(None)(text)
    bad = [t for t in items if t != "all" and not (t.isdigit() and int(t) > 0)]
    if bad:
        raise argparse.ArgumentTypeError(f"threads must be 'all' or a positive count, got {', '.join(bad)}")
    return items


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphnet bench", description="Training-step time of graphnet against numpy, "
                                "PyTorch and JAX on the benchmark grid (BENCHMARKS.md).")
    p.add_argument("--configs", type=_list(CONFIGS), default=list(CONFIGS),
                   help=f"grid rows (default: all: {','.join(CONFIGS)})")
    p.add_argument("--systems", type=_list(list(GRAPHNET_SYSTEMS) + list(PEERS)), default=DEFAULT_SYSTEMS.split(","),
                   help=f"systems to compare (default: {DEFAULT_SYSTEMS}; also torch-foreach); the ceilings "
                        f"{', '.join(CEILINGS)} always run (c-step up to {C_STEP_MAX_FLOPS / 1e9:g} GFLOP per step)")
    p.add_argument("--threads", type=_threads, default=["1", "all"], help="thread settings, e.g. 1,all (default)")
    p.add_argument("--repeats", type=int, default=7, help="timed loops per system (default 7)")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds one timed loop lasts at least (default 0.2)")
    p.add_argument("--markdown", help="write the tables here (they are always printed)")
    p.add_argument("--chart", help="write a PNG chart here (needs matplotlib)")
    p.add_argument("--json", help="write the raw measurements here")
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--compile", action="store_true", help="instead: compile time by phase, cold, with the GEMM "
                                                          "library warm and cached (graphnet.bench.micro.compile)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--compile" in argv:  # compile time by phase instead (its own options: graphnet bench --compile --help)
        from .micro.compile import main as compile_main
        return compile_main([a for a in argv if a != "--compile"])
    args = parser().parse_args(argv)
    if args.repeats < 1 or args.min_time <= 0:
        parser().error("--repeats must be >= 1 and --min-time > 0")
    if args.worker_out:
        run_worker(args)
        return 0
    reports = [run_threads(args, threads) for threads in args.threads]
    text = markdown(reports, args.systems)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"systems": args.systems, "reports": reports}, indent=1))
    if args.chart:
        problem = chart(reports, args.systems, args.chart)
        if problem:
            print(problem, file=sys.stderr)
    return 0 if all(not r.get("failure") for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
