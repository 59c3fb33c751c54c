"""Per-step cost of training through `Model.fit` against the compiled step it calls (Adam).

For each grid configuration, a Keras-style model of the grid's layers, and in interleaved rounds
(medians per step): the model's compiled training step called on one fixed batch (`raw`),
`train_function.run_steps` over a shuffled dataset (one native call for all full batches),
`model.fit(verbose=0)` for one epoch of that dataset, the same fit without shuffling, and forced
batch by batch (the loop fit used before run_steps); plus, for reference, a bare ctypes call of an
empty native function with six pointer arguments, and the epoch's shuffle alone (the permutation fit
draws, per step), which with the run_steps time accounts for most of a tiny model's fit. Each fit
call (and each shuffle alone) takes the next epoch (fit's `initial_epoch`), so each draws a new
permutation, as a training run's epochs do. The ratios are issue #17's targets, fit/raw and
fit/ctypes6, then fit without its shuffle (fit - shuffle) over raw. Every grid model by default; the
large steps run fewer batches per epoch (`BATCHES`), and the models in `AMORTISED` get more rows:
many batches per epoch, where fit's per-call and per-epoch costs are amortised, and many epochs per
fit call, where its per-call costs are (unless --batches or --epochs is given). The machine may be
shared: read the ratios.

    python -m graphnet.bench.micro.fit [tiny small medium large wide] [--batches N] [--epochs E] [--rounds 7]
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time
from typing import Callable

import numpy as np

import graphnet as gn

from ...shuffle import epoch_order
from ..peers import GRID, GridConfig, grid_data
from .step import empty_native_function

DEFAULT_CONFIGS = tuple(GRID)
BATCHES = {"tiny": 40, "small": 40, "medium": 10, "large": 6, "wide": 3}  # batches per epoch, by default
# by default also rows with (batches per epoch, epochs per fit call) where fit's costs are amortised:
# per epoch over many batches, or per call over the epochs of one fit call (as a training run calls it)
AMORTISED = {"tiny": ((1000, 1), (40, 20))}


def build_model(config: GridConfig) -> gn.Model:
    """The grid's layers as a Sequential model with the grid's Adam; the loss on the last layer's logits."""
    layers = [gn.layers.Input((config.layers[0],))]
    layers += [gn.layers.Dense(width, activation=config.activation) for width in config.layers[1:-1]]
    last = config.layers[-1]
    if config.loss == "bce_logits":
        loss = gn.losses.BinaryCrossentropy(from_logits=True)
        layers.append(gn.layers.Dense(last))
    elif config.loss == "softmax_ce":
        loss = "categorical_crossentropy"
        layers.append(gn.layers.Dense(last, activation="softmax"))
    else:
        loss = "mse"
        layers.append(gn.layers.Dense(last))
    model = gn.Sequential(layers)
    model.compile(gn.optim.Adam(lr=1e-3), loss)
    return model


def dataset(config: GridConfig, batches: int) -> tuple[np.ndarray, np.ndarray]:
    """`batches` of the grid's batches (different samples each)."""
    parts = [grid_data(config, seed) for seed in range(batches)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def timed(fn: Callable[[], object], steps: int) -> float:
    """Seconds per step of one call of `fn` that runs `steps` steps."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / steps


def measure(name: str, batches: int, rounds: int, epochs_per_call: int = 1) -> dict[str, float]:
    """Median seconds per step of each way to train `name` (interleaved rounds after a warm-up), the
    fits running `epochs_per_call` epochs of `batches` batches per call, the rest as many steps."""
    config = GRID[name]
    model = build_model(config)
    x, y = dataset(config, batches)
    train = model.train_function
    feeds = dict(zip(train.feeds.names, train.feeds.check(model._feeds([x], [y], slice(None)))[0]))
    batch = {k: np.ascontiguousarray(v[:config.batch]) for k, v in feeds.items()}
    order = np.random.default_rng(0).permutation(len(x))
    empty, engine = empty_native_function(6)
    pointers = [a.ctypes.data for a in (x, y, x, y, x, y)]

    steps = batches * epochs_per_call

    def raw() -> None:
        for _ in range(steps):
            train(**batch)

    def bare() -> None:
        for _ in range(steps):
            empty(*pointers)

    starts = itertools.count(0, epochs_per_call)  # each call trains new epochs, each its own shuffle, as training does

    def fit(native: bool, shuffle: bool = True) -> Callable[[], object]:
        def run() -> None:
            model._native_fit = native
            first = next(starts)
            model.fit(x, y, batch_size=config.batch, epochs=first + epochs_per_call, initial_epoch=first, verbose=0,
                      shuffle=shuffle)
        return run

    def shuffles() -> None:
        first = next(starts)
        for epoch in range(first, first + epochs_per_call):
            epoch_order(model.seed, epoch, len(x))

    runs = {"raw": raw, "run_steps": lambda: train.run_steps(feeds, config.batch, order, steps), "fit": fit(True),
            "fit_unshuffled": fit(True, shuffle=False), "fit_by_batch": fit(False), "ctypes6": bare,
            "shuffle": shuffles}
    for fn in runs.values():  # warm-up: compiles, arena layouts, caches
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for key, fn in runs.items():
            times[key].append(timed(fn, steps))
    del engine
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=list(DEFAULT_CONFIGS))
    parser.add_argument("--batches", type=int, default=None,
                        help=f"batches per epoch (default: {', '.join(f'{k} {v}' for k, v in BATCHES.items())})")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per fit call (default 1)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    args = parser.parse_args()
    print(f"us per step (medians of {args.rounds} interleaved rounds)")
    print(f"{'config':<8} {'batches':>7} {'epochs':>6} {'raw':>10} {'run_steps':>10} {'fit':>10} {'unshuffled':>11} {'shuffle':>8} "
          f"{'by batch':>10} {'ctypes6':>8} {'fit/raw':>8} {'fit/ctypes6':>12} {'(fit-shuffle)/raw':>18} "
          f"{'steps/raw':>10} {'by batch/raw':>13}")
    rows = [(name, args.batches or BATCHES.get(name, 40), args.epochs) for name in args.configs]
    if args.batches is None and args.epochs == 1:
        rows += [(name, batches, epochs) for name in args.configs for batches, epochs in AMORTISED.get(name, ())]
    for name, batches, epochs in rows:
        t = measure(name, batches, args.rounds, epochs)
        us = {k: v * 1e6 for k, v in t.items()}
        print(f"{name:<8} {batches:>7} {epochs:>6} {us['raw']:10.2f} {us['run_steps']:10.2f} {us['fit']:10.2f} "
              f"{us['fit_unshuffled']:11.2f} {us['shuffle']:8.2f} {us['fit_by_batch']:10.2f} {us['ctypes6']:8.2f} "
              f"{t['fit'] / t['raw']:8.2f} {t['fit'] / t['ctypes6']:12.2f} "
              f"{(t['fit'] - t['shuffle']) / t['raw']:18.2f} {t['run_steps'] / t['raw']:10.2f} "
              f"{t['fit_by_batch'] / t['raw']:13.2f}", flush=True)


if __name__ == "__main__":
    main()
