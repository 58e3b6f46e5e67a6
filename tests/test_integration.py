"""The container path, run for real (make integration).

Against a Docker engine (real Docker, or the podman engine `make engine` starts where none
answers), this module does what a user does, with the make targets they use, in a compose
project of its own, on free ports, with artifacts in a temporary folder:

1. `make train RUNTIME=docker` twice: builds docker/Dockerfile and trains in the container
   as the non-root user, then resumes in the same job dir, exporting versions 1 and 2;
   `TRAINER_RESTART=1 make train` on a copy of that job dir (a bind mount in the container)
   moves its files into JOB_DIR/old-<time>/ and trains afresh in the same folder;
   `make train RUNTIME=docker WORKERS=2`: two worker containers, each with its own network
   namespace, host name and index, train together and export once (timed against one
   worker on the same data); one killed mid-run is restarted by the engine and both
   resume; `docker stop` of both saves a checkpoint and exits 143;
2. `make serve` brings the serving container to healthy on that export, `make predict`
   answers, and the client checks below run against it over REST and gRPC;
3. `make tensorboard RUNTIME=docker` serves the job's logs;
4. `make stop` leaves no container and no network behind (and a finalizer takes the
   project down whatever happens).

Where `make engine` made the engine, tensorflow/tensorflow:X-gpu and tensorflow/serving:X
are STAND-INS built on this machine (docker/standin/; no registry is reachable): the run
proves the wiring (build steps, users and file ownership, volumes, env pass-through,
ports, healthchecks, preflight), not TensorFlow's GPU image or TF Serving. The module
says so in the test output. Skips where no engine answers, unless INTEGRATION_REQUIRED=1
(`make integration` sets it), where a missing engine fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
import tensorflow as tf
import yaml

from digits import contract
from digits.contract import CLASSES, IMAGE, MODEL_NAME, PIXELS, PROBABILITIES
from support import (
    IDX_IMAGES,
    ROOT,
    SAMPLES,
    TEST_SIZE,
    TRAIN_SIZE,
    assert_probabilities_close,
    assert_same_predictions,
    client_json,
    error_line,
    free_ports,
    make_digits,
    needs_image_signature,
    run_client,
    status_versions,
)
from trainer.outputs import LOCK_FILE

pytestmark = pytest.mark.integration

PROJECT = "digit-serve-integration"
TRAIN_TIMEOUT = 900  # seconds: the first build installs requirements.txt into the image
UP_TIMEOUT = 180  # seconds: load and warmup
BLANK = [[[0]] * contract.COLS] * contract.ROWS  # one all-black pixels example, as JSON
TF_PIN = next(
    line.split("==")[1]
    for line in (ROOT / "requirements.txt").read_text().splitlines()
    if line.startswith("tensorflow==")
)
# The TF Serving tag make uses (docker/docker.mk), which make engine's stand-in carries.
SERVING_VERSION = re.search(
    r"^SERVING_VERSION \?= (\S+)$", (ROOT / "docker" / "docker.mk").read_text(), re.M
).group(1)
# What `make` does when run as root: the containers run as uid 1000 (docker/docker.mk).
CONTAINER_UID = 1000 if os.getuid() == 0 else os.getuid()


def docker_missing() -> str | None:
    """Why no container can run here, or None when one can."""
    if shutil.which("docker") is None:
        return "no `docker` command on PATH"
    info = docker("info")
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no Docker engine answers `docker info` ({last}); make engine starts one"
    if docker("compose", "version").returncode != 0:
        return "`docker compose` (the Compose v2 plugin) is not installed"
    return None


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *args], env=engine_env(), capture_output=True, text=True, timeout=timeout
    )


def engine_env() -> dict[str, str]:
    """The environment make would give docker: DOCKER_HOST from make engine's socket."""
    env = dict(os.environ)
    socket = Path(os.environ.get("ENGINE_DIR", "/var/lib/digit-serve-engine")) / "docker.sock"
    if "DOCKER_HOST" not in env and socket.is_socket():
        env["DOCKER_HOST"] = f"unix://{socket}"
    return env


