"""The gRPC client end to end: real TensorFlow, real gRPC on 127.0.0.1, the CLI as a
subprocess with --protocol grpc.

The server is tools/standin/, which serves TF Serving's PredictionService and
ModelService beside its REST API from the same loaded SavedModels; every answer over gRPC
is checked against the same question over REST. tests/test_integration.py runs gRPC checks
against the real tensorflow/serving container.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from digits.contract import IMAGE, MODEL_NAME, PIXELS
from serving.client import ServingClient
from serving.grpc_client import GrpcError, GrpcServingClient, to_array, to_tensor_proto
from support import (
    CHILD_ENV,
    IDX_IMAGES,
    ROOT,
    SAMPLES,
    assert_probabilities_close,
    assert_same_predictions,
    client_json,
    error_line,
    free_ports,
    make_digits,
    run_client,
)
from tools.standin import READY, ModelServer, StandInServer, typed_tensor_proto

# Under pytest-xdist (make test), this module's tests share module-scoped fixtures:
# one worker runs them all, so each fixture is built once.
pytestmark = pytest.mark.xdist_group("test_grpc")


@pytest.fixture(scope="module")
def server(export_base: Path):
    model = ModelServer(export_base, num_versions=2, labels={"stable": 1, "canary": 2})
    with StandInServer(model, grpc_port=0) as standin:
        yield standin


def grpc_args(server) -> list[str]:
    return ["--protocol", "grpc", "--grpc-target", server.grpc_target]


# --- The same answers over both protocols.


@pytest.mark.parametrize("args", [(), ("--version", "1"), ("--label", "canary")])
def test_status_and_metadata_match_rest(server, args) -> None:
    for command in ("status", "metadata"):
        rest = client_json(command, *args, url=server.url)
        over_grpc = client_json(command, *args, *grpc_args(server), url=server.url)
        assert over_grpc == rest
    text = run_client("status", *grpc_args(server))
    assert text.returncode == 0, text.stderr
    assert text.stdout == run_client("status", url=server.url).stdout


def test_pixels_and_images_match_rest(server, idx_dir: Path) -> None:
    """serving_default (DT_UINT8 tensor_content) and predict_image (DT_STRING): the same
    classes, probabilities within a few ulps, in both directions of the decoding."""
    idx = ["--idx", str(idx_dir / IDX_IMAGES), "--count", "40", "--batch-size", "16"]
    pngs = [str(p) for p in sorted(SAMPLES.glob("*.png"))]
    for args in (idx, pngs, ["--decode", "local", *pngs]):
        rest = client_json("predict", *args, url=server.url)
        over_grpc = client_json("predict", *args, *grpc_args(server), url=server.url)
        assert_same_predictions(over_grpc["predictions"], rest["predictions"])
        assert over_grpc.get("accuracy") == rest.get("accuracy")
    assert {r["signature"] for r in over_grpc["predictions"]} == {PIXELS.name}

    images, _ = make_digits(70, seed=7)
    blobs = [p.read_bytes() for p in sorted(SAMPLES.glob("*.png"))]
    with ServingClient(server.url) as a, GrpcServingClient(server.grpc_target, label="canary") as b:
        for call, arg in (
            (lambda c, x: c.predict_pixels(x), images),
            (lambda c, x: c.predict_image_bytes(x), blobs),
        ):
            x, y = call(a, arg), call(b, arg)
            np.testing.assert_array_equal(y.classes, x.classes)
            assert_probabilities_close(y.probabilities, x.probabilities)
            assert y.probabilities.dtype == np.float32 and y.classes.dtype == np.int64


def test_tensor_protos_round_trip_without_tensorflow() -> None:
    import tensorflow as tf

    pixels = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28, 1)
    proto = to_tensor_proto(pixels, PIXELS.dtype)
    np.testing.assert_array_equal(tf.make_ndarray(_tf_proto(proto)), pixels)
    strings = to_tensor_proto([b"\x89PNG", b"\xff\xd8\xff"], IMAGE.dtype)
    assert tf.make_ndarray(_tf_proto(strings)).tolist() == [b"\x89PNG", b"\xff\xd8\xff"]
    # Outputs come back in typed fields (TF Serving's AsProtoField) or tensor_content.
    for array in (np.array([[0.25, 0.75]], np.float32), np.array([3, 7], np.int64)):
        for tf_proto in (tf.make_tensor_proto(array), typed_tensor_proto(array)):
            ours = type(proto).FromString(tf_proto.SerializeToString())
            np.testing.assert_array_equal(to_array(ours), array)
            assert to_array(ours).dtype == array.dtype
    assert not typed_tensor_proto(array).tensor_content


def _tf_proto(ours):
    from tensorflow.core.framework import tensor_pb2

    return tensor_pb2.TensorProto.FromString(ours.SerializeToString())


# --- Errors: the same one-line messages and exit codes as over REST.


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("status", "--model", "nope"), "NOT_FOUND", "Could not find any versions of model nope"),
        (
            ("status", "--version", "9"),
            "NOT_FOUND",
            f"Could not find version 9 of model {MODEL_NAME}",
        ),
        (
            ("metadata", "--model", "nope"),
            "NOT_FOUND",
            "Servable not found for request: Latest(nope)",
        ),
        (
            ("predict", "--version", "9", "--idx", "IDX"),
            "NOT_FOUND",
            f"Servable not found for request: Specific({MODEL_NAME}, 9)",
        ),
        (
            ("predict", "--label", "nope", "--idx", "IDX"),
            "INVALID_ARGUMENT",
            "Unrecognized servable version label: nope",
        ),
    ],
)
def test_server_errors_are_one_line_with_their_code(server, idx_dir, args, code, message) -> None:
    args = [str(idx_dir / IDX_IMAGES) if a == "IDX" else a for a in args]
    line = error_line(run_client(*args, *grpc_args(server)), 1)
    assert line.startswith(f"error: gRPC {code} from grpc://{server.grpc_target} ")
    assert line.endswith(f": {message}")
    rest = error_line(run_client(*args, url=server.url), 1)
    assert rest.endswith(f": {message}")  # the same server message over REST


def test_bad_input_is_refused_before_sending(server, tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.zeros((32, 32), np.uint8))
    seen = server.model.requests_seen
    args = ("predict", str(tmp_path / "w.npy"))
    line = error_line(run_client(*args, *grpc_args(server)), 2)
    assert line == error_line(run_client(*args, url=server.url), 2)
    assert "(32, 32)" in line and server.model.requests_seen == seen


def test_invalid_tensors_are_invalid_argument(server) -> None:
    """What the client's checks keep from the server, sent through the raw call."""
    with GrpcServingClient(server.grpc_target) as client:
        cases = [
            (np.zeros((1, 32, 32, 1), np.uint8), PIXELS.input, "uint8", "[1,32,32,1]"),
            (np.zeros((1, 28, 28, 1), np.float32), PIXELS.input, "float32", "to be uint8"),
            (np.zeros((1, 28, 28, 1), np.uint8), "pixels", "uint8", "Missing: {images}"),
        ]
        for batch, name, dtype, text in cases:
            with pytest.raises(GrpcError) as caught:
                client.predict(batch, signature=PIXELS.name, input_name=name, dtype=dtype)
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.status == 400 and text in caught.value.message
        with pytest.raises(GrpcError) as caught:
            client.predict(
                np.zeros((1, 28, 28, 1), np.uint8), signature="nope", input_name="x", dtype="uint8"
            )
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert 'Serving signature key "nope" not found.' in str(caught.value)


