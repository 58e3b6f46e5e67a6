"""The Prometheus page: TF Serving's request counter and latency histogram.

servables/tensorflow/util.cc defines both: `/tensorflow/serving/request_count` (a counter
by `model_name` and `status`, the TF error code name: "OK", "INVALID_ARGUMENT", ...;
RecordModelRequestCount) and `/tensorflow/serving/request_latency` (microseconds, by
`model_name`, `API` and `entrypoint`, in buckets 10 * 1.8^i for i < 33;
RecordRequestLatency, successful requests only). model_servers/http_server.cc records both
for every REST request under /v1/ (API: "predict" for :predict, "" for status and
metadata; entrypoint "REST"); prediction_service_impl.cc for gRPC Predict (API "Predict",
entrypoint "GRPC"), not for GetModelMetadata or GetModelStatus.
util/prometheus_exporter.cc writes the page: names with every character outside
[a-zA-Z0-9_] as ':', a `# TYPE` line per metric, cumulative `_bucket{...,le="..."}` lines
(the last bucket, up to DBL_MAX, as "+Inf"), then `_sum` and `_count`.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
# monitoring::Buckets::Exponential(10, 1.8, 33); the sampler adds DBL_MAX above them.
LATENCY_BUCKETS = [10 * 1.8**i for i in range(33)]


def _number(value: float) -> str:
    """absl::StrCat of a double: six significant digits ("%g")."""
    return f"{value:.6g}"


class Metrics:
    """Counts requests by status and samples the latency of successful ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()  # (model_name, status) -> n
        # (model_name, API, entrypoint) -> (count per bucket, sum of microseconds)
        self._latency: dict[tuple[str, str, str], tuple[list[int], float]] = {}

    def count(self, model_name: str, status: str) -> None:
        with self._lock:
            self._counts[(model_name, status)] += 1

    def latency(self, model_name: str, api: str, entrypoint: str, micros: float) -> None:
        with self._lock:
            buckets, total = self._latency.get(
                (model_name, api, entrypoint), ([0] * (len(LATENCY_BUCKETS) + 1), 0.0)
            )
            # A value lands in the first bucket whose limit is above it (histogram.cc).
            buckets[bisect.bisect_right(LATENCY_BUCKETS, micros)] += 1
            self._latency[(model_name, api, entrypoint)] = (buckets, total + micros)

    def requests(self, model_name: str, status: str) -> int:
        with self._lock:
            return self._counts[(model_name, status)]

    def page(self) -> str:
        with self._lock:
            counts = sorted(self._counts.items())
            latency = sorted((k, (list(b), s)) for k, (b, s) in self._latency.items())
        lines = [f"# TYPE {REQUEST_COUNT} counter"] if counts else []
        for (model, status), n in counts:
            lines.append(f'{REQUEST_COUNT}{{model_name="{model}",status="{status}"}} {n}')
        if latency:
            lines.append(f"# TYPE {REQUEST_LATENCY} histogram")
        for (model, api, entrypoint), (buckets, total) in latency:
            labels = f'model_name="{model}",API="{api}",entrypoint="{entrypoint}"'
            seen = 0
            for i, n in enumerate(buckets):
                seen += n
                limit = _number(LATENCY_BUCKETS[i]) if i < len(LATENCY_BUCKETS) else "+Inf"
                lines.append(f'{REQUEST_LATENCY}_bucket{{{labels},le="{limit}"}} {seen}')
            lines.append(f"{REQUEST_LATENCY}_sum{{{labels}}} {_number(total)}")
            lines.append(f"{REQUEST_LATENCY}_count{{{labels}}} {seen}")
        return "\n".join(lines) + "\n"
