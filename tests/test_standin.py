"""The stand-in (tools/standin/) follows TF Serving's rules where a lenient double would
hide a bug: status ignores labels, versions pass LOADING -> AVAILABLE -> END and answer
404 while loading, config reloads check labels as server_core.cc does, a label never keeps
a dropped version, batching has a bounded queue with the real errors, the metrics page
has TF Serving's names, and the HTTP layer answers a bad Content-Length as libevent does,
with bounded threads. Each test names the TF Serving source it checks against.

Real TensorFlow, real HTTP and gRPC on 127.0.0.1; the export is tests/conftest.py's.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from digits.contract import MODEL_NAME, PIXELS
from support import status_versions
from tools.standin import BatchingParameters, ModelServer, StandInServer

BLANK = [[[0]] * 28] * 28  # one all-black pixels example, as JSON


class Gate:
    """A loading_gate that holds the given versions in LOADING until opened."""

    def __init__(self, *versions: int):
        self.versions, self.opened, self.reached = set(versions), threading.Event(), {}

    def __call__(self, version: int) -> None:
        if version in self.versions:
            self.reached.setdefault(version, threading.Event()).set()
            assert self.opened.wait(120), "gate never opened"

    def wait_reached(self, version: int) -> None:
        deadline = time.monotonic() + 60
        while version not in self.reached and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.reached[version].wait(60)


@pytest.fixture
def base(export_base: Path, tmp_path: Path) -> Path:
    """Versions 1 and 2 of the export (links), in a folder of the test's own."""
    folder = tmp_path / MODEL_NAME
    folder.mkdir()
    for v in (1, 2):
        (folder / str(v)).symlink_to(export_base / str(v))
    return folder


def add_version(base: Path, version: int, export_base: Path) -> None:
    (base / str(version)).symlink_to(export_base / "1")


def predict(url: str, path: str = "", n: int = 1) -> requests.Response:
    body = {"instances": [BLANK] * n}
    return requests.post(f"{url}/v1/models/{MODEL_NAME}{path}:predict", json=body, timeout=60)


def states(url: str) -> dict[str, str]:
    return status_versions(requests.get(f"{url}/v1/models/{MODEL_NAME}", timeout=60).json())


# --- Status, labels, version states (get_model_status_impl.cc, basic_manager.cc).


def test_status_ignores_the_label_over_rest_and_grpc(base: Path) -> None:
    """get_model_status_impl.cc looks only at a version: with a label, every version."""
    model = ModelServer(base, num_versions=2, labels={"stable": 1})
    with StandInServer(model, grpc_port=0) as server:
        for label in ("stable", "nope"):
            answer = requests.get(f"{server.url}/v1/models/{MODEL_NAME}/labels/{label}").json()
            assert status_versions(answer) == {"2": "AVAILABLE", "1": "AVAILABLE"}
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name, request.model_spec.version_label = MODEL_NAME, "stable"
        with grpc.insecure_channel(server.grpc_target) as channel:
            response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request)
        assert [v.version for v in response.model_version_status] == [2, 1]
        # The metadata call honours the label: model_spec says which version it reached.
        meta = requests.get(f"{server.url}/v1/models/{MODEL_NAME}/labels/stable/metadata")
        assert meta.json()["model_spec"]["version"] == "1"


def test_versions_load_then_unload_and_answer_404_while_loading(
    base: Path, export_base: Path
) -> None:
    gate = Gate(3)
    model = ModelServer(base, num_versions=2, loading_gate=gate)
    with StandInServer(model) as server:
        add_version(base, 3, export_base)
        model.refresh()  # the file-system poll finds version 3
        gate.wait_reached(3)
        # latest { num_versions: 2 } now wants 3 and 2; 2 is up, so 1 is unloaded at once
        # (availability_preserving_policy.cc), and stays listed as END.
        assert states(server.url) == {"3": "LOADING", "2": "AVAILABLE", "1": "END"}
        loading = predict(server.url, "/versions/3")
        assert loading.status_code == 404  # basic_manager.cc: not 503
        assert loading.json() == {
            "error": f"Servable not found for request: Specific({MODEL_NAME}, 3)"
        }
        assert (
            requests.get(f"{server.url}/v1/models/{MODEL_NAME}/versions/3").json()[
                "model_version_status"
            ][0]["state"]
            == "LOADING"
        )
        assert predict(server.url).status_code == 200  # the latest AVAILABLE one: 2
        gate.opened.set()
        model.wait_loaded()
        assert states(server.url) == {"3": "AVAILABLE", "2": "AVAILABLE", "1": "END"}
        assert predict(server.url, "/versions/1").status_code == 404


