"""Progress a person can read while an epoch runs.

On a terminal: Keras' own `keras.utils.Progbar` (steps, loss, accuracy, images/s, ETA),
redrawn in place on stdout. Anywhere else (container logs, CI, Kubernetes): no control
characters at all, only a plain log line every `--heartbeat-seconds`, besides the
per-epoch line the loop always logs.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

import keras

log = logging.getLogger(__name__)


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty()


class EpochProgress:
    """Told after each compiled call how far the epoch is; reads the device-side sums
    (a host sync) only when it is about to show them."""

    def __init__(
        self,
        epoch: int,
        epochs: int,
        steps: int,
        global_batch: int,
        heartbeat_seconds: float,
        terminal: bool | None = None,
    ):
        self.epoch, self.epochs, self.steps, self.batch = epoch, epochs, steps, global_batch
        self.heartbeat = heartbeat_seconds
        self.start = self.last_beat = time.monotonic()
        self.bar = None
        if is_terminal() if terminal is None else terminal:
            print(f"epoch {epoch}/{epochs}", flush=True)
            self.bar = keras.utils.Progbar(steps, stateful_metrics=["loss", "acc", "img/s"])

    def update(self, done: int, sums: Callable[[], tuple[float, float]]) -> None:
        """`done` steps of this epoch so far; `sums()` gives (loss sum, correct count)."""
        now = time.monotonic()
        if self.bar is None and now - self.last_beat < self.heartbeat:
            return
        loss_sum, correct = sums()
        rate = done * self.batch / max(now - self.start, 1e-9)
        loss, accuracy = loss_sum / max(done, 1), correct / max(done * self.batch, 1)
        if self.bar is not None:
            self.bar.update(done, [("loss", loss), ("acc", accuracy), ("img/s", rate)])
            return
        self.last_beat = now
        eta = (self.steps - done) * self.batch / max(rate, 1e-9)
        log.info(
            "epoch %d/%d  step %d/%d  loss %.4f  acc %.2f%%  %.0f img/s  ETA %.0f s",
            self.epoch,
            self.epochs,
            done,
            self.steps,
            loss,
            100 * accuracy,
            rate,
            eta,
        )
