"""`python -m serving load`: drive one server with concurrent clients for a bounded time.

    python -m serving load --concurrency 8 --seconds 20 --protocol rest --batch 1
    python -m serving load --protocol grpc --batch 32 --requests 5000 --json

N worker threads, each with its own client (its own requests.Session or gRPC channel,
so its own connection), send predict requests back to back until `--seconds` have
passed or `--requests` have been sent, whichever comes first; then it reports
requests/s, images/s, latency p50/p95/p99 in ms and the errors by kind. Before the clock
starts, one status call checks that the server answers (else one error line, exit 1) and
every worker sends one untimed request (connecting, and the server's first call).

Loopback targets only, unless --allow-remote: a load test against someone else's server
is an accident waiting to happen. Exit status 0 when every request succeeded, 1 when any
failed (the report still prints), 2 for usage.

Latency is client-side: from the call to the decoded answer, client serialization
included. With threads in one Python process, the client can be what limits the rate
on small machines; `--json` gives the numbers for machines.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from digits.contract import IMAGE, IMAGE_SHAPE, PIXELS
from serving.base import BaseClient, ServingError
from serving.inputs import InputError

SAMPLES = Path(__file__).resolve().parent / "samples"
MAX_SECONDS = 3600.0  # a typo like --seconds 1e9 must not run for days
PERCENTILES = (50, 95, 99)


def target_host(args: argparse.Namespace) -> str:
    if args.protocol == "grpc":
        from serving.grpc_client import parse_target

        return parse_target(args.grpc_target).rsplit(":", 1)[0].strip("[]")
    return urlsplit(args.url).hostname or ""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_inputs(kind: str, batch: int) -> np.ndarray | list[bytes]:
    """`batch` examples: fixed random pixels, or the sample PNGs over and over."""
    if kind == "image":
        blobs = [p.read_bytes() for p in sorted(SAMPLES.glob("*.png"))]
        if not blobs:
            raise InputError(f"{SAMPLES}: no sample PNGs for --input image")
        return [blobs[i % len(blobs)] for i in range(batch)]
    return np.random.default_rng(0).integers(0, 256, (batch, *IMAGE_SHAPE), dtype=np.uint8)


def error_kind(error: ServingError) -> str:
    """A short, countable name: 'gRPC UNAVAILABLE', 'HTTP 503', 'timeout', 'connect'."""
    code = getattr(error, "code", None)
    if code is not None:
        return f"gRPC {code.name}"
    if error.status is not None:
        return f"HTTP {error.status}"
    if "no response within" in error.message:
        return "timeout"
    if "cannot connect" in error.message:
        return "connect"
    return "other"


def run(
    make_client: Callable[[], BaseClient],
    *,
    concurrency: int,
    seconds: float,
    batch: int,
    max_requests: int | None = None,
    kind: str = "pixels",
) -> dict[str, Any]:
    """Run the load; returns the report (see `report`). Every thread is joined."""
    examples = make_inputs(kind, batch)
    clients = [make_client() for _ in range(concurrency)]
    latencies: list[list[float]] = [[] for _ in clients]
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    sent = 0
    clock: dict[str, float] = {}

    def set_clock() -> None:  # run once, when every worker is warm: the timed run starts
        clock["start"] = time.monotonic()
        clock["deadline"] = clock["start"] + seconds

    start = threading.Barrier(concurrency, action=set_clock)

    def send(client: BaseClient) -> None:
        if kind == "image":
            client.predict_image_bytes(examples)
        else:
            client.predict_pixels(examples)

    def take_ticket() -> bool:
        nonlocal sent
        with lock:
            if max_requests is not None and sent >= max_requests:
                return False
            sent += 1
            return True

    def worker(i: int) -> None:
        client = clients[i]
        try:
            try:
                send(client)  # warm: connect, and the server's first call; not counted
            except ServingError as e:
                with lock:
                    errors[f"warmup {error_kind(e)}"] += 1
            start.wait()
            while time.monotonic() < clock["deadline"] and take_ticket():
                began = time.perf_counter()
                try:
                    send(client)
                except ServingError as e:
                    with lock:
                        errors[error_kind(e)] += 1
                    continue
                latencies[i].append(time.perf_counter() - began)
        except threading.BrokenBarrierError:
            pass  # another worker failed before the start
        except BaseException:
            start.abort()
            raise

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"load-{i}") for i in range(concurrency)
    ]
    try:
        for t in threads:
            t.start()
    finally:
        for t in threads:
            if t.is_alive() or t.ident is not None:
                t.join()
        for c in clients:
            c.close()
    if "start" not in clock:
        raise ServingError("the load run did not start (a worker failed; see above)")
    elapsed = time.monotonic() - clock["start"]
    return report(
        [x for per in latencies for x in per], errors, elapsed, concurrency=concurrency, batch=batch
    )


def report(
    latencies: list[float], errors: Counter[str], elapsed: float, *, concurrency: int, batch: int
) -> dict[str, Any]:
    ok = len(latencies)
    ms = np.array(latencies) * 1e3
    summary: dict[str, Any] = {
        "concurrency": concurrency,
        "batch": batch,
        "seconds": round(elapsed, 3),
        "requests": ok,
        "images": ok * batch,
        "requests_per_s": round(ok / elapsed, 2) if elapsed > 0 else 0.0,
        "images_per_s": round(ok * batch / elapsed, 2) if elapsed > 0 else 0.0,
        "latency_ms": {
            f"p{q}": round(float(np.percentile(ms, q)), 3) if ok else None for q in PERCENTILES
        },
        "errors": dict(sorted(errors.items())),
        "error_count": sum(errors.values()),
    }
    summary["latency_ms"]["mean"] = round(float(ms.mean()), 3) if ok else None
    summary["latency_ms"]["max"] = round(float(ms.max()), 3) if ok else None
    return summary


def command(args: argparse.Namespace, make_client: Callable[[], BaseClient]) -> int:
    """The `load` command of serving.cli."""
    host = target_host(args)
    if not args.allow_remote and not is_loopback(host):
        raise InputError(
            f"load target {host!r} is not a loopback address; load-test a remote server "
            "only on purpose: add --allow-remote"
        )
    if args.seconds > MAX_SECONDS:
        raise InputError(f"--seconds {args.seconds:g}: at most {MAX_SECONDS:g}")
    with make_client() as probe:  # a server that is down: one clear line, not N errors
        probe.status()
        where = probe.url
    result = run(
        make_client,
        concurrency=args.concurrency,
        seconds=args.seconds,
        batch=args.batch,
        max_requests=args.requests,
        kind=args.input,
    )
    signature = IMAGE.name if args.input == "image" else PIXELS.name
    result = {
        "protocol": args.protocol,
        "target": where,
        "model": args.model,
        "signature": signature,
        **result,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        lat = result["latency_ms"]
        print(
            f"{result['protocol']} {where} {signature}: concurrency {result['concurrency']}, "
            f"batch {result['batch']}, {result['seconds']:.1f} s"
        )
        print(
            f"{result['requests']} requests ({result['requests_per_s']:.1f}/s), "
            f"{result['images']} images ({result['images_per_s']:.1f}/s)"
        )
        if result["requests"]:
            print(
                "latency ms: "
                + ", ".join(f"p{q} {lat[f'p{q}']:.2f}" for q in PERCENTILES)
                + f", mean {lat['mean']:.2f}, max {lat['max']:.2f}"
            )
        errors = ", ".join(f"{k} x{n}" for k, n in result["errors"].items()) or "none"
        print(f"errors: {errors}")
    return 1 if result["error_count"] else 0
