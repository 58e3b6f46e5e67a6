"""The quality gate: a new version is published only if it is not worse than the one
serving now, like TFX's Evaluator "blessing", as one check on one command.

The baseline is the newest existing version: its test accuracy from its
training_summary.json, or, when that is missing, scored through its serving signature on
the same test split. The new model is held back when its accuracy is below the
baseline's by more than --max-regression points, or below --min-accuracy: a floor that
the first version, with nothing to compare with, must reach too (90 % by default: far
above chance, below any run that learned). A held-back model is kept in a clearly named,
non-numeric folder beside the versions (TF Serving ignores it) and the trainer exits with
ExitCode.HELD_BACK (trainer/errors.py); --force-publish publishes anyway.

Two jobs that share an export dir (each with its own job dir) take turns: the trainer
holds the model dir's publish lock (`publishing`) from reading the baseline until the
version is published, so the second compares against the first one's version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf

from digits.contract import versions
from trainer import outputs
from trainer.config import TrainConfig
from trainer.jobdir import OwnerLock
from trainer.outputs import SUMMARY_FILE

log = logging.getLogger(__name__)

PUBLISH_LOCK = ".publish.lock"  # in EXPORT_DIR/MODEL; TF Serving ignores non-numeric names


@contextmanager
def publishing(model_dir: Path) -> Iterator[None]:
    """Hold `model_dir`'s publish lock for the block (the gate's decision and the
    export), waiting, and saying so, while another trainer holds it. An flock: the kernel
    drops it when its holder dies, so a killed trainer never blocks the next one."""
    model_dir.mkdir(parents=True, exist_ok=True)
    lock = OwnerLock(model_dir / PUBLISH_LOCK)
    if lock.acquire() is False:
        log.warning(
            "waiting for another trainer (%s) to finish publishing to %s",
            lock.holder(),
            model_dir,
        )
        lock.acquire(wait=True)
    try:
        yield
    finally:
        lock.release()


@dataclass(frozen=True)
class Decision:
    publish: bool
    reason: str
    new_accuracy: float
    baseline_version: int | None
    baseline_accuracy: float | None
    baseline_source: str | None  # "training_summary.json" or "evaluated"
    max_regression_points: float
    min_accuracy_percent: float | None
    forced: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def baseline(model_dir: Path, test: tf.data.Dataset) -> tuple[int, float, str] | None:
    """(version, test accuracy, where the accuracy came from) of the newest version."""
    found = versions(model_dir)
    if not found:
        return None
    version_dir = model_dir / str(found[-1])
    try:
        accuracy = json.loads((version_dir / SUMMARY_FILE).read_text())["test_accuracy"]
        return found[-1], float(accuracy), SUMMARY_FILE
    except (OSError, ValueError, KeyError, TypeError):
        from trainer.report import evaluate  # only when there is no summary to read

        labels, probabilities, _ = evaluate.predict(version_dir, test)
        return found[-1], float((probabilities.argmax(-1) == labels).mean()), "evaluated"


def decide(
    cfg: TrainConfig, new_accuracy: float, model_dir: Path, test: tf.data.Dataset
) -> Decision:
    base = baseline(model_dir, test)
    min_accuracy = cfg.min_accuracy or None
    problems = []
    if min_accuracy is not None and 100 * new_accuracy < min_accuracy:
        problems.append(
            f"test accuracy {100 * new_accuracy:.2f}% is below --min-accuracy {min_accuracy:g}%"
            + (" (the floor for a first version too; lower it to publish less)" if not base else "")
        )
    if base is not None and 100 * (base[1] - new_accuracy) > cfg.max_regression:
        problems.append(
            f"test accuracy {100 * new_accuracy:.2f}% is {100 * (base[1] - new_accuracy):.2f} "
            f"points below version {base[0]}'s {100 * base[1]:.2f}% "
            f"(--max-regression {cfg.max_regression:g})"
        )
    if problems and cfg.force_publish:
        reason = "published with --force-publish although " + "; ".join(problems)
    elif problems:
        reason = "; ".join(problems)
    elif base is None:
        floor = f" at or above --min-accuracy {min_accuracy:g}%" if min_accuracy else ""
        reason = f"the first version: test accuracy {100 * new_accuracy:.2f}%{floor}"
    else:
        reason = (
            f"test accuracy {100 * new_accuracy:.2f}% against version {base[0]}'s "
            f"{100 * base[1]:.2f}% is within --max-regression {cfg.max_regression:g}"
        )
    decision = Decision(
        publish=not problems or cfg.force_publish,
        reason=reason,
        new_accuracy=new_accuracy,
        baseline_version=base[0] if base else None,
        baseline_accuracy=base[1] if base else None,
        baseline_source=base[2] if base else None,
        max_regression_points=cfg.max_regression,
        min_accuracy_percent=min_accuracy,
        forced=bool(problems) and cfg.force_publish,
    )
    (log.info if decision.publish else log.warning)("quality gate: %s", decision.reason)
    outputs.emit("export", phase="gate")
    return decision
