"""Resuming: SIGTERM mid-run checkpoints and exits 143, and rerunning resumes exactly; a
rerun is the run it says it is (the settings that shape the model must match, or it stops
with one line listing each difference); raising --epochs appends a learning-rate cycle,
the same whether the run had finished or not."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from digits import contract
from support import (
    CHILD_ENV,
    ROOT,
    exported_probabilities,
    make_digits,
    memory_splits,
    run_cli,
    small_config,
    small_run_args,
)
from trainer import data, outputs, train
from trainer.errors import Preempted, UserError

# Under pytest-xdist (make test), this module's tests share module-scoped fixtures:
# one worker runs them all, so each fixture is built once.
pytestmark = pytest.mark.xdist_group("test_resume")


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
        if "epoch 1/2  loss" in line:  # the epoch's end (not its mid-epoch evaluation)
            time.sleep(0.3)  # land mid-epoch 2, between checkpoints
            proc.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline, "".join(lines)
    lines.extend(proc.stderr)
    return proc.wait(timeout=120), "".join(lines)


def test_sigterm_checkpoints_then_rerun_resumes_to_the_same_model(
    data_dir: Path, tmp_path: Path
) -> None:
    # Only SIGTERM and epoch ends save; 5 steps a call so SIGTERM can land mid-epoch. Two
    # epochs: the signal lands 0.3 s into the second, seconds before its end (12 steps).
    extra = ["--epochs", "2", "--checkpoint-every", "1000", "--steps-per-call", "5"]
    interrupted = small_run_args(data_dir, tmp_path / "interrupted", *extra)
    code, log = _terminate_after_first_epoch(interrupted)

    assert code == 143, log
    assert "stopped by SIGTERM at step" in log and "rerun the same command to resume" in log
    assert "Traceback" not in log
    step = int(log.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert 12 < step < 24  # in the second epoch (12 steps each), not at an epoch boundary
    ckpt = tf.train.latest_checkpoint(str(tmp_path / "interrupted/job/checkpoints"))
    assert ckpt.endswith(f"ckpt-{step}")
    assert contract.versions(tmp_path / "interrupted/export/mnist") == []

    resumed = run_cli(*interrupted)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"step {step % 12} of 12" in resumed.stderr

    # The uninterrupted reference: the same settings, in-process (the CLI's part is above).
    straight = tmp_path / "straight"
    train.run(small_config(data_dir, straight, checkpoint_every=1000, steps_per_call=5))
    np.testing.assert_allclose(
        exported_probabilities(tmp_path / "interrupted/export/mnist/1"),
        exported_probabilities(tmp_path / "straight/export/mnist/1"),
        atol=1e-4,
    )


# --- A rerun is the run it says it is.


class StopAt:
    """A progress-event stream (outputs.events_to) that sends this process SIGTERM once
    the run reaches `step`: a preemption at a chosen step, in-process."""

    def __init__(self, step: int) -> None:
        self.step = step

    def write(self, line: str) -> None:
        event = outputs.parse_event(line)
        if event and event["event"] == "step" and event["step"] >= self.step:
            signal.raise_signal(signal.SIGTERM)

    def flush(self) -> None:
        pass


def _stopped_at(tmp: Path, step: int, **overrides) -> Path:
    """A run of small_config stopped by SIGTERM at `step`: its folder."""
    cfg = small_config(tmp / "no-data", tmp, steps_per_call=2, **overrides)
    with outputs.events_to(StopAt(step)), pytest.raises(Preempted):
        train.run(cfg, splits=memory_splits())
    return tmp


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three epochs of small_config stopped at step 14 (of 36); each test gets a copy."""
    return _stopped_at(tmp_path_factory.mktemp("interrupted"), 14, epochs=3)


def _other_splits(train_size: int = 384, seed: int = 5) -> data.Splits:
    images, labels = make_digits(train_size, seed)
    other = tf.data.Dataset.from_tensor_slices((images[..., None], labels.astype(np.int64)))
    return data.Splits(other, memory_splits().test, train_size=train_size, test_size=128)


