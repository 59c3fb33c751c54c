"""Will I pass this class? The course's first neural network, trained Keras-style with graphnet.

Two features per student (lectures attended, hours spent on the final project), synthetic students
whose chance of passing grows with both, and the network Input(2) -> Dense(3, relu) ->
Dense(1, sigmoid) trained with Adam and early stopping. Prints the probability that a student with
4 lectures and 5 hours passes, and saves the decision boundary as pass_the_class.png (needs
matplotlib; without it the example says so and still answers).

    python examples/pass_the_class.py [--backend numpy] [--epochs 100] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
from typing import Sequence

import numpy as np

import graphnet as gn
from graphnet import demo


def parse_args(argv: Sequence[str] | None, backend: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=backend, choices=sorted(gn.function.BACKENDS))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=".", help="folder for pass_the_class.png (default: the current one)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser.parse_args(argv)


def plot_boundary(model: gn.Model, x: np.ndarray, y: np.ndarray, path: str) -> str | None:
    """Shade P(pass) over the feature plane, draw the 0.5 contour, the students and the question."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib), so no picture was saved")
        return None
    lectures, hours = np.meshgrid(np.linspace(0, 10, 101), np.linspace(0, 10, 101))
    grid = np.stack([lectures.ravel(), hours.ravel()], axis=1).astype(np.float32)
    chance = model.predict(grid, batch_size=len(grid)).reshape(lectures.shape)
    fig, ax = plt.subplots(figsize=(6, 5))
    shade = ax.contourf(lectures, hours, chance, levels=np.linspace(0, 1, 11), cmap="RdYlGn", alpha=0.6)
    ax.contour(lectures, hours, chance, levels=[0.5], colors="k")
    passed = y[:, 0] > 0.5
    ax.scatter(*x[passed].T, s=12, c="darkgreen", label="passed")
    ax.scatter(*x[~passed].T, s=12, c="darkred", marker="x", label="failed")
    ax.scatter(*demo.STUDENT.T, s=160, c="blue", marker="*", label="4 lectures, 5 hours")
    ax.set_xlabel(demo.FEATURES[0])
    ax.set_ylabel(demo.FEATURES[1])
    ax.set_title("Will I pass this class? P(pass) and the 0.5 boundary")
    ax.legend(loc="lower left", fontsize=8)
    fig.colorbar(shade, label="P(pass)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None, backend: str = "llvm") -> float:
    """Train, print the answer for the 4-lectures-5-hours student, save the picture; returns P(pass)."""
    args = parse_args(argv, backend)
    gn.set_seed(args.seed)
    result = demo.train(backend=args.backend, epochs=args.epochs, verbose=0 if args.quiet else 1, seed=args.seed)
    history = result.history.history
    print(f"trained {len(history['loss'])} epochs (early stopping on val_loss); "
          f"validation accuracy {history['val_accuracy'][-1]:.2f}")
    print(f"P(pass | 4 lectures, 5 hours) = {result.probability:.3f}")
    os.makedirs(args.out, exist_ok=True)
    x, y = demo.students(seed=args.seed)
    path = plot_boundary(result.model, x, y, os.path.join(args.out, "pass_the_class.png"))
    if path:
        print(f"decision boundary saved to {path}")
    return result.probability


if __name__ == "__main__":
    main()
