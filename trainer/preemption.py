"""Stopping on request: SIGTERM (preemption, `docker stop`, pod eviction) and Ctrl-C
become a flag that the training loop checks between compiled calls, so it can write a
checkpoint and then stop with an exit status the orchestrator understands."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

EXIT_PREEMPTED = 143  # 128 + SIGTERM: Kubernetes/TFJob treat it as retryable
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C


class Preempted(Exception):
    """Raised after a SIGTERM/SIGINT once the checkpoint is safely written."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.signum == signal.SIGINT else EXIT_PREEMPTED


class StopFlag:
    signum: int | None = None


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """While inside, SIGTERM and SIGINT set `flag.signum` instead of killing the process."""
    flag = StopFlag()

    def handler(signum: int, _frame: Any) -> None:
        flag.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