def test_a_label_never_keeps_a_version_the_policy_drops(base: Path, export_base: Path) -> None:
    model = ModelServer(base, num_versions=2, labels={"stable": 1})
    with StandInServer(model) as server:
        assert predict(server.url, "/labels/stable").status_code == 200
        add_version(base, 3, export_base)
        model.refresh(wait=True)
        assert states(server.url)["1"] == "END"
        answer = predict(server.url, "/labels/stable")
        assert answer.status_code == 404
        assert "Specific(mnist, 1)" in answer.json()["error"]


def test_a_failed_load_ends_the_version_and_keeps_the_old_one(base: Path) -> None:
    model = ModelServer(base, num_versions=1)
    with StandInServer(model) as server:
        (base / "3").mkdir()  # a version folder with no SavedModel in it
        model.refresh(wait=True)
        assert predict(server.url).status_code == 200  # 2 still serves
        answer = requests.get(f"{server.url}/v1/models/{MODEL_NAME}").json()
        by_version = {v["version"]: v for v in answer["model_version_status"]}
        assert by_version["3"]["state"] == "END"
        assert by_version["3"]["status"]["error_code"] != "OK"
        assert by_version["3"]["status"]["error_message"]
        assert by_version["2"]["state"] == "AVAILABLE"


# --- Config reloads (server_core.cc ReloadConfig, UpdateModelVersionLabelMap).

CONFIG = """model_config_list {{
  config {{
    name: "mnist"
    base_path: "/models/mnist"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ {versions} }} }}
{labels}  }}
}}
"""


def write_config(path: Path, versions: tuple[int, ...], **labels: int) -> Path:
    lines = "".join(f'    version_labels {{ key: "{k}" value: {v} }}\n' for k, v in labels.items())
    path.write_text(
        CONFIG.format(versions=" ".join(f"versions: {v}" for v in versions), labels=lines)
    )
    return path


def test_moving_a_label_to_a_version_not_available_fails_every_reload(
    base: Path, export_base: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(tmp_path / "models.config", (1, 2), stable=1, canary=2)
    add_version(base, 3, export_base)
    gate = Gate(3)
    model = ModelServer(base, config_file=config, loading_gate=gate)
    with StandInServer(model) as server:
        assert model.labels == {"stable": 1, "canary": 2}
        # One edit that adds version 3 and moves canary to it: the label check comes
        # first, fails, and nothing of the edit applies, so version 3 never even loads.
        write_config(config, (1, 2, 3), stable=1, canary=3)
        with caplog.at_level(logging.ERROR, logger="tools.standin"):
            for _ in range(2):
                assert model.poll_config() is False
        refusal = (
            "Request to assign label to version 3 of model mnist, which is not currently "
            "available for inference"
        )
        assert model.config_error == refusal
        assert f"PollFilesystemAndReloadConfig failed to ReloadConfig: {refusal}" in caplog.text
        assert model.labels == {"stable": 1, "canary": 2}
        assert "3" not in states(server.url)
        meta = requests.get(f"{server.url}/v1/models/{MODEL_NAME}/labels/canary/metadata")
        assert meta.json()["model_spec"]["version"] == "2"  # still answering from 2

        # The way that works: add the version, wait for it, then move the label.
        write_config(config, (1, 2, 3), stable=1, canary=2)
        assert model.poll_config() is True
        gate.wait_reached(3)
        write_config(config, (1, 2, 3), stable=1, canary=3)
        assert model.poll_config() is False  # 3 is LOADING, not AVAILABLE
        gate.opened.set()
        model.wait_loaded()
        assert model.poll_config() is True and model.config_error is None
        assert model.labels == {"stable": 1, "canary": 3}


def test_new_labels_need_the_flag_moved_ones_an_available_version(
    base: Path, tmp_path: Path
) -> None:
    # At start-up no version has loaded yet: without the flag every label fails, and the
    # real server refuses to start (tensorflow/serving#1608).
    strict = ModelServer(
        base, labels={"stable": 1}, allow_version_labels_for_unavailable_models=False
    )
    with pytest.raises(ValueError, match="not currently available for inference"):
        strict.load()
    for allow in (True, False):
        config = write_config(tmp_path / f"{allow}.config", (1, 2))
        model = ModelServer(
            base, config_file=config, allow_version_labels_for_unavailable_models=allow
        )
        with StandInServer(model):
            write_config(config, (1, 2), stable=1)
            assert model.poll_config() is True  # a new label on an AVAILABLE version
            write_config(config, (1, 2), stable=1, next=7)
            assert model.poll_config() is allow  # a new label on version 7, never seen
            write_config(config, (1, 2), stable=2)
            assert model.poll_config() is True  # an existing label moving to AVAILABLE 2
            assert model.labels == {"stable": 2}


# --- Batching (batching_session.cc, shared_batch_scheduler.h).

BATCHING = dict(
    max_batch_size=4,
    batch_timeout_micros=0,
    max_enqueued_batches=1,
    num_batch_threads=1,
    enable_large_batch_splitting=True,
    max_execution_batch_size=1,
)


def _in_thread(call, *args) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(call(*args)), daemon=True)
    thread.start()
    return thread, result