def test_server_down_is_unavailable_after_retries_and_fast() -> None:
    target = f"127.0.0.1:{free_ports()[0]}"
    started = time.monotonic()
    result = run_client("status", "--protocol", "grpc", "--grpc-target", target, "--retries", "2")
    line = error_line(result, 1)
    assert line.startswith(f"error: cannot connect to grpc://{target} (Connection refused)")
    assert "after 2 retries" in line
    assert time.monotonic() - started < 15


def test_resource_exhausted_is_retried_too(server) -> None:
    """RESOURCE_EXHAUSTED (a request timed out in the batching queue; HTTP 429 over REST)
    is retried with backoff, as UNAVAILABLE is (batching_session.cc)."""
    model = server.model
    try:
        model.exhausted_requests, seen = 2, model.requests_seen
        ok = run_client("status", *grpc_args(server), "--retries", "3", "--backoff", "0.01")
        assert ok.returncode == 0, ok.stderr
        assert model.requests_seen - seen == 3
        model.exhausted_requests = 1
        rest = run_client("status", "--retries", "1", "--backoff", "0.01", url=server.url)
        assert rest.returncode == 0, rest.stderr  # HTTP 429, retried
        model.exhausted_requests = 5
        line = error_line(run_client("status", *grpc_args(server), "--retries", "0"), 1)
        assert "gRPC RESOURCE_EXHAUSTED" in line
    finally:
        model.exhausted_requests = 0


