"""TensorBoard writing, with TensorBoard's own APIs (`tf.summary`, the HParams plugin's
`hp` API, `tf.profiler`).

    JOB_DIR/logs/                 the run's HParams session (its configuration)
    JOB_DIR/logs/train/           loss, accuracy, learning rate, images/s, batch loss;
                                  the training-image grid; weight and gradient histograms;
                                  profiler traces (plugins/profile/)
    JOB_DIR/logs/validation/      test loss and accuracy: each epoch's, and every
                                  evaluation's at its step (mid-epoch ones too); each
                                  epoch's confusion matrix and worst-misclassified digits

The held-out scores are the test split's (`test_loss`, `test_accuracy` everywhere else);
their run keeps the name of the Keras TensorBoard callback's, validation/, so the charts
read like every Keras user's. TensorBoard draws runs that share a tag on one chart, so
`epoch_loss` and `epoch_accuracy` of train/ and validation/ appear together. Pointed at
a folder holding several job dirs (`make tensorboard LOG_ROOT=artifacts`), it lists each
run, and the HParams tab compares their configurations and final metrics side by side.
Only the chief writes; other workers get no-op writers, so callers need not ask who they
are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from trainer.report import metrics, pictures

BATCH_LOSS_EVERY = 50  # steps between `batch_loss` points
TRAIN_GRID = 32  # training images shown once per run
WORST_GRID = 16  # worst-misclassified test digits shown each epoch
HPARAMS = (  # the TrainConfig fields that shape the result; the rest are paths and plumbing
    "epochs",
    "batch_size",
    "learning_rate",
    "augment",
    "seed",
    "strategy",
    "steps_per_call",
)


def _image(png: bytes) -> tf.Tensor:
    return tf.io.decode_png(png, channels=4)[None]  # [1, h, w, 4]: tf.summary.image's shape


class Summaries:
    def __init__(self, log_dir: Path, is_chief: bool = True):
        self.log_dir, self.is_chief = Path(log_dir), is_chief
        runs = ("train", "validation")
        if is_chief:
            self.writers = {r: tf.summary.create_file_writer(str(log_dir / r)) for r in runs}
            self.session = tf.summary.create_file_writer(str(log_dir))
        else:
            self.writers = {r: tf.summary.create_noop_writer() for r in runs}
            self.session = tf.summary.create_noop_writer()

    def hparams(self, config: dict[str, Any], replicas: int) -> None:
        """The HParams dashboard's session for this run: its configuration; the metrics
        are the validation scalars, which the dashboard reads from validation/."""
        values = {k: config[k] for k in HPARAMS} | {"replicas": replicas}
        with self.session.as_default():
            hp.hparams_config(
                hparams=[hp.HParam(k) for k in values],
                metrics=[
                    hp.Metric("epoch_accuracy", group="validation", display_name="test accuracy"),
                    hp.Metric("epoch_loss", group="validation", display_name="test loss"),
                    hp.Metric("epoch_accuracy", group="train", display_name="train accuracy"),
                ],
            )
            hp.hparams(values, trial_id=str(self.log_dir.parent.name))
        self.session.flush()

    def training_images(self, images: np.ndarray, labels: np.ndarray, step: int) -> None:
        """The first batch as the pipeline feeds it (after augmentation), once per run."""
        if not self.is_chief:
            return
        n = min(TRAIN_GRID, len(images))
        png = pictures.digit_grid(
            images[:n], [f"label {k}" for k in labels[:n]], title="Training images (augmented)"
        )
        with self.writers["train"].as_default(step=step):
            tf.summary.image("training_images", _image(png))

    def steps_done(self, previous: int, step: int, loss: Any) -> None:
        """After a compiled call took the run from `previous` to `step`: the batch loss
        whenever the call crossed a multiple of BATCH_LOSS_EVERY."""
        if step // BATCH_LOSS_EVERY > previous // BATCH_LOSS_EVERY:
            with self.writers["train"].as_default(step=step):
                tf.summary.scalar("batch_loss", loss)

    def evaluation(self, step: int, loss: float, accuracy: float) -> None:
        """Every test evaluation, inside an epoch too, at its step, under the names the
        Keras TensorBoard callback gives evaluations (`on_test_end`); flushed at once, so
        TensorBoard shows it while training goes on. The epoch_* scalars stay one per
        epoch, for the HParams dashboard."""
        with self.writers["validation"].as_default(step=step):
            tf.summary.scalar("evaluation_loss_vs_iterations", loss)
            tf.summary.scalar("evaluation_accuracy_vs_iterations", accuracy)
        self.writers["validation"].flush()

    def epoch_done(self, record: dict[str, float], step: int) -> None:
        """One epoch's metrics (trainer.loop's record), then flush, so TensorBoard shows
        them while the next epoch runs."""
        with self.writers["train"].as_default(step=step):
            tf.summary.scalar("epoch_loss", record["loss"])
            tf.summary.scalar("epoch_accuracy", record["accuracy"])
            tf.summary.scalar("learning_rate", record["learning_rate"])
            tf.summary.scalar("images_per_second", record["images_per_second"])
        with self.writers["validation"].as_default(step=step):
            tf.summary.scalar("epoch_loss", record["test_loss"])
            tf.summary.scalar("epoch_accuracy", record["test_accuracy"])
        for w in self.writers.values():
            w.flush()

    def test_pictures(
        self, labels: np.ndarray, probabilities: np.ndarray, images: np.ndarray, step: int
    ) -> None:
        """The epoch's confusion matrix on the test split and its worst mistakes."""
        if not self.is_chief:
            return
        cm = metrics.confusion_matrix(labels, probabilities.argmax(-1))
        worst = metrics.worst_misclassified(labels, probabilities, WORST_GRID)
        captions = [
            f"{labels[i]} → {probabilities[i].argmax()} ({probabilities[i].max():.0%})"
            for i in worst
        ]
        grid = pictures.digit_grid(
            images[worst], captions, title="Worst mistakes: true → predicted (confidence)"
        )
        with self.writers["validation"].as_default(step=step):
            tf.summary.image("confusion_matrix", _image(pictures.confusion_matrix(cm)))
            if len(worst):
                tf.summary.image("worst_misclassified", _image(grid))

    def histograms(self, variables: list, gradients: list, step: int) -> None:
        """Weights and the gradients of one fixed training batch, per variable."""
        with self.writers["train"].as_default(step=step):
            for v, g in zip(variables, gradients, strict=True):
                name = v.path if hasattr(v, "path") else v.name
                tf.summary.histogram(f"weights/{name}", v)
                tf.summary.histogram(f"gradients/{name}", g)

    def start_profile(self) -> None:
        if self.is_chief:
            tf.profiler.experimental.start(str(self.log_dir / "train"))

    def stop_profile(self) -> None:
        if self.is_chief:
            tf.profiler.experimental.stop()