def _wait_for(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_full_queue_answers_503_and_a_big_request_400(base: Path) -> None:
    params = BatchingParameters(**BATCHING)
    model = ModelServer(base, batching=params)
    with StandInServer(model, grpc_port=0) as server:
        model.batcher.hold = threading.Event()
        first, a = _in_thread(predict, server.url)  # taken by the one batch thread
        _wait_for(lambda: model.batcher.batches_taken == 1)
        second, b = _in_thread(predict, server.url)  # fills the one open batch
        _wait_for(lambda: model.batcher.queued() == 1)
        full = predict(server.url)
        assert full.status_code == 503
        assert full.json()["error"] == (
            "The batch scheduling queue to which this task was submitted is full; task size "
            "is 1 but scheduling capacity is only 0 (num_enqueued_batches=1, "
            "max_enqueued_batches=1, open_batch_size=1, max_execution_batch_size=1)"
        )
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL_NAME
        request.inputs[PIXELS.input].CopyFrom(
            tf.make_tensor_proto(np.zeros((1, 28, 28, 1), np.uint8))
        )
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        model.batcher.hold.set()
        for thread in (first, second):
            thread.join(60)
        assert [a[0].status_code, b[0].status_code] == [200, 200]
        big = predict(server.url, n=5)
        assert big.status_code == 400
        assert big.json()["error"] == "Task size 5 is larger than maximum input batch size 4"


def test_a_request_that_times_out_in_the_queue_gets_429(base: Path) -> None:
    model = ModelServer(base, batching=BatchingParameters(**BATCHING), rest_timeout_ms=300)
    with StandInServer(model) as server:
        model.batcher.hold = threading.Event()
        first, a = _in_thread(predict, server.url)
        _wait_for(lambda: model.batcher.batches_taken == 1)
        second, b = _in_thread(predict, server.url)
        _wait_for(lambda: model.batcher.queued() == 1)
        time.sleep(0.5)  # past the second request's 300 ms in the queue
        model.batcher.hold.set()
        for thread in (first, second):
            thread.join(60)
        assert a[0].status_code == 200  # taken off the queue in time
        assert b[0].status_code == 429  # RESOURCE_EXHAUSTED
        assert b[0].json() == {"error": "Run() timeout exceeded while waiting in batching queue"}


def test_concurrent_requests_run_as_one_merged_batch(base: Path) -> None:
    params = BatchingParameters(
        max_batch_size=8, batch_timeout_micros=0, num_batch_threads=1, max_enqueued_batches=4
    )
    model = ModelServer(base, batching=params)
    with StandInServer(model) as server:
        model.batcher.hold = threading.Event()
        first, _ = _in_thread(predict, server.url)
        _wait_for(lambda: model.batcher.batches_taken == 1)
        threads = [_in_thread(predict, server.url, "", n) for n in (1, 2, 3)]
        _wait_for(lambda: model.batcher.queued() == 3)
        model.batcher.hold.set()
        first.join(60)
        for thread, result in threads:
            thread.join(60)
            assert result[0].status_code == 200
        assert [len(r[0].json()["predictions"]) for _, r in threads] == [1, 2, 3]
        assert model.batcher.batches_taken == 2  # the three ran as one batch of 6


# --- Metrics (servables/tensorflow/util.cc, util/prometheus_exporter.cc).


def test_metrics_count_requests_by_status_and_sample_latency(base: Path) -> None:
    model = ModelServer(base, metrics_path="/monitoring/prometheus/metrics")
    with StandInServer(model) as server:
        assert predict(server.url).status_code == 200
        assert predict(server.url, "/versions/9").status_code == 404
        assert predict(server.url, "/labels/nope").status_code == 400
        page = requests.get(f"{server.url}/monitoring/prometheus/metrics").text
    count = ":tensorflow:serving:request_count"
    assert "# TYPE :tensorflow:serving:request_count counter" in page
    for status in ("OK", "NOT_FOUND", "INVALID_ARGUMENT"):
        assert f'{count}{{model_name="mnist",status="{status}"}} 1' in page
    latency = ':tensorflow:serving:request_latency_bucket{model_name="mnist",API="predict"'
    assert "# TYPE :tensorflow:serving:request_latency histogram" in page
    assert f'{latency},entrypoint="REST",le="10"}}' in page
    assert f'{latency},entrypoint="REST",le="+Inf"}} 1' in page  # the OK one only
    assert ':tensorflow:serving:request_latency_count{model_name="mnist",API="predict",' in page


# --- HTTP (libevent http.c, as TF Serving's net_http runs it).


def _raw(url: str, request: bytes, seconds: float = 10) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=seconds) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _post(length: bytes | None, body: bytes = b"", extra: bytes = b"") -> bytes:
    head = b"POST /v1/models/mnist:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra
    if length is not None:
        head += b"Content-Length: " + length + b"\r\n"
    return head + b"\r\n" + body


