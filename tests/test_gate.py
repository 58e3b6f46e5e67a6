"""The quality gate: better -> published, worse -> held back (exit 3, a non-numeric
folder, nothing for TF Serving), --force-publish -> published anyway; a first version
must reach the --min-accuracy floor; two jobs sharing an export dir take turns."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf

from digits import contract
from support import CHILD_ENV, ROOT, memory_splits, small_config, small_run_args
from trainer import cli, gate, train
from trainer.errors import ExitCode, HeldBack

# Under pytest-xdist (make test), this module's tests share module-scoped fixtures:
# one worker runs them all, so each fixture is built once.
pytestmark = pytest.mark.xdist_group("test_gate")


def _baseline(model_dir: Path, version: int, accuracy: float | None) -> None:
    """A version folder whose training_summary.json states `accuracy` (None: no summary)."""
    folder = model_dir / str(version)
    folder.mkdir(parents=True)
    if accuracy is not None:
        (folder / "training_summary.json").write_text(json.dumps({"test_accuracy": accuracy}))


def _run(tmp: Path, **overrides):
    cfg = small_config(tmp / "no-data", tmp, epochs=1, **overrides)
    return train.run(cfg, strategy=tf.distribute.get_strategy(), splits=memory_splits())


def test_a_better_model_is_published_and_the_decision_recorded(tmp_path: Path) -> None:
    model_dir = tmp_path / "export" / contract.MODEL_NAME
    _baseline(model_dir, 1, accuracy=0.5)
    summary = _run(tmp_path)
    assert Path(summary["export_path"]) == model_dir / "2"
    verdict = json.loads((model_dir / "2" / "training_summary.json").read_text())["quality_gate"]
    assert verdict["publish"] is True and verdict["forced"] is False
    assert (verdict["baseline_version"], verdict["baseline_accuracy"]) == (1, 0.5)
    assert verdict["baseline_source"] == "training_summary.json"
    assert verdict["new_accuracy"] == summary["test_accuracy"]
    assert (verdict["max_regression_points"], verdict["min_accuracy_percent"]) == (0.2, 90.0)


def test_a_worse_model_is_held_back_beside_the_versions(tmp_path: Path) -> None:
    model_dir = tmp_path / "export" / contract.MODEL_NAME
    _baseline(model_dir, 1, accuracy=0.9)
    with pytest.raises(HeldBack) as held:
        _run(tmp_path, learning_rate=1e-7)  # learns nothing: near chance
    assert contract.versions(model_dir) == [1]  # nothing new for TF Serving
    (folder,) = [p for p in model_dir.iterdir() if p.name.startswith("held-back-")]
    assert held.value.path == folder and (folder / "saved_model.pb").is_file()
    assert (folder / "eval" / "report.md").is_file()  # to see why
    verdict = json.loads((folder / "training_summary.json").read_text())["quality_gate"]
    assert verdict["publish"] is False and verdict["baseline_accuracy"] == 0.9
    message = str(held.value)
    assert "points below version 1's 90.00% (--max-regression 0.2)" in message
    assert "--force-publish" in message and str(folder) in message
    assert not (tmp_path / "job" / "finished.json").exists()  # a rerun tries again


def test_force_publish_publishes_and_says_so(tmp_path: Path) -> None:
    model_dir = tmp_path / "export" / contract.MODEL_NAME
    _baseline(model_dir, 1, accuracy=0.9)
    summary = _run(tmp_path, learning_rate=1e-7, force_publish=True)
    assert Path(summary["export_path"]) == model_dir / "2"
    assert summary["quality_gate"]["forced"] is True
    assert summary["quality_gate"]["reason"].startswith("published with --force-publish")


def test_min_accuracy_and_a_baseline_without_summary(tmp_path: Path) -> None:
    """No training_summary.json: the baseline is scored through its signature."""
    first = _run(tmp_path / "a")
    (Path(first["export_path"]) / "training_summary.json").unlink()
    model_dir = tmp_path / "b" / "export" / contract.MODEL_NAME
    model_dir.mkdir(parents=True)
    (model_dir / "1").symlink_to(Path(first["export_path"]), target_is_directory=True)
    cfg = small_config(tmp_path, tmp_path, min_accuracy=100.0)
    verdict = gate.decide(cfg, first["test_accuracy"], model_dir, memory_splits().test)
    assert (verdict.baseline_version, verdict.baseline_source) == (1, "evaluated")
    assert verdict.baseline_accuracy == pytest.approx(first["test_accuracy"], abs=1e-9)
    assert verdict.min_accuracy_percent == 100.0
    assert verdict.publish is (first["test_accuracy"] == 1.0)  # only a perfect score passes
    if not verdict.publish:
        assert "is below --min-accuracy 100%" in verdict.reason


def test_the_cli_exits_3_with_one_line(data_dir: Path, tmp_path: Path, capsys) -> None:
    _baseline(tmp_path / "export" / contract.MODEL_NAME, 1, accuracy=0.95)
    args = ["--data-dir", str(data_dir), "--job-dir", str(tmp_path / "job")]
    args += ["--export-dir", str(tmp_path / "export"), "--epochs", "1", "--batch-size", "32"]
    args += ["--learning-rate", "1e-7", "--strategy", "default"]
    assert cli.main(args) == ExitCode.HELD_BACK == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: not published: test accuracy")
    assert lines[-1].endswith("rerun the same command with --force-publish.")


# --- The first version's floor.


def test_a_first_version_that_learned_nothing_is_held_back(tmp_path: Path) -> None:
    """Finite loss, near-chance accuracy, no version to compare with: before, the first
    version always published; the --min-accuracy floor (90 %) holds it back."""
    model_dir = tmp_path / "export" / contract.MODEL_NAME
    with pytest.raises(HeldBack) as held:
        _run(tmp_path, learning_rate=1e-7)  # learns nothing
    assert contract.versions(model_dir) == []
    assert "is below --min-accuracy 90% (the floor for a first version too; lower it to " in (
        str(held.value)
    )
    summary = _run(tmp_path, learning_rate=1e-7, min_accuracy=0.0)  # lowered: published
    assert Path(summary["export_path"]) == model_dir / "1"
    assert summary["quality_gate"]["reason"].startswith("the first version: test accuracy")


# --- Two jobs, one export dir: the baseline is read and the version published under one
# lock, so the second job compares against the first one's version.

LAUNCH = (
    "import sys\n"
    "from trainer import cli, outputs\n"
    "outputs.print_events()\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


@pytest.fixture(scope="module")
def trained_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A job dir whose one epoch is trained and checkpointed but not exported: a rerun
    goes straight to the gate."""
    tmp = tmp_path_factory.mktemp("trained")
    train.run(small_config(tmp / "no-data", tmp, epochs=1), splits=memory_splits())
    (tmp / "job" / "finished.json").unlink()
    return tmp / "job"


