"""python -m serving.rollout: labels move in the labels config, and only they do."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving import rollout
from support import ROOT, run_module

CONFIG = ROOT / "serving" / "models.labels.config"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "models.labels.config"
    path.write_bytes(CONFIG.read_bytes())
    return path


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    base = tmp_path / "export" / "mnist"
    for name in ("1", "2", "3", ".tmp-4"):
        (base / name).mkdir(parents=True)
    return base


def run(*args: str) -> subprocess.CompletedProcess:
    return run_module("serving.rollout", *args, timeout=60)


def parsed(path: Path):
    return text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())


def labels(path: Path) -> dict[str, int]:
    return dict(parsed(path).model_config_list.config[0].version_labels)


def test_promote_then_rollback_changes_only_the_label(config: Path, exports: Path) -> None:
    before = config.read_text()
    result = run("promote", "--version", "2", "--config", str(config), "--export-dir", str(exports))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"stable: 1 -> 2 in {config}"
    after = config.read_text()
    changed = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert changed == [
        (
            '    version_labels { key: "stable" value: 1 }',
            '    version_labels { key: "stable" value: 2 }',
        )
    ]
    assert labels(config) == {"stable": 2, "canary": 2}
    expected = parsed(CONFIG)
    expected.model_config_list.config[0].version_labels["stable"] = 2
    assert parsed(config) == expected  # every other field as it was

    history = [json.loads(line) for line in rollout.history_path(config).read_text().splitlines()]
    assert [(h["label"], h["from"], h["to"], h["action"]) for h in history] == [
        ("stable", 1, 2, "promote")
    ]
    result = run("rollback", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert config.read_text() == before  # byte for byte
    assert "nothing to roll back" in run("rollback", "--config", str(config)).stderr


def test_rollback_walks_back_through_promotions(config: Path, exports: Path) -> None:
    text = config.read_text().replace(
        "versions: 1 versions: 2", "versions: 1 versions: 2 versions: 3"
    )
    config.write_text(text)
    common = dict(model="mnist", export_dir=exports, action="promote", require_label=True)
    rollout.change(config, "stable", 2, **common)
    rollout.change(config, "stable", 3, **common)
    assert "stable -> 3; rollback -> 2" in rollout.show(config, "mnist")
    for expected in (2, 1):
        assert run("rollback", "--config", str(config)).returncode == 0
        assert labels(config)["stable"] == expected
    assert run("rollback", "--config", str(config)).returncode == 2


def test_canary_sets_or_adds_the_label(config: Path, exports: Path) -> None:
    text = config.read_text().replace('    version_labels { key: "canary" value: 2 }\n', "")
    config.write_text(text)
    assert labels(config) == {"stable": 1}
    args = ("--config", str(config), "--export-dir", str(exports))
    result = run("canary", "--version", "2", *args)
    assert result.returncode == 0, result.stderr
    assert labels(config) == {"stable": 1, "canary": 2}
    assert config.read_text() == CONFIG.read_text()  # the line as the original has it
    again = run("canary", "--version", "2", *args)
    assert "already points at version 2" in again.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("promote", "--version", "7"), "version 7 is not in {exports} (available: 1, 2, 3)"),
        (("promote", "--version", "4"), "version 4 is not in"),  # .tmp-4 is no version
        (
            ("promote", "--version", "3"),
            "not among models.labels.config's specific versions [1, 2]",
        ),
        (("promote", "--version", "1", "--label", "gold"), "has no 'gold' label"),
        (("promote", "--version", "1", "--label", "no-dash"), "letters, digits and _ only"),
        (("promote", "--version", "1", "--model", "other"), "no model 'other'"),
    ],
)
def test_user_mistakes_exit_2_and_change_nothing(config, exports, args, message) -> None:
    before = config.read_bytes()
    result = run(*args, "--config", str(config), "--export-dir", str(exports))
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and message.format(exports=exports) in line
    assert config.read_bytes() == before
    assert not rollout.history_path(config).exists()


def test_malformed_or_missing_files_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.config"
    bad.write_text("model_config_list { config { name: 'mnist' nonsense: 1 } }")
    for path, message in ((bad, "not a valid ModelServerConfig"), (tmp_path / "no", "cannot read")):
        result = run("show", "--config", str(path))
        assert result.returncode == 2 and message in result.stderr
        assert len(result.stderr.splitlines()) == 1


def test_show_and_the_make_targets(config: Path) -> None:
    assert run("show", "--config", str(config)).stdout.splitlines() == [
        f"{config}: model mnist, version policy specific [1, 2]",
        "  canary -> 2",
        "  stable -> 1",
    ]
    out = subprocess.run(
        ["make", "-s", "-n", "promote", "VERSION=2", f"LABELS_CONFIG={config}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f'serving.rollout promote --version "2" --config "{config}"' in out
    missing = subprocess.run(["make", "-s", "promote"], cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode != 0 and "set VERSION=N" in missing.stderr
