"""The course's "Will I pass this class?" model: synthetic students and a Keras-style network.

`graphnet demo` and examples/pass_the_class.py both train it, so the data and the architecture
live here, inside the installed package.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import callbacks, layers, optim
from .callbacks import History
from .model import Model
from .random import set_seed

STUDENT = np.array([[4.0, 5.0]], np.float32)  # 4 lectures attended, 5 hours on the final project
FEATURES = ("lectures attended", "hours on the final project")


def students(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` synthetic students: features (lectures 0-10, hours 0-10) and passed (0/1) labels.

    A student passes with probability sigmoid(0.8 lectures + 0.6 hours - 5.5): both help, and
    the labels are noisy near the boundary, as real grades are.
    """
    rng = np.random.default_rng(seed)
    lectures = rng.integers(0, 11, n).astype(np.float32)
    hours = rng.uniform(0, 10, n).astype(np.float32)
    chance = 1 / (1 + np.exp(-(0.8 * lectures + 0.6 * hours - 5.5)))
    passed = (rng.random(n) < chance).astype(np.float32)
    return np.stack([lectures, hours], axis=1), passed[:, None]


def build_model() -> Model:
    """Input(2) -> Dense(3, relu) -> Dense(1, sigmoid), as in the course."""
    inputs = layers.Input(shape=(2,))
    hidden = layers.Dense(3, activation="relu")(inputs)
    outputs = layers.Dense(1, activation="sigmoid")(hidden)
    return Model(inputs, outputs)


class DemoResult(NamedTuple):
    model: Model
    history: History
    probability: float  # that STUDENT passes


def train(backend: str = "llvm", epochs: int = 100, verbose: int = 1, seed: int = 0) -> DemoResult:
    """Train on 400 students with Adam and early stopping; returns the model and its answer for STUDENT.

    `seed` fixes the students, the initial weights and the shuffling, so a run can be repeated.
    """
    set_seed(seed)
    x, y = students(seed=seed)
    model = build_model()
    model.compile(optimizer=optim.Adam(lr=1e-2), loss="binary_crossentropy", metrics=["accuracy"],
                  backend=backend)
    history = model.fit(x, y, batch_size=32, epochs=epochs, validation_split=0.2, verbose=verbose,
                        callbacks=[callbacks.EarlyStopping(patience=10, restore_best_weights=True)])
    return DemoResult(model, history, float(model.predict(STUDENT)[0, 0]))
