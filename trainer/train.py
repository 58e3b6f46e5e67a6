"""One training run, top to bottom: strategy -> data -> model -> resume -> loop -> export.

A custom loop (`strategy.run` + Keras model and optimizer) rather than `model.fit`,
because `fit` fails under MultiWorkerMirroredStrategy with several workers in Keras 3
(keras-team/keras#20585); this one loop serves every strategy.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
import tensorflow_datasets as tfds

from trainer import data, export
from trainer import strategy as strategies
from trainer.config import TrainConfig
from trainer.errors import UserError
from trainer.model import build_model, summary_text

log = logging.getLogger(__name__)

FINISHED_FILE = "finished.json"
RUN_FILE = "run.json"  # the config the job dir was started with
EXIT_PREEMPTED = 143  # 128 + SIGTERM: Kubernetes/TFJob treat it as retryable


class Preempted(Exception):
    """Raised after a SIGTERM/SIGINT once the checkpoint is safely written."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step


def run(
    cfg: TrainConfig,
    *,
    strategy: tf.distribute.Strategy | None = None,
    splits: data.Splits | None = None,
) -> dict[str, Any]:
    """Train (or resume) and export; returns the training summary.

    `strategy` and `splits` are injection seams for tests; by default both come from
    the hardware/TF_CONFIG and the TFDS data dir.
    """
    started = time.monotonic()

    # --- Strategy: from TF_CONFIG and the devices, before TF initialises them.
    cluster = strategies.parse_tf_config(os.environ.get("TF_CONFIG"))
    is_chief = cluster is None or cluster.is_chief
    if strategy is None:
        decision = strategies.decide(
            cfg.strategy, cluster, len(tf.config.list_physical_devices("GPU"))
        )
        strategy = strategies.build(decision, cfg.cpu_devices)
        log.info("strategy: %s (%s)", type(strategy).__name__, decision.reason)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise UserError(
            f"--batch-size {cfg.batch_size} does not split evenly over {replicas} replicas; "
            f"use a multiple of {replicas}."
        )
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    log.info(
        "replicas: %d, global batch %d (%d per replica)",
        replicas,
        cfg.batch_size,
        cfg.batch_size // replicas,
    )

    # --- Data: the TFDS mnist dataset, imported from idx files if need be.
    if splits is None:
        prepare_data(cfg, is_chief=is_chief)
        splits = data.load(cfg.data_dir)
    steps_per_epoch = splits.train_size // cfg.batch_size
    if steps_per_epoch == 0:
        raise UserError(
            f"--batch-size {cfg.batch_size} is larger than the {splits.train_size} training images."
        )
    total_steps = cfg.epochs * steps_per_epoch
    train_source = data.cached(splits.train)
    eval_data = strategy.experimental_distribute_dataset(
        data.eval_batches(
            data.cached(splits.test), global_batch=cfg.batch_size, multi_worker=multi_worker
        )
    )

    # --- Model and optimizer, created under the strategy so variables are mirrored.
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        model = build_model(seed=cfg.seed)
        schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, total_steps)
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
        optimizer.build(model.trainable_variables)  # slots exist before restore
    log.info("model:\n%s", summary_text(model))

    # --- Checkpoints: resume from the last one, if any.
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = _checkpoint_manager(ckpt, cfg.checkpoint_dir, is_chief, cluster)
    latest = tf.train.latest_checkpoint(str(cfg.checkpoint_dir))
    if latest:
        _check_same_batch(cfg)
        ckpt.restore(latest).assert_existing_objects_matched()
    elif is_chief:
        _write_json(Path(cfg.job_dir) / RUN_FILE, cfg.to_dict())
    step = int(optimizer.iterations.numpy())
    finished = _read_finished(cfg)
    if step >= total_steps and finished:
        log.info(
            "run in %s is already finished (%d/%d epochs, exported to %s); raise --epochs or "
            "use a new --job-dir to train again.",
            cfg.job_dir,
            step // steps_per_epoch,
            cfg.epochs,
            finished["export_path"],
        )
        return {**finished["summary"], "already_finished": True}
    if latest:
        log.info(
            "resuming from %s: epoch %d, step %d of %d",
            latest,
            step // steps_per_epoch + 1,
            step % steps_per_epoch,
            steps_per_epoch,
        )

    # --- Training step and evaluation step, compiled once as graphs.
    train_steps = make_train_steps(model, optimizer, strategy, cfg.batch_size)
    eval_step = make_eval_step(model, strategy)

    def evaluate() -> tuple[float, float]:
        # Sums stay on the device until the end: no host sync per batch.
        loss_sum = correct = count = tf.constant(0.0)
        for batch in eval_data:
            a, b, c = eval_step(batch)
            loss_sum, correct, count = loss_sum + a, correct + b, count + tf.cast(c, tf.float32)
        return float(loss_sum / count), float(correct / count)

    # --- The loop: epochs of shuffled batches, checkpoint and TensorBoard as it goes.
    writers = _summary_writers(cfg.log_dir, is_chief)
    history: list[dict[str, float]] = []
    with _stop_on_signals() as stop:
        while step < total_steps:
            epoch, skip = divmod(step, steps_per_epoch)
            batches = strategy.experimental_distribute_dataset(
                data.train_batches(
                    train_source,
                    size=splits.train_size,
                    global_batch=cfg.batch_size,
                    seed=cfg.seed,
                    epoch=epoch,
                    skip_batches=skip,
                    augment=cfg.augment,
                    multi_worker=multi_worker,
                )
            )
            epoch_start, done, iterator = time.monotonic(), 0, iter(batches)
            loss_sum = correct = tf.constant(0.0)  # device-side sums: no sync per call
            while done < steps_per_epoch - skip:
                n = min(cfg.steps_per_call, steps_per_epoch - skip - done)
                losses, ok, loss = train_steps(iterator, tf.constant(n))
                previous, step, done = step, step + n, done + n
                loss_sum, correct = loss_sum + losses, correct + ok
                if stop.signum is not None:
                    manager.save(checkpoint_number=step)
                    log.warning(
                        "%s; checkpoint saved in %s; rerun the same command to resume",
                        f"stopped by {signal.Signals(stop.signum).name} at step {step}",
                        cfg.checkpoint_dir,
                    )
                    raise Preempted(stop.signum, step)
                if step // cfg.checkpoint_every > previous // cfg.checkpoint_every:
                    manager.save(checkpoint_number=step)
                if step // 50 > previous // 50:
                    with writers["train"].as_default(step=step):
                        tf.summary.scalar("batch_loss", loss)
            loss_sum, correct = float(loss_sum), float(correct)  # waits for the last step
            seconds = time.monotonic() - epoch_start
            val_loss, val_acc = evaluate()
            record = {
                "epoch": epoch + 1,
                "loss": loss_sum / max(done, 1),
                "accuracy": correct / max(done * cfg.batch_size, 1),
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "learning_rate": float(schedule(step)),
                "images_per_second": done * cfg.batch_size / seconds,
                "seconds": seconds,
            }
            history.append(record)
            manager.save(checkpoint_number=step)
            _write_epoch_summaries(writers, record, step)
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

    # --- Final metrics and export.
    val_loss, val_acc = (
        (history[-1]["val_loss"], history[-1]["val_accuracy"]) if history else evaluate()
    )
    trained_seconds = sum(r["seconds"] for r in history)
    summary = {
        "model_name": cfg.model_name,
        "config": cfg.to_dict(),
        "strategy": type(strategy).__name__,
        "replicas": replicas,
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "parameters": model.count_params(),
        "test_loss": val_loss,
        "test_accuracy": val_acc,
        "epochs_this_run": len(history),
        "history": history,
        "train_seconds_this_run": trained_seconds,
        "images_per_second": (
            len(history) * steps_per_epoch * cfg.batch_size / trained_seconds if history else None
        ),
        "wall_seconds": time.monotonic() - started,
        "versions": _versions(),
    }
    path = export.export_model(
        model, Path(cfg.export_dir) / cfg.model_name, summary=summary, is_chief=is_chief
    )
    if path is not None:
        log.info("exported %s (test accuracy %.2f%%)", path, 100 * val_acc)
        summary["export_path"] = str(path)
        _write_finished(cfg, summary)
    if not is_chief:
        shutil.rmtree(manager.directory, ignore_errors=True)  # the scratch copy
    return summary


