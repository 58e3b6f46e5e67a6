"""The client checks against the real tensorflow/serving container (make integration).

Exports a fresh small model (versions 1 and 2), then brings up docker/compose.yaml's
`serving` service on it: `docker compose -f docker/compose.yaml up -d serving`, in a
compose project of its own and on free ports, so a `make serve` already running is
left alone. Everything then goes through the real server: its REST API, models.config,
batching.config, monitoring.config and the export's warmup records.

Skips, saying why, where no Docker engine answers `docker info` (as in plain
`make test` on a machine without Docker).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import tensorflow as tf

from digits import contract
from digits.contract import CLASSES, IMAGE, MODEL_NAME, PIXELS, PROBABILITIES
from support import (
    IDX_IMAGES,
    ROOT,
    SAMPLES,
    TEST_SIZE,
    assert_probabilities_close,
    assert_same_predictions,
    client_json,
    error_line,
    free_ports,
    make_digits,
    needs_image_signature,
    run_client,
    status_versions,
    two_version_export,
)

pytestmark = pytest.mark.integration

PROJECT = "digit-serve-integration"
UP_TIMEOUT = 180  # seconds: image pull on first use, then load and warmup
BLANK = [[[0]] * contract.COLS] * contract.ROWS  # one all-black pixels example, as JSON


def docker_missing() -> str | None:
    """Why the real server cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "no `docker` command on PATH"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no Docker engine answers `docker info` ({last})"
    compose = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
    if compose.returncode != 0:
        return "`docker compose` (the Compose v2 plugin) is not installed"
    return None


def compose(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    command = ["docker", "compose", "-f", "docker/compose.yaml", "-p", PROJECT, *args]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def export_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = docker_missing()
    if reason:
        pytest.skip(reason)  # before any training: the skip costs nothing
    return two_version_export(tmp_path_factory.mktemp("integration"))


@pytest.fixture(scope="module")
def ports(export_base: Path) -> tuple[int, int]:
    """Free loopback ports for the server's REST and gRPC APIs."""
    rest, grpc = free_ports(2)
    return rest, grpc


@pytest.fixture(scope="module")
def url(export_base: Path, ports: tuple[int, int]):
    rest, grpc = ports
    env = {
        **os.environ,
        "HOST_EXPORT_DIR": str(export_base.parent),
        "SERVING_REST_PORT": str(rest),
        "SERVING_GRPC_PORT": str(grpc),
        # The server runs as DOCKER_UID:DOCKER_GID; as the owner of the fresh export, it
        # can read pytest's private (0700) temporary folders.
        "DOCKER_UID": str(os.getuid()),
        "DOCKER_GID": str(os.getgid()),
    }
    try:
        wait = ("--wait", "--wait-timeout", str(UP_TIMEOUT))  # until the healthcheck passes
        up = compose("up", "-d", *wait, "serving", env=env, timeout=UP_TIMEOUT + 120)
        if up.returncode != 0:
            logs = compose("logs", "--tail", "30", "serving", env=env).stdout
            pytest.fail(f"TF Serving did not come up:\n{up.stderr}\n{logs}")
        yield f"http://127.0.0.1:{rest}"
    finally:
        compose("down", "--remove-orphans", env=env)


@pytest.fixture(scope="module")
def loaded(export_base: Path):
    return tf.saved_model.load(str(export_base / "2"))


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
        ({"instances": [BLANK] * 129}, 400),  # over batching.config's max_batch_size 128
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