def stand_in(image: str) -> str | None:
    """What a local stand-in image stands in for (its label), or None for a real image."""
    result = docker("image", "inspect", "--format", "{{json .Config.Labels}}", image)
    if result.returncode != 0:
        return None
    return (json.loads(result.stdout) or {}).get("io.digit-serve.stand-in")


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest) -> None:
    reason = docker_missing()
    if reason:
        if os.environ.get("INTEGRATION_REQUIRED") == "1":
            pytest.fail(f"make integration needs a container engine: {reason}")
        pytest.skip(reason)
    for image in (f"tensorflow/tensorflow:{TF_PIN}-gpu", f"tensorflow/serving:{SERVING_VERSION}"):
        if stand_in(image):
            say(
                request,
                f"NOTE: {image} is a STAND-IN built by docker/engine.sh (no registry "
                "here): these tests prove the container wiring, not the official image "
                "or TF Serving",
            )


def say(request: pytest.FixtureRequest, line: str) -> None:
    """A line straight to the terminal, past pytest's capture."""
    plugins = request.config.pluginmanager
    terminal, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if terminal and capture:
        with capture.global_and_fixture_disabled():
            terminal.write_line(f"\n{line}")


@pytest.fixture(scope="module")
def stack(engine, tmp_path_factory: pytest.TempPathFactory, idx_dir: Path):
    """Variables for make (dirs, ports, project); takes the project down at the end."""
    root = tmp_path_factory.mktemp("containers")
    root.chmod(0o755)  # the containers' user must reach the bind mounts' sources
    idx = root / "idx"
    shutil.copytree(idx_dir, idx)
    for path in (idx, *idx.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    rest, grpc, board = free_ports(3)
    variables = {
        "RUNTIME": "docker",
        "GPUS": "0",
        "IDX_DIR": str(idx),
        "DATA_DIR": str(root / "data"),
        "JOB_DIR": str(root / "job"),
        "EXPORT_DIR": str(root / "export"),
        "SERVING_REST_PORT": str(rest),
        "SERVING_GRPC_PORT": str(grpc),
        "TENSORBOARD_PORT": str(board),
        "SERVING_URL": f"http://127.0.0.1:{rest}",
        "SERVING_GRPC_TARGET": f"127.0.0.1:{grpc}",
    }
    env = {k: v for k, v in engine_env().items() if not k.startswith(("TRAINER_", "SERVING_"))}
    env.update(COMPOSE_PROJECT_NAME=PROJECT)
    try:
        yield {"vars": variables, "env": env, "root": root}
    finally:
        subprocess.run(
            ["docker", "compose", "-f", "docker/compose.yaml", "-p", PROJECT]
            + ["--profile", "train", "--profile", "cpu", "--profile", "gpu"]
            + ["down", "--remove-orphans", "--timeout", "5"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=180,
        )


def make(stack: dict, target: str, timeout: float = 300, env=None, **variables: str):
    """`make TARGET VAR=value ...` from the repo root, with the stack's variables."""
    variables = {**stack["vars"], **variables}
    return subprocess.run(
        ["make", "--no-print-directory", target, *(f"{k}={v}" for k, v in variables.items())],
        cwd=ROOT,
        env={**stack["env"], **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def trained(stack: dict) -> dict[str, subprocess.CompletedProcess]:
    """`make train RUNTIME=docker` for one epoch, then again to two epochs (a resume)."""
    runs = {}
    for epochs in ("1", "2"):
        # The second run publishes whatever the quality gate says: tiny data, tiny margins.
        force = {"TRAINER_FORCE_PUBLISH": "1"} if epochs == "2" else {}
        result = make(stack, "train", timeout=TRAIN_TIMEOUT, env=force, EPOCHS=epochs)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs[epochs] = result
    return runs


@pytest.fixture(scope="module")
def export_base(stack: dict, trained) -> Path:
    return Path(stack["vars"]["EXPORT_DIR"]) / MODEL_NAME


@pytest.fixture(scope="module")
def url(stack: dict, export_base: Path) -> str:
    result = make(stack, "serve", timeout=UP_TIMEOUT + 120, SERVE_TIMEOUT=str(UP_TIMEOUT))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return stack["vars"]["SERVING_URL"]


@pytest.fixture(scope="module")
def ports(stack: dict, url: str) -> tuple[int, int]:
    return int(stack["vars"]["SERVING_REST_PORT"]), int(stack["vars"]["SERVING_GRPC_PORT"])


@pytest.fixture(scope="module")
def loaded(export_base: Path):
    return tf.saved_model.load(str(export_base / "2"))


# --- make train RUNTIME=docker


def test_make_train_trains_in_the_container_as_the_non_root_user(stack: dict, trained) -> None:
    first, second = trained["1"].stdout + trained["1"].stderr, trained["2"].stdout
    second += trained["2"].stderr
    assert "make train: RUNTIME=docker" not in first  # the container ran, not .venv
    assert "exported /artifacts/export/mnist/1" in first
    assert re.search(r"resuming from \S+: epoch 2", second), second[-2000:]
    assert "exported /artifacts/export/mnist/2" in second
    job, export = Path(stack["vars"]["JOB_DIR"]), Path(stack["vars"]["EXPORT_DIR"])
    assert contract.versions(export / MODEL_NAME) == [1, 2]
    for version in ("1", "2"):
        assert (export / MODEL_NAME / version / "saved_model.pb").is_file()
        assert (export / MODEL_NAME / version / "eval" / "metrics.json").is_file()
    assert list((job / "checkpoints").glob("*.index"))
    assert list((job / "logs").rglob("events.out.tfevents.*"))
    assert json.loads((job / "finished.json").read_text())["export_path"].endswith("/2")
    # Everything the container wrote is owned by the documented user: you, or uid 1000
    # when make runs as root (docker/docker.mk DOCKER_UID).
    owners = {p.stat().st_uid for d in (job, export) for p in [d, *d.rglob("*")]}
    assert owners == {CONTAINER_UID}
    assert not [p for p in (export / MODEL_NAME).iterdir() if p.name.startswith(".tmp-")]


def test_the_kubernetes_manifests_name_the_image_that_was_built(trained) -> None:
    """tfjob.yaml and train-job.yaml run the image `make train` built, with its entry point."""
    image = f"digit-serve-trainer:{TF_PIN}"
    inspect = docker("image", "inspect", "--format", "{{json .Config}}", image)
    assert inspect.returncode == 0, inspect.stderr
    config = json.loads(inspect.stdout)
    for name in ("tfjob.yaml", "train-job.yaml", "train-workers.yaml"):
        for doc in yaml.safe_load_all((ROOT / "docker" / "k8s" / name).read_text()):
            for container in _pod_containers(doc):
                assert container["image"] == image, name
                assert "command" not in container, f"{name} must keep the image's entry point"
                assert container["args"] == config["Cmd"], name
    assert config["Entrypoint"] == ["python", "-m", "trainer"]
    assert re.fullmatch(r"\d+:\d+", config["User"]), config["User"]  # runAsNonRoot checks it
    # The entry point and args the manifests use start the trainer in that image.
    help_run = docker("run", "--rm", image, "train", "--help", timeout=180)
    assert help_run.returncode == 0 and "--epochs" in help_run.stdout, help_run.stderr[-2000:]


def _pod_containers(doc: dict) -> list[dict]:
    if doc.get("kind") == "TFJob":
        specs = doc["spec"]["tfReplicaSpecs"].values()
        return [c for s in specs for c in s["template"]["spec"]["containers"]]
    if doc.get("kind") == "Job":
        return doc["spec"]["template"]["spec"]["containers"]
    return []


def test_restart_in_the_container_keeps_the_mounted_job_dir(stack: dict, trained) -> None:
    """`TRAINER_RESTART=1 make train RUNTIME=docker` on a finished job dir: compose
    bind-mounts it at /artifacts/job, and a mount point cannot be renamed (EBUSY; its
    parent is the read-only root besides). The earlier run's files move into
    JOB_DIR/old-<time>/ on the host, the folder stays the same, the new run trains from
    scratch beside them. On a copy of `trained`'s job dir, so the later tests keep theirs."""
    # The job dir is the mount point itself, not a folder inside one.
    trainer = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["x-trainer"]
    assert trainer["environment"]["TRAINER_JOB_DIR"] == "/artifacts/job"
    assert [v for v in trainer["volumes"] if v.endswith(":/artifacts/job")]
    job = stack["root"] / "restart-job"
    # cp -a keeps the container user's ownership, as the job dir `make train` left has.
    subprocess.run(["cp", "-a", stack["vars"]["JOB_DIR"], str(job)], check=True)
    before = {p.name for p in job.iterdir()}
    assert {"checkpoints", "finished.json"} <= before, before
    folder = job.stat().st_ino
    result = make(
        stack,
        "train",
        timeout=TRAIN_TIMEOUT,
        # Gate aside (tiny data, tiny margins): this test is about the job dir.
        env={"TRAINER_RESTART": "1", "TRAINER_FORCE_PUBLISH": "1"},
        EPOCHS="1",
        JOB_DIR=str(job),
        EXPORT_DIR=str(stack["root"] / "restart-export"),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    moved = re.search(
        r"--restart: moved the earlier run's files into /artifacts/job/(old-\S+);", output
    )
    assert moved, output[-4000:]
    assert "resuming from" not in output
    assert job.stat().st_ino == folder  # the same folder, not a new one in its place
    assert [p.name for p in stack["root"].iterdir() if p.name.startswith("restart-job")] == [
        "restart-job"
    ]  # nothing beside it, as the rename to JOB_DIR.old-<time> left
    aside = job / moved.group(1)
    assert {p.name for p in aside.iterdir()} == before - {LOCK_FILE}  # the lock stays
    assert list((aside / "checkpoints").glob("*.index"))
    old = json.loads((aside / "finished.json").read_text())["export_path"]
    assert old == "/artifacts/export/mnist/2"  # `trained`'s second run
    # The new run's checkpoint and record at the top level, from its own export.
    assert tf.train.latest_checkpoint(str(job / "checkpoints"))
    assert json.loads((job / "finished.json").read_text())["export_path"] == (
        "/artifacts/export/mnist/1"
    )
    assert contract.versions(stack["root"] / "restart-export" / MODEL_NAME) == [1]


# --- make train RUNTIME=docker WORKERS=2: worker containers on the engine's network

WORKER_LINE = re.compile(r"^(worker-\d)-\d+\s+\| (.*)$", re.M)  # compose's log prefix


def worker_logs(output: str) -> dict[str, str]:
    """Each worker container's lines of `make train WORKERS=N`'s interleaved output."""
    logs: dict[str, list[str]] = {}
    for worker, line in WORKER_LINE.findall(output):
        logs.setdefault(worker, []).append(line)
    return {worker: "\n".join(lines) for worker, lines in logs.items()}


def worker_container(service: str) -> str:
    ids = docker(
        "ps",
        "--quiet",
        "--filter",
        f"label=com.docker.compose.project={PROJECT}",
        "--filter",
        f"label=com.docker.compose.service={service}",
    ).stdout.split()
    assert len(ids) == 1, ids
    return ids[0]


class Training:
    """`make train ...` in the background, its output in a file to watch."""

    def __init__(self, stack: dict, log: Path, env: dict, **variables: str) -> None:
        variables = {**stack["vars"], **variables}
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                ["make", "--no-print-directory", "train"]
                + [f"{k}={v}" for k, v in variables.items()],
                cwd=ROOT,
                env={**stack["env"], **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # a process group of its own, for a Ctrl-C
            )

    def wait_for(self, pattern: str, timeout: float = TRAIN_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.log.read_text(), re.M):
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.5)

    def finish(self, timeout: float = TRAIN_TIMEOUT) -> tuple[int, str]:
        try:
            return self.proc.wait(timeout=timeout), self.log.read_text()
        finally:
            if self.proc.poll() is None:  # Ctrl-C: compose stops the workers, they save
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=300)


def run_dirs(stack: dict, name: str) -> dict[str, str]:
    return {
        "JOB_DIR": str(stack["root"] / f"{name}-job"),
        "EXPORT_DIR": str(stack["root"] / f"{name}-export"),
    }


@pytest.fixture(scope="module")
def timed_runs(stack: dict, trained, request: pytest.FixtureRequest) -> dict:
    """One epoch by one worker, then by two worker containers, each into a job and export
    dir of its own, on the data dir (and the image) `trained` prepared: (seconds, output)."""
    runs = {}
    for name, workers in (("one-worker", "1"), ("two-workers", "2")):
        started = time.monotonic()
        result = make(
            stack,
            "train",
            timeout=TRAIN_TIMEOUT,
            EPOCHS="1",
            WORKERS=workers,
            **run_dirs(stack, name),
        )
        seconds = time.monotonic() - started
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs[name] = (seconds, result.stdout + result.stderr)
    say(
        request,
        f"make train RUNTIME=docker EPOCHS=1 on {TRAIN_SIZE} small images: one worker "
        f"{runs['one-worker'][0]:.0f} s, WORKERS=2 {runs['two-workers'][0]:.0f} s (wall time "
        f"of make, image cached, data prepared; {os.cpu_count()} CPUs)",
    )
    return runs


def test_two_worker_containers_train_together_and_export_once(stack: dict, timed_runs) -> None:
    _, output = timed_runs["two-workers"]
    assert "WORKERS=2: worker-0 worker-1" in output
    logs = worker_logs(output)
    assert sorted(logs) == ["worker-0", "worker-1"]
    hosts = "worker-0:2222, worker-1:2222"
    for index, worker in enumerate(("worker-0", "worker-1")):
        log = logs[worker]
        # Its own index and host name; the cluster of both, over the engine's network.
        assert f"worker {index} of 2 workers ({hosts})" in log, log[-3000:]
        assert "strategy: CollectiveAllReduceStrategy (TF_CONFIG names 2 workers)" in log
        assert "replicas: 2, global batch 16 (8 per replica)" in log
        assert "Traceback" not in log
    assert "exported /artifacts/export/mnist/1" in logs["worker-0"]
    assert "exported" not in logs["worker-1"]
    export = Path(run_dirs(stack, "two-workers")["EXPORT_DIR"]) / MODEL_NAME
    assert contract.versions(export) == [1]
    # Both reached the same model: the same all-reduced metrics at the epoch's end.
    ends = [re.search(r"epoch 1/1  loss .*test_acc \S+", logs[w]).group(0) for w in logs]
    assert ends[0] == ends[1]
    # The containers are gone, as after `run --rm`.
    label = f"label=com.docker.compose.project={PROJECT}"
    left = docker("ps", "--all", "--format", "{{.Names}}", "--filter", label).stdout
    assert "worker" not in left


def test_a_killed_worker_container_is_restarted_and_both_resume(
    stack: dict, trained, tmp_path: Path
) -> None:
    """SIGKILL to worker-1's trainer (a crash or an OOM kill): the engine restarts it
    (restart: on-failure), worker-0 notices within --peer-timeout-seconds and is restarted
    too, both resume from the last checkpoint, and the run ends with one version."""
    dirs = run_dirs(stack, "killed")
    env = {"TRAINER_STEPS_PER_CALL": "2", "TRAINER_PEER_TIMEOUT_SECONDS": "30"}
    training = Training(stack, tmp_path / "make.log", env, EPOCHS="3", WORKERS="2", **dirs)
    training.wait_for(r"^worker-1-\d+\s+\| .*epoch 1/3  loss")
    # From inside: the trainer, not the container's init, dies; exec runs as the same
    # user, and kill -1 spares init and the caller.
    killed = docker("exec", worker_container("worker-1"), "bash", "-c", "kill -9 -1")
    assert killed.returncode == 0, killed.stderr
    code, output = training.finish()
    assert code == 0, output[-4000:]
    assert re.search(r"worker-1-\d+ exited with code 137 \(restarting\)", output), output[-4000:]
    assert re.search(r"worker-0-\d+ exited with code 138 \(restarting\)", output), output[-4000:]
    logs = worker_logs(output)
    for worker in ("worker-0", "worker-1"):
        assert re.search(r"resuming from /artifacts/job/checkpoints/ckpt-\d+: epoch", logs[worker])
    assert contract.versions(Path(dirs["EXPORT_DIR"]) / MODEL_NAME) == [1]
    # Exported once: no process of the chief found the version already published (the
    # recovery after a kill between the publish and finished.json), and one export line.
    # Distinct lines: a line the engine's log stream repeats is still one export. On a
    # failure, what the workers and compose said at the end (CI keeps only the tail).
    ending = "\n".join(
        line for line in output.splitlines() if re.search(r"exited with code|exported|holds", line)
    )
    assert "already holds this run's export" not in logs["worker-0"], ending
    lines = logs["worker-0"].splitlines()
    exported = {line for line in lines if "exported /artifacts/export/mnist/1" in line}
    assert len(exported) == 1, ending


def test_worker_containers_are_apart_on_the_network_and_docker_stop_saves_both(
    stack: dict, trained, tmp_path: Path
) -> None:
    """While two workers train: two network namespaces (an address each on the compose
    network) and host names, each resolving the other by name. Then `docker stop` of
    both: they save the same step and exit 143, and the engine restarts neither."""
    dirs = run_dirs(stack, "stopped")
    env = {"TRAINER_STEPS_PER_CALL": "2"}
    training = Training(stack, tmp_path / "make.log", env, EPOCHS="3", WORKERS="2", **dirs)
    try:
        training.wait_for(r"^worker-0-\d+\s+\| .*epoch 1/3  loss")
        containers = {w: worker_container(w) for w in ("worker-0", "worker-1")}
        seen = {}
        for worker, container in containers.items():
            inspect = json.loads(docker("inspect", container).stdout)[0]
            assert inspect["HostConfig"]["ReadonlyRootfs"] is True  # as in Kubernetes
            networks = inspect["NetworkSettings"]["Networks"]
            assert list(networks) == [f"{PROJECT}_default"], networks
            peer = "worker-1" if worker == "worker-0" else "worker-0"
            seen[worker] = (
                docker("exec", container, "hostname").stdout.strip(),
                networks[f"{PROJECT}_default"]["IPAddress"],
                docker("exec", container, "getent", "hosts", peer).stdout.split()[0],
            )
        assert (seen["worker-0"][0], seen["worker-1"][0]) == ("worker-0", "worker-1")
        assert seen["worker-0"][1] != seen["worker-1"][1]
        assert (seen["worker-0"][2], seen["worker-1"][2]) == (
            seen["worker-1"][1],
            seen["worker-0"][1],
        )
        stopped = docker("stop", "--time", "120", *containers.values(), timeout=300)
        assert stopped.returncode == 0, stopped.stderr
    finally:
        code, output = training.finish()
    # make exits 2 for any failed recipe, and names the recipe's status.
    assert code == 2 and "train] Error 143" in output, output[-4000:]
    assert "make train: worker-0 exited 143 worker-1 exited 143" in output
    assert "(restarting)" not in output  # a stop is not a failure
    logs = worker_logs(output)
    steps = []
    for worker in ("worker-0", "worker-1"):
        match = re.search(
            r"stopped by (?:SIGTERM|a peer's SIGTERM/SIGINT) at step (\d+);", logs[worker]
        )
        assert match, logs[worker][-3000:]
        steps.append(int(match.group(1)))
    assert steps[0] == steps[1]
    latest = tf.train.latest_checkpoint(str(Path(dirs["JOB_DIR"]) / "checkpoints"))
    assert latest and latest.endswith(f"-{steps[0]}")
    assert not (Path(dirs["EXPORT_DIR"]) / MODEL_NAME).exists()  # not finished: no version


# --- make serve, make predict, and the client against the serving container


def test_make_predict_answers(stack: dict, url: str) -> None:
    result = make(stack, "predict")
    assert result.returncode == 0, result.stderr
    pngs = sorted(SAMPLES.glob("*.png"))
    assert all(p.name in result.stdout for p in pngs), result.stdout


def test_the_serving_container_has_a_read_only_root(url: str) -> None:
    """As readOnlyRootFilesystem in Kubernetes: only /tmp (a tmpfs) is writable."""
    (container,) = docker(
        "ps",
        "--quiet",
        "--filter",
        f"label=com.docker.compose.project={PROJECT}",
        "--filter",
        "label=com.docker.compose.service=serving",
    ).stdout.split()
    assert json.loads(docker("inspect", container).stdout)[0]["HostConfig"]["ReadonlyRootfs"]
    root = docker("exec", container, "bash", "-c", "touch /root-is-read-only")
    assert root.returncode != 0 and "Read-only file system" in root.stderr, root.stderr
    assert docker("exec", container, "bash", "-c", "touch /tmp/scratch").returncode == 0


def test_status_shows_both_versions_available(url: str) -> None:
    assert status_versions(client_json("status", url=url)) == {
        "2": "AVAILABLE",
        "1": "AVAILABLE",
    }
    assert status_versions(client_json("status", "--version", "1", url=url)) == {"1": "AVAILABLE"}


def test_metadata_shows_the_signature_contract(url: str, loaded) -> None:
    answer = client_json("metadata", url=url)
    assert answer["model_spec"]["name"] == MODEL_NAME and answer["model_spec"]["version"] == "2"
    signatures = answer["metadata"]["signature_def"]["signature_def"]
    images = signatures[PIXELS.name]["inputs"][PIXELS.input]
    assert images["dtype"] == f"DT_{PIXELS.dtype.upper()}"
    assert [d["size"] for d in images["tensor_shape"]["dim"]] == [
        "-1" if n is None else str(n) for n in PIXELS.shape
    ]
    assert set(loaded.signatures) <= set(signatures)


def test_predict_idx_matches_the_export_in_process(url: str, loaded, idx_dir: Path) -> None:
    idx = str(idx_dir / IDX_IMAGES)
    row = client_json("predict", "--idx", idx, "--count", "100", url=url)
    col = client_json("predict", "--idx", idx, "--count", "100", "--format", "columnar", url=url)
    # Classes equal; probabilities a few float32 ulps apart at most: the server batches
    # (64 + 36 here, perhaps padded) and its CPU kernels differ from this process's
    # (support.PROBABILITY_TOLERANCE).
    assert_same_predictions(row["predictions"], col["predictions"])
    images, labels = make_digits(TEST_SIZE, seed=2)
    signature = loaded.signatures[PIXELS.name]
    expected = signature(**{PIXELS.input: tf.constant(images[:100, :, :, None])})
    assert [r["digit"] for r in row["predictions"]] == expected[CLASSES].numpy().tolist()
    assert_probabilities_close(
        [r["probabilities"] for r in row["predictions"]], expected[PROBABILITIES].numpy()
    )
    assert row["accuracy"] > 0.9


def test_predict_pngs_with_predict_image(url: str, loaded) -> None:
    needs_image_signature(loaded)
    files = sorted(SAMPLES.glob("*.png"))
    report = client_json("predict", *map(str, files), url=url)
    blobs = tf.constant([p.read_bytes() for p in files])
    expected = loaded.signatures[IMAGE.name](**{IMAGE.input: blobs})
    assert [r["digit"] for r in report["predictions"]] == expected[CLASSES].numpy().tolist()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("status", "--model", "nope"), "HTTP 404"),
        (("metadata", "--version", "9"), "HTTP 404"),
        (("predict", "--version", "9", "--idx", "IDX"), "HTTP 404"),
        (("predict", "--label", "nope", "--idx", "IDX"), "HTTP 400"),
    ],
)
def test_server_errors_are_one_line(url: str, idx_dir: Path, args, message) -> None:
    args = [str(idx_dir / IDX_IMAGES) if a == "IDX" else a for a in args]
    assert message in error_line(run_client(*args, url=url), 1)


