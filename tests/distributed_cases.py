"""The data-parallel cases tests/test_distributed.py runs under `mpirun -n 2` (and, without MPI, the
single-process references they are compared with).

    mpirun -n 2 python tests/distributed_cases.py <case> <output folder>

Each rank writes what the test checks into the output folder: `<case>_<rank>.npz`.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

import graphnet as gn

GLOBAL_BATCH, STEPS, FEATURES, CLASSES = 32, 20, 12, 3
DROPOUT, LAST_BATCH = 0.3, 21  # the dropout cases: rate, and a short last global batch (11 + 10 rows)


def data(n: int = 160) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    y = np.eye(CLASSES, dtype=np.float32)[(x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1)]
    return x, y


def mlp_step(backend: str, hidden: int = 16, beta2: float = 0.999, dropout: float = 0.0):
    """A two-layer classifier's Adam step: (step, parameters)."""
    with gn.Graph():
        x = gn.placeholder("x", (None, FEATURES))
        y = gn.placeholder("y", (None, CLASSES))
        params = [gn.variable("W1", gn.init.glorot_uniform((FEATURES, hidden), seed=1)),
                  gn.variable("b1", np.zeros(hidden, np.float32)),
                  gn.variable("W2", gn.init.glorot_uniform((hidden, CLASSES), seed=2)),
                  gn.variable("b2", np.zeros(CLASSES, np.float32))]
        h = gn.tanh(x @ params[0] + params[1])
        logits = (gn.dropout(h, dropout, seed=5) if dropout else h) @ params[2] + params[3]
        loss = gn.losses.softmax_cross_entropy(logits, y)
        step = gn.compile([loss], updates=gn.optim.Adam(1e-2, betas=(0.9, beta2)).minimize(loss), backend=backend)
    return step, params


def train_steps(backend: str, rank: int = 0, size: int = 1, steps: int = STEPS, dropout: float = 0.0,
                last: int = GLOBAL_BATCH) -> dict[str, np.ndarray]:
    """`steps` Adam steps on consecutive global batches (the last one `last` rows), this rank taking its
    shard of each and telling dropout where the shard starts."""
    from graphnet.distributed import set_row_offset, shard_offsets, shard_order
    step, params = mlp_step(backend, dropout=dropout)
    x, y = data()
    for i in range(steps):
        rows = GLOBAL_BATCH if i < steps - 1 else last
        start = (i * GLOBAL_BATCH) % len(x)
        shard, _ = shard_order(np.arange(start, start + rows), GLOBAL_BATCH, rank, size)
        set_row_offset(int(shard_offsets(rows, GLOBAL_BATCH, rank, size)[0]), params[0].graph)
        step(x=x[shard], y=y[shard])
    return {p.attrs["name"]: p.value for p in params}


def keras_model(dropout: float = 0.0) -> gn.Model:
    gn.set_seed(3)
    model = gn.Sequential([gn.layers.Input(shape=(FEATURES,)), gn.layers.Dense(16, activation="relu"),
                           *([gn.layers.Dropout(dropout)] if dropout else []),
                           gn.layers.Dense(CLASSES, activation="softmax")])
    model.compile(optimizer=gn.optim.Adam(1e-2), loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def fit(model: gn.Model, epochs: int, initial_epoch: int = 0, callbacks: list | None = None, verbose: int = 0):
    x, y = data(150)  # 150 = 4 global batches of 32 and one of 22 (11 rows per rank)
    return model.fit(x[:120], y[:120], batch_size=GLOBAL_BATCH, epochs=epochs, initial_epoch=initial_epoch,
                     validation_data=(x[120:], y[120:]), callbacks=callbacks or [], verbose=verbose)


class BatchHook(gn.callbacks.Callback):
    """A batch-level hook: fit then calls the step batch by batch instead of through run_steps."""

    def on_train_batch_end(self, batch, logs=None):
        pass


def fit_dropout(by_batch: bool) -> list[np.ndarray]:
    """Two epochs of a model with dropout on 32 * 3 + LAST_BATCH samples; its weights."""
    model = keras_model(DROPOUT)
    x, y = data(3 * GLOBAL_BATCH + LAST_BATCH)
    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=2, callbacks=[BatchHook()] if by_batch else [], verbose=0)
    return model.get_weights()