def _start(tmp: Path, name: str, args: list[str]) -> tuple[subprocess.Popen, Path, Path]:
    out, err = tmp / f"{name}.out", tmp / f"{name}.err"
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *args],
        cwd=ROOT,
        env=CHILD_ENV,
        stdout=out.open("w"),
        stderr=err.open("w"),
    )
    return proc, out, err


def _wait_for(proc: subprocess.Popen, path: Path, text: str, timeout: float = 300) -> bool:
    """True once `text` is in the file; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if proc.poll() is not None:
            return text in path.read_text()
        assert time.monotonic() < deadline, path.read_text()[-3000:]
        time.sleep(0.1)
    return True


def test_two_jobs_sharing_an_export_dir_take_turns(
    data_dir: Path, tmp_path: Path, trained_job: Path
) -> None:
    """Job A is frozen (SIGSTOP) right after its gate decided, inside the lock; job B
    must wait for it, not decide against the same (empty) export dir and publish too."""
    export_dir = tmp_path / "export"
    procs = []
    try:
        runs = {}
        for name in ("a", "b"):
            shutil.copytree(trained_job, tmp_path / name)
            record = json.loads((tmp_path / name / "run.json").read_text())
            record["run_id"] = name  # two runs: their exports are told apart by run id
            (tmp_path / name / "run.json").write_text(json.dumps(record))
            args = small_run_args(data_dir, tmp_path, "--epochs", "1")
            args[args.index("--job-dir") + 1] = str(tmp_path / name)
            runs[name] = args
        a, a_out, a_err = _start(tmp_path, "a", runs["a"])
        procs.append(a)
        assert _wait_for(a, a_out, '"phase": "gate"'), a_err.read_text()[-3000:]
        a.send_signal(signal.SIGSTOP)  # holds the lock, decided, not yet published
        b, _, b_err = _start(tmp_path, "b", runs["b"])
        procs.append(b)
        waited = _wait_for(b, b_err, "waiting for another trainer")
        a.send_signal(signal.SIGCONT)
        assert waited, "job B did not wait for job A: " + b_err.read_text()[-3000:]
        assert a.wait(timeout=300) == 0, a_err.read_text()[-3000:]
        assert b.wait(timeout=300) == 0, b_err.read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=60)
    model_dir = export_dir / contract.MODEL_NAME
    assert contract.versions(model_dir) == [1, 2]
    first, second = (
        json.loads((model_dir / v / "training_summary.json").read_text()) for v in ("1", "2")
    )
    assert first["quality_gate"]["baseline_version"] is None  # A: the first version
    assert second["quality_gate"]["baseline_version"] == 1  # B: compared against A's
    assert "(pid " in b_err.read_text().split("waiting for another trainer")[1].splitlines()[0]
