"""`make train` picks the runtime a user expects, and make variables reach the trainer as data.

A stub `docker` describes the engine (answers or not, NVIDIA runtime or not) and a stub
Python stands in for `.venv/bin/python`, recording the arguments and TRAINER_* variables it
was started with; no TensorFlow runs here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from support import ROOT

STUB_DOCKER = r"""#!/usr/bin/env bash
case "$1" in
info)
	[[ "$STUB_ENGINE" == up ]] || { echo "Cannot connect to the Docker daemon" >&2; exit 1; }
	[[ "$*" == *Runtimes* ]] && echo "$STUB_RUNTIMES"
	exit 0 ;;
*) echo "stub docker: $*" >> "$STUB_DOCKER_LOG" ;;
esac
"""

STUB_PYTHON = r"""#!/usr/bin/env python3
import json, os, sys
env = {k: v for k, v in os.environ.items() if k.startswith(("TRAINER_", "CUDA_VISIBLE"))}
with open(os.environ["STUB_PYTHON_LOG"], "w") as f:
    json.dump({"argv": sys.argv[1:], "env": env}, f)
"""

_INHERITED = re.compile(
    r"^(MAKEFLAGS|MAKELEVEL|MFLAGS|MAKEOVERRIDES|TRAINER_.*|GPUS|RUNTIME|DOCKER.*)$"
)


@pytest.fixture
def stubs(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("docker", STUB_DOCKER), ("python", STUB_PYTHON)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    stamp = tmp_path / "stamp"
    stamp.touch()
    env = {k: v for k, v in os.environ.items() if not _INHERITED.match(k)}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        STUB_ENGINE="up",
        STUB_RUNTIMES="io.containerd.runc.v2 runc",
        STUB_DOCKER_LOG=str(tmp_path / "docker.log"),
        STUB_PYTHON_LOG=str(tmp_path / "python.json"),
        # An engine socket left by `make engine` must not redirect the stub.
        DOCKER_HOST="unix:///nonexistent.sock",
    )

    class Stubs:
        python_log = tmp_path / "python.json"
        docker_log = tmp_path / "docker.log"

        def make(self, *args: str, **stub_env: str) -> subprocess.CompletedProcess:
            # PY and STAMP point at the stub: `make train` runs it instead of .venv's Python.
            return subprocess.run(
                ["make", "-s", *args, f"PY={bin_dir / 'python'}", f"STAMP={stamp}"],
                cwd=ROOT,
                env={**env, **stub_env},
                capture_output=True,
                text=True,
                timeout=60,
            )

        def trainer_call(self) -> dict:
            return json.loads(self.python_log.read_text())

    return Stubs()


def test_auto_trains_locally_when_the_engine_offers_no_gpu(stubs) -> None:
    result = stubs.make("train")
    assert result.returncode == 0, result.stderr
    assert "running in .venv: the Docker engine offers no NVIDIA GPU" in result.stderr
    assert stubs.trainer_call()["argv"] == ["-m", "trainer", "train"]
    assert not stubs.docker_log.exists()  # no image build, no compose run


def test_auto_trains_locally_when_no_engine_answers(stubs) -> None:
    result = stubs.make("train", STUB_ENGINE="down")
    assert result.returncode == 0, result.stderr
    assert "running in .venv: no Docker engine answers" in result.stderr
    assert stubs.python_log.exists()


def test_auto_uses_the_container_when_the_engine_offers_nvidia_gpus(stubs) -> None:
    result = subprocess.run(
        ["bash", ROOT / "docker" / "preflight.sh", "runtime", "auto"],
        env={
            **os.environ,
            "PATH": f"{stubs.python_log.parent / 'bin'}:{os.environ['PATH']}",
            "STUB_ENGINE": "up",
            "STUB_RUNTIMES": "runc nvidia",
            "STUB_DOCKER_LOG": str(stubs.docker_log),
            "PREFLIGHT_FOR": "train",
            "DOCKER": "docker",
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "docker"
    assert result.stderr.strip() == (
        "make train: running in the GPU container: the Docker engine offers NVIDIA GPUs "
        "(nvidia runtime); RUNTIME=local uses .venv"
    )


def test_an_unknown_runtime_is_one_line_and_exit_2(stubs) -> None:
    result = stubs.make("train", "RUNTIME=podman")
    assert result.returncode == 2
    assert "make train: RUNTIME=podman is not a runtime; use RUNTIME=auto" in result.stderr
    assert not stubs.python_log.exists()


def test_make_variables_reach_the_trainer_as_data(stubs, tmp_path) -> None:
    marker = tmp_path / "pwned"
    result = stubs.make(
        "train",
        "RUNTIME=local",
        f"EPOCHS=1; touch {marker}",
        "JOB_DIR=runs/a b",
        "LEARNING_RATE=`touch x`'\"",
    )
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    env = stubs.trainer_call()["env"]
    assert env["TRAINER_EPOCHS"] == f"1; touch {marker}"
    assert env["TRAINER_JOB_DIR"] == "runs/a b"
    assert env["TRAINER_LEARNING_RATE"] == "`touch x`'\""
    assert not (ROOT / "x").exists()


@pytest.mark.parametrize(
    ("gpus", "visible"), [("0", "-1"), ("2", "0,1"), ("", None), ("all", None)]
)
def test_gpus_selects_the_visible_devices(stubs, gpus, visible) -> None:
    result = stubs.make("train", "RUNTIME=local", f"GPUS={gpus}")
    assert result.returncode == 0, result.stderr
    assert stubs.trainer_call()["env"].get("CUDA_VISIBLE_DEVICES") == visible


@pytest.mark.parametrize("gpus", ["1; touch pwned", "-1", "02", "two"])
def test_a_bad_gpu_count_is_one_line_and_exit_2(stubs, gpus) -> None:
    result = stubs.make("train", "RUNTIME=local", f"GPUS={gpus}")
    assert result.returncode == 2
    assert f"make train: GPUS={gpus} is not a GPU count" in result.stderr
    assert not stubs.python_log.exists()
    assert not (ROOT / "pwned").exists()
