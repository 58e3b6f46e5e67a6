"""The job directory: a run's checkpoints, TensorBoard logs and bookkeeping files.

    JOB_DIR/run.json        the config the run started with (checked when resuming)
    JOB_DIR/finished.json   written after the export: a rerun says "finished" and stops
    JOB_DIR/checkpoints/    tf.train.CheckpointManager's files (the last 3)
    JOB_DIR/logs/           TensorBoard event files (trainer/summaries.py)

Only the chief writes here. In a multi-worker job every worker must take part in
saving, so the others save to a scratch folder beside the checkpoints and delete it at
the end (the TensorFlow multi-worker convention).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import tensorflow as tf

from trainer.config import TrainConfig
from trainer.errors import UserError
from trainer.strategy import Cluster

log = logging.getLogger(__name__)

FINISHED_FILE = "finished.json"
RUN_FILE = "run.json"  # the config the job dir was started with
KEEP_CHECKPOINTS = 3


class JobDir:
    def __init__(self, cfg: TrainConfig, cluster: Cluster | None = None):
        self.cfg, self.path = cfg, Path(cfg.job_dir)
        self.is_chief = cluster is None or cluster.is_chief
        self.checkpoint_dir = cfg.checkpoint_dir
        if not self.is_chief:
            self.checkpoint_dir = (
                self.checkpoint_dir.parent / f".scratch-{cluster.task_type}-{cluster.task_index}"
            )
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    def checkpoints(self, ckpt: tf.train.Checkpoint) -> tf.train.CheckpointManager:
        return tf.train.CheckpointManager(
            ckpt, str(self.checkpoint_dir), max_to_keep=KEEP_CHECKPOINTS
        )

    def resume(self, ckpt: tf.train.Checkpoint) -> str | None:
        """Restore the newest checkpoint into `ckpt` and return its path; on a fresh job
        dir, record the starting config instead and return None."""
        latest = tf.train.latest_checkpoint(str(self.cfg.checkpoint_dir))
        if latest:
            self._check_same_batch()
            ckpt.restore(latest).assert_existing_objects_matched()
        elif self.is_chief:
            write_json(self.path / RUN_FILE, self.cfg.to_dict())
        return latest

    def finished(self) -> dict[str, Any] | None:
        """What finished.json recorded (export path and summary), if the run finished."""
        try:
            return json.loads((self.path / FINISHED_FILE).read_text())
        except (OSError, ValueError):
            return None

    def mark_finished(self, summary: dict[str, Any]) -> None:
        write_json(
            self.path / FINISHED_FILE, {"export_path": summary["export_path"], "summary": summary}
        )

    def close(self) -> None:
        """A non-chief's scratch checkpoints served only to take part in saving."""
        if not self.is_chief:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    def _check_same_batch(self) -> None:
        """The step counter maps to (epoch, batch) only for the batch size it counted."""
        try:
            started = json.loads((self.path / RUN_FILE).read_text())
        except (OSError, ValueError):
            return  # a job dir from before run.json existed: nothing to compare
        if started.get("batch_size") != self.cfg.batch_size:
            raise UserError(
                f"{self.cfg.job_dir} holds a run with --batch-size {started.get('batch_size')}; "
                f"resume it with that batch size, or start a new run with another --job-dir."
            )


def write_json(path: Path, value: Any) -> None:
    """Whole or not at all: a crash mid-write must not leave a half file to trip over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)
