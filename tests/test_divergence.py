"""A diverged run stops at once with one line and exit 4, keeps only good checkpoints,
never publishes, and resumes from the last good checkpoint with a lower learning rate.

--learning-rate 1e30 diverges deterministically: the first step has the warmup's rate 0
(finite), the second multiplies the weights by ~1e30 (still finite), and the third step's
loss overflows to NaN.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from digits import contract
from support import memory_splits, run_cli, small_config, small_run_args
from trainer import export, train
from trainer.errors import Diverged, ExitCode, RuntimeFailure, UserError
from trainer.model import build_model

# One step per call and a checkpoint after every step: the divergence lands between
# checkpoints that the test can name.
EVERY_STEP = ("--epochs", "1", "--steps-per-call", "1", "--checkpoint-every", "1")


def _checkpoints(job: Path) -> list[str]:
    state = tf.train.get_checkpoint_state(str(job / "checkpoints"))
    return [Path(p).name for p in state.all_model_checkpoint_paths] if state else []


def _all_finite(checkpoint: Path) -> bool:
    reader = tf.train.load_checkpoint(str(checkpoint))
    return all(
        np.isfinite(reader.get_tensor(name)).all()
        for name, dtype in reader.get_variable_to_dtype_map().items()
        if dtype.is_floating
    )


def test_a_diverged_run_stops_with_one_line_and_resumes_with_a_lower_rate(
    data_dir: Path, tmp_path: Path, caplog
) -> None:
    job = tmp_path / "job"
    diverging = small_run_args(data_dir, tmp_path, *EVERY_STEP)
    diverging[diverging.index("--learning-rate") + 1] = "1e30"
    result = run_cli(*diverging)
    line = error_line_of(result, ExitCode.DIVERGED)
    assert line == (
        "error: training diverged: the loss became NaN or infinite at step 3 (learning rate "
        "9.8e+29; peak --learning-rate 1e+30), and nothing after the last good checkpoint "
        f"was kept: {job}/checkpoints/ckpt-1. To resume from it, rerun with a lower "
        "--learning-rate (e.g. 1e+29; after a divergence, the one setting a rerun may "
        "change); or start over with --restart."
    )
    # ckpt-2 was written before step 3 diverged from its weights: retired, so that the
    # rerun resumes from ckpt-1. Every checkpoint left holds finite values only.
    assert _checkpoints(job) == ["ckpt-1"]
    assert all(_all_finite(job / "checkpoints" / name) for name in _checkpoints(job))
    assert not (job / "checkpoints" / "ckpt-2.index").exists()
    assert contract.versions(tmp_path / "export" / contract.MODEL_NAME) == []  # nothing published
    record = json.loads((job / "run.json").read_text())
    assert record["diverged"] == {"steps": [3, 3], "checkpoint": f"{job}/checkpoints/ckpt-1"}

    # After a divergence a rerun may change the learning rate, and nothing else (in-process:
    # how the CLI prints a UserError is test_resume.py's; this is about what is refused).
    other_seed = small_config(
        data_dir, tmp_path, epochs=1, steps_per_call=1, checkpoint_every=1, seed=7
    )
    with pytest.raises(UserError, match=r"--seed 42 \(now 7\)"):
        train.run(other_seed)

    # The resume in-process too (EVERY_STEP's settings, --learning-rate 0.003): the CLI's
    # side of a divergence is the run above; a second process start adds nothing.
    caplog.set_level("INFO")
    train.run(small_config(data_dir, tmp_path, epochs=1, steps_per_call=1, checkpoint_every=1))
    assert f"resuming from {job}/checkpoints/ckpt-1: epoch 1, step 1 of 12" in caplog.text
    assert "--learning-rate 1e+30 -> 0.003 after the divergence: from step 1 on" in caplog.text
    summary = json.loads((tmp_path / "export/mnist/1/training_summary.json").read_text())
    assert summary["test_accuracy"] > 0.9
    assert [(s["first_step"], s["last_step"], s["peak"]) for s in summary["segments"]] == [
        (0, 1, 1e30),
        (1, 12, 0.003),
    ]
    assert "diverged" not in json.loads((job / "run.json").read_text())


def error_line_of(result, code: int) -> str:
    """The one error line; TensorFlow may log warnings before it, never a traceback."""
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    return line


def test_the_loss_is_checked_every_call_not_only_at_checkpoints(tmp_path: Path) -> None:
    """No checkpoint for 1000 steps: the loss of each compiled call stops the run within
    a call or two of the divergence, and nothing at all was saved."""
    cfg = small_config(
        tmp_path / "no-data",
        tmp_path,
        epochs=2,
        learning_rate=1e30,
        steps_per_call=2,
        checkpoint_every=1000,
        early_evals=1,
    )
    with pytest.raises(Diverged) as e:
        train.run(cfg, splits=memory_splits())
    first, last = e.value.steps  # the call that held step 3, whose loss was NaN
    assert first <= 3 <= last <= first + 1 and e.value.checkpoint is None
    assert "no good checkpoint was written before it. To start again, rerun with" in str(e.value)
    assert _checkpoints(tmp_path / "job") == []
    assert not (tmp_path / "export").exists() or not any((tmp_path / "export").rglob("*.pb"))


def test_check_export_refuses_a_model_that_answers_nan(tmp_path: Path) -> None:
    """NaN > tolerance is False: a NaN model used to pass the comparison and publish."""
    model = build_model(seed=1)
    model.layers[-1].kernel.assign(tf.fill(model.layers[-1].kernel.shape, np.nan))
    with pytest.raises(RuntimeFailure, match="answers NaN or infinite probabilities"):
        export.export_model(model, tmp_path / "mnist")
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == []  # no version, no staging
