"""Preemption: SIGTERM mid-run checkpoints and exits 143; rerunning resumes exactly."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from digits import contract
from support import CHILD_ENV, ROOT, exported_probabilities, run_cli, small_run_args


def _terminate_after_first_epoch(args: list[str]) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", *args],
        cwd=ROOT,
        env=CHILD_ENV,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines = []
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        lines.append(line)
        if "epoch 1/" in line:
            time.sleep(0.3)  # land mid-epoch 2, between checkpoints
            proc.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline, "".join(lines)
    lines.extend(proc.stderr)
    return proc.wait(timeout=120), "".join(lines)


def test_sigterm_checkpoints_then_rerun_resumes_to_the_same_model(
    data_dir: Path, tmp_path: Path
) -> None:
    # Only SIGTERM and epoch ends save; 5 steps a call so SIGTERM can land mid-epoch.
    extra = ["--epochs", "6", "--checkpoint-every", "1000", "--steps-per-call", "5"]
    interrupted = small_run_args(data_dir, tmp_path / "interrupted", *extra)
    code, log = _terminate_after_first_epoch(interrupted)

    assert code == 143, log
    assert "stopped by SIGTERM at step" in log and "rerun the same command to resume" in log
    assert "Traceback" not in log
    step = int(log.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert step > 12  # past the first epoch (12 steps), and not at an epoch boundary
    ckpt = tf.train.latest_checkpoint(str(tmp_path / "interrupted/job/checkpoints"))
    assert ckpt.endswith(f"ckpt-{step}")
    assert contract.versions(tmp_path / "interrupted/export/mnist") == []

    resumed = run_cli(*interrupted)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"step {step % 12} of 12" in resumed.stderr

    straight = run_cli(*small_run_args(data_dir, tmp_path / "straight", *extra))
    assert straight.returncode == 0, straight.stderr[-3000:]
    np.testing.assert_allclose(
        exported_probabilities(tmp_path / "interrupted/export/mnist/1"),
        exported_probabilities(tmp_path / "straight/export/mnist/1"),
        atol=1e-4,
    )
