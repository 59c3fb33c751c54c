"""Data-parallel Model.fit over MPI: every rank runs this script; each trains on its part of every
global batch and the gradients are averaged inside the compiled step.

    mpirun -n 2 python examples/distributed_fit.py        (add --allow-run-as-root as root)
    python examples/distributed_fit.py                    (a world of one: plain training)

Only rank 0 prints progress and writes the checkpoint; the weights are the same on every rank.
"""
import os
import tempfile

import numpy as np

import graphnet as gn
import graphnet.distributed as dist


def main() -> None:
    world = dist.init()  # before the optimizer is built: from then on, gradients are reduced over the ranks
    gn.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 20)).astype(np.float32)
    y = (x[:, :5].sum(axis=1, keepdims=True) > 0).astype(np.float32)
    model = gn.Sequential([gn.layers.Input(shape=(20,)), gn.layers.Dense(64, activation="relu"),
                           gn.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    path = os.path.join(tempfile.gettempdir(), "graphnet_distributed_fit.npz")
    history = model.fit(x, y, batch_size=256, epochs=5, validation_split=0.1, verbose=2,  # 256: the global batch
                        callbacks=[gn.callbacks.ModelCheckpoint(path, save_best_only=True)])
    if world.rank == 0:
        print(f"{world.size} rank(s): val_accuracy {history.history['val_accuracy'][-1]:.3f}, best weights in {path}")


if __name__ == "__main__":
    main()
