"""Run specs in child processes, so that a crash (a segfault in generated code) or a hang (a compile
or a step that never ends) is caught and attributed to the graph and backend that caused it.

A `Worker` is one child (`python -m graphnet.testing.runner`) that reads specs as JSON lines and
answers, for each, which backend it is about to run (its progress) and then the `Result`. The parent
waits for each answer with a timeout: end of file means a crash, a timeout a hang (the child's
process group is killed); either way the failure names the spec and the backend last reported, and
the next spec gets a fresh child. `run_many` runs batches of specs over `jobs` workers, a fresh child
per batch.
"""
from __future__ import annotations

import json
import os
import queue
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Iterable, Sequence

from .oracle import COMPILE_BUDGET_S, Failure, Result
from .spec import Spec

STARTUP_TIMEOUT_S = 180.0


class Worker:
    """One child process checking specs; restarted after a crash or a hang."""

    def __init__(self, timeout_s: float = 120.0, env: dict | None = None, use_torch: bool = True,
                 budget_s: float = COMPILE_BUDGET_S, command: Sequence[str] | None = None):
        self.timeout_s, self.env, self.use_torch, self.budget_s = timeout_s, env, use_torch, budget_s
        self.command = list(command or [sys.executable, "-m", "graphnet.testing.runner"])  # the child's
        self.proc: subprocess.Popen | None = None
        self._buffer = b""
        self._log = tempfile.TemporaryFile()

    # ---- the child -------------------------------------------------------------------------------
    def _start(self) -> None:
        env = {**os.environ, **(self.env or {}), "PYTHONFAULTHANDLER": "1"}
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")  # the numpy reference on one thread: jobs share the cores
        self._log.seek(0)
        self._log.truncate()
        self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, env=env, start_new_session=True)
        self._buffer = b""
        message = self._read(STARTUP_TIMEOUT_S)
        if not message or "ready" not in message:
            self.close()
            raise RuntimeError(f"the fuzz worker did not start: {self.stderr_tail()}")

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.proc = None

    def stderr_tail(self, lines: int = 15) -> str:
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").rstrip().splitlines()
        return "\n".join(text[-lines:])

    def _read(self, timeout_s: float) -> dict | None:
        """The child's next message; None at end of file; raises TimeoutError."""
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return None
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    # ---- checking a spec -------------------------------------------------------------------------
    def run(self, spec: Spec) -> Result:
        """Check `spec` in the child (started if needed)."""
        if self.proc is None:
            self._start()
        request = json.dumps({"spec": json.loads(spec.to_json()), "torch": self.use_torch, "budget": self.budget_s})
        start = time.monotonic()
        try:
            self.proc.stdin.write(request.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._died(spec, "numpy", start)
        stage = "numpy"
        while True:
            try:
                message = self._read(max(0.0, start + self.timeout_s - time.monotonic()))
            except TimeoutError:
                self.close()
                return Result(spec.id, [Failure(stage, "hang", f"no answer within {self.timeout_s:g} s while "
                                                               f"running {stage}")],
                              seconds=time.monotonic() - start)
            if message is None:
                return self._died(spec, stage, start)
            if "stage" in message:
                stage = message["stage"]
            elif "result" in message:
                return Result.from_dict(message["result"])

    def _died(self, spec: Spec, stage: str, start: float) -> Result:
        self.proc.wait()
        code = self.proc.returncode
        status = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        failure = Failure(stage, "crash", f"the worker died ({status}) while running {stage}\n{self.stderr_tail()}")
        self.close()
        return Result(spec.id, [failure], seconds=time.monotonic() - start)

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_many(specs: Iterable[Spec], jobs: int = 1, batch: int = 40, timeout_s: float = 120.0,
             use_torch: bool = True, budget_s: float = COMPILE_BUDGET_S, env: dict | None = None,
             on_result: Callable[[Spec, Result], None] = lambda spec, result: None) -> list[tuple[Spec, Result]]:
    """Check every spec, `batch` specs per child process, `jobs` children at a time; results in order."""
    specs = list(specs)
    batches: queue.Queue = queue.Queue()
    for k in range(0, len(specs), batch):
        batches.put(list(range(k, min(k + batch, len(specs)))))
    results: list = [None] * len(specs)
    lock = threading.Lock()
    errors: list = []

    def work() -> None:
        while True:
            try:
                indices = batches.get_nowait()
            except queue.Empty:
                return
            try:
                with Worker(timeout_s, env, use_torch, budget_s) as worker:
                    for i in indices:
                        result = worker.run(specs[i])
                        results[i] = result
                        with lock:
                            on_result(specs[i], result)
            except BaseException as e:  # a worker that cannot start: stop everything, report it
                errors.append(e)
                return

    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return list(zip(specs, results))


# ---- the child's side ------------------------------------------------------------------------------------
def child() -> None:
    """Read requests from stdin, answer on the original stdout; everything else printed (by graphnet,
    LLVM or a compiler) goes to stderr, so it cannot corrupt the answers."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from . import oracle

    def send(message: dict) -> None:
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    send({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        spec = Spec.from_json(request["spec"])
        if request["torch"] and "torch" not in sys.modules and oracle.torch_available():
            import torch
            torch.set_num_threads(1)
        result = oracle.check(spec, use_torch=request["torch"], budget_s=request["budget"],
                              progress=lambda stage: send({"stage": stage}))
        send({"result": result.to_dict()})


if __name__ == "__main__":
    child()
