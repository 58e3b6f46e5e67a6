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
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from trainer import data, outputs
from trainer.config import TrainConfig
from trainer.ema import WeightAverage
from trainer.errors import Diverged, Preempted
from trainer.preemption import StopFlag
from trainer.progress import EpochProgress
from trainer.schedule import Schedule
from trainer.strategy import DeviceSettings
from trainer.summaries import Summaries

log = logging.getLogger(__name__)


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


def train_steps_for(
    cfg: TrainConfig,
    settings: DeviceSettings,
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    average: WeightAverage | None,
) -> Callable:
    """The train steps of a run with this config on this device (what the benchmarks'
    input pipeline check times, too)."""
    return make_train_steps(
        model,
        optimizer,
        strategy,
        cfg.batch_size,
        label_smoothing=cfg.label_smoothing,
        average=average,
        jit_compile=settings.jit_compile,
        augment=cfg.augment,
    )


def _augment(images, labels, params):
    return data.apply_augmentation(images, params), labels


# Evaluation takes no gradients: a larger batch than training's costs little memory and
# saves per-call overhead (on 2 CPU cores, 10,000 test images took a median 3.7 s at
# batch 16 and 2.9 s at 128 or 256: make_eval_step timed alternately, 7 rounds each).
EVAL_BATCH_PER_REPLICA = 256


def eval_batch_size(train_batch: int, replicas: int) -> int:
    """The global evaluation batch: EVAL_BATCH_PER_REPLICA per replica, or the training
    batch if that is larger (a multiple of the replicas either way)."""
    return max(train_batch, EVAL_BATCH_PER_REPLICA * replicas)


def eval_batches(
    test: tf.data.Dataset, size: int, global_batch: int, *, multi_worker: bool = False
) -> tf.data.Dataset:
    """The `size` test examples in order as (images, labels, weights) global batches of
    one shape: the last batch is filled up with blank examples of weight 0, so that the
    eval step is traced once (a partial last batch, 10,000 % 256 = 16 images, has another
    shape and would trace it again: seconds on a CPU)."""
    images, labels = test.element_spec
    blank = (tf.zeros(images.shape, images.dtype), tf.zeros(labels.shape, labels.dtype), 0.0)
    padding = tf.data.Dataset.from_tensors(blank).repeat(-size % global_batch)
    weighted = test.map(lambda image, label: (image, label, 1.0)).concatenate(padding)
    return data.eval_batches(weighted, global_batch=global_batch, multi_worker=multi_worker)


def make_eval_step(model: keras.Model, strategy: tf.distribute.Strategy) -> Callable:
    """On a distributed batch of `eval_batches`: weighted sums of loss, correct and
    count, and every example's label, probabilities, image and weight gathered from all
    replicas (for the confusion matrix and the worst mistakes; a no-op gather on one
    device)."""

    @tf.function(reduce_retracing=True)
    def eval_step(batch):
        def step_fn(images, labels, weights):
            probs = model(images, training=False)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, probs)
            predicted = tf.argmax(probs, axis=-1, output_type=labels.dtype)
            hits = tf.cast(tf.equal(predicted, labels), tf.float32)
            sums = (
                tf.reduce_sum(per_example * weights),
                tf.reduce_sum(hits * weights),
                tf.reduce_sum(weights),
            )
            # Collective gathers take no uint8: images travel as int32.
            return sums, (labels, probs, tf.cast(images, tf.int32), weights)

        sums, examples = strategy.run(step_fn, args=batch)
        return (
            [strategy.reduce("SUM", s, axis=None) for s in sums],
            [strategy.gather(e, axis=0) for e in examples],
        )

    return eval_step


