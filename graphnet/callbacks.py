"""Callbacks: hooks `Model.fit` (and `evaluate`, `predict`) call around training, epochs and batches.

`logs` holds the epoch's (or the running batch) mean loss and metrics, plus `val_`-prefixed values
after validation. A callback stops training by setting `model.stop_training = True`. The hooks are
Keras's: `on_train_batch_begin/end` (whose defaults call the older `on_batch_begin/end`, so a callback
overriding either is called once per batch), `on_test_*` around `evaluate`, `on_predict_*` around
`predict`.
"""
from __future__ import annotations

import functools
import inspect
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from .model import Model


class Callback:
    """Base class: override the hooks you need; `self.model` and `self.params` are set before training."""

    model: "Model"
    params: dict

    def set_model(self, model: "Model", params: dict | None = None) -> None:
        self.model = model
        if params is not None:
            self.params = params

    def set_params(self, params: dict) -> None:
        self.params = params

    def on_train_begin(self, logs: dict | None = None) -> None: ...
    def on_train_end(self, logs: dict | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_batch_end(self, batch: int, logs: dict | None = None) -> None: ...

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.on_batch_end(batch, logs)

    def on_test_begin(self, logs: dict | None = None) -> None: ...
    def on_test_end(self, logs: dict | None = None) -> None: ...
    def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None: ...
    def on_predict_begin(self, logs: dict | None = None) -> None: ...
    def on_predict_end(self, logs: dict | None = None) -> None: ...
    def on_predict_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None: ...


_ALIASES = {"on_train_batch_begin": "on_batch_begin", "on_train_batch_end": "on_batch_end"}


@functools.lru_cache(maxsize=None)
def _class_overrides(cls: type) -> frozenset[str]:
    """The hooks whose method `cls` replaces (Callback's hooks that it defines differently), read
    once per class."""
    return frozenset(name for name in dir(Callback)
                     if name.startswith("on_") and getattr(cls, name) is not getattr(Callback, name))


def _overrides(cb: Callback, hook: str) -> bool:
    """Whether `cb` does something in `hook`: it overrides it, or (for the train-batch hooks, whose
    defaults forward there) the older name; a method of its class or a function set on the instance
    (LambdaCallback)."""
    replaced, own = _class_overrides(type(cb)), vars(cb)
    alias = _ALIASES.get(hook)
    return hook in replaced or hook in own or (alias is not None and (alias in replaced or alias in own))


HOOKS = frozenset(name for name in dir(Callback) if name.startswith("on_"))


def _with_aliases(hooks: frozenset[str]) -> frozenset[str]:
    """`hooks` and the train-batch hooks whose defaults forward to one of them."""
    return hooks | {hook for hook, alias in _ALIASES.items() if alias in hooks}


@functools.lru_cache(maxsize=None)
def _class_hooks_used(cls: type) -> frozenset[str]:
    return _with_aliases(_class_overrides(cls))


def _hooks_used(cb: Callback) -> frozenset[str]:
    """The hooks `cb` does something in, each as `_overrides` decides it."""
    own = HOOKS.intersection(vars(cb))
    return _class_hooks_used(type(cb)) if not own else _with_aliases(_class_overrides(type(cb)) | own)


def _nothing(*args: Any) -> None:
    """A hook no callback overrides."""


class CallbackList:
    """Calls each hook on every callback, in order, skipping callbacks that leave a hook as the no-op.
    The hooks some callback overrides are resolved when the list is made (`users`: hook -> the
    callbacks that do something in it, in order); the others are the class's `_nothing`."""

    def __init__(self, callbacks: Sequence[Callback], model: "Model", params: dict):
        self.callbacks = list(callbacks)
        users: dict[str, list[Callback]] = {}
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be gn.callbacks.Callback instances, got {type(cb).__name__}")
            cb.set_model(model, params)
            for hook in _hooks_used(cb):
                users.setdefault(hook, []).append(cb)
        self.users = users
        for hook, cbs in users.items():
            setattr(self, hook, self._resolve(hook, cbs))

    @staticmethod
    def _resolve(hook: str, callbacks: list[Callback]) -> Callable[..., None]:
        """One call of `hook` on each of `callbacks` (those that override it), in order."""
        if len(callbacks) == 1:
            return getattr(callbacks[0], hook)
        methods = [getattr(cb, hook) for cb in callbacks]

        def call(*args: Any) -> None:
            for method in methods:
                method(*args)
        return call


for _name in HOOKS:
    setattr(CallbackList, _name, staticmethod(_nothing))


class History(Callback):
    """Records each epoch's logs: `history.history["loss"][epoch]`, and `history.epoch`."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


def format_value(value: float) -> str:
    """A logged number as Keras prints it: 4 decimals, scientific when its magnitude is 1e-3 or less."""
    return f"{value:.4f}" if abs(value) > 1e-3 else f"{value:.4e}"


def format_logs(logs: dict) -> str:
    return " - ".join(f"{k}: {format_value(v)}" for k, v in logs.items())


def _tqdm() -> Any:
    """tqdm's class, or None where the optional package is not installed."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


class ProgressLogger(Callback):
    """One line per epoch: `Epoch 3/10 - 13 steps - 0.05s - loss: 0.6931 - accuracy: 0.5000 - val_loss: ...`.

    With verbose=1 on a terminal and tqdm installed, a live bar runs during the epoch (running loss
    and metrics first, then the bar, then steps/s, so a narrow terminal cuts the rate, not the
    metrics); the bar is cleared at the epoch's end and the full line printed, which the terminal
    wraps rather than cuts. Without tqdm, or not on a terminal, or verbose=2: the lines alone.
    """

    def __init__(self, verbose: int, stream: Any = None):
        self.stream = stream or sys.stdout
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.tqdm = _tqdm() if verbose == 1 and tty else None
        self.bar: Any = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.start = time.perf_counter()
        self.title = f"Epoch {epoch + 1}/{self.params['epochs']}"
        if self.tqdm is not None:
            self.bar = self.tqdm(total=self.params["steps"], desc=self.title, unit="step", file=self.stream,
                                 dynamic_ncols=True, leave=False, bar_format="{desc} |{bar}| {rate_fmt}")

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.bar is not None:
            text = f"{self.title} {batch + 1}/{self.params['steps']}"
            if logs:
                text += " - " + format_logs(logs)
            self.bar.set_description_str(text, refresh=False)
            self.bar.update(1)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        seconds = time.perf_counter() - self.start
        line = f"{self.title} - {self.params['steps']} steps - {seconds:.2f}s"
        if logs:
            line += " - " + format_logs(logs)
        print(line, file=self.stream, flush=True)


def _mode(monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    return "max" if "acc" in monitor or monitor.endswith("auc") else "min"


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

    def better(self, value: float, than: float) -> bool:
        if self.mode == "min":
            return value < than - self.min_delta
        return value > than + self.min_delta

    def improved(self, value: float) -> bool:
        return self.better(value, self.best)


class EarlyStopping(_Monitor):
    """Stop once `monitor` has gone `patience` epochs (at least one) without improving by more than
    `min_delta` (Keras's rule).

    `baseline`: an improvement resets the patience only if it also beats the baseline. `start_from_epoch`:
    the first epochs (a warm-up) are not monitored. With `restore_best_weights`, the model ends
    training (stopped early or not) holding the weights of its best epoch. `verbose=1` prints
    "Epoch N: early stopping" and "Restoring model weights from the end of the best epoch: N."
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0, verbose: int = 0,
                 mode: str = "auto", baseline: float | None = None, restore_best_weights: bool = False,
                 start_from_epoch: int = 0):
        super().__init__(monitor, mode, min_delta)
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        if start_from_epoch < 0:
            raise ValueError(f"start_from_epoch must be >= 0, got {start_from_epoch}")
        self.patience, self.restore_best_weights = int(patience), bool(restore_best_weights)
        self.verbose, self.start_from_epoch = int(verbose), int(start_from_epoch)
        self.baseline = None if baseline is None else float(baseline)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait, self.stopped_epoch, self.best_epoch, self.best_weights = 0, None, None, None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch < self.start_from_epoch:
            return
        value = self.current(logs)
        if self.restore_best_weights and self.best_weights is None:  # the first monitored epoch is the best so far
            self.best_weights, self.best_epoch = self.model.get_weights(), epoch
        self.wait += 1
        if self.improved(value):
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self.better(value, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.stopped_epoch is not None and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping", flush=True)
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.", flush=True)
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(_Monitor):
    """Save the model (or only its weights) after each epoch, or only when `monitor` improves.

    `filepath` may contain format fields such as `{epoch}` (1-based, e.g. `{epoch:02d}`) or any logged
    key (`{val_loss:.3f}`). `verbose=1` prints a line for each save.
    """

    def __init__(self, filepath: str | os.PathLike, monitor: str = "val_loss", verbose: int = 0,
                 save_best_only: bool = False, save_weights_only: bool = False, mode: str = "auto"):
        super().__init__(monitor, mode)
        self.filepath, self.verbose = os.fspath(filepath), int(verbose)
        self.save_best_only, self.save_weights_only = bool(save_best_only), bool(save_weights_only)

    @property
    def path(self) -> str:
        return self.filepath

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        path = self.filepath.format(epoch=epoch + 1, **(logs or {}))
        if self.save_best_only:
            value = self.current(logs)
            if not self.improved(value):
                if self.verbose > 0:
                    print(f"Epoch {epoch + 1}: {self.monitor} did not improve from {format_value(self.best)}",
                          flush=True)
                return
            if self.verbose > 0:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {format_value(self.best)} to "
                      f"{format_value(value)}, saving model to {path}", flush=True)
            self.best = value
        elif self.verbose > 0:
            print(f"Epoch {epoch + 1}: saving model to {path}", flush=True)
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)


def _learning_rate(model: "Model") -> Any:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise ValueError("this callback needs a compiled model (model.compile(optimizer, loss))")
    return optimizer.lr


def _takes_two(fn: Callable) -> bool:
    """Whether a schedule takes (epoch, lr) rather than (epoch) alone."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate to `schedule(epoch, lr)` (or `schedule(epoch)`) before each epoch.

    The rate is a variable of the compiled step, so changing it recompiles nothing.
    """

    def __init__(self, schedule: Callable[..., float], verbose: int = 0):
        self.schedule, self.verbose = schedule, int(verbose)
        self._two = _takes_two(schedule)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        lr_var = _learning_rate(self.model)
        value = self.schedule(epoch, float(lr_var.value)) if self._two else self.schedule(epoch)
        lr = float(value)
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"LearningRateScheduler: schedule returned an invalid learning rate {lr}")
        lr_var.assign(lr)
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr}.", flush=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["lr"] = float(_learning_rate(self.model).value)


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by `factor` once `monitor` has not improved for `patience` epochs
    (then wait `cooldown` epochs), never below `min_lr` (Keras's rule, `min_delta` absolute)."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, verbose: int = 0,
                 mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0):
        super().__init__(monitor, mode, min_delta)
        if not 0 <= factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in [0, 1), got {factor}")
        self.factor, self.patience, self.verbose = float(factor), int(patience), int(verbose)
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait, self.cooldown_counter = 0, 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = self.current(logs)
        lr_var = _learning_rate(self.model)
        if logs is not None:
            logs["lr"] = float(lr_var.value)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.improved(value):
            self.best, self.wait = value, 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait >= self.patience:
            old = float(lr_var.value)
            new = max(old * self.factor, self.min_lr)
            if new < old:
                lr_var.assign(new)
                if self.verbose > 0:
                    print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.", flush=True)
                self.cooldown_counter, self.wait = self.cooldown, 0


class TerminateOnNaN(Callback):
    """Stop training as soon as a batch's running loss is NaN or infinite."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: invalid loss, terminating training", flush=True)
            self.model.stop_training = True


class LambdaCallback(Callback):
    """A callback from functions: `LambdaCallback(on_epoch_end=lambda epoch, logs: ...)`."""

    def __init__(self, **hooks: Callable[..., None]):
        for name, fn in hooks.items():
            if not hasattr(Callback, name) or not name.startswith("on_"):
                raise ValueError(f"LambdaCallback: unknown hook {name!r}")
            setattr(self, name, fn)
