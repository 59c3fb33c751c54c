"""Handwritten digits (scikit-learn's bundled 8x8 images, no download) with an MLP and dropout.

Input(64) -> Dense(128, relu) -> Dropout(0.2) -> Dense(10, softmax), trained with Adam on 75% of
the 1,797 images; prints the accuracy on the held-out 25% (about 97%).

    python examples/digits.py [--backend numpy] [--epochs 30]
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import graphnet as gn
from graphnet.layers import Dense, Dropout, Input


def build_model() -> gn.Model:
    return gn.Sequential([
        Input(shape=(64,)),
        Dense(128, activation="relu", kernel_initializer="he_normal"),
        Dropout(0.2),
        Dense(10, activation="softmax"),
    ], name="digits_mlp")


def main(argv: Sequence[str] | None = None, backend: str = "llvm") -> float:
    """Train and return the test accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=backend, choices=sorted(gn.function.BACKENDS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # pixel intensities 0..16 -> 0..1
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25, random_state=args.seed,
                                                        stratify=digits.target)
    gn.set_seed(args.seed)
    model = build_model()
    model.compile(optimizer=gn.optim.Adam(lr=3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  backend=args.backend)
    if not args.quiet:
        model.summary()
    model.fit(x_train, y_train, batch_size=32, epochs=args.epochs, validation_split=0.1,
              verbose=0 if args.quiet else 1,
              callbacks=[gn.callbacks.EarlyStopping(patience=5, restore_best_weights=True)])
    loss, accuracy = model.evaluate(x_test, y_test)
    print(f"test accuracy {accuracy:.4f} (test loss {loss:.4f}) on {len(x_test)} held-out digits")
    return accuracy


if __name__ == "__main__":
    main()
