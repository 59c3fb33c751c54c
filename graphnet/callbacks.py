"""Callbacks: hooks `Model.fit` calls around training, epochs and batches.

`logs` holds the epoch's (or the running batch) mean loss and metrics, plus `val_`-prefixed values
after validation. A callback stops training by setting `model.stop_training = True`.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from .model import Model


class Callback:
    """Base class: override the hooks you need; `self.model` is set before training starts."""

    model: "Model"
    params: dict

    def set_model(self, model: "Model", params: dict) -> None:
        self.model, self.params = model, params

    def on_train_begin(self, logs: dict | None = None) -> None: ...
    def on_train_end(self, logs: dict | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_batch_end(self, batch: int, logs: dict | None = None) -> None: ...


class CallbackList:
    """Calls each hook on every callback, in order, skipping callbacks that leave a hook as the no-op."""

    def __init__(self, callbacks: Sequence[Callback], model: "Model", params: dict):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be gn.callbacks.Callback instances, got {type(cb).__name__}")
            cb.set_model(model, params)

    def __getattr__(self, hook: str) -> Callable[..., None]:
        if not hook.startswith("on_"):
            raise AttributeError(hook)
        base = getattr(Callback, hook)
        methods = [getattr(cb, hook) for cb in self.callbacks if getattr(type(cb), hook) is not base]

        def call(*args: Any) -> None:
            for method in methods:
                method(*args)
        setattr(self, hook, call)  # resolved once per hook
        return call


class History(Callback):
    """Records each epoch's logs: `history.history["loss"][epoch]`, and `history.epoch`."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


def format_logs(logs: dict) -> str:
    return " - ".join(f"{k}: {v:.4g}" for k, v in logs.items())


class ProgressLogger(Callback):
    """verbose=1 on a terminal: a tqdm bar per epoch with the running loss, metrics and steps/s.
    Otherwise (verbose=2, or stdout not a terminal) one line per epoch."""

    def __init__(self, verbose: int, stream: Any = None):
        self.stream = stream or sys.stdout
        self.bar_mode = verbose == 1 and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar: Any = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.start = time.perf_counter()
        title = f"Epoch {epoch + 1}/{self.params['epochs']}"
        if self.bar_mode:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.params["steps"], desc=title, unit="step", file=self.stream,
                            dynamic_ncols=True, leave=True)
        self.title = title

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in (logs or {}).items()}, refresh=False)
            self.bar.update(1)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in (logs or {}).items()})
            self.bar.close()
            self.bar = None
            return
        seconds = time.perf_counter() - self.start
        print(f"{self.title} - {self.params['steps']} steps - {seconds:.2f}s - {format_logs(logs or {})}",
              file=self.stream, flush=True)


def _mode(monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    return "max" if "acc" in monitor else "min"


class _Monitor(Callback):
    """Tracks the best value of a logged quantity."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        self.monitor, self.mode, self.min_delta = monitor, _mode(monitor, mode), abs(float(min_delta))
        self.best = math.inf if self.mode == "min" else -math.inf

    def current(self, logs: dict | None) -> float:
        if not logs or self.monitor not in logs:
            raise ValueError(f"{type(self).__name__} monitors '{self.monitor}', which is not logged "
                             f"(logged: {', '.join(logs or {}) or 'nothing'}); pass validation data for val_ keys")
        return float(logs[self.monitor])

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop once `monitor` has gone `patience` epochs (at least one) without improving by more than `min_delta`.

    With `restore_best_weights`, the model ends training (stopped early or not) holding the layer
    weights of its best epoch.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0, mode: str = "auto",
                 restore_best_weights: bool = False):
        super().__init__(monitor, mode, min_delta)
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.patience, self.restore_best_weights = int(patience), bool(restore_best_weights)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait, self.stopped_epoch, self.best_epoch, self.best_weights = 0, None, None, None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = self.current(logs)
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(_Monitor):
    """Save the model (or only its weights) after each epoch, or only when `monitor` improves.

    `path` may contain format fields such as `{epoch}` (1-based) or any logged key (`{val_loss:.3f}`).
    """

    def __init__(self, path: str | os.PathLike, monitor: str = "val_loss", save_best_only: bool = False,
                 save_weights_only: bool = False, mode: str = "auto"):
        super().__init__(monitor, mode)
        self.path, self.save_best_only, self.save_weights_only = os.fspath(path), save_best_only, save_weights_only

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.save_best_only:
            value = self.current(logs)
            if not self.improved(value):
                return
            self.best = value
        path = self.path.format(epoch=epoch + 1, **(logs or {}))
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)


class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate to `schedule(epoch, lr)` before each epoch.

    The rate is a variable of the compiled step, so changing it recompiles nothing.
    """

    def __init__(self, schedule: Callable[[int, float], float]):
        self.schedule = schedule

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        lr_var = self.model.optimizer.lr
        lr = float(self.schedule(epoch, float(lr_var.value)))
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"LearningRateScheduler: schedule returned an invalid learning rate {lr}")
        lr_var.assign(lr)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["lr"] = float(self.model.optimizer.lr.value)