def make_train_steps(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    strategy: tf.distribute.Strategy,
    global_batch: int,
) -> Callable:
    """`steps` optimizer steps from a distributed iterator in one compiled call.

    Returns (sum of the steps' mean losses, correct count, last step's loss). The loss is
    averaged over the *global* batch (`compute_average_loss`), so the all-reduced
    gradient is the same whatever the number of replicas. Several steps per call (like
    Keras' steps_per_execution) save a Python round trip per step, which dominates a
    model this small on a GPU.
    """

    def step_fn(images, labels):
        with tf.GradientTape() as tape:
            probs = model(images, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, probs)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss, _correct(labels, probs)

    @tf.function
    def train_steps(iterator, steps):
        loss_sum = correct_sum = last = tf.constant(0.0)
        for _ in tf.range(steps):
            loss, correct = strategy.run(step_fn, args=next(iterator))
            last = strategy.reduce("SUM", loss, axis=None)
            loss_sum += last
            correct_sum += strategy.reduce("SUM", correct, axis=None)
        return loss_sum, correct_sum, last

    return train_steps


def make_eval_step(model: keras.Model, strategy: tf.distribute.Strategy) -> Callable:
    """Sums of loss, correct and count on a distributed batch (partial batches fine)."""

    @tf.function(reduce_retracing=True)
    def eval_step(batch):
        def step_fn(images, labels):
            probs = model(images, training=False)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, probs)
            return tf.reduce_sum(per_example), _correct(labels, probs), tf.size(labels)

        sums = strategy.run(step_fn, args=batch)
        return [strategy.reduce("SUM", s, axis=None) for s in sums]

    return eval_step


