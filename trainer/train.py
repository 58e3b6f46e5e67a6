"""One training run, top to bottom: strategy -> data -> job dir -> model -> resume ->
epochs -> export.

The pieces live in modules named for what they own: `strategy` (which tf.distribute
strategy and device settings, and why), `data` (TFDS and tf.data), `model` (the CNN
and its optimizer: the recipe), `jobdir` (checkpoints, run.json, finished.json, its
lock, a killed run's leftovers, what a rerun may change), `schedule` (the learning rate
across resumes), `loop` (compiled steps and one epoch, stopped when it diverges), `summaries`
(TensorBoard), `preemption` (SIGTERM -> checkpoint -> stop), `gate` (publish or hold
back), `export` (the atomic, versioned SavedModel) and `report` (its evaluation report).
"""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
import tensorflow_datasets as tfds

from trainer import data, export, gate, jobdir, loop, outputs, preemption, schedule
from trainer import strategy as strategies
from trainer.config import TrainConfig
from trainer.errors import Diverged, HeldBack
from trainer.model import build_recipe, float32_copy, summary_text
from trainer.report import evaluate
from trainer.summaries import Summaries

log = logging.getLogger(__name__)


def run(
    cfg: TrainConfig,
    *,
    cluster: strategies.Cluster | None = None,
    strategy: tf.distribute.Strategy | None = None,
    splits: data.Splits | None = None,
) -> dict[str, Any]:
    """Train (or resume) and export; returns the training summary.

    `cluster` is what TF_CONFIG says (the CLI parses it; None: a single process).
    `strategy` and `splits` are injection seams for tests; by default the strategy comes
    from `--strategy`, the cluster and the GPUs, and the splits from the TFDS data dir.
    """
    started = time.monotonic()
    requested = cfg.strategy

    # --- A multi-worker job whose training is complete (its chief was killed during the
    # export): the export is the chief's alone, and its peers are gone. No cluster.
    if cluster is not None and cluster.num_workers > 1 and jobdir.training_complete(cfg):
        if not cluster.is_chief:
            log.info(
                "training in %s is complete; the chief exports it: nothing left for this worker",
                cfg.job_dir,
            )
            return {"already_finished": True}
        log.warning(
            "training in %s is complete (%d epochs): finishing the export alone, without the "
            "other workers",
            cfg.job_dir,
            cfg.epochs,
        )
        cluster, requested = None, "auto" if cfg.strategy == "multi_worker" else cfg.strategy
    is_chief = cluster is None or cluster.is_chief

    # --- Strategy: chosen before TensorFlow initialises the devices.
    strategy = strategy or strategies.choose(
        requested, cluster, cfg.cpu_devices, cfg.require_gpu, cfg.peer_timeout_seconds
    )
    strategies.check_global_batch(strategy.num_replicas_in_sync, cfg.batch_size)

    # --- Data: the TFDS mnist dataset, imported from idx files if need be.
    if splits is None:
        data.prepare(cfg.data_dir, cfg.idx_dir, is_chief=is_chief)
        splits = data.load(cfg.data_dir)
    steps_per_epoch = data.steps_per_epoch(splits.train_size, cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    outputs.emit(
        "run",
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        train_images=splits.train_size,
    )

    settings = strategies.device_settings(cfg, len(tf.config.list_physical_devices("GPU")))
    log.info("device settings: %s", settings.describe())

    # --- The job dir, locked until the run ends (a second run on it stops at once): a
    # killed run's temporary files go; --restart moves an old one's aside first. A rerun
    # must have the settings of the run it resumes (jobdir.JobDir.plan says which differ).
    with jobdir.JobDir(cfg, cluster) as job:
        segments = job.plan(settings.dtype_policy, _data_identity(splits), steps_per_epoch)
        lr_schedule = schedule.Schedule(segments)

        # --- Model, optimizer and weight average, created under the strategy (mirrored).
        with strategy.scope():
            model, optimizer, average = build_recipe(
                cfg, steps_per_epoch, total_steps, settings.dtype_policy
            )
            if len(segments) > 1:  # more epochs, or another learning rate after a divergence
                optimizer.learning_rate = lr_schedule
        log.info("model:\n%s", summary_text(model))

        # --- Resume from the job dir's last checkpoint, if any.
        tracked = {"average": average} if average is not None else {}
        ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, **tracked)
        latest = job.resume(ckpt)
        step, finished = int(optimizer.iterations.numpy()), job.finished()
        if step >= total_steps and finished:
            log.info(
                f"run in {cfg.job_dir} is already finished ({step // steps_per_epoch}/{cfg.epochs} "
                f"epochs, exported to {finished['export_path']}); raise --epochs or use a new "
                "--job-dir to train again."
            )
            outputs.emit("finished_already", step=step)
            return {**finished["summary"], "already_finished": True}
        if latest:
            epoch, skip = divmod(step, steps_per_epoch)
            log.info(f"resuming from {latest}: epoch {epoch + 1}, step {skip} of {steps_per_epoch}")
            outputs.emit("resumed", step=step, checkpoint=latest)

        # --- Epochs: train, evaluate, checkpoint and write TensorBoard as they go.
        epochs = loop.Loop(
            cfg=cfg,
            strategy=strategy,
            splits=splits,
            steps_per_epoch=steps_per_epoch,
            model=model,
            optimizer=optimizer,
            checkpoints=job.checkpoints(ckpt),
            summaries=Summaries(cfg.log_dir, is_chief),
            settings=settings,
            schedule=lr_schedule,
            average=average,
            started=started,
        )
        history: list[dict[str, float]] = []
        epochs.start(step)
        try:
            with preemption.stop_on_signals() as stop:
                while step < total_steps:
                    record, step = epochs.epoch(step, stop)
                    history.append(record)
        except Diverged as e:  # keep only the good checkpoints; a rerun may lower the rate
            if e.suspect:
                job.retire(e.suspect)
            job.mark_diverged(e.steps, e.checkpoint)
            raise
        job.mark_trained(step)  # a restarted chief finishes the export alone

        # --- Export: the next version, verified and gated before it is renamed into place.
        test_loss, test_acc = (
            (history[-1]["test_loss"], history[-1]["test_accuracy"])
            if history
            else epochs.evaluate()
        )
        summary = _summary(
            cfg, strategy, model, history, steps_per_epoch, test_loss, test_acc, started
        )
        summary.update(
            evaluations=epochs.evaluations,
            device_settings=asdict(settings),
            export_key=job.export_key(step),
            segments=[s.to_dict() for s in segments],  # the learning-rate schedule as run
        )
        model_dir = Path(cfg.export_dir) / cfg.model_name
        # The baseline is read and the version published under one lock: two jobs that
        # share the export dir take turns, and never both compare against one version.
        with gate.publishing(model_dir) if is_chief else nullcontext():
            verdict = gate.decide(cfg, test_acc, model_dir, splits.test) if is_chief else None
            summary["quality_gate"] = verdict.to_dict() if verdict else None
            publish = verdict is None or verdict.publish
            with epochs.averaged():  # export the averaged weights, in float32
                served = float32_copy(model) if settings.dtype_policy else model
                path = export.export_model(
                    served,
                    model_dir,
                    summary=summary,
                    is_chief=is_chief,
                    publish=publish,
                    key=summary["export_key"],
                )
        if path is not None:
            summary["report"] = evaluate.evaluate(path, splits.test)["report"]  # eval/ beside it
            if not publish:
                raise HeldBack(verdict, path)
            log.info("exported %s (test accuracy %.2f%%)", path, 100 * test_acc)
            outputs.emit("export", phase="published")
            summary["export_path"] = str(path)
            job.mark_finished(summary)
        return summary