@pytest.mark.parametrize(
    "change, splits, says",
    [
        ({"seed": 7}, None, "--seed 42 (now 7)"),
        ({"learning_rate": 0.01}, None, "--learning-rate 0.003 (now 0.01)"),
        ({"weight_decay": 0.0}, None, "--weight-decay 0.05 (now 0)"),
        ({"label_smoothing": 0.0}, None, "--label-smoothing 0.1 (now 0)"),
        ({"warmup_epochs": 0.5}, None, "--warmup-epochs 0.1 (now 0.5)"),
        ({"augment": False}, None, "--augment (now --no-augment)"),
        ({"ema": 0.0}, None, "--ema 0.999 (now 0)"),
        ({"mixed_precision": "mixed_bfloat16"}, None, "--mixed-precision off (now mixed_bfloat16)"),
        ({"epochs": 2}, None, "--epochs 3 (now 2: epochs can be raised, not lowered)"),
        (
            {},
            lambda: _other_splits(train_size=320, seed=1),
            "the data: 384 training images (now 320)",
        ),
        ({}, _other_splits, "the data: its first training images differ (another data set)"),
    ],
)
def test_a_rerun_with_other_settings_is_refused_before_anything_changes(
    interrupted: Path, tmp_path: Path, change: dict, splits, says: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    before = {p: p.stat().st_mtime_ns for p in (run / "job").rglob("*")}
    cfg = small_config(run / "no-data", run, **{"steps_per_call": 2, "epochs": 3, **change})
    with pytest.raises(UserError) as e:
        train.run(cfg, splits=splits() if splits else memory_splits())
    assert str(e.value) == (
        f"{run / 'job'} holds a run with other settings than this command's: {says}. Resume it "
        f"with its own settings, or start over with --restart (its files are kept in "
        f"{run / 'job'}/old-<time>)."
    )
    assert {p: p.stat().st_mtime_ns for p in (run / "job").rglob("*")} == before


def test_the_cli_lists_every_difference_in_one_line(data_dir: Path, interrupted: Path) -> None:
    """What a user sees: every difference at once, exit 2; how it runs may differ
    (--steps-per-call, --checkpoint-every and --data-dir here: a copy of the same data)."""
    args = small_run_args(data_dir, interrupted, "--epochs", "3", "--seed", "7", "--no-augment")
    result = run_cli(*args, "--learning-rate", "0.01", "--steps-per-call", "3")
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert (
        ": --learning-rate 0.003 (now 0.01); --augment (now --no-augment); --seed 42 (now 7)."
        in (line)
    )
    assert line.endswith(
        f"start over with --restart (its files are kept in {interrupted}/job/old-<time>)."
    )


def _final(tmp: Path, epochs: int) -> dict:
    cfg = small_config(tmp / "no-data", tmp, steps_per_call=2, epochs=epochs)
    return train.run(cfg, splits=memory_splits())


def test_more_epochs_append_a_cycle_whether_or_not_the_run_had_finished(
    tmp_path: Path, caplog
) -> None:
    """`--epochs 1` then `--epochs 2`: epoch 1 keeps its schedule (to 0 at its end), epoch
    2 gets a warm restart of its own. Raised mid-epoch or after the end, the same model;
    before, the cosine was stretched from wherever the run stood (a jump, and a schedule
    that depended on when --epochs changed). The finished run resumes, trains only the new
    epoch and exports the next version."""
    finished, midway = tmp_path / "finished", tmp_path / "midway"
    first = _final(finished, 1)
    _stopped_at(midway, 6, epochs=1)
    caplog.set_level("INFO")
    summaries = [_final(folder, 2) for folder in (finished, midway)]
    assert f"resuming from {finished / 'job/checkpoints'}/ckpt-12: epoch 2, step 0" in caplog.text
    assert [r["epoch"] for r in summaries[0]["history"]] == [2]  # only the new epoch ran
    assert [Path(first["export_path"]).name, Path(summaries[0]["export_path"]).name] == ["1", "2"]
    np.testing.assert_allclose(
        exported_probabilities(Path(summaries[0]["export_path"])),
        exported_probabilities(Path(summaries[1]["export_path"])),
        atol=1e-4,
    )
    for summary in summaries:
        assert [
            (s["first_step"], s["last_step"], s["cycle_start"], s["cycle_end"])
            for s in summary["segments"]
        ] == [(0, 12, 0, 12), (12, 24, 12, 24)]
        assert summary["history"][-1]["learning_rate"] == pytest.approx(0, abs=1e-9)  # its end
    record = json.loads((finished / "job/run.json").read_text())
    assert (record["epochs"], record["cycles"]) == (2, [1, 2])


def test_the_schedule_is_the_recipes_until_resuming_changes_it() -> None:
    """One cycle: exactly Keras' CosineDecay as trainer/model.py builds it. A second
    cycle warms up from 0 again; a new peak after a divergence scales the same shape."""
    import keras

    from trainer.schedule import Schedule, segments

    one = Schedule(segments([2], [(0, 0.003)], steps_per_epoch=12, warmup_epochs=0.5))
    recipe = keras.optimizers.schedules.CosineDecay(
        0.0, 24 - 6, warmup_target=0.003, warmup_steps=6
    )
    for step in (0, 1, 5, 6, 7, 15, 23, 24, 30):
        assert float(one(step)) == float(recipe(step)) == pytest.approx(one.at(step), abs=0)

    two = Schedule(segments([2, 3], [(0, 0.003), (30, 0.001)], 12, 0.5))
    assert [p.to_dict()["first_step"] for p in two.parts] == [0, 24, 30]
    assert float(two(23)) == float(recipe(23))  # the first cycle, unchanged
    assert float(two(24)) == 0.0  # the added cycle starts its own warmup
    assert float(two(30)) == pytest.approx(0.001)  # warmed up (6 steps) to the new peak
    assert float(two(36)) == pytest.approx(0.0, abs=1e-12)  # and decayed to 0 at its end
