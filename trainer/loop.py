"""The training loop's parts: compiled train and eval steps, and one epoch.

A custom loop (`strategy.run` + Keras model and optimizer) rather than `model.fit`,
because `fit` fails under MultiWorkerMirroredStrategy with several workers in Keras 3
(keras-team/keras#20585); this one loop serves every strategy.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from trainer import data
from trainer.config import TrainConfig
from trainer.devices import DeviceSettings
from trainer.ema import WeightAverage
from trainer.preemption import Preempted, StopFlag
from trainer.progress import EpochProgress
from trainer.summaries import Summaries

log = logging.getLogger(__name__)
# "step N" after every compiled call, at DEBUG: off unless a tool turns this logger on.
steps_log = logging.getLogger("trainer.steps")


def make_train_steps(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    strategy: tf.distribute.Strategy,
    global_batch: int,
    *,
    label_smoothing: float = 0.0,
    average: WeightAverage | None = None,
    jit_compile: bool = False,
    augment: bool = False,
) -> Callable:
    """`steps` optimizer steps from a distributed iterator in one compiled call.

    Returns (sum of the steps' mean losses, correct count, last step's loss). The loss is
    averaged over the *global* batch (`compute_average_loss`), so the all-reduced
    gradient is the same whatever the number of replicas. Several steps per call (like
    Keras' steps_per_execution) save a Python round trip per step, which dominates a
    model this small on a GPU. With `jit_compile` the step itself is XLA-compiled (the
    loop around it cannot be: it pulls from a tf.data iterator). With `augment`, batches
    carry augmentation parameters and the images are transformed on each replica first
    (outside XLA, which has no kernel for the transform). After each step the weight
    average, if any, takes the new weights in.
    """

    def step_fn(images, labels):
        with tf.GradientTape() as tape:
            probs = model(images, training=True)
            targets = tf.one_hot(labels, tf.shape(probs)[-1], dtype=probs.dtype)
            per_example = keras.losses.categorical_crossentropy(
                targets, probs, label_smoothing=label_smoothing
            )
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            scaled = optimizer.scale_loss(loss)  # mixed_float16's loss scaling, else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss, _correct(labels, probs)

    step = tf.function(step_fn, jit_compile=True) if jit_compile else step_fn

    @tf.function
    def train_steps(iterator, steps):
        loss_sum = correct_sum = last = tf.constant(0.0)
        for _ in tf.range(steps):
            batch = next(iterator)
            if augment:
                batch = strategy.run(_augment, args=batch)
            loss, correct = strategy.run(step, args=batch)
            if average is not None:
                average.update()
            last = strategy.reduce("SUM", loss, axis=None)
            loss_sum += last
            correct_sum += strategy.reduce("SUM", correct, axis=None)
        return loss_sum, correct_sum, last

    return train_steps


def _augment(images, labels, params):
    return data.apply_augmentation(images, params), labels


def make_eval_step(model: keras.Model, strategy: tf.distribute.Strategy) -> Callable:
    """On a distributed batch (partial batches fine): sums of loss, correct and count,
    and every example's label, probabilities and image gathered from all replicas (for
    the confusion matrix and the worst mistakes; a no-op gather on one device)."""

    @tf.function(reduce_retracing=True)
    def eval_step(batch):
        def step_fn(images, labels):
            probs = model(images, training=False)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, probs)
            sums = tf.reduce_sum(per_example), _correct(labels, probs), tf.size(labels)
            # Collective gathers take no uint8: images travel as int32.
            return sums, (labels, probs, tf.cast(images, tf.int32))

        sums, examples = strategy.run(step_fn, args=batch)
        return (
            [strategy.reduce("SUM", s, axis=None) for s in sums],
            [strategy.gather(e, axis=0) for e in examples],
        )

    return eval_step


def make_gradients(model: keras.Model) -> Callable:
    """The loss gradients of one batch, outside the strategy (for histograms only)."""

    @tf.function
    def gradients(images, labels):
        with tf.GradientTape() as tape:
            probs = model(images, training=False)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, probs))
        return tape.gradient(loss, model.trainable_variables)

    return gradients


def make_agreement(strategy: tf.distribute.Strategy) -> Callable:
    """Flags summed over every worker (one tiny all-reduce): what each worker decided on
    its own (a signal arrived, its clock says a checkpoint is due) becomes one decision
    that all of them take at the same step. A checkpoint save and a stop must happen on
    every worker or on none: a worker that saves (or leaves) alone leaves the others
    waiting in the next collective until a timeout."""

    @tf.function
    def agree(flags: tf.Tensor) -> tf.Tensor:
        per_replica = strategy.run(lambda: tf.identity(flags))
        return strategy.reduce("SUM", per_replica, axis=None)

    return agree


def _correct(labels: tf.Tensor, probs: tf.Tensor) -> tf.Tensor:
    predicted = tf.argmax(probs, axis=-1, output_type=labels.dtype)
    return tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))


@dataclass
class Loop:
    """What every epoch of a run needs, built once by `train.run`."""

    cfg: TrainConfig
    strategy: tf.distribute.Strategy
    splits: data.Splits
    steps_per_epoch: int
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    checkpoints: tf.train.CheckpointManager
    summaries: Summaries
    settings: DeviceSettings
    average: WeightAverage | None = None
    started: float = field(default_factory=time.monotonic)  # the run's start

    def __post_init__(self) -> None:
        self.evaluations: list[dict[str, float]] = []  # every test evaluation of this run
        self.multi_worker = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self.train_source = data.cached(self.splits.train)
        self.eval_data = self.strategy.experimental_distribute_dataset(
            data.eval_batches(
                data.cached(self.splits.test),
                global_batch=self.cfg.batch_size,
                multi_worker=self.multi_worker,
            )
        )
        self.train_steps = make_train_steps(
            self.model,
            self.optimizer,
            self.strategy,
            self.cfg.batch_size,
            label_smoothing=self.cfg.label_smoothing,
            average=self.average,
            jit_compile=self.settings.jit_compile,
            augment=self.cfg.augment,
        )
        self.eval_step = make_eval_step(self.model, self.strategy)
        self.gradients = make_gradients(self.model)
        self.agreement = make_agreement(self.strategy) if self.multi_worker else None
        self.profiling = False
        self.last_save = time.monotonic()  # for --checkpoint-seconds

    def save(self, step: int) -> None:
        self.checkpoints.save(checkpoint_number=step)
        self.last_save = time.monotonic()

    def _decide(self, previous: int, step: int, stop: StopFlag) -> tuple[bool, bool]:
        """After a call took the run from `previous` to `step`: (stop now, save now).

        --checkpoint-every counts steps, the same on every worker; --checkpoint-seconds
        and signals are each worker's own, so in a multi-worker job they are all-reduced
        first and every worker acts on the same answer at the same step.
        """
        cfg = self.cfg
        by_steps = step // cfg.checkpoint_every > previous // cfg.checkpoint_every
        by_clock = 0 < cfg.checkpoint_seconds <= time.monotonic() - self.last_save
        stopping = stop.signum is not None
        if self.agreement is not None:
            flags = self.agreement(tf.constant([float(stopping), float(by_clock)]))
            stopping, by_clock = (bool(x > 0) for x in flags.numpy())
        return stopping, stopping or by_steps or by_clock

    def _early_evals(self, epoch: int, skip: int) -> list[int]:
        """Steps within the first epoch, besides its end, after which to evaluate."""
        n = self.cfg.first_epoch_evals
        if epoch != 0 or n < 2:
            return []
        points = [round(self.steps_per_epoch * k / n) for k in range(1, n)]
        return [p for p in points if skip < p < self.steps_per_epoch]

    def _profile(self, step: int, next_step: int) -> None:
        """Trace --profile-steps START,STOP: start before the call that runs step START,
        stop once step STOP is done (calls run --steps-per-call steps each)."""
        if self.cfg.profile_range is None:
            return
        start, stop = self.cfg.profile_range
        if not self.profiling and step < start <= next_step:
            self.summaries.start_profile()
            self.profiling = True
        elif self.profiling and step >= stop:
            self.summaries.stop_profile()
            self.profiling = False

    def averaged(self):
        """The weights that evaluation and the export use: the average, if there is one."""
        return self.average.applied() if self.average is not None else nullcontext()

    def evaluate(self, step: int | None = None) -> tuple[float, float]:
        """(loss, accuracy) on the test split, with the averaged weights; keeps every
        example's label, probabilities and image in `self.test_examples` for the
        pictures, and (given the step) records the evaluation with its time."""
        # Sums stay on the device until the end: no host sync per batch.
        loss_sum = correct = count = tf.constant(0.0)
        parts: list[list[tf.Tensor]] = [[], [], []]
        with self.averaged():
            for batch in self.eval_data:
                (a, b, c), examples = self.eval_step(batch)
                loss_sum, correct = loss_sum + a, correct + b
                count += tf.cast(c, tf.float32)
                for part, e in zip(parts, examples, strict=True):
                    part.append(e)
            labels, probabilities, images = (tf.concat(p, axis=0).numpy() for p in parts)
        self.test_examples = labels, probabilities, images.astype(np.uint8)
        loss, accuracy = float(loss_sum / count), float(correct / count)
        if step is not None:
            self.evaluations.append(
                {
                    "epoch": round(step / self.steps_per_epoch, 3),
                    "step": step,
                    "val_loss": loss,
                    "val_accuracy": accuracy,
                    "elapsed_seconds": time.monotonic() - self.started,
                    "time": time.time(),  # for timing from outside (benchmarks)
                }
            )
        return loss, accuracy

    def first_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The run's first training batch as the pipeline feeds it (augmented)."""
        ds = data.train_batches(
            self.train_source,
            size=self.splits.train_size,
            global_batch=self.cfg.batch_size,
            seed=self.cfg.seed,
            epoch=0,
            augment=self.cfg.augment,
        )
        images, labels, *params = next(iter(ds))
        if params:
            images = data.apply_augmentation(images, params[0])
        return images.numpy(), labels.numpy()

    def start(self, step: int) -> None:
        """Once per run, before the first epoch: what TensorBoard shows from the start."""
        self.summaries.hparams(self.cfg.to_dict(), self.strategy.num_replicas_in_sync)
        self.probe = self.first_batch()
        self.summaries.training_images(*self.probe, step)

    def epoch(self, step: int, stop: StopFlag) -> tuple[dict[str, float], int]:
        """Train from `step` to the end of its epoch, evaluate, checkpoint, log.

        Returns the epoch's record and the new step. Checkpoints every
        `--checkpoint-every` steps or `--checkpoint-seconds` on the way, whichever comes
        first; on SIGTERM/SIGINT (to this worker or any other) saves and raises
        Preempted (between compiled calls, so at most `--steps-per-call` steps late).
        """
        cfg, per_epoch = self.cfg, self.steps_per_epoch
        epoch, skip = divmod(step, per_epoch)
        batches = self.strategy.experimental_distribute_dataset(
            data.train_batches(
                self.train_source,
                size=self.splits.train_size,
                global_batch=cfg.batch_size,
                seed=cfg.seed,
                epoch=epoch,
                skip_batches=skip,
                augment=cfg.augment,
                multi_worker=self.multi_worker,
            )
        )
        epoch_start, done, iterator = time.monotonic(), 0, iter(batches)
        loss_sum = correct = tf.constant(0.0)  # device-side sums: no sync per call
        progress = EpochProgress(
            epoch + 1, cfg.epochs, per_epoch - skip, cfg.batch_size, cfg.heartbeat_seconds
        )
        early = self._early_evals(epoch, skip)
        while done < per_epoch - skip:
            n = min(self.settings.steps_per_call, per_epoch - skip - done)
            if early and early[0] > skip + done:  # stop the call at the next early eval
                n = min(n, early[0] - skip - done)
            self._profile(step, step + n)
            losses, ok, loss = self.train_steps(iterator, tf.constant(n))
            previous, step, done = step, step + n, done + n
            loss_sum, correct = loss_sum + losses, correct + ok
            progress.update(done, lambda s=loss_sum, c=correct: (float(s), float(c)))
            steps_log.debug("step %d", step)  # for tools that follow the log (make soak)
            stopping, saving = self._decide(previous, step, stop)
            if saving:
                self.save(step)
            if stopping:
                signum = stop.signum or signal.SIGTERM  # or a peer's signal
                why = signal.Signals(signum).name if stop.signum else "a peer's SIGTERM/SIGINT"
                log.warning(
                    "stopped by %s at step %d; checkpoint saved in %s; rerun the same "
                    "command to resume",
                    why,
                    step,
                    cfg.checkpoint_dir,
                )
                raise Preempted(signum, step)
            self.summaries.steps_done(previous, step, loss)
            if early and skip + done >= early[0]:
                early.pop(0)
                eval_start = time.monotonic()
                val_loss, val_acc = self.evaluate(step)
                epoch_start += time.monotonic() - eval_start  # images/s counts training only
                log.info(
                    "epoch %d/%d  step %d/%d  val_loss %.4f  val_acc %.2f%%",
                    *(epoch + 1, cfg.epochs, skip + done, per_epoch, val_loss, 100 * val_acc),
                )
        loss_sum, correct = float(loss_sum), float(correct)  # waits for the last step
        seconds = time.monotonic() - epoch_start
        val_loss, val_acc = self.evaluate(step)
        record = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(done, 1),
            "accuracy": correct / max(done * cfg.batch_size, 1),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "learning_rate": float(self.optimizer.learning_rate),
            "images_per_second": done * cfg.batch_size / seconds,
            "seconds": seconds,
        }
        self._profile(step, step)  # a range that ends with the epoch stops here
        self.save(step)
        self.summaries.epoch_done(record, step)
        self.summaries.test_pictures(*self.test_examples, step)
        if cfg.histogram_every and (epoch + 1) % cfg.histogram_every == 0:
            variables = self.model.trainable_variables
            self.summaries.histograms(variables, self.gradients(*self.probe), step)
        log.info(
            "epoch %d/%d  loss %.4f  acc %.2f%%  val_loss %.4f  val_acc %.2f%%  "
            "lr %.2e  %.0f img/s  %.1f s",
            epoch + 1,
            cfg.epochs,
            record["loss"],
            100 * record["accuracy"],
            val_loss,
            100 * val_acc,
            record["learning_rate"],
            record["images_per_second"],
            seconds,
        )
        return record, step