def _data_identity(splits: data.Splits) -> dict[str, Any]:
    """What tells one training set from another, wherever it lies (--data-dir may move):
    its size, and the MD5 of its first 1,000 images and labels in stored order."""
    images, labels = next(iter(splits.train.take(1000).batch(1000)))
    digest = hashlib.md5(images.numpy().tobytes())
    digest.update(labels.numpy().tobytes())
    return {"train_images": splits.train_size, "data_fingerprint": digest.hexdigest()}


def _summary(
    cfg: TrainConfig,
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    history: list[dict[str, float]],
    steps_per_epoch: int,
    test_loss: float,
    test_acc: float,
    started: float,
) -> dict[str, Any]:
    """training_summary.json: the config, final and per-epoch metrics, speed, versions."""
    trained_seconds = sum(r["seconds"] for r in history)
    trained_images = len(history) * steps_per_epoch * cfg.batch_size
    return {
        "model_name": cfg.model_name,
        "config": cfg.to_dict(),
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "parameters": model.count_params(),
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "epochs_this_run": len(history),
        "history": history,
        "train_seconds_this_run": trained_seconds,
        "images_per_second": trained_images / trained_seconds if history else None,
        "wall_seconds": time.monotonic() - started,
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tensorflow_datasets": tfds.__version__,
        },
    }
