"""Offline checks of the container and cluster files (docker/, .dockerignore).

No Docker engine and no network: the linters run from .venv, the healthcheck runs
against a local fake TF Serving, and the make targets' error paths run against a stub
`docker` command that plays a missing engine, a missing Compose plugin, an engine
without the NVIDIA runtime, and a healthy engine (recording what it was asked to do).
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from support import free_ports
from trainer import config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCKER_DIR = ROOT / "docker"
K8S = sorted((DOCKER_DIR / "k8s").glob("*.yaml"))
TF_PIN = re.search(
    r"^tensorflow==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE
).group(1)


def run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=60, cwd=ROOT, **kw
    )


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text())


def k8s_docs() -> dict[str, dict]:
    docs = {}
    for path in K8S:
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


# --- Linters and schemas ---------------------------------------------------------


def test_hadolint_passes_every_dockerfile():
    dockerfiles = [p for p in ROOT.rglob("Dockerfile*") if ".venv" not in p.parts]
    assert DOCKER_DIR / "Dockerfile" in dockerfiles
    result = run(BIN / "hadolint", *dockerfiles)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_matches_the_compose_spec(tmp_path):
    check = [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec"]
    result = run(*check, DOCKER_DIR / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    # The validator is real: a misspelt key fails.
    bad = tmp_path / "compose.yaml"
    bad.write_text((DOCKER_DIR / "compose.yaml").read_text().replace("healthcheck:", "helthcheck:"))
    assert run(*check, bad).returncode != 0


def test_kubernetes_manifests_validate():
    result = run(sys.executable, DOCKER_DIR / "check_k8s.py", *K8S)
    assert result.returncode == 0, result.stdout + result.stderr
    for kind in ("TFJob", "Job", "Deployment", "Service", "PersistentVolumeClaim"):
        assert kind in result.stdout


@pytest.mark.parametrize(
    "kind, breakage",
    [
        ("TFJob", lambda d: d["spec"]["tfReplicaSpecs"]["Worker"].update(replica=2)),
        (
            "TFJob",
            lambda d: d["spec"]["tfReplicaSpecs"]["Worker"].update(restartPolicy="Sometimes"),
        ),
        ("TFJob", lambda d: _container(d).update(name="trainer")),
        ("TFJob", lambda d: _container(d).update(imagePullPolicyy="Always")),
        ("Deployment", lambda d: d["spec"]["template"]["spec"].update(container=[])),
        ("Deployment", lambda d: d["spec"]["template"]["spec"]["securityContext"].clear()),
        ("Job", lambda d: d["spec"]["template"]["spec"]["securityContext"].clear()),
        (
            "TFJob",
            lambda d: d["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"][
                "securityContext"
            ].pop("seccompProfile"),
        ),
    ],
)
def test_kubernetes_validation_catches_mistakes(tmp_path, kind, breakage):
    doc = k8s_docs()[kind]
    breakage(doc)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = run(sys.executable, DOCKER_DIR / "check_k8s.py", path)
    assert result.returncode == 1, result.stdout


def test_every_pod_runs_under_pod_security_restricted_seccomp():
    for kind, doc in k8s_docs().items():
        pods = (
            [r["template"]["spec"] for r in doc["spec"]["tfReplicaSpecs"].values()]
            if kind == "TFJob"
            else [doc["spec"]["template"]["spec"]]
            if "template" in doc.get("spec", {})
            else []
        )
        for spec in pods:
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, kind


def test_serving_survives_the_time_before_the_first_export():
    """Ports open only once a version is AVAILABLE: a startup probe with a long
    threshold guards liveness; readiness asks for AVAILABLE; labels need the flag."""
    container = k8s_docs()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 6 * 3600
    assert "AVAILABLE" in " ".join(container["readinessProbe"]["exec"]["command"])
    assert "--allow_version_labels_for_unavailable_models=true" in container["args"]


def _container(tfjob: dict) -> dict:
    return tfjob["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]


# --- The training image ----------------------------------------------------------


def test_dockerfile_builds_on_the_pinned_tensorflow_gpu_image():
    text = (DOCKER_DIR / "Dockerfile").read_text()
    assert re.search(r"^ARG TF_VERSION=(\S+)$", text, re.MULTILINE).group(1) == TF_PIN
    assert "FROM tensorflow/tensorflow:${TF_VERSION}-gpu" in text
    # TensorFlow is taken from the base image, never pip-installed on top.
    assert "grep -v '^tensorflow=='" in text
    assert 'ENTRYPOINT ["python", "-m", "trainer"]' in text
    user = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert user and user[-1] not in ("root", "0", "0:0")


def test_dockerfile_installs_requirements_without_tensorflow(tmp_path):
    """The Dockerfile's own sed/grep, run on requirements.txt: the pin is found and
    everything else, tensorflow-serving-api included, is installed."""
    text = (DOCKER_DIR / "Dockerfile").read_text()
    assert "sed -n 's/^tensorflow==//p' /tmp/requirements.txt" in text
    requirements = ROOT / "requirements.txt"
    pinned = run("sed", "-n", "s/^tensorflow==//p", requirements).stdout.strip()
    assert pinned == TF_PIN
    rest = run("grep", "-v", "^tensorflow==", requirements).stdout
    assert not re.search(r"^tensorflow==", rest, re.MULTILINE)
    for package in ("tensorflow-serving-api==", "tensorflow-datasets==", "keras=="):
        assert package in rest


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule (moby/patternmatcher): the last matching pattern
    wins, a pattern also matches a path's parent folders, `!` re-includes."""

    def regex(pattern: str) -> re.Pattern:
        out = re.escape(pattern.strip("/"))
        out = out.replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        return re.compile(out.replace(r"\?", "[^/]") + "$")

    ignored = False
    parts = path.split("/")
    for raw in patterns:
        negate, pattern = raw.startswith("!"), raw.lstrip("!")
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        if any(regex(pattern).match(c) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_what_the_image_copies():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    sent = ["requirements.txt", "trainer/cli.py", "trainer/__main__.py"]
    kept_out = [
        "artifacts/export/mnist/1/saved_model.pb",
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_deploy.py",
        "trainer/__pycache__/cli.cpython-311.pyc",
        "serving/client.py",
        "docker/Dockerfile",
        "README.md",
    ]
    for path in sent:
        assert not _dockerignored(path, patterns), path
    for path in kept_out:
        assert _dockerignored(path, patterns), path
    # Every COPY source of the Dockerfile reaches the build.
    copies = re.findall(r"^COPY (?:--\S+ )*(\S+) ", (DOCKER_DIR / "Dockerfile").read_text(), re.M)
    assert copies
    for source in copies:
        assert not _dockerignored(source.rstrip("/"), patterns), source


# --- Compose -------------------------------------------------------------------


def test_versions_match_everywhere(compose):
    services = compose["services"]
    assert services["trainer"]["build"]["args"]["TF_VERSION"] == f"${{TF_VERSION:-{TF_PIN}}}"
    assert services["serving"]["image"] == f"tensorflow/serving:${{SERVING_VERSION:-{TF_PIN}}}"
    assert services["serving-gpu"]["image"].endswith(f":${{SERVING_VERSION:-{TF_PIN}}}-gpu")
    docs = k8s_docs()
    assert _container(docs["TFJob"])["image"].endswith(f":{TF_PIN}")
    serving = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert serving["image"] == f"tensorflow/serving:{TF_PIN}"


def test_trainer_forwards_every_trainer_setting(compose):
    env = compose["services"]["trainer"]["environment"]
    fixed = {
        "data_dir": "/artifacts/data",
        "job_dir": "/artifacts/job",
        "export_dir": "/artifacts/export",
    }
    for f in dataclasses.fields(config.TrainConfig):
        name = config.env_name(f)
        if f.name in fixed:
            # Host paths go to the volumes; inside, the dirs are fixed mount points.
            assert env[name] == fixed[f.name]
        elif f.name == "idx_dir":
            assert env[name] == "${HOST_IDX_DIR:+/idx}"
        else:
            assert env[name] == f"${{{name}:-}}", name
    volumes = compose["services"]["trainer"]["volumes"]
    for host, inside in (("DATA", "data"), ("JOB", "job"), ("EXPORT", "export")):
        assert f"${{HOST_{host}_DIR:-../artifacts/{inside}}}:/artifacts/{inside}" in volumes


def test_gpu_reservation_and_cpu_fallback(compose):
    services = compose["services"]
    for name in ("trainer", "serving-gpu"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    for name in ("trainer-cpu", "serving", "tensorboard"):
        assert "deploy" not in services[name], name
    assert services["trainer-cpu"]["profiles"] == ["cpu"]
    assert services["serving-gpu"]["profiles"] == ["gpu"]
    # Every service runs as the host user (uid 1000 for root), never as root.
    for name in services:
        assert services[name]["user"] == "${DOCKER_UID:-1000}:${DOCKER_GID:-1000}"


def test_services_publish_only_on_localhost_and_mount_read_only(compose):
    services = compose["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    assert services["tensorboard"]["volumes"] == [
        "${HOST_JOB_DIR:-../artifacts/job}:/artifacts/job:ro"
    ]
    assert "/artifacts/job/logs" in services["tensorboard"]["command"]
    for name in ("serving", "serving-gpu"):
        assert all(v.endswith(":ro") for v in services[name]["volumes"])
        assert "${HOST_EXPORT_DIR:-../artifacts/export}:/models:ro" in services[name]["volumes"]
        assert services[name]["entrypoint"] == ["tensorflow_model_server"]
        flags = services[name]["command"]
        assert "--model_config_file=/config/${SERVING_MODEL_CONFIG:-models.config}" in flags
        assert "--batching_parameters_file=/config/batching.config" in flags
        assert "--monitoring_config_file=/config/monitoring.config" in flags


# --- The "model is AVAILABLE" probe, against a fake TF Serving --------------------


@pytest.fixture
def fake_serving() -> Iterator[tuple[int, dict]]:
    state = {"body": b"", "code": 404}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            state["path"] = self.path
            self.send_response(state["code"])
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(state["body"])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], state
    server.shutdown()


def _status(state: str, error: str = "OK") -> bytes:
    version = {"version": "3", "state": state, "status": {"error_code": error, "error_message": ""}}
    return json.dumps({"model_version_status": [version]}, indent=1).encode()


def test_health_probes_pass_only_when_the_model_is_available(compose, fake_serving):
    port, state = fake_serving
    check = compose["services"]["serving"]["healthcheck"]["test"]
    # One string (CMD-SHELL): the form Docker and podman's Docker API both run intact.
    assert isinstance(check, str)
    command = shlex.split(check)
    assert command[:2] == ["bash", "-c"] and len(command) == 3
    script = command[2].replace("${SERVING_MODEL:-mnist}", "mnist")
    # Kubernetes' readiness probe is the same check.
    serving = k8s_docs()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert serving["readinessProbe"]["exec"]["command"] == ["bash", "-c", script]

    script = script.replace("/8501", f"/{port}")
    cases = [
        (404, b'{"error": "Could not find any versions of model mnist"}', 1),
        (200, _status("LOADING"), 1),
        (200, _status("END", "NOT_FOUND"), 1),
        (200, _status("AVAILABLE"), 0),
    ]
    for code, body, expected in cases:
        state.update(code=code, body=body)
        result = run("bash", "-c", script)
        assert result.returncode == expected, (body, result.stderr)
    assert state["path"] == "/v1/models/mnist"


# --- Kubernetes semantics ------------------------------------------------------


def test_tfjob_runs_gpu_workers_on_the_shared_volume():
    docs = k8s_docs()
    worker = docs["TFJob"]["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] >= 2 and worker["restartPolicy"] == "ExitCode"
    container = _container(docs["TFJob"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    # The operator sets TF_CONFIG; setting it here would override the operator's.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "TF_CONFIG" not in env
    assert env["TRAINER_EXPORT_DIR"] == "/artifacts/export"
    assert {"name": "tfjob-port", "containerPort": 2222} in container["ports"]
    claim = docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    volumes = worker["template"]["spec"]["volumes"]
    assert volumes[0]["persistentVolumeClaim"]["claimName"] == claim
    # TF Serving reads the export folder of the same claim, read-only.
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
    models = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/models")
    assert models["subPath"] == "export" and models["readOnly"] is True
    ports = {p["name"]: p["port"] for p in docs["Service"]["spec"]["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}


# --- make targets in a bad environment -----------------------------------------

STUB_DOCKER = r"""#!/usr/bin/env bash
# A docker client whose engine is described by STUB_* variables; logs every call.
echo "$*" >> "$STUB_LOG"
case "$1" in
info)
	if [[ "$STUB_ENGINE" != up ]]; then
		echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." >&2
		exit 1
	fi
	[[ "$*" == *Runtimes* ]] && echo "$STUB_RUNTIMES"
	exit 0 ;;
compose)
	[[ "$STUB_COMPOSE" == yes ]] || { echo "docker: unknown command: docker compose" >&2; exit 1; }
	case " $* " in
	*" version "*) echo "Docker Compose version v2.40.0" ;;
	*" ps "*) ;;
	*) env | grep -E '^(TRAINER_|HOST_|MNIST_IDX_DIR=|GPUS=|DOCKER_UID=|TF_VERSION=|SERVING_)' \
		| sort > "$STUB_ENV" ;;
	esac ;;
esac
"""

# Variables a parent `make test` may export or pass down; the child make must not see them.
_INHERITED = re.compile(
    r"^(MAKEFLAGS|MAKELEVEL|MFLAGS|MAKEOVERRIDES|TRAINER_.*|HOST_.*|SERVING_.*|GPUS|TF_VERSION"
    r"|TENSORBOARD_PORT|DOCKER_UID|DOCKER_GID|MNIST_IDX_DIR|IDX_DIR|RUNTIME|DOCKER|SERVICE"
    r"|SERVE_TIMEOUT|EPOCHS|BATCH_SIZE|LEARNING_RATE|STRATEGY|SEED|MODEL_NAME|(DATA|JOB|EXPORT)_DIR)$"
)


@pytest.fixture
def stub(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(STUB_DOCKER)
    docker.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not _INHERITED.match(k)}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        STUB_LOG=str(tmp_path / "calls.log"),
        STUB_ENV=str(tmp_path / "env.log"),
        STUB_ENGINE="up",
        STUB_COMPOSE="yes",
        STUB_RUNTIMES="io.containerd.runc.v2 runc",
    )

    class Stub:
        def make(self, *args: str, **stub_env: str) -> subprocess.CompletedProcess:
            return run("make", "-s", *args, env={**env, **stub_env})

        def preflight(self, *args: str, **stub_env: str) -> subprocess.CompletedProcess:
            return run("bash", DOCKER_DIR / "preflight.sh", *args, env={**env, **stub_env})

        def engine(self, *args: str, **stub_env: str) -> subprocess.CompletedProcess:
            engine_env = {k: v for k, v in env.items() if k != "DOCKER_HOST"}
            return run("bash", DOCKER_DIR / "engine.sh", *args, env={**engine_env, **stub_env})

        def calls(self) -> list[str]:
            log = tmp_path / "calls.log"
            return log.read_text().splitlines() if log.exists() else []

        def env(self) -> dict[str, str]:
            lines = (tmp_path / "env.log").read_text().splitlines()
            return dict(line.split("=", 1) for line in lines)

    return Stub()


@pytest.fixture
def export_dir(tmp_path) -> Path:
    version = tmp_path / "export" / "mnist" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    return tmp_path / "export"


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    # make's own trailer ("make: *** [serve] Error 2") aside, one line says what to do.
    lines = [ln for ln in result.stderr.strip().splitlines() if not ln.startswith("make: ***")]
    assert len(lines) == 1 and lines[0].startswith("make "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_serve_without_an_export_says_to_train_first(stub, tmp_path):
    result = stub.make("serve", f"EXPORT_DIR={tmp_path / 'nothing'}")
    one_line_error(result, "no exported model", "make train")
    assert stub.calls() == []  # decided before touching Docker


def test_no_engine_says_how_to_start_one(stub, export_dir):
    for target in ("serve", "tensorboard-docker", "stop", "logs"):
        result = stub.make(target, f"EXPORT_DIR={export_dir}", STUB_ENGINE="down")
        one_line_error(result, "no Docker engine answers", "start it")


def test_no_docker_client_or_compose_plugin(stub, export_dir):
    result = stub.make("serve", f"EXPORT_DIR={export_dir}", DOCKER="/nonexistent/docker")
    one_line_error(result, "docker command is not installed")
    result = stub.make("serve", f"EXPORT_DIR={export_dir}", STUB_COMPOSE="no")
    one_line_error(result, "Docker Compose v2 is missing", "docker-compose-plugin")


def test_busy_port_names_the_variable_to_change(stub, export_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = stub.make(
            "serve",
            f"EXPORT_DIR={export_dir}",
            f"SERVING_REST_PORT={port}",
            f"SERVING_GRPC_PORT={free_ports()[0]}",
        )
    one_line_error(result, f"port {port}", "SERVING_REST_PORT=")
    assert not any(" up " in c for c in stub.calls())


def test_gpu_request_without_nvidia_runtime(stub, export_dir):
    result = stub.make("serve", f"EXPORT_DIR={export_dir}", "SERVING_GPU=1")
    one_line_error(
        result, "no NVIDIA runtime", "nvidia-ctk runtime configure", "with SERVING_GPU=0"
    )


def test_serve_starts_tf_serving_and_waits(stub, export_dir):
    rest, grpc = free_ports(2)
    result = stub.make(
        "serve",
        f"EXPORT_DIR={export_dir}",
        f"SERVING_REST_PORT={rest}",
        f"SERVING_GRPC_PORT={grpc}",
    )
    assert result.returncode == 0, result.stderr
    (up,) = [c for c in stub.calls() if " up " in c]
    assert up.endswith(" serving") and "--wait" in up
    env = stub.env()
    assert env["HOST_EXPORT_DIR"] == str(export_dir)
    assert (env["SERVING_REST_PORT"], env["SERVING_MODEL"]) == (str(rest), "mnist")
    assert env["SERVING_VERSION"] == TF_PIN


def test_train_in_docker_passes_the_variables(stub, tmp_path):
    result = stub.make(
        "train",
        "RUNTIME=docker",
        "EPOCHS=3",
        "BATCH_SIZE=64",
        f"DATA_DIR={tmp_path / 'd'}",
        f"JOB_DIR={os.path.relpath(tmp_path / 'j', ROOT)}",
        "GPUS=0",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (run_call,) = [c for c in stub.calls() if " run " in c]
    assert re.search(r"compose -f \S*docker/compose.yaml run --rm trainer(-cpu)?$", run_call)
    env = stub.env()
    assert (env["TRAINER_EPOCHS"], env["TRAINER_BATCH_SIZE"]) == ("3", "64")
    # Compose resolves relative paths from docker/: make hands it absolute ones.
    assert env["HOST_DATA_DIR"] == str(tmp_path / "d")
    assert env["HOST_JOB_DIR"] == str(tmp_path / "j")  # given relative to the repo root
    assert env["TF_VERSION"] == TF_PIN


@pytest.mark.parametrize(
    "gpus, runtimes, outcome",
    [
        ("", "runc nvidia", "trainer"),
        ("", "runc", "trainer-cpu"),
        ("0", "runc nvidia", "trainer-cpu"),
        ("2", "runc nvidia", "trainer"),
        ("2", "runc", "no NVIDIA runtime"),
        ("all", "runc", "on CPU with GPUS=0"),
        ("two", "runc nvidia", "is not a GPU count"),
    ],
)
def test_trainer_service_follows_gpus(stub, tmp_path, gpus, runtimes, outcome):
    dirs = {f"HOST_{d}_DIR": str(tmp_path / d) for d in ("DATA", "JOB", "EXPORT")}
    result = stub.preflight("run-trainer", GPUS=gpus, STUB_RUNTIMES=runtimes, **dirs)
    if outcome.startswith("trainer"):
        assert result.returncode == 0, result.stderr
        assert stub.calls()[-1].endswith(f"run --rm {outcome}")
        assert all(Path(d).is_dir() for d in dirs.values())  # created before Docker could
    else:
        one_line_error(result, outcome)


# --- make engine (docker/engine.sh) where an engine already answers -----------------


def test_make_engine_leaves_a_working_docker_alone(stub, tmp_path):
    """With real Docker answering, nothing is installed, configured, started or built."""
    engine_dir = tmp_path / "engine"
    result = stub.engine("start", ENGINE_DIR=str(engine_dir))
    assert result.returncode == 0, result.stderr
    assert "a Docker engine already answers" in result.stderr and "nothing to do" in result.stderr
    assert result.stdout == ""  # no DOCKER_HOST to export: the user's stays
    assert not engine_dir.exists()
    assert stub.calls() == ["info", "info --format {{.ServerVersion}}"]
    stopped = stub.engine("stop", ENGINE_DIR=str(engine_dir))
    assert stopped.returncode == 0 and "not running; nothing to stop" in stopped.stderr
    assert not engine_dir.exists()


def test_engine_usage_lists_its_commands(stub):
    result = stub.engine()
    assert result.returncode == 2
    for command in ("start", "stop", "status", "env"):
        assert f"engine.sh {command}" in result.stderr
