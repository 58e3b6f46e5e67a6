"""TF_CONFIG built from a Kubernetes Indexed Job's JOB_COMPLETION_INDEX, --workers and
--worker-hosts: the same cluster a TFJob describes, validated as strictly, and two
loopback worker processes that train from it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support import CHILD_ENV, ROOT, error_line, run_cli, small_run_args
from trainer.errors import UserError
from trainer.strategy import cluster_tf_config, indexed_job_tf_config, parse_tf_config

PATTERN = "digit-serve-train-{index}.digit-serve-workers:2222"


def test_the_index_count_and_pattern_make_the_tfjob_cluster() -> None:
    workers = [f"digit-serve-train-{i}.digit-serve-workers:2222" for i in range(3)]
    for index in range(3):
        raw = indexed_job_tf_config(3, PATTERN, index)
        # What the Training Operator would put in TF_CONFIG for the same pods.
        assert json.loads(raw) == {
            "cluster": {"worker": workers},
            "task": {"type": "worker", "index": index},
        }
        cluster = parse_tf_config(raw)
        assert (cluster.num_workers, cluster.task_type, cluster.task_index) == (3, "worker", index)
        assert cluster.is_chief == (index == 0)


def test_a_format_spec_and_a_single_worker_are_allowed() -> None:
    raw = indexed_job_tf_config(2, "w{index:02d}:2222", 1)
    assert json.loads(raw)["cluster"]["worker"] == ["w00:2222", "w01:2222"]
    # One worker is one machine: no placeholder needed, and no multi-worker strategy.
    assert parse_tf_config(indexed_job_tf_config(1, "solo:2222", 0)).num_workers == 1


def test_nothing_set_is_a_single_process() -> None:
    assert indexed_job_tf_config(0, "", None) is None
    assert cluster_tf_config(None, 0, "", None) is None
    assert cluster_tf_config("  ", 0, "", None) is None


@pytest.mark.parametrize(
    "workers, hosts, index, message",
    [
        (0, "", 0, "TRAINER_WORKERS (--workers) and TRAINER_WORKER_HOSTS (--worker-hosts) are"),
        (2, "", 0, "TRAINER_WORKER_HOSTS (--worker-hosts) is not set"),
        (0, PATTERN, 0, "TRAINER_WORKERS (--workers) is not set"),
        (2, PATTERN, None, "JOB_COMPLETION_INDEX (--worker-index) is not set"),
        (-2, PATTERN, 0, "must be a worker count of 1 or more, got -2"),
        (2, PATTERN, 2, "JOB_COMPLETION_INDEX (--worker-index) 2 is out of range for "),
        (2, PATTERN, -1, "-1 is out of range for TRAINER_WORKERS=2 (0 to 1)"),
        (2, "worker:2222", 0, "gives every worker the same address: put {index} in it"),
        (2, "w-{index}-{job}:2222", 0, "may hold only the placeholder {index}"),
        (2, "w-{index:2222", 0, "may hold only the placeholder {index}"),
        (2, "w-{index}", 1, "gives worker 0 the address 'w-0', which is not \"host:port\""),
        (2, "w-{index}:0", 1, "the address 'w-0:0', which is not"),
        (2, "w-{index}:65536", 1, "the address 'w-0:65536', which is not"),
        (7, "w-{index}:6553{index}", 0, "gives worker 6 the address 'w-6:65536'"),
        (2, "w {index}:2222", 0, "the address 'w 0:2222'"),
    ],
)
def test_bad_values_name_the_variable_and_the_fix(workers, hosts, index, message) -> None:
    with pytest.raises(UserError) as caught:
        indexed_job_tf_config(workers, hosts, index)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_tf_config_wins_over_the_index_alone_but_not_over_a_second_description() -> None:
    given = json.dumps(
        {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}
    )
    # Kubernetes sets JOB_COMPLETION_INDEX in any Indexed Job: alone, it is no conflict.
    assert cluster_tf_config(given, 0, "", 0) == given
    for workers, hosts in ((2, ""), (0, PATTERN)):
        with pytest.raises(UserError, match="both describe the cluster"):
            cluster_tf_config(given, workers, hosts, 0)


def test_tf_config_ports_are_checked_too() -> None:
    raw = json.dumps({"cluster": {"worker": ["a:99999"]}, "task": {"type": "worker", "index": 0}})
    with pytest.raises(UserError, match="with a port 1-65535"):
        parse_tf_config(raw)


@pytest.mark.parametrize(
    "env, message",
    [
        (
            {"JOB_COMPLETION_INDEX": "2", "TRAINER_WORKERS": "2", "TRAINER_WORKER_HOSTS": PATTERN},
            "error: JOB_COMPLETION_INDEX (--worker-index) 2 is out of range",
        ),
        (
            {"JOB_COMPLETION_INDEX": "one", "TRAINER_WORKERS": "2"},
            "error: JOB_COMPLETION_INDEX='one' is not a valid int",
        ),
        (
            {"JOB_COMPLETION_INDEX": "0", "TRAINER_WORKERS": "2"},
            "error: TRAINER_WORKER_HOSTS (--worker-hosts) is not set",
        ),
        (
            {"JOB_COMPLETION_INDEX": "0", "TRAINER_WORKERS": "2", "TRAINER_WORKER_HOSTS": "w:x"},
            "error: TRAINER_WORKER_HOSTS (--worker-hosts) 'w:x' gives every worker the same",
        ),
    ],
)
def test_the_cli_refuses_a_bad_indexed_job_in_one_line(tmp_path: Path, env, message) -> None:
    result = run_cli("train", env=env, cwd=tmp_path, timeout=120)
    assert error_line(result, 2).startswith(message)
    assert list(tmp_path.iterdir()) == []  # stopped before writing anything


# --- Two loopback worker processes, configured as an Indexed Job's pods would be.


def _port_pair() -> tuple[str, list[int]]:
    """A pattern whose port carries the index (4<index>NNN), so two workers on one host
    get distinct ports, and those ports: both bindable now."""
    for suffix in range(123, 1000, 37):
        ports = [int(f"4{i}{suffix:03d}") for i in range(2)]
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return f"127.0.0.1:4{{index}}{suffix:03d}", ports
    pytest.skip("no free port pair 4<index>NNN on this machine")


def test_two_loopback_workers_train_from_the_index(data_dir: Path, tmp_path: Path) -> None:
    pattern, ports = _port_pair()
    args = small_run_args(data_dir, tmp_path, "--epochs", "1", "--peer-timeout-seconds", "60")
    procs, logs = [], []
    try:
        for index in range(2):
            log = tmp_path / f"worker{index}.log"
            env = {
                **CHILD_ENV,
                "JOB_COMPLETION_INDEX": str(index),
                "TRAINER_WORKERS": "2",
                "TRAINER_WORKER_HOSTS": pattern,
            }
            with log.open("w") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "trainer", *args],
                        cwd=ROOT,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=out,
                    )
                )
            logs.append(log)
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=60)
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts[0][-2000:] + texts[1][-2000:]
    addresses = f"127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]}"
    for index, text in enumerate(texts):
        assert f"worker {index} of 2 workers ({addresses})" in text
        assert "strategy: CollectiveAllReduceStrategy (TF_CONFIG names 2 workers)" in text
        assert "replicas: 2, global batch 32 (16 per replica)" in text
    # Worker 0 is the chief: it alone exports, once.
    assert "exported" in texts[0] and "exported" not in texts[1]
    assert sorted(p.name for p in (tmp_path / "export/mnist").iterdir()) == ["1"]
