"""Strategy choice from hardware and TF_CONFIG, and the mirrored path on two logical CPUs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from support import (
    exported_probabilities,
    free_ports,
    memory_splits,
    run_cli,
    small_config,
    small_run_args,
)
from trainer import train
from trainer.errors import UserError
from trainer.strategy import decide, gpu_request, parse_tf_config


def tf_config(workers: int, index: int = 0, chief: bool = False, role: str = "worker") -> str:
    cluster = {"worker": [f"127.0.0.1:{2220 + i}" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["127.0.0.1:2219"]
    return json.dumps({"cluster": cluster, "task": {"type": role, "index": index}})


@pytest.mark.parametrize(
    "requested, tf_cfg, gpus, kind, reason",
    [
        ("auto", None, 0, "default", "no GPU found"),
        ("auto", None, 1, "one_device", "one GPU"),
        ("auto", None, 4, "mirrored", "4 GPUs"),
        ("auto", tf_config(1), 2, "mirrored", "2 GPUs"),  # a one-worker cluster is one machine
        ("auto", tf_config(3, index=1), 0, "multi_worker", "3 workers"),
        ("auto", tf_config(1, chief=True, role="chief"), 8, "multi_worker", "2 workers"),
        ("mirrored", None, 0, "mirrored", "requested"),
        ("one_device", None, 0, "one_device", "requested"),
        ("multi_worker", tf_config(2), 0, "multi_worker", "requested"),
    ],
)
def test_decide(requested, tf_cfg, gpus, kind, reason) -> None:
    decision = decide(requested, parse_tf_config(tf_cfg), gpus)
    assert decision.kind == kind and reason in decision.reason


def test_decide_refuses_contradictions() -> None:
    with pytest.raises(UserError, match="needs TF_CONFIG naming at least two workers"):
        decide("multi_worker", None, 0)
    with pytest.raises(UserError, match="use --strategy multi_worker"):
        decide("mirrored", parse_tf_config(tf_config(2)), 2)


def test_chief_convention() -> None:
    assert parse_tf_config(tf_config(2, index=0)).is_chief
    assert not parse_tf_config(tf_config(2, index=1)).is_chief
    assert not parse_tf_config(tf_config(2, index=0, chief=True)).is_chief
    assert parse_tf_config(tf_config(2, chief=True, role="chief")).is_chief


@pytest.mark.parametrize(
    "raw, message",
    [
        ("[1, 2]", 'no "cluster" object'),
        (
            '{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}',
            "non-empty list",
        ),
        (
            '{"cluster": {"worker": ["nohost"]}, "task": {"type": "worker", "index": 0}}',
            'is not "host:port"',
        ),
        ('{"cluster": {"worker": ["a:1"]}}', 'no "task"'),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
            "not a training role",
        ),
        ('{"cluster": {"boss": ["a:1"]}, "task": {"type": "boss", "index": 0}}', "unknown"),
    ],
)
def test_malformed_tf_config(raw: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_tf_config(raw)


def test_mirrored_on_two_logical_cpus_matches_one_device(tmp_path: Path, caplog) -> None:
    """Two replicas, each with half of every global batch, must train the same model as
    one device with the whole batch: proof that gradients are all-reduced correctly.
    In-process, with the strategies injected (conftest.py splits the CPU in two)."""
    import tensorflow as tf

    caplog.set_level("INFO")
    strategies = {
        "mirrored": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
        "one_device": tf.distribute.OneDeviceStrategy("/cpu:0"),
        "default": tf.distribute.get_strategy(),
    }
    summaries = {}
    for name, strategy in strategies.items():
        cfg = small_config(tmp_path / "no-data", tmp_path / name, epochs=1)
        summaries[name] = train.run(cfg, strategy=strategy, splits=memory_splits())
    assert "replicas: 2, global batch 32 (16 per replica)" in caplog.text
    assert summaries["mirrored"]["strategy"] == "MirroredStrategy"
    assert [summaries[n]["replicas"] for n in strategies] == [2, 1, 1]
    # Different reduction orders: equal to float32 round-off accumulated over 12 steps.
    default = exported_probabilities(tmp_path / "default/export/mnist/1")
    for name in ("mirrored", "one_device"):
        np.testing.assert_allclose(
            exported_probabilities(tmp_path / name / "export/mnist/1"), default, atol=2e-3
        )


def test_batch_must_split_over_replicas(data_dir: Path, tmp_path: Path) -> None:
    result = run_cli(
        *small_run_args(
            data_dir, tmp_path, "--strategy", "mirrored", "--cpu-devices", "2", "--batch-size", "33"
        )
    )
    assert result.returncode == 2
    assert "strategy: MirroredStrategy (requested with --strategy)" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --batch-size 33 does not split evenly over 2 replicas; use a multiple of 2."
    )
    assert not (tmp_path / "job").exists() and not (tmp_path / "export").exists()


def test_two_loopback_workers_train_in_lockstep_and_only_the_chief_writes(
    data_dir: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from support import CHILD_ENV, ROOT

    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    args = small_run_args(data_dir, tmp_path, "--epochs", "2")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "trainer", *args],
            cwd=ROOT,
            env={
                **CHILD_ENV,
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": i}}
                ),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    for log in logs:
        assert "strategy: CollectiveAllReduceStrategy (TF_CONFIG names 2 workers)" in log
        assert "replicas: 2, global batch 32 (16 per replica)" in log

    def epochs(log: str) -> list[list[float]]:  # the numbers of each epoch line, before lr
        return [
            [float(x) for x in re.findall(r"\d+\.?\d*", line.split("INFO ")[1].split("  lr")[0])]
            for line in log.splitlines()
            if " INFO epoch " in line and "  loss " in line  # the epoch-end lines
        ]

    # Lockstep: both workers log the same all-reduced metrics (to rounding: the
    # workers run the same kernels, but nothing here needs bit-equality).
    assert len(epochs(logs[0])) == len(epochs(logs[1])) == 2
    np.testing.assert_allclose(epochs(logs[0]), epochs(logs[1]), atol=0.011)
    assert "exported" in logs[0] and "exported" not in logs[1]
    assert sorted(p.name for p in (tmp_path / "export/mnist").iterdir()) == ["1"]
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == [
        "checkpoints",
        "finished.json",
        "logs",
        "run.json",
    ]  # the worker's scratch copy is gone


@pytest.mark.parametrize(
    "args, env, reason",
    [
        (["--strategy", "one_device"], {}, "--strategy one_device"),
        ([], {"TRAINER_REQUIRE_GPU": "1"}, "--require-gpu"),
    ],
)
def test_a_gpu_asked_for_but_not_seen_fails_fast(tmp_path: Path, args, env, reason) -> None:
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: the job would train on it")
    result = run_cli(*args, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [x for x in result.stderr.strip().splitlines() if x.startswith("error: ")]
    assert f"a GPU was asked for ({reason}" in line and "TensorFlow sees none" in line
    assert "nvidia-smi" in line and "GPUS=0" in line
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # stopped before writing anything


def test_gpu_request_rules() -> None:
    assert gpu_request("auto", 1, require_gpu=False) is None
    assert gpu_request("mirrored", 2, require_gpu=False) is None  # the CPU test setup
    assert gpu_request("mirrored", 1, require_gpu=False) == "--strategy mirrored"
    assert gpu_request("default", 1, require_gpu=True).startswith("--require-gpu")
