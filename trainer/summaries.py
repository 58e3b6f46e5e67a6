"""TensorBoard writing: JOB_DIR/logs/train and JOB_DIR/logs/validation.

TensorBoard draws runs that share a tag on one chart, so `epoch_loss` and
`epoch_accuracy` of both runs appear together. Only the chief writes; other workers
get no-op writers, so callers need not ask who they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tensorflow as tf

BATCH_LOSS_EVERY = 50  # steps between `batch_loss` points


class Summaries:
    def __init__(self, log_dir: Path, is_chief: bool = True):
        runs = ("train", "validation")
        if is_chief:
            self.writers = {r: tf.summary.create_file_writer(str(log_dir / r)) for r in runs}
        else:
            self.writers = {r: tf.summary.create_noop_writer() for r in runs}

    def steps_done(self, previous: int, step: int, loss: Any) -> None:
        """After a compiled call took the run from `previous` to `step`: the batch loss
        whenever the call crossed a multiple of BATCH_LOSS_EVERY."""
        if step // BATCH_LOSS_EVERY > previous // BATCH_LOSS_EVERY:
            with self.writers["train"].as_default(step=step):
                tf.summary.scalar("batch_loss", loss)

    def epoch_done(self, record: dict[str, float], step: int) -> None:
        """One epoch's metrics (trainer.loop's record), then flush, so TensorBoard shows
        them while the next epoch runs."""
        with self.writers["train"].as_default(step=step):
            tf.summary.scalar("epoch_loss", record["loss"])
            tf.summary.scalar("epoch_accuracy", record["accuracy"])
            tf.summary.scalar("learning_rate", record["learning_rate"])
            tf.summary.scalar("images_per_second", record["images_per_second"])
        with self.writers["validation"].as_default(step=step):
            tf.summary.scalar("epoch_loss", record["val_loss"])
            tf.summary.scalar("epoch_accuracy", record["val_accuracy"])
        for w in self.writers.values():
            w.flush()