# ---- the cases (under mpirun) -------------------------------------------------------------
def case_steps(w, out: str) -> None:
    """20 steps on each backend that runs collectives, without and with dropout."""
    result = {f"{backend}/{k}": v for backend in ("llvm", "numpy")
              for k, v in train_steps(backend, w.rank, w.size).items()}
    result.update({f"{backend}+dropout/{k}": v for backend in ("llvm", "numpy")
                   for k, v in train_steps(backend, w.rank, w.size, dropout=DROPOUT, last=LAST_BATCH).items()})
    from codegen import collectives
    collectives.PROGRESS = False  # the same steps without the progress calls between kernels
    result.update({f"llvm-no-progress/{k}": v for k, v in train_steps("llvm", w.rank, w.size).items()})
    collectives.PROGRESS = True
    np.savez(os.path.join(out, f"steps_{w.rank}.npz"), **result)


def case_fit_dropout(w, out: str) -> None:
    """fit with dropout, through run_steps and batch by batch."""
    np.savez(os.path.join(out, f"fit_dropout_{w.rank}.npz"),
             **{f"{how}/w{i}": v for how in ("run_steps", "by_batch")
                for i, v in enumerate(fit_dropout(how == "by_batch"))})


def case_fit(w, out: str) -> None:
    """fit with EarlyStopping and a checkpoint (named after the rank writing it), then save on rank 0."""
    model = keras_model()
    checkpoint = gn.callbacks.ModelCheckpoint(os.path.join(out, f"checkpoint_by_rank{w.rank}.npz"))
    stop = gn.callbacks.EarlyStopping(monitor="val_loss", patience=1)
    history = fit(model, 2, callbacks=[checkpoint, stop], verbose=2)
    if w.rank == 0:
        model.save(os.path.join(out, "model.npz"))
    np.savez(os.path.join(out, f"fit_{w.rank}.npz"), loss=history.history["loss"],
             val_loss=history.history["val_loss"], accuracy=history.history["accuracy"],
             **{f"w{i}": v for i, v in enumerate(model.get_weights())})


RING_SIZES = (1, 2, 5, 7, 1000, 300_001)  # fewer elements than ranks, uneven chunks, past the eager limit


def ring_values(rank: int, n: int, dtype: type) -> np.ndarray:
    """Small integers (exact float sums in any order), different on every rank."""
    return ((np.arange(n) * (rank + 3) + 7 * rank) % 1001 - 500).astype(dtype)


def case_ring(w, out: str) -> None:
    """The LLVM step's allreduce of buffers of several sizes and dtypes (in place and copied, several
    buckets in flight at once), three times."""
    from graphnet.ops.collective import allreduce
    from codegen import collectives
    collectives.BUCKET_BYTES = 4096  # many buckets
    with gn.Graph():
        values = [gn.variable(f"v{n}_{np.dtype(t).name}", ring_values(w.rank, n, t))
                  for n in RING_SIZES for t in (np.float32, np.float64)]
        sums = [allreduce(v) for v in values] + [allreduce(v * 2.0) for v in values]
        step = gn.compile(sums, backend="llvm")
    results = [step() for _ in range(3)]
    np.savez(os.path.join(out, f"ring_{w.rank}.npz"), **{f"{i}/{j}": r for i, rs in enumerate(results)
                                                          for j, r in enumerate(rs)})


def case_raise(w, out: str) -> None:
    """Rank 1 raises after one step; rank 0 goes on to its next step."""
    step, _ = mlp_step("llvm")
    x, y = data()
    for i in range(3):
        step(x=x[:16], y=y[:16])
        if w.rank == 1:
            raise RuntimeError("rank 1 fails on purpose")


def case_kill(w, out: str) -> None:
    """Rank 1 is killed (SIGKILL) after one step."""
    step, _ = mlp_step("llvm")
    x, y = data()
    for i in range(3):
        step(x=x[:16], y=y[:16])
        if w.rank == 1:
            os.kill(os.getpid(), 9)


def case_stall(w, out: str) -> None:
    """Rank 1 stops taking part (sleeps); rank 0's wait reaches its deadline."""
    step, _ = mlp_step("llvm")
    x, y = data()
    step(x=x[:16], y=y[:16])
    if w.rank == 1:
        time.sleep(600)
    step(x=x[:16], y=y[:16])


def case_mismatch_shape(w, out: str) -> None:
    mlp_step("llvm", hidden=16 + w.rank)


def case_mismatch_hyper(w, out: str) -> None:
    mlp_step("llvm", beta2=0.999 if w.rank == 0 else 0.99)


def main() -> None:
    import graphnet.distributed as dist
    case, out = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else None
    w = dist.init(timeout=timeout)
    gn.set_seed(0)
    globals()[f"case_{case}"](w, out)


if __name__ == "__main__":
    main()