def evaluate_batches(
    eval_step: Callable, batches: tf.distribute.DistributedDataset
) -> tuple[float, float, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(loss, accuracy, (labels, probabilities, uint8 images)) over the real examples of
    `batches` (`eval_batches`, distributed), in order; the padding is left out."""
    # Sums stay on the device until the end: no host sync per batch.
    loss_sum = correct = count = tf.constant(0.0)
    parts: list[list[tf.Tensor]] = [[], [], [], []]
    for batch in batches:
        (a, b, c), examples = eval_step(batch)
        loss_sum, correct, count = loss_sum + a, correct + b, count + c
        for part, e in zip(parts, examples, strict=True):
            part.append(e)
    labels, probabilities, images, weights = (tf.concat(p, axis=0).numpy() for p in parts)
    real = weights > 0
    examples = labels[real], probabilities[real], images[real].astype(np.uint8)
    return float(loss_sum / count), float(correct / count), examples


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


def make_finite_check(variables: list) -> Callable:
    """Whether every float variable (weights, optimizer slots, averages) is finite: one
    reduction on the device, run before each checkpoint is written."""

    @tf.function
    def all_finite() -> tf.Tensor:
        floats = [v for v in variables if tf.as_dtype(v.dtype).is_floating]  # Keras: "float32"
        return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in floats]))

    return all_finite


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
    schedule: Schedule
    average: WeightAverage | None = None
    started: float = field(default_factory=time.monotonic)  # the run's start

    def __post_init__(self) -> None:
        self.evaluations: list[dict[str, float]] = []  # every test evaluation of this run
        self.multi_worker = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self.train_source = data.cached(self.splits.train)
        self.eval_data = self.strategy.experimental_distribute_dataset(
            eval_batches(
                data.cached(self.splits.test),
                self.splits.test_size,
                eval_batch_size(self.cfg.batch_size, self.strategy.num_replicas_in_sync),
                multi_worker=self.multi_worker,
            )
        )
        self.train_steps = train_steps_for(
            self.cfg, self.settings, self.strategy, self.model, self.optimizer, self.average
        )
        self.eval_step = make_eval_step(self.model, self.strategy)
        self.gradients = make_gradients(self.model)
        self.agreement = make_agreement(self.strategy) if self.multi_worker else None
        self.profiling = False
        self.first_call = True  # this process's first compiled call is one step
        self.last_save = time.monotonic()  # for --checkpoint-seconds
        averages = self.average.averages if self.average is not None else []
        self.finite = make_finite_check(
            [*self.model.variables, *self.optimizer.variables, *averages]
        )
        self.unchecked: tuple[int, int, tf.Tensor] | None = None  # see check_loss

    def save(self, step: int) -> None:
        """Write a checkpoint of `step`: only after every loss up to it was finite, and
        when every saved value is (a diverged state is never saved)."""
        self.check_loss()
        if not bool(self.finite()):
            self._diverged("the weights became NaN or infinite", (step, step), after=False)
        self.checkpoints.save(checkpoint_number=step)
        self.last_save = time.monotonic()

    def check_loss(self, call: tuple[int, int, tf.Tensor] | None = None) -> None:
        """Check the loss sum of the compiled call before `call` (steps first..last and
        their device-side sum), and keep `call` for next time; with no `call`, check the
        one kept. One call late, so that reading it waits for nothing: the device has
        finished it while the next one was queued, and no host sync is added."""
        previous, self.unchecked = self.unchecked, call
        if previous is not None and not np.isfinite(float(previous[2])):
            first, last, _ = previous
            self.unchecked = None
            self._diverged("the loss became NaN or infinite", (first, last))

    def _diverged(self, what: str, steps: tuple[int, int], after: bool = True) -> None:
        """Stop: raise Diverged naming the last good checkpoint. The newest checkpoint is
        good unless the diverged steps started right `after` it (its weights may have
        given the first bad loss): then the one before it is, and the newest is the
        `suspect` that trainer.train retires, so that a rerun resumes from the good one."""
        saved = self.checkpoints.checkpoints  # oldest first; the resumed one included
        newest = int(saved[-1].rsplit("-", 1)[1]) if saved else None
        suspect = saved[-1] if after and newest == steps[0] - 1 else None
        good = [c for c in saved if c != suspect]
        checkpoint = str(self.cfg.checkpoint_dir / Path(good[-1]).name) if good else None
        raise Diverged(
            what,
            steps,
            self.schedule.at(steps[0] - 1),
            self.cfg.learning_rate,
            checkpoint,
            suspect=suspect,
        )

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
        """Steps within this epoch, besides its end, after which to evaluate: --early-evals
        evenly spaced in each of the first --early-eval-epochs epochs, and --eval-at's
        points that fall in it (each step once)."""
        per_epoch, n = self.steps_per_epoch, self.cfg.early_evals
        points = {round(per_epoch * (at - epoch)) for at in self.cfg.eval_points}
        if epoch < self.cfg.early_eval_epochs and n >= 2:
            points |= {round(per_epoch * k / n) for k in range(1, n)}
        return sorted(p for p in points if skip < p < per_epoch)

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
        pictures, and (given the step) records the evaluation with its time and writes
        it to TensorBoard."""
        with self.averaged():
            loss, accuracy, self.test_examples = evaluate_batches(self.eval_step, self.eval_data)
        if step is not None:
            self.evaluations.append(
                {
                    "epoch": round(step / self.steps_per_epoch, 3),
                    "step": step,
                    "test_loss": loss,
                    "test_accuracy": accuracy,
                    "elapsed_seconds": time.monotonic() - self.started,
                    "time": time.time(),  # for timing from outside (benchmarks)
                }
            )
            self.summaries.evaluation(step, loss, accuracy)
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
                # The last --clean-epochs of each cycle (a run has one; --epochs raised
                # on resume appends one), so where --epochs was raised changes nothing.
                distort=epoch < self.schedule.cycle_end(step) // per_epoch - cfg.clean_epochs,
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
            if self.first_call:  # one step alone: its "step" event says when training began
                n, self.first_call = 1, False
            self._profile(step, step + n)
            losses, ok, loss = self.train_steps(iterator, tf.constant(n))
            previous, step, done = step, step + n, done + n
            self.check_loss((previous + 1, step, losses))  # steps are counted from 1
            loss_sum, correct = loss_sum + losses, correct + ok
            progress.update(done, lambda s=loss_sum, c=correct: (float(s), float(c)))
            outputs.emit("step", step=step)  # for tools that follow the run (make soak)
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
                self.check_loss()
                eval_start = time.monotonic()
                test_loss, test_acc = self.evaluate(step)
                epoch_start += time.monotonic() - eval_start  # images/s counts training only
                log.info(
                    "epoch %d/%d  step %d/%d  test_loss %.4f  test_acc %.2f%%",
                    *(epoch + 1, cfg.epochs, skip + done, per_epoch, test_loss, 100 * test_acc),
                )
        loss_sum, correct = float(loss_sum), float(correct)  # waits for the last step
        seconds = time.monotonic() - epoch_start
        self.check_loss()
        test_loss, test_acc = self.evaluate(step)
        record = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(done, 1),
            "accuracy": correct / max(done * cfg.batch_size, 1),
            "test_loss": test_loss,
            "test_accuracy": test_acc,
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
            "epoch %d/%d  loss %.4f  acc %.2f%%  test_loss %.4f  test_acc %.2f%%  "
            "lr %.2e  %.0f img/s  %.1f s",
            epoch + 1,
            cfg.epochs,
            record["loss"],
            100 * record["accuracy"],
            test_loss,
            100 * test_acc,
            record["learning_rate"],
            record["images_per_second"],
            seconds,
        )
        return record, step