def test_predict_errors_come_back_as_json(url: str) -> None:
    predict = f"{url}/v1/models/{MODEL_NAME}:predict"
    cases = [
        ({"instances": [BLANK], "inputs": [BLANK]}, 400),  # both keys
        ({"signature_name": PIXELS.name}, 400),  # neither
        ({"instances": []}, 400),  # empty
        ({"instances": [[[[1.0]] * 28] * 28]}, 400),  # floats for uint8
        ({"instances": [[[[0]] * 32] * 32]}, 400),  # wrong shape: the graph's ensure_shape
        ({"instances": [BLANK] * 1025}, 400),  # over batching.config's max_batch_size 1024
    ]
    for body, status in cases:
        response = requests.post(predict, json=body, timeout=60)
        assert response.status_code == status, (body if len(str(body)) < 200 else "", response.text)
        assert isinstance(response.json()["error"], str)
    missing = requests.post(
        f"{url}/v1/models/{MODEL_NAME}/versions/9:predict", json={"instances": [BLANK]}, timeout=60
    )
    assert missing.status_code == 404 and "error" in missing.json()


def test_prometheus_metrics_are_exposed(url: str) -> None:
    run_client("status", url=url)
    metrics = requests.get(f"{url}/monitoring/prometheus/metrics", timeout=30)
    assert metrics.status_code == 200
    assert ":tensorflow:serving:request_count" in metrics.text


