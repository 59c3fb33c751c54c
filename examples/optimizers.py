"""Every graphnet optimizer on one problem: the pass-the-class students, one plot of the loss curves.

Each optimizer trains the same network (Input(2) -> Dense(3, relu) -> Dense(1, sigmoid)) from the
same initial weights, on the same mini-batches, for the same number of epochs. Learning rates are
chosen per optimizer (their PyTorch defaults differ by orders of magnitude). Saves
optimizers.png (needs matplotlib; without it the example says so and prints the table only).

    python examples/optimizers.py [--backend numpy] [--epochs 60] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
from typing import Sequence

import graphnet as gn
from graphnet import demo

RATES = {"sgd": 0.02, "momentum": 0.01, "adagrad": 0.2, "adadelta": 1.0, "rmsprop": 0.01, "adam": 0.02,
         "adamw": 0.02}


def plot_curves(curves: dict[str, list[float]], path: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib), so no picture was saved")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, losses in curves.items():
        ax.plot(range(1, len(losses) + 1), losses, label=f"{name} (lr {RATES[name]:g})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (binary cross-entropy)")
    ax.set_yscale("log")
    ax.set_title("Pass-the-class model: one network, every optimizer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None, backend: str = "llvm") -> dict[str, list[float]]:
    """Train once per optimizer; returns each optimizer's per-epoch training loss."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=backend, choices=sorted(gn.function.BACKENDS))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--out", default=".", help="folder for optimizers.png (default: the current one)")
    args = parser.parse_args(argv)

    x, y = demo.students()
    curves = {}
    for name, rate in RATES.items():
        gn.set_seed(0)  # the same initial weights and shuffles for every optimizer
        model = demo.build_model()
        model.compile(optimizer=gn.optim.BY_NAME[name](lr=rate), loss="binary_crossentropy", backend=args.backend)
        curves[name] = model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0).history["loss"]
        print(f"{name:>9} lr {rate:<5g} loss after epoch 1: {curves[name][0]:.4f}   after epoch {args.epochs}: "
              f"{curves[name][-1]:.4f}")
    os.makedirs(args.out, exist_ok=True)
    path = plot_curves(curves, os.path.join(args.out, "optimizers.png"))
    if path:
        print(f"loss curves saved to {path}")
    return curves


if __name__ == "__main__":
    main()
