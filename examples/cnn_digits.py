"""Handwritten digits (scikit-learn's bundled 8x8 images, no download) with a small CNN.

Input(8, 8, 1) -> Conv2D(16, 3x3, same) -> BatchNormalization -> relu -> MaxPooling2D(2)
-> Conv2D(32, 3x3, same, relu) -> MaxPooling2D(2) -> Flatten -> Dense(10, softmax), trained with Adam on
75% of the 1,797 images; prints the accuracy on the held-out 25% (about 98-99%) and saves a picture
of the first layer's learned filters.

    python examples/cnn_digits.py [--backend numpy] [--epochs 25] [--filters filters.png]
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import graphnet as gn
from graphnet.layers import Activation, BatchNormalization, Conv2D, Dense, Flatten, Input, MaxPooling2D


def build_model() -> gn.Model:
    return gn.Sequential([
        Input(shape=(8, 8, 1)),
        Conv2D(16, 3, padding="same", kernel_initializer="he_normal", name="conv1"),
        BatchNormalization(momentum=0.9),  # few steps per epoch: moving statistics that keep up
        Activation("relu"),
        MaxPooling2D(2),
        Conv2D(32, 3, padding="same", activation="relu", kernel_initializer="he_normal"),
        MaxPooling2D(2),
        Flatten(),
        Dense(10, activation="softmax"),
    ], name="digits_cnn")


def save_filters(kernel: np.ndarray, path: str) -> bool:
    """Write the (3, 3, 1, F) filters as a grid of grey squares (a PNG with matplotlib, else PGM)."""
    f = kernel.shape[-1]
    cols = int(np.ceil(np.sqrt(f)))
    rows = -(-f // cols)
    kh, kw = kernel.shape[:2]
    grid = np.ones((rows * (kh + 1) + 1, cols * (kw + 1) + 1))
    for i in range(f):
        k = kernel[:, :, 0, i]
        k = (k - k.min()) / (np.ptp(k) or 1.0)
        r, c = divmod(i, cols)
        grid[1 + r * (kh + 1):1 + r * (kh + 1) + kh, 1 + c * (kw + 1):1 + c * (kw + 1) + kw] = k
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        with open(path, "wb") as out:  # portable graymap: readable by most image viewers
            out.write(f"P5 {grid.shape[1]} {grid.shape[0]} 255\n".encode() + (grid * 255).astype(np.uint8).tobytes())
        return True
    fig, ax = plt.subplots(figsize=(cols, rows))
    ax.imshow(grid, cmap="gray", interpolation="nearest")
    ax.set_axis_off()
    ax.set_title("conv1 filters")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None, backend: str = "llvm") -> float:
    """Train and return the test accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=backend, choices=sorted(gn.function.BACKENDS))
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--filters", default="cnn_digits_filters.png", help="where to save the filter picture")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1), intensities 0..1
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
              callbacks=[gn.callbacks.EarlyStopping(patience=6, restore_best_weights=True)])
    loss, accuracy = model.evaluate(x_test, y_test)
    print(f"test accuracy {accuracy:.4f} (test loss {loss:.4f}) on {len(x_test)} held-out digits")
    if args.filters and save_filters(model.get_layer("conv1").get_weights()[0], args.filters):
        print(f"learned filters: {args.filters}")
    return accuracy


if __name__ == "__main__":
    main()
