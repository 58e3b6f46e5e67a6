"""The quality gate: better -> published, worse -> held back (exit 3, a non-numeric
folder, nothing for TF Serving), --force-publish -> published anyway."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tensorflow as tf

from digits import contract
from support import memory_splits, small_config
from trainer import cli, gate, train


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
    assert (verdict["max_regression_points"], verdict["min_accuracy_percent"]) == (0.2, None)


def test_a_worse_model_is_held_back_beside_the_versions(tmp_path: Path) -> None:
    model_dir = tmp_path / "export" / contract.MODEL_NAME
    _baseline(model_dir, 1, accuracy=0.9)
    with pytest.raises(gate.HeldBack) as held:
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
    assert cli.main(args) == gate.EXIT_HELD_BACK
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: not published: test accuracy")
    assert lines[-1].endswith("rerun the same command with --force-publish.")
