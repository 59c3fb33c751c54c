"""The `graphnet` command: `demo` (train the pass-the-class model), `dump` (pictures and generated
code of a grid model or of your own script), `profile` (each kernel's time in a grid model's step),
`cache` (the compile cache's size, or empty it), `bench` (the benchmark grid) and `fuzz` (random graphs
checked on every backend, graphnet.testing).

Mistakes on the command line (unknown options or configurations, missing files) end with exit
status 2 and one line saying what is wrong, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import os
import runpy
import sys
from typing import Any, Sequence

SCRIPT_CONVENTION = """\
A script for --script defines build(), which compiles the model and returns a compiled function
(gn.compile's result), a list of them, or a dict {name: function}; it may take a `backend`
keyword, which receives --backend when that is given. The script runs with
__name__ != "__main__", so its training code under `if __name__ == "__main__":` is skipped."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class UsageError(Exception):
    """A mistake in the command's arguments or files: reported in one line with exit status 2."""


def default_backend() -> str:
    """The LLVM backend where it is installed, else the numpy reference."""
    from .function import BACKENDS
    module = BACKENDS["llvm"].split(":")[0]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    return "llvm" if found else "numpy"


def build_parser() -> argparse.ArgumentParser:
    from .bench.convnets import NETS as CONV_NETS
    from .bench.peers import GRID
    from .function import BACKENDS
    parser = _Parser(prog="graphnet", description="graphnet: a compiler for neural-network training steps.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    demo = commands.add_parser("demo", help="train the course's 'will I pass this class?' model",
                               description="Train the pass-the-class model (two features: lectures attended, "
                                           "hours on the final project) with a progress bar, then print the "
                                           "chance that a student with 4 lectures and 5 hours passes.")
    demo.add_argument("--backend", choices=list(BACKENDS), default=default_backend(),
                      help="code generator (default: %(default)s)")
    demo.add_argument("--epochs", type=_positive, default=100, help="training epochs (default: %(default)s)")

    dump = commands.add_parser("dump", help="write graph pictures, generated code and an HTML report",
                               description="Compile a model and write, into --out, the graph after each pass "
                                           "(text and DOT), the final graph as SVG (with Graphviz), the generated "
                                           "code, report.html and summary.txt.",
                               epilog=SCRIPT_CONVENTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = dump.add_mutually_exclusive_group(required=True)
    model.add_argument("--config", choices=list(GRID), help="a benchmark-grid model's training step")
    model.add_argument("--script", metavar="PATH", help="a Python file defining build() (see below)")
    dump.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    dump.add_argument("--backend", choices=list(BACKENDS),
                      help=f"code generator (default for --config: {default_backend()})")

    prof = commands.add_parser("profile", help="time each native kernel of a grid model's training step",
                               description="Compile a benchmark-grid model's training step with the LLVM backend "
                                           "and print each kernel's median time inside the step, its share, "
                                           "GFLOP/s for matrix products and convolutions with their share of "
                                           "the FMA peak, and the source lines it computes. "
                                           "From Python: step.profile(feeds).")
    prof.add_argument("--config", choices=list(GRID) + list(CONV_NETS), required=True,
                      help="a benchmark-grid model (BENCHMARKS.md's dense and convolutional configurations)")
    prof.add_argument("--repeats", type=_positive, default=20, help="profiled steps (default: %(default)s)")
    prof.add_argument("--threads", type=_positive, help="native threads (default: GRAPHNET_NUM_THREADS or all)")
    prof.add_argument("--top", type=_positive, help="show only the slowest kernels")

    cache = commands.add_parser("cache", help="the compile cache: where it is, its size, or empty it",
                                description="The disk cache of compiled code ($GRAPHNET_CACHE_DIR, else "
                                            "$XDG_CACHE_HOME/graphnet, else ~/.cache/graphnet), limited to "
                                            "$GRAPHNET_CACHE_MAX_BYTES (default 512 MiB), least recently used "
                                            "entries evicted first.")
    cache.add_argument("action", choices=["info", "clear"], help="info: location, entries and size; clear: empty it")

    commands.add_parser("bench", add_help=False, help="benchmark the training step against numpy, PyTorch and "
                                                      "JAX (options: graphnet bench --help)")
    commands.add_parser("fuzz", add_help=False, help="differential fuzzing: random graphs on every backend against "
                                                     "numpy and PyTorch (options: graphnet fuzz --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    if argv[:1] == ["fuzz"]:
        from .testing.fuzz import main as fuzz_main
        return fuzz_main(argv[1:], prog="graphnet fuzz")
    args = build_parser().parse_args(argv)
    try:
        return {"demo": _demo, "dump": _dump, "profile": _profile, "cache": _cache}[args.command](args)
    except UsageError as e:
        print(f"graphnet {args.command}: error: {e}", file=sys.stderr)
        return 2


def _cache(args: argparse.Namespace) -> int:
    from codegen import cache
    if args.action == "clear":
        removed, freed = cache.clear()
        print(f"removed {removed} entries ({_size(freed)}) from {cache.cache_root()}")
        return 0
    state = cache.info()
    print(f"location: {state['location']}\nentries: {state['entries']} ({_size(state['bytes'])} of a "
          f"{_size(state['limit'])} limit)")
    for space, counts in state["namespaces"].items():
        print(f"  {space}: {counts['entries']} entries, {_size(counts['bytes'])}")
    return 0


def _size(n: int) -> str:
    return f"{n} bytes" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def _demo(args: argparse.Namespace) -> int:
    from . import demo
    result = demo.train(backend=args.backend, epochs=args.epochs, verbose=1)
    history, probability = result.history.history, result.probability
    print(f"Trained {len(history['loss'])} epochs (at most {args.epochs}, early stopping on val_loss) on the "
          f"{args.backend} backend; validation accuracy {history['val_accuracy'][-1]:.2f}.")
    lectures, hours = demo.STUDENT[0]
    print(f"A student who attends {lectures:g} lectures and spends {hours:g} hours on the final project "
          f"passes with probability {probability:.2f}: {'likely to pass' if probability >= 0.5 else 'at risk'}.")
    return 0


def _dump(args: argparse.Namespace) -> int:
    from .dump import dump_function
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} exists and is not a folder")
    if args.config:
        from .bench.grid import build_grid_model
        from .bench.peers import GRID
        step = build_grid_model(args.config, backend=args.backend or default_backend()).step
        functions = {f"{GRID[args.config].label} training step": step}
    else:
        functions = _script_functions(args.script, args.backend)
    single = len(functions) == 1
    for i, (name, fn) in enumerate(functions.items()):
        folder = args.out if single else os.path.join(args.out, f"{i:02d}_{_slug(name)}")
        dump_function(fn, folder, title=name)
        files = sorted(os.listdir(folder))
        print(f"{name}: wrote {len(files)} files to {folder} "
              f"({'graph.svg, ' if 'graph.svg' in files else ''}report.html, summary.txt, ...)")
    return 0


def _profile(args: argparse.Namespace) -> int:
    if default_backend() != "llvm":
        raise UsageError("profiling needs the llvm backend (llvmlite is not installed)")
    if args.threads is not None:
        os.environ["GRAPHNET_NUM_THREADS"] = str(args.threads)
    from .bench.ceilings import FmaPeak
    from .bench.convnets import NETS as CONV_NETS, data, graphnet_function, initial_weights
    from .bench.peers import GRID
    from codegen.llvm.runtime import num_threads
    # the peak: the best of calibrations before and after the profile (a core another process holds
    # through one of them would halve it, and inflate every kernel's share)
    before = num_threads(), [FmaPeak.calibrated(num_threads()).gflops() for _ in range(3)]
    if args.config in CONV_NETS:
        net = CONV_NETS[args.config]
        step = graphnet_function(net, initial_weights(net))
        x, y = data(net)
        result, label = step.profile({"x": x, "y": y}, repeats=args.repeats), f"{net.name} (batch {net.batch})"
    else:
        from .bench.grid import build_grid_model
        from .bench.peers import grid_data
        model = build_grid_model(args.config, backend="llvm")
        step, label = model.step, GRID[args.config].label
        result = step.profile(model.feeds(*grid_data(GRID[args.config])), repeats=args.repeats)
    threads = step.executable.threads
    peak = max((before[1] if before[0] == threads else []) + [FmaPeak.calibrated(threads).gflops() for _ in range(3)])
    print(f"{label} training step, llvm backend, {threads} thread(s); FMA peak {peak:.1f} GFLOP/s")
    print(dataclasses.replace(result, peak=peak).table(args.top))
    return 0


def _script_functions(path: str, backend: str | None) -> dict[str, Any]:
    from .function import Function
    if not os.path.isfile(path):
        raise UsageError(f"no such script: {path}")
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)  # the script may import its neighbours
    try:
        namespace = runpy.run_path(path, run_name="__graphnet_dump__")
    finally:
        sys.path.remove(folder)
    build = namespace.get("build")
    if not callable(build):
        raise UsageError(f"{path} defines no build() function (the convention: graphnet dump --help)")
    if backend is not None:
        if "backend" not in inspect.signature(build).parameters:
            raise UsageError(f"--backend given but build() in {path} takes no `backend` argument")
        result = build(backend=backend)
    else:
        result = build()
    script = os.path.basename(path)
    if isinstance(result, Function):
        result = {f"{script} build()": result}
    elif isinstance(result, (list, tuple)):
        result = {f"{script} build()[{i}]": fn for i, fn in enumerate(result)}
    if not isinstance(result, dict) or not result or not all(isinstance(f, Function) for f in result.values()):
        raise UsageError(f"build() in {path} returned {type(result).__name__}, not compiled functions "
                         "(gn.compile results)")
    return {str(k): v for k, v in result.items()}


def _bench(argv: list[str]) -> int:
    try:
        from .bench.runner import main as bench_main
    except ModuleNotFoundError as e:
        if e.name not in ("graphnet.bench", "graphnet.bench.runner"):  # any other missing module is a real error
            raise
        print("graphnet bench: error: the benchmark module graphnet.bench is not part of this installation",
              file=sys.stderr)
        return 2
    return bench_main(argv) or 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got '{text}'")
    return value


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")[:40]


if __name__ == "__main__":
    sys.exit(main())