def prepare_data(cfg: TrainConfig, *, is_chief: bool) -> None:
    """The chief imports/downloads; other workers wait for it (shared data volume)."""
    if is_chief:
        data.ensure_prepared(cfg.data_dir, cfg.idx_dir)
        return
    deadline = time.monotonic() + 1800
    while not data.is_prepared(cfg.data_dir):
        if time.monotonic() > deadline:
            raise UserError(f"MNIST never appeared in {cfg.data_dir}; is the chief running?")
        log.info("waiting for the chief to prepare MNIST in %s", cfg.data_dir)
        time.sleep(5)


def _correct(labels: tf.Tensor, probs: tf.Tensor) -> tf.Tensor:
    predicted = tf.argmax(probs, axis=-1, output_type=labels.dtype)
    return tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))


def _checkpoint_manager(
    ckpt: tf.train.Checkpoint, directory: Path, is_chief: bool, cluster: Any
) -> tf.train.CheckpointManager:
    # Every worker must take part in saving, but only the chief's files are kept
    # (the TF multi-worker convention); the others write to a scratch folder.
    if not is_chief:
        directory = directory.parent / f".scratch-{cluster.task_type}-{cluster.task_index}"
        shutil.rmtree(directory, ignore_errors=True)
    return tf.train.CheckpointManager(ckpt, str(directory), max_to_keep=3)


def _summary_writers(log_dir: Path, is_chief: bool) -> dict[str, Any]:
    if not is_chief:
        return {k: tf.summary.create_noop_writer() for k in ("train", "validation")}
    return {k: tf.summary.create_file_writer(str(log_dir / k)) for k in ("train", "validation")}


def _write_epoch_summaries(writers: dict[str, Any], r: dict[str, float], step: int) -> None:
    # TensorBoard puts train/ and validation/ runs with the same tag on one chart.
    with writers["train"].as_default(step=step):
        tf.summary.scalar("epoch_loss", r["loss"])
        tf.summary.scalar("epoch_accuracy", r["accuracy"])
        tf.summary.scalar("learning_rate", r["learning_rate"])
        tf.summary.scalar("images_per_second", r["images_per_second"])
    with writers["validation"].as_default(step=step):
        tf.summary.scalar("epoch_loss", r["val_loss"])
        tf.summary.scalar("epoch_accuracy", r["val_accuracy"])
    for w in writers.values():
        w.flush()


def _check_same_batch(cfg: TrainConfig) -> None:
    """The step counter maps to (epoch, batch) only for the batch size it counted."""
    try:
        started = json.loads((Path(cfg.job_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return  # a job dir from before run.json existed: nothing to compare
    if started.get("batch_size") != cfg.batch_size:
        raise UserError(
            f"{cfg.job_dir} holds a run with --batch-size {started.get('batch_size')}; resume it "
            f"with that batch size, or start a new run with another --job-dir."
        )


def _read_finished(cfg: TrainConfig) -> dict[str, Any] | None:
    path = Path(cfg.job_dir) / FINISHED_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_finished(cfg: TrainConfig, summary: dict[str, Any]) -> None:
    _write_json(
        Path(cfg.job_dir) / FINISHED_FILE,
        {"export_path": summary["export_path"], "summary": summary},
    )


def _write_json(path: Path, value: Any) -> None:
    """Whole or not at all: a crash mid-write must not leave a half file to trip over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tensorflow_datasets": tfds.__version__,
    }


class _StopFlag:
    signum: int | None = None


@contextmanager
def _stop_on_signals() -> Iterator[_StopFlag]:
    """Turn SIGTERM (preemption, `docker stop`, pod eviction) and Ctrl-C into a flag the
    loop checks after each step, so it can checkpoint before exiting."""
    flag = _StopFlag()

    def handler(signum: int, _frame: Any) -> None:
        flag.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