@pytest.mark.parametrize("length", [b"abc", b"-5", b"", b"1e3", b"0x10"])
def test_a_bad_content_length_is_400_at_once(base: Path, length: bytes) -> None:
    with StandInServer(ModelServer(base)) as server:
        started = time.monotonic()
        answer = _raw(server.url, _post(length))
        assert time.monotonic() - started < 5
    head, _, page = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"Connection: close" in head and b"Content-Type: text/html" in head
    assert page == (
        b"<HTML><HEAD>\n<TITLE>400 Bad Request</TITLE>\n</HEAD><BODY>\n<H1>Bad Request</H1>\n"
        b"</BODY></HTML>\n"
    )


def test_a_missing_content_length_is_an_empty_body(base: Path) -> None:
    with StandInServer(ModelServer(base)) as server:
        answer = _raw(server.url, _post(None, b'{"instances": []}'))
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.endswith(b'{"error": "JSON Parse error: The document is empty"}')


def test_a_huge_content_length_is_413_at_once_and_costs_no_memory(base: Path) -> None:
    with StandInServer(ModelServer(base)) as server:
        for length in (b"99999999999999999999999", str(server.httpd.max_body_bytes + 1).encode()):
            started = time.monotonic()
            answer = _raw(server.url, _post(length))
            assert time.monotonic() - started < 5
            assert answer.startswith(b"HTTP/1.1 413 ")
            assert b"<TITLE>413 Request Entity Too Large</TITLE>" in answer
        # A body within the limit, chunked or not, is read and answered.
        body = b'{"instances": [' + str(BLANK).encode() + b"]}"
        chunked = hex(len(body))[2:].encode() + b"\r\n" + body + b"\r\n0\r\n\r\n"
        for request in (
            _post(str(len(body)).encode(), body),
            _post(None, chunked, b"Transfer-Encoding: chunked\r\n"),
        ):
            assert _raw(server.url, request).startswith(b"HTTP/1.1 200 OK")


def test_idle_connections_hold_no_thread(base: Path) -> None:
    model = ModelServer(base)
    with StandInServer(model, rest_threads=2) as server:
        before = threading.active_count()
        sockets = []
        try:
            for _ in range(100):
                host, port = server.url.removeprefix("http://").split(":")
                sockets.append(socket.create_connection((host, int(port))))
            _wait_for(lambda: server.httpd.connections_open >= 100)
            assert threading.active_count() - before <= 2  # the pool's two threads at most
            with requests.Session() as session:  # still answered, on the same two threads
                for _ in range(3):
                    assert session.get(f"{server.url}/v1/models/{MODEL_NAME}").ok
            assert threading.active_count() - before <= 2
        finally:
            for sock in sockets:
                sock.close()