def test_status_by_label_asks_metadata_first(server) -> None:
    """GetModelStatus ignores version_label (get_model_status_impl.cc): the raw call lists
    every version; the client resolves the label with GetModelMetadata first."""
    raw = get_model_status_pb2.GetModelStatusRequest()
    raw.model_spec.name, raw.model_spec.version_label = MODEL_NAME, "stable"
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(raw)
    assert [v.version for v in answer.model_version_status] == [2, 1]
    with GrpcServingClient(server.grpc_target, label="stable") as client:
        assert client.label_version() == 1
        assert [v["version"] for v in client.status()["model_version_status"]] == ["1"]
    line = error_line(run_client("status", "--label", "nope", *grpc_args(server)), 1)
    assert line.endswith(
        "GetModelMetadata mnist label nope: Unrecognized servable version label: nope"
    )


def test_unavailable_is_retried_then_reported(server) -> None:
    model = server.model
    try:
        model.unavailable_requests, seen = 2, model.requests_seen
        ok = run_client("status", *grpc_args(server), "--retries", "3", "--backoff", "0.01")
        assert ok.returncode == 0, ok.stderr
        assert model.requests_seen - seen == 3  # two UNAVAILABLE, then the answer

        model.unavailable_requests, seen = 5, model.requests_seen
        args = ("status", *grpc_args(server), "--retries", "1", "--backoff", "0")
        line = error_line(run_client(*args), 1)
        assert "gRPC UNAVAILABLE" in line and "unavailable" in line
        assert model.requests_seen - seen == 2  # the first try and one retry: bounded
    finally:
        model.unavailable_requests = 0


def test_hung_server_is_a_deadline_retried_at_most_once() -> None:
    with socket.socket() as listener:  # accepts connections, never speaks HTTP/2
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        target = f"127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        args = ("--protocol", "grpc", "--grpc-target", target, "--timeout", "0.5")
        line = error_line(run_client("status", *args, "--retries", "3"), 1)
    assert f"GetModelStatus grpc://{target}: no response within 0.5 s" in line
    assert time.monotonic() - started < 10


def test_one_client_uses_one_connection(server) -> None:
    before = set(server.model.grpc_peers)
    with GrpcServingClient(server.grpc_target) as client:
        for _ in range(5):
            client.status()
    assert len(server.model.grpc_peers - before) == 1


def test_target_and_protocol_are_checked() -> None:
    for args, text in [
        (("--protocol", "grpc", "--grpc-target", "nonsense"), "expected host:port"),
        (("--protocol", "soap"), "'soap' is not one of rest, grpc"),
        (("--url", "grpc://127.0.0.1:8500"), "use --protocol grpc --grpc-target 127.0.0.1:8500"),
    ]:
        assert text in error_line(run_client("status", *args), 2)
    line = error_line(run_client("status", SERVING_PROTOCOL="grpc2"), 2)
    assert "SERVING_PROTOCOL='grpc2'" in line
    target = f"127.0.0.1:{free_ports()[0]}"  # the environment picks protocol and target
    line = error_line(run_client("status", SERVING_PROTOCOL="grpc", SERVING_GRPC_TARGET=target), 1)
    assert f"cannot connect to grpc://{target}" in line


def test_the_grpc_client_never_imports_tensorflow() -> None:
    """`python -X importtime -m serving status --protocol grpc`: grpc and protobuf, no
    `tensorflow` or `tensorflow_serving` package (serving/protos/__init__.py says how)."""
    target = f"127.0.0.1:{free_ports()[0]}"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "serving", "status", "--retries", "0"]
        + ["--protocol", "grpc", "--grpc-target", target],
        cwd=ROOT,
        env={k: v for k, v in CHILD_ENV.items() if not k.startswith("SERVING_")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    imported = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", result.stderr, re.M)
    assert "grpc" in imported and "serving.grpc_client" in imported
    heavy = ("tensorflow", "tensorflow_serving", "trainer", "keras")
    assert [m for m in imported if m.split(".")[0] in heavy] == []
    assert result.returncode == 1


def test_standin_ready_line_names_both_urls(export_base: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.standin", "--model-base-path", str(export_base)]
        + ["--port", "0", "--grpc-port", "0", "--label", "stable=2"],
        cwd=ROOT,
        env=CHILD_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = process.stdout.readline()
        found = re.match(
            re.escape(READY) + r"(http://127\.0\.0\.1:\d+) and gRPC on grpc://(127\.0\.0\.1:\d+) ",
            line,
        )
        assert found, line
        grpc_target = ("--protocol", "grpc", "--grpc-target", found[2])
        answer = client_json("status", "--label", "stable", *grpc_target, url=found[1])
        assert answer["model_version_status"][0]["version"] == "2"
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()
