"""What people see: metrics behind the pictures, progress on a terminal and in logs, the
profiler trace, and the final summary."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from support import CHILD_ENV, ROOT, memory_splits, run_cli, small_config, small_run_args
from trainer.report import metrics

CONTROL = re.compile(r"\r|\x1b\[")  # carriage returns and ANSI escape sequences


def test_confusion_matrix_and_per_class_scores() -> None:
    labels = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 2, 2])
    cm = metrics.confusion_matrix(labels, predicted)
    assert cm[0].tolist()[:3] == [1, 1, 0] and cm[1].tolist()[:3] == [0, 2, 1]
    assert cm.sum() == 6 and cm[3:].sum() == 0
    scores = metrics.per_class(cm)
    assert scores["1"]["precision"] == pytest.approx(2 / 3)
    assert scores["1"]["recall"] == pytest.approx(2 / 3)
    assert scores["2"]["precision"] == pytest.approx(1 / 2) and scores["2"]["recall"] == 1
    assert scores["2"]["f1"] == pytest.approx(2 / 3)
    assert scores["5"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_worst_misclassified_are_the_most_confident_mistakes() -> None:
    probabilities = np.full((4, 10), 0.01)
    for i, (k, p) in enumerate([(3, 0.91), (5, 0.6), (1, 0.99), (2, 0.8)]):
        probabilities[i, k] = p
    labels = np.array([3, 0, 0, 0])  # the first is right; the others wrong
    assert metrics.worst_misclassified(labels, probabilities, 2).tolist() == [2, 3]


def test_calibration_error_of_a_known_case() -> None:
    # Half the examples at confidence 0.9 (all right), half at 0.6 (half right):
    # ECE = 0.5 * |1.0 - 0.9| + 0.5 * |0.5 - 0.6| = 0.1.
    probabilities = np.full((4, 10), 0.0)
    probabilities[:2, 0] = 0.9
    probabilities[2:, 0] = 0.6
    labels = np.array([0, 0, 0, 1])
    cal = metrics.calibration(labels, probabilities)
    assert cal.ece == pytest.approx(0.1)
    assert cal.count.sum() == 4 and np.isnan(cal.accuracy[0])


def test_log_output_has_no_control_characters_and_a_final_summary(
    data_dir: Path, tmp_path: Path
) -> None:
    """Container logs, CI and Kubernetes get plain lines: a heartbeat during the epoch,
    the epoch line, and a final summary that says where everything went."""
    extra = ["--epochs", "1", "--heartbeat-seconds", "0.001", "--profile-steps", "2,6"]
    result = run_cli(*small_run_args(data_dir, tmp_path, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert not CONTROL.search(output), repr(CONTROL.search(output))
    assert re.search(
        r"INFO epoch 1/1  step \d+/12  loss [\d.]+  acc [\d.]+%  \d+ img/s  ETA", output
    )
    assert re.search(r"done: test accuracy [\d.]+% after 1 epoch, \d+ s wall time", output)
    for what in ("model:", "report:", "logs:", "checkpoints:", "TensorBoard: make tensorboard"):
        assert what in output
    assert str(tmp_path / "export" / "mnist" / "1" / "eval" / "report.md") in output
    traces = list((tmp_path / "job/logs/train/plugins/profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0  # --profile-steps 2,6


def test_a_terminal_gets_a_live_progress_bar(data_dir: Path, tmp_path: Path) -> None:
    """Under a pseudo-terminal, Keras' Progbar redraws one line per epoch in place."""
    leader, follower = pty.openpty()
    args = small_run_args(data_dir, tmp_path, "--epochs", "1", "--steps-per-call", "4")
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", *args],
        cwd=ROOT,
        env=CHILD_ENV,
        stdout=follower,
        stderr=subprocess.DEVNULL,
    )
    os.close(follower)
    chunks, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert "epoch 1/1" in screen
    assert "\r" in screen and "12/12" in screen  # redrawn in place, to the last step
    assert re.search(r"loss: [\d.]+ - acc: [\d.]+ - img/s: \d+", screen), screen[-800:]


# --- Evaluations: when they happen, and that TensorBoard shows every one at its step.


def _scalars(log_dir: Path, tag: str) -> dict[int, float]:
    """{step: value} of a scalar written with tf.summary.scalar, read back from the events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    if tag not in acc.Tags()["tensors"]:
        return {}
    return {e.step: float(make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


def test_every_evaluation_reaches_tensorboard_at_its_step(data_dir: Path, tmp_path: Path) -> None:
    """Three evaluations in the first epoch (12 steps), two --eval-at points in the
    second and its end: all six are in training_summary.json and in TensorBoard at their
    steps, with the same values; the per-epoch scalars the HParams dashboard reads stay
    one per epoch."""
    import tensorflow as tf

    from trainer import train

    cfg = small_config(data_dir, tmp_path, early_evals=3, early_eval_epochs=1, eval_at="1.25,1.5")
    summary = train.run(cfg, strategy=tf.distribute.get_strategy(), splits=memory_splits())
    evaluations = {e["step"]: e for e in summary["evaluations"]}
    assert sorted(evaluations) == [4, 8, 12, 15, 18, 24]
    assert [evaluations[s]["epoch"] for s in (15, 18)] == [1.25, 1.5]
    validation = cfg.log_dir / "validation"
    for tag, key in (
        ("evaluation_accuracy_vs_iterations", "test_accuracy"),
        ("evaluation_loss_vs_iterations", "test_loss"),
    ):
        written = _scalars(validation, tag)
        assert sorted(written) == sorted(evaluations), tag
        for step, value in written.items():  # float32 in the event file
            assert value == pytest.approx(evaluations[step][key], rel=1e-6), (tag, step)
    assert sorted(_scalars(validation, "epoch_accuracy")) == [12, 24]


@pytest.mark.parametrize(
    "evals, epochs, at, epoch, skip, expected",
    [
        (2, 1, "1.25", 0, 0, [6]),  # the default: the middle of the first epoch,
        (2, 1, "1.25", 1, 0, [3]),  # a quarter into the second,
        (2, 1, "1.25", 2, 0, []),  # later epochs: their end only
        (2, 1, "", 1, 0, []),  # no --eval-at points
        (4, 2, "", 1, 0, [3, 6, 9]),  # the second of two early epochs
        (4, 2, "", 0, 6, [9]),  # resumed mid-epoch: only what is still ahead
        (2, 1, "1.25", 1, 3, []),  # resumed at the point itself: it was done before
        (4, 2, "1.25,0.5", 1, 0, [3, 6, 9]),  # points shared with --early-evals: once each
        (2, 0, "0.1,2,3.5", 2, 0, []),  # an epoch's end (2, 3) evaluates anyway; 3.5 is later
        (2, 0, "0.1,2,3.5", 3, 0, [6]),
        (1, 3, "none", 0, 0, []),  # one per epoch: the end
        (3, 0, "", 0, 0, []),  # no early epochs
        (50, 1, "", 0, 0, list(range(1, 12))),  # more than steps: after each step, once
    ],
)
def test_early_evaluation_steps(
    evals: int, epochs: int, at: str, epoch: int, skip: int, expected: list[int]
) -> None:
    from types import SimpleNamespace

    from trainer import config
    from trainer.loop import Loop

    cfg = config.TrainConfig(early_evals=evals, early_eval_epochs=epochs, eval_at=at)
    fake = SimpleNamespace(cfg=cfg, steps_per_epoch=12)  # the points depend on nothing else
    assert Loop._early_evals(fake, epoch, skip) == expected
