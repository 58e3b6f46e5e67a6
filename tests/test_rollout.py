"""python -m serving.rollout: labels move in the labels config, and only they do; an
existing label moves only to a version the server has AVAILABLE (server_core.cc)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from google.protobuf import text_format

from serving import rollout
from serving.protos.tensorflow_serving.config import model_server_config_pb2
from support import ROOT, free_ports, run_module
from tools.standin import ModelServer, StandInServer

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
    return run_module("serving.rollout", *args, timeout=120)


OFFLINE = "--offline"  # no server in these tests: it would read the labels when it starts


def parsed(path: Path):
    return text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())


def labels(path: Path) -> dict[str, int]:
    return dict(parsed(path).model_config_list.config[0].version_labels)


def test_promote_then_rollback_changes_only_the_label(config: Path, exports: Path) -> None:
    before = config.read_text()
    result = run(
        "promote", "--version", "2", "--config", str(config), "--export-dir", str(exports), OFFLINE
    )
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
    result = run("rollback", "--config", str(config), OFFLINE)
    assert result.returncode == 0, result.stderr
    assert config.read_text() == before  # byte for byte
    assert "nothing to roll back" in run("rollback", "--config", str(config), OFFLINE).stderr


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
        assert run("rollback", "--config", str(config), OFFLINE).returncode == 0
        assert labels(config)["stable"] == expected
    assert run("rollback", "--config", str(config), OFFLINE).returncode == 2


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


# --- The server's rule: an existing label moves only to an AVAILABLE version.


@pytest.fixture
def served(export_base: Path, tmp_path: Path):
    """A stand-in (REST and gRPC) with versions 1 and 2 AVAILABLE and 3 held in LOADING
    until `served.gate` is set."""
    base = tmp_path / "served" / "mnist"
    base.mkdir(parents=True)
    for v in (1, 2):
        (base / str(v)).symlink_to(export_base / str(v))
    gate = threading.Event()
    model = ModelServer(
        base, num_versions=3, loading_gate=lambda v: gate.wait(120) if v == 3 else None
    )
    with StandInServer(model, grpc_port=0) as server:
        (base / "3").symlink_to(export_base / "1")
        model.refresh()
        while model.states.get(3) is None:
            time.sleep(0.01)
        server.gate = gate
        yield server
        gate.set()


@pytest.fixture
def pinned(config: Path) -> Path:
    """The labels config with version 3 pinned too."""
    text = config.read_text().replace(
        "versions: 1 versions: 2", "versions: 1 versions: 2 versions: 3"
    )
    config.write_text(text)
    return config


def test_an_existing_label_moves_only_to_an_available_version(pinned, exports, served) -> None:
    before = pinned.read_bytes()
    common = ("--config", str(pinned), "--export-dir", str(exports))
    for server in (
        ("--url", served.url),
        ("--protocol", "grpc", "--grpc-target", served.grpc_target),
    ):
        result = run("canary", "--version", "3", *common, *server)
        assert result.returncode == 3, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith("error: version 3 of mnist is LOADING on ")
        assert "not AVAILABLE" in line and "existing label 'canary' from 2" in line
        assert pinned.read_bytes() == before and not rollout.history_path(pinned).exists()

    # --wait polls until the version is AVAILABLE, then moves the label.
    threading.Timer(1.5, served.gate.set).start()
    started = time.monotonic()
    result = run("canary", "--version", "3", *common, "--url", served.url, "--wait", "60")
    assert result.returncode == 0, result.stderr
    assert labels(pinned) == {"stable": 1, "canary": 3}
    assert 1 < time.monotonic() - started < 60
    result = run("promote", "--version", "3", *common, "--url", served.url)
    assert result.returncode == 0 and labels(pinned)["stable"] == 3
    result = run("rollback", "--config", str(pinned), "--url", served.url)
    assert result.returncode == 0 and labels(pinned)["stable"] == 1


def test_a_version_the_server_never_loaded_or_a_server_down(pinned, exports, served) -> None:
    (exports / "4").mkdir()  # exported, but not (yet) on the server: NOT_FOUND there
    pinned.write_text(pinned.read_text().replace("versions: 3", "versions: 3 versions: 4"))
    common = ("--config", str(pinned), "--export-dir", str(exports))
    result = run("promote", "--version", "4", *common, "--url", served.url)
    assert result.returncode == 3
    assert (
        f"error: version 4 of mnist is not loaded on {served.url}, not AVAILABLE" in result.stderr
    )
    down = f"http://127.0.0.1:{free_ports()[0]}"
    result = run("promote", "--version", "2", *common, "--url", down)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert f"cannot connect to {down}" in line and "--offline" in line
    # A new label needs no check (the flag exempts it), and --offline skips the check.
    text = pinned.read_text().replace('    version_labels { key: "canary" value: 2 }\n', "")
    pinned.write_text(text)
    assert run("canary", "--version", "3", *common, "--url", down).returncode == 0
    assert run("promote", "--version", "2", *common, "--url", down, OFFLINE).returncode == 0
    assert labels(pinned) == {"stable": 2, "canary": 3}
