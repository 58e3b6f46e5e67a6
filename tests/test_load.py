"""`python -m serving load` against the stand-in: short, bounded runs over REST and gRPC."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from serving import load
from serving.client import ServingClient
from support import error_line, free_ports, run_client
from tools.standin import ModelServer, StandInServer

# Under pytest-xdist (make test), this module's tests share module-scoped fixtures:
# one worker runs them all, so each fixture is built once.
pytestmark = pytest.mark.xdist_group("test_load")


@pytest.fixture(scope="module")
def server(export_base: Path):
    with StandInServer(ModelServer(export_base), grpc_port=0) as standin:
        yield standin


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_load_reports_rates_latency_and_no_errors(server, protocol: str) -> None:
    result = run_client(
        "load",
        *("--protocol", protocol, "--grpc-target", server.grpc_target),
        *("--concurrency", "2", "--seconds", "1.5", "--batch", "4", "--json"),
        url=server.url,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["protocol"] == protocol and report["concurrency"] == 2 and report["batch"] == 4
    assert report["errors"] == {} and report["error_count"] == 0
    assert report["requests"] > 0 and report["images"] == 4 * report["requests"]
    assert 1.5 <= report["seconds"] < 10
    assert report["requests_per_s"] == pytest.approx(report["requests"] / report["seconds"], 0.01)
    assert report["images_per_s"] == pytest.approx(4 * report["requests_per_s"], 0.01)
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]


def test_load_stops_at_the_request_limit_and_prints_a_table(server) -> None:
    result = run_client(
        "load", "--requests", "7", "--concurrency", "3", "--input", "image", url=server.url
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"rest {server.url} predict_image: concurrency 3, batch 1")
    assert lines[1].startswith("7 requests (") and "7 images" in lines[1]
    assert lines[2].startswith("latency ms: p50 ") and lines[3] == "errors: none"


def test_load_in_process_joins_every_thread_and_counts_errors(server) -> None:
    model = server.model
    model.unavailable_requests = 3
    try:
        report = load.run(
            lambda: ServingClient(server.url, retries=0),
            concurrency=2,
            seconds=0.5,
            batch=1,
            max_requests=40,
        )
    finally:
        model.unavailable_requests = 0
    assert [t for t in threading.enumerate() if t.name.startswith("load-")] == []
    assert sum(n for kind, n in report["errors"].items() if kind.endswith("HTTP 503")) == 3
    timed = report["requests"] + sum(
        n for kind, n in report["errors"].items() if not kind.startswith("warmup")
    )
    assert 0 < timed <= 40  # --requests bounds the timed requests, errors included


def test_load_refuses_remote_targets_and_a_server_that_is_down() -> None:
    line = error_line(run_client("load", url="http://10.0.0.1:8501"), 2)
    assert "not a loopback address" in line and "--allow-remote" in line
    line = error_line(
        run_client("load", "--protocol", "grpc", "--grpc-target", "example.com:8500"), 2
    )
    assert "'example.com' is not a loopback address" in line
    url = f"http://127.0.0.1:{free_ports()[0]}"
    line = error_line(run_client("load", "--seconds", "1", url=url), 1)
    assert line.startswith(f"error: cannot connect to {url}")