# --- gRPC (port SERVING_GRPC_PORT): the same answers and errors as over REST.


@pytest.fixture(scope="module")
def grpc_args(url: str, ports: tuple[int, int]) -> list[str]:
    return ["--protocol", "grpc", "--grpc-target", f"127.0.0.1:{ports[1]}"]


def test_grpc_status_and_metadata_match_rest(url: str, grpc_args: list[str]) -> None:
    for command in ("status", "metadata"):
        for args in ((), ("--version", "1")):
            assert client_json(command, *args, *grpc_args, url=url) == client_json(
                command, *args, url=url
            )


def test_grpc_predictions_match_rest(url: str, grpc_args: list[str], idx_dir: Path, loaded) -> None:
    idx = ["--idx", str(idx_dir / IDX_IMAGES), "--count", "100"]
    cases = [idx]
    if IMAGE.name in loaded.signatures:
        cases.append([str(p) for p in sorted(SAMPLES.glob("*.png"))])
    for args in cases:
        rest = client_json("predict", *args, url=url)
        over_grpc = client_json("predict", *args, *grpc_args, url=url)
        assert_same_predictions(over_grpc["predictions"], rest["predictions"])


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("status", "--model", "nope"), "NOT_FOUND"),
        (("metadata", "--version", "9"), "NOT_FOUND"),
        (("predict", "--version", "9", "--idx", "IDX"), "NOT_FOUND"),
        (("predict", "--label", "nope", "--idx", "IDX"), "INVALID_ARGUMENT"),
    ],
)
def test_grpc_errors_are_one_line(url: str, grpc_args, idx_dir: Path, args, code) -> None:
    args = [str(idx_dir / IDX_IMAGES) if a == "IDX" else a for a in args]
    line = error_line(run_client(*args, *grpc_args, url=url), 1)
    assert line.startswith(f"error: gRPC {code} from grpc://"), line


