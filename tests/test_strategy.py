"""Strategy choice from hardware and TF_CONFIG, and the mirrored path on two logical CPUs."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from digits import contract
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

# Under pytest-xdist (make test), this module's tests share module-scoped fixtures:
# one worker runs them all, so each fixture is built once.
pytestmark = pytest.mark.xdist_group("test_strategy")


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
    In-process, with the strategies injected (conftest.py splits the CPU in two). The
    default strategy (one device, no scope) trains in nearly every other test."""
    import tensorflow as tf

    caplog.set_level("INFO")
    strategies = {
        "mirrored": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
        "one_device": tf.distribute.OneDeviceStrategy("/cpu:0"),
    }
    summaries = {}
    for name, strategy in strategies.items():
        cfg = small_config(tmp_path / "no-data", tmp_path / name, epochs=1)
        summaries[name] = train.run(cfg, strategy=strategy, splits=memory_splits())
    assert "replicas: 2, global batch 32 (16 per replica)" in caplog.text
    assert summaries["mirrored"]["strategy"] == "MirroredStrategy"
    assert summaries["one_device"]["strategy"] == "OneDeviceStrategy"
    assert [summaries[n]["replicas"] for n in strategies] == [2, 1]
    # Different reduction orders: equal to float32 round-off accumulated over 12 steps.
    np.testing.assert_allclose(
        exported_probabilities(tmp_path / "mirrored/export/mnist/1"),
        exported_probabilities(tmp_path / "one_device/export/mnist/1"),
        atol=2e-3,
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


# --- Two loopback workers (MultiWorkerMirroredStrategy), each its own process.

# Two epochs of 12 steps, 2 steps per compiled call (so a SIGTERM lands mid-epoch),
# checkpoints only at epoch ends and on a stop.
PAIR_ARGS = ("--epochs", "2", "--steps-per-call", "2", "--checkpoint-every", "1000")


# `python -m trainer` with its progress events printed (as benchmarks/soak.py runs it).
LAUNCH = (
    "import sys\n"
    "from trainer import cli, outputs\n"
    "outputs.print_events()\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


class Workers:
    """Trainer processes of one loopback cluster, output to files; all are killed when
    the test ends, however it ends."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.procs, self.logs = tmp, [], []

    def start(self, args: list[str], ports: list[int], indices=(0, 1), tag: str = "run"):
        """Start the workers `indices`; their progress events (outputs.EVENT_PREFIX
        lines) go to TAG-workerI.events, their log to TAG-workerI.log."""
        import subprocess
        import sys

        from support import CHILD_ENV, ROOT

        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        procs = []
        for i in indices:
            log = self.tmp / f"{tag}-worker{i}.log"
            tf_config = {"cluster": cluster, "task": {"type": "worker", "index": i}}
            with log.open("w") as out, log.with_suffix(".events").open("w") as events:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", LAUNCH, *args],
                        cwd=ROOT,
                        env={**CHILD_ENV, "TF_CONFIG": json.dumps(tf_config)},
                        stdout=events,
                        stderr=out,
                    )
                )
            self.logs.append(log)
        self.procs += procs
        return procs

    def wait_for(self, proc, log: Path, text: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while text not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)

    def finish(self, procs, timeout: float = 240) -> tuple[list[int], list[str]]:
        codes = [p.wait(timeout=timeout) for p in procs]
        logs = [self.logs[self.procs.index(p)].read_text() for p in procs]
        return codes, logs

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=60)


@pytest.fixture
def workers(tmp_path: Path):
    w = Workers(tmp_path)
    try:
        yield w
    finally:
        w.kill_all()


@pytest.fixture(scope="module")
def uninterrupted_pair(data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two workers trained to the end without interruption: (run dir, their logs)."""
    tmp = tmp_path_factory.mktemp("pair")
    w = Workers(tmp)
    try:
        procs = w.start(small_run_args(data_dir, tmp, *PAIR_ARGS), free_ports(2))
        codes, logs = w.finish(procs, timeout=300)
    finally:
        w.kill_all()
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    return tmp, logs


def test_two_loopback_workers_train_in_lockstep_and_only_the_chief_writes(
    uninterrupted_pair,
) -> None:
    tmp_path, logs = uninterrupted_pair
    for log in logs:
        assert "strategy: CollectiveAllReduceStrategy (TF_CONFIG names 2 workers)" in log
        assert "replicas: 2, global batch 32 (16 per replica)" in log

    def epochs(log: str) -> list[list[float]]:  # the numbers of each epoch line, before lr
        return [
            [float(x) for x in re.findall(r"\d+\.?\d*", line.split("INFO ")[1].split("  lr")[0])]
            for line in log.splitlines()
            if " INFO epoch " in line and "  lr " in line  # the epoch-end lines (no heartbeat)
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
    ]  # the worker's scratch copy is gone, and the job dir's lock


STOPPED = re.compile(r"WARNING stopped by (SIGTERM|a peer's SIGTERM/SIGINT) at step (\d+);")


@pytest.mark.parametrize("signalled", [1, 0])
def test_sigterm_to_either_worker_stops_both_at_one_step_and_the_rerun_matches(
    data_dir: Path, tmp_path: Path, workers: Workers, uninterrupted_pair, signalled: int
) -> None:
    """Both workers save the same step and exit 143 within seconds, whichever one got
    SIGTERM (before, the other one waited in a collective until a heartbeat timeout);
    rerunning both resumes to the weights of the uninterrupted pair (checked once: the
    save is the same whichever worker was signalled, and each rerun costs ~25 s)."""
    # The clock cadence too: the workers must agree on it, or one saves alone and hangs.
    args = small_run_args(data_dir, tmp_path, *PAIR_ARGS, "--checkpoint-seconds", "0.5")
    ports = free_ports(2)
    procs = workers.start(args, ports, tag="interrupted")
    workers.wait_for(procs[signalled], workers.logs[signalled], "INFO epoch 1/2  loss")
    time.sleep(0.3)  # into epoch 2, between its checkpoints
    procs[signalled].send_signal(signal.SIGTERM)
    signalled_at = time.monotonic()
    codes, logs = workers.finish(procs, timeout=120)
    assert codes == [143, 143], logs[0][-2000:] + logs[1][-2000:]
    assert time.monotonic() - signalled_at < 60  # seconds, not a heartbeat timeout
    stops = [STOPPED.search(log) for log in logs]
    assert all(stops), logs
    assert stops[signalled][1] == "SIGTERM" and stops[1 - signalled][1] != "SIGTERM"
    step = int(stops[0][2])
    assert int(stops[1][2]) == step and 12 < step < 24  # one step, in the second epoch
    import tensorflow as tf

    assert tf.train.latest_checkpoint(str(tmp_path / "job/checkpoints")).endswith(f"-{step}")
    assert all("Traceback" not in log for log in logs)
    if signalled == 0:
        return  # the rerun resumes from the same kind of save, whoever got the signal

    rerun = workers.start(args, free_ports(2), tag="rerun")
    codes, logs = workers.finish(rerun, timeout=240)
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert all(
        f"ckpt-{step}: epoch {step // 12 + 1}, step {step % 12} of 12" in log for log in logs
    )
    # The resumed pair ends where the uninterrupted pair did: the same data order, the
    # same all-reduced steps; float32 round-off aside (1e-4 on probabilities, as for the
    # single-process resume).
    reference, _ = uninterrupted_pair
    np.testing.assert_allclose(
        exported_probabilities(tmp_path / "export/mnist/1"),
        exported_probabilities(reference / "export/mnist/1"),
        atol=1e-4,
    )


def _error_line(log: str) -> str:
    """The trainer's one line. TensorFlow's C++ runtime logs its own view of the failure
    around it (E0000 lines, multi-line; TF_CPP_MIN_LOG_LEVEL=3 hides them)."""
    (line,) = [x for x in log.splitlines() if x.startswith("error: ")]
    return line


@pytest.mark.parametrize("index", [0, 1])
def test_a_worker_whose_peer_never_joins_stops_in_bounded_time(
    data_dir: Path, tmp_path: Path, workers: Workers, index: int
) -> None:
    """Worker 0 (the coordination leader) or 1 alone, its peer's port closed."""
    args = small_run_args(data_dir, tmp_path, "--peer-timeout-seconds", "3")
    started = time.monotonic()
    (proc,) = workers.start(args, free_ports(2), indices=[index])
    codes, logs = workers.finish([proc], timeout=120)
    assert time.monotonic() - started < 60  # start-up (~10 s here) + 3 s
    assert codes == [138], logs[0][-3000:]
    assert "Traceback" not in logs[0]
    peer = 1 - index
    assert _error_line(logs[0]) == (
        f"error: worker worker:{index} could not reach every worker of TF_CONFIG: "
        f"worker:{peer} did not join within --peer-timeout-seconds 3 (DeadlineExceededError); "
        "check that every worker is started and can reach the others' host:port, then rerun "
        "them."
    )


def test_a_worker_whose_peer_dies_stops_in_bounded_time(
    data_dir: Path, tmp_path: Path, workers: Workers
) -> None:
    """SIGKILL (no save, no goodbye) to worker 1: worker 0 notices the missing heartbeats."""
    args = small_run_args(data_dir, tmp_path, *PAIR_ARGS, "--peer-timeout-seconds", "4")
    procs = workers.start(args, free_ports(2))
    workers.wait_for(procs[1], workers.logs[1], "INFO epoch 1/2  loss")
    procs[1].kill()
    killed_at = time.monotonic()
    codes, logs = workers.finish(procs, timeout=120)
    assert time.monotonic() - killed_at < 60  # 4 s of missed heartbeats, then the exit
    assert codes == [138, -signal.SIGKILL], logs[0][-3000:]
    assert "Traceback" not in logs[0]
    assert _error_line(logs[0]).startswith(
        "error: worker worker:0 lost contact with worker:1: no answer within "
        "--peer-timeout-seconds 4 ("
    )
    assert _error_line(logs[0]).endswith(
        "rerun every worker: they resume from the last checkpoint."
    )


def test_a_chief_killed_in_the_export_finishes_it_alone(
    data_dir: Path, tmp_path: Path, workers: Workers
) -> None:
    """Training complete, the other worker gone: SIGKILL to the chief at the quality gate,
    then the chief alone restarts. Before, it waited for its peer and exited 138 until
    its retries ran out; now the job dir says training is complete, and the chief
    finishes the export without a cluster: exactly one version."""
    args = small_run_args(data_dir, tmp_path, *PAIR_ARGS[2:], "--epochs", "1")
    args += ["--peer-timeout-seconds", "20"]
    ports = free_ports(2)
    chief, other = workers.start(args, ports)
    events = workers.logs[0].with_suffix(".events")
    workers.wait_for(chief, events, '"phase": "gate"', timeout=300)
    chief.kill()
    chief.wait(timeout=60)
    other.wait(timeout=120)  # it exported its scratch copy; how it ends is its own
    assert contract.versions(tmp_path / "export/mnist") == []  # killed before publishing

    started = time.monotonic()
    (restarted,) = workers.start(args, ports, indices=[0], tag="alone")
    codes, logs = workers.finish([restarted], timeout=240)
    assert codes == [0], logs[0][-3000:]
    assert time.monotonic() - started < 120  # no wait for a peer
    assert "training in " in logs[0] and "finishing the export alone" in logs[0]
    assert "resuming from" in logs[0] and "epoch 2, step 0 of 12" in logs[0]
    assert contract.versions(tmp_path / "export/mnist") == [1]

    # A worker restarted now has nothing to do either, and says so.
    (late,) = workers.start(args, free_ports(2), indices=[1], tag="late")
    codes, logs = workers.finish([late], timeout=120)
    assert codes == [0] and "nothing left for this worker" in logs[0], logs[0][-3000:]
    assert contract.versions(tmp_path / "export/mnist") == [1]


# --- What a run-time error means: a lost peer (138, retried) or not (1, one line).

PEER_DIED = (  # worker 0's error when worker 1 was SIGKILLed (TF 2.21, seen here)
    "Graph execution error:\n\nDetected at node while/CollectiveReduceV2 defined at (most "
    'recent call last):\n  File "<frozen runpy>", line 198, in _run_module_as_main\n\n'
    "Collective ops is aborted by: Error reported from /job:worker/task:1: The following "
    "tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe "
    "tasks have crashed. Check the task logs for an earlier error, or scheduler events "
    "(e.g. preemption, eviction) to debug further.\nThe error could be from a previous "
    "operation. Restart your program to reset.\n\t [[{{node while/CollectiveReduceV2}}]] "
    "[Op:__inference_train_steps_1956]"
)
NEVER_JOINED = (  # worker 0's error when worker 1 never started (TF 2.21, seen here)
    "Barrier timed out. Id: [Init]Wait_for_all_tasks_to_register::0. This usually happens "
    "because a task triggered the barrier too early or too slowly. Please look at the task "
    "logs (both timed out and first task) to debug further.\n# of tasks that reached the "
    "barrier: 1/2.\nThe first task at the barrier: /job:worker/replica:0/task:0. Some "
    "timed out task names:\n/job:worker/replica:0/task:1\n"
)
XLA_FAILED = (
    "Graph execution error:\n\nDetected at node StatefulPartitionedCall defined at (most "
    'recent call last):\n  File "trainer/loop.py", line 80, in train_steps\n\nRET_CHECK '
    "failure (xla/service/gpu/ir_emitter_unnested.cc:1270) ShapeUtil::Equal(shape, "
    "expected) on /job:worker/replica:0/task:0/device:GPU:0\n\t [[{{node "
    "StatefulPartitionedCall}}]] [Op:__inference_train_steps_812]"
)
CUDNN_FAILED = "cuDNN launch failure : input shape ([32,28,28,1]) filter shape ([3,3,1,64])"
OOM = "OOM when allocating tensor with shape[65536,26,26,64] and type float on /job:localhost"


def _outcome(cluster, error) -> tuple[int, str]:
    from trainer.errors import TrainerExit
    from trainer.strategy import runtime_errors

    with pytest.raises(TrainerExit) as e, runtime_errors(cluster, 4.0):
        raise error
    return int(e.value.exit_code), str(e.value)


def test_only_a_lost_peer_is_peer_lost() -> None:
    import tensorflow as tf

    pair = parse_tf_config(tf_config(2, index=0))
    assert _outcome(pair, tf.errors.UnavailableError(None, None, PEER_DIED)) == (
        138,
        "worker worker:0 lost contact with worker:1: no answer within --peer-timeout-seconds "
        "4 (UnavailableError; it was killed, or its machine or network was lost); rerun "
        "every worker: they resume from the last checkpoint.",
    )
    code, line = _outcome(pair, tf.errors.DeadlineExceededError(None, None, NEVER_JOINED))
    assert code == 138 and "worker:1 did not join" in line
    # What a GPU or the compiler raises is not a peer's doing: retrying repeats it.
    for error, cause in [
        (tf.errors.InternalError(None, None, XLA_FAILED), "InternalError: RET_CHECK failure"),
        (tf.errors.InternalError(None, None, CUDNN_FAILED), "InternalError: cuDNN launch"),
        (tf.errors.ResourceExhaustedError(None, None, OOM), "ResourceExhaustedError: OOM when"),
        (tf.errors.CancelledError(None, None, "Cancelled: RecvAsync is cancelled."), "Cancel"),
    ]:
        for cluster in (pair, None):
            code, line = _outcome(cluster, error)
            assert code == 1 and line.startswith(f"TensorFlow failed: {cause}"), line
            assert line.endswith(
                "this is not a lost peer, so rerunning the same command fails the same way"
            )
            assert "\n" not in line and "Graph execution error" not in line


def test_a_runtime_error_is_one_line_and_exit_1(monkeypatch, capsys) -> None:
    """The CLI around a real TensorFlow error class (the run itself is replaced: an XLA
    failure cannot be provoked on demand)."""
    import tensorflow as tf

    from trainer import cli

    def fail(*_args, **_kwargs):
        raise tf.errors.InternalError(None, None, XLA_FAILED)

    monkeypatch.setattr(train, "run", fail)
    assert cli.main(["--epochs", "1"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: TensorFlow failed: InternalError: RET_CHECK failure ")


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
