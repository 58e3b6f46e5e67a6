"""One training run, top to bottom: strategy -> data -> model -> resume -> epochs -> export.

The pieces live in modules named for what they own: `strategy` (which tf.distribute
strategy, and why), `data` (TFDS and tf.data), `model` (the CNN), `jobdir`
(checkpoints, run.json, finished.json, its lock, a killed run's leftovers), `loop`
(compiled steps and one epoch), `summaries` (TensorBoard), `preemption` (SIGTERM ->
checkpoint -> exit 143) and `export` (the atomic, versioned SavedModel).
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
import tensorflow_datasets as tfds

from trainer import data, devices, evaluate, export, gate, jobdir, loop, preemption, recipe
from trainer import strategy as strategies
from trainer.config import TrainConfig
from trainer.model import float32_copy, summary_text
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
    is_chief = cluster is None or cluster.is_chief

    # --- Strategy: chosen before TensorFlow initialises the devices.
    strategy = strategy or strategies.choose(
        cfg.strategy, cluster, cfg.cpu_devices, cfg.require_gpu, cfg.peer_timeout_seconds
    )
    strategies.check_global_batch(strategy.num_replicas_in_sync, cfg.batch_size)

    # --- Data: the TFDS mnist dataset, imported from idx files if need be.
    if splits is None:
        data.prepare(cfg.data_dir, cfg.idx_dir, is_chief=is_chief)
        splits = data.load(cfg.data_dir)
    steps_per_epoch = data.steps_per_epoch(splits.train_size, cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch

    # --- Model, optimizer and weight average, created under the strategy (mirrored).
    settings = devices.choose(cfg, len(tf.config.list_physical_devices("GPU")))
    log.info("device settings: %s", settings.describe())
    with strategy.scope():
        model, optimizer, average = recipe.build(cfg, settings, steps_per_epoch)
    log.info("model:\n%s", summary_text(model))

    # --- The job dir, locked until the run ends (a second run on it stops at once): a
    # killed run's temporary files go; --restart moves an old one aside first.
    with jobdir.JobDir(cfg, cluster) as job:
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
            return {**finished["summary"], "already_finished": True}
        if latest:
            epoch, skip = divmod(step, steps_per_epoch)
            log.info(f"resuming from {latest}: epoch {epoch + 1}, step {skip} of {steps_per_epoch}")

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
            average=average,
            started=started,
        )
        history: list[dict[str, float]] = []
        epochs.start(step)
        with preemption.stop_on_signals() as stop:
            while step < total_steps:
                record, step = epochs.epoch(step, stop)
                history.append(record)

        # --- Export: the next version, verified and gated before it is renamed into place.
        val_loss, val_acc = (
            (history[-1]["val_loss"], history[-1]["val_accuracy"]) if history else epochs.evaluate()
        )
        summary = _summary(
            cfg, strategy, model, history, steps_per_epoch, val_loss, val_acc, started
        )
        summary.update(
            evaluations=epochs.evaluations,
            device_settings=asdict(settings),
            export_key=job.export_key(step),
        )
        model_dir = Path(cfg.export_dir) / cfg.model_name
        verdict = gate.decide(cfg, val_acc, model_dir, splits.test) if is_chief else None
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
                raise gate.HeldBack(verdict, path)
            log.info("exported %s (test accuracy %.2f%%)", path, 100 * val_acc)
            summary["export_path"] = str(path)
            job.mark_finished(summary)
        return summary


def _summary(
    cfg: TrainConfig,
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    history: list[dict[str, float]],
    steps_per_epoch: int,
    val_loss: float,
    val_acc: float,
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
        "test_loss": val_loss,
        "test_accuracy": val_acc,
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