def test_grpc_bad_tensors_are_invalid_argument(grpc_args: list[str]) -> None:
    import grpc
    import numpy as np

    from serving.grpc_client import GrpcError, GrpcServingClient

    with GrpcServingClient(grpc_args[-1]) as client:
        for batch, dtype in (
            (np.zeros((1, 32, 32, 1), np.uint8), "uint8"),  # the graph's ensure_shape
            (np.zeros((1, 28, 28, 1), np.float32), "float32"),  # the wrong dtype
        ):
            with pytest.raises(GrpcError) as caught:
                client.predict(batch, signature=PIXELS.name, input_name=PIXELS.input, dtype=dtype)
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, caught.value


# --- make tensorboard, make stop


def test_make_tensorboard_serves_the_logs(stack: dict, trained) -> None:
    result = make(stack, "tensorboard", timeout=UP_TIMEOUT + 120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = requests.get(
        f"http://127.0.0.1:{stack['vars']['TENSORBOARD_PORT']}/data/runs", timeout=30
    ).json()
    assert {"train", "validation"} <= set(runs), runs


def test_make_stop_leaves_nothing_running(stack: dict, url: str) -> None:
    """Last in the module: the serving and TensorBoard containers are up until here."""
    label = f"label=com.docker.compose.project={PROJECT}"
    assert docker("ps", "--quiet", "--filter", label).stdout.strip()
    result = make(stack, "stop")
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = docker("ps", "--all", "--quiet", "--filter", label).stdout.strip()
        networks = docker("network", "ls", "--quiet", "--filter", label).stdout.strip()
        if not left and not networks:
            break
        time.sleep(1)
    assert (left, networks) == ("", "")
