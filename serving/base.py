"""What the REST and gRPC clients share: errors, results, defaults, and `BaseClient`.

`serving.client.ServingClient` (REST) and `serving.grpc_client.GrpcServingClient` (gRPC)
are both `BaseClient`s: the same methods, return values and errors, so the CLI
(`serving.cli`) and the load test (`serving.load`) have one path for both protocols.
`LABEL_RE` is TF Serving's rule for version labels, which `serving.rollout` checks too.

numpy, the standard library and `digits` only: no HTTP or gRPC library, so importing
this module costs neither protocol's dependencies.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from digits import contract
from serving import inputs
from serving.inputs import InputError

DEFAULT_URL = "http://127.0.0.1:8501"
DEFAULT_GRPC_TARGET = "127.0.0.1:8500"  # TF Serving's --port, the image's gRPC port
DEFAULT_MODEL = contract.MODEL_NAME
DEFAULT_TIMEOUT = 35.0  # seconds after connecting; just over TF Serving's 30 s REST timeout
DEFAULT_RETRIES, DEFAULT_BACKOFF = 3, 0.5
DEFAULT_BATCH_SIZE = 64  # within batching.config's max_execution_batch_size (128): never split
# Encoded image bytes in one request, whatever the count: TF Serving takes any REST body
# (http_server.cc reads it whole, with no limit) and base64 adds a third, so 64 images at
# the 10 MB file limit would be ~850 MB of JSON in the server's memory at once. 16 MiB is
# hundreds of digit photos, and a request that large still parses in well under a second.
DEFAULT_MAX_REQUEST_BYTES = 16 * 2**20
# Version labels are word characters only (g3doc/serving_config.md, "REST Usage").
LABEL_RE = re.compile(r"^[A-Za-z0-9_]+$")


class ServingError(Exception):
    """TF Serving answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int | None = None, url: str | None = None):
        super().__init__(message)
        self.message, self.status, self.url = message, status, url

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        return f"HTTP {self.status} from {self.url}: {self.message}"


@dataclass(frozen=True)
class Prediction:
    """What one or more :predict calls answered, one row per example sent.

    `status` is predict_image's per-image answer (contract.IMAGE_STATUS): IMAGE_OK, or
    why the image was refused, in which case its class is contract.INVALID_CLASS and its
    probabilities are zeros. None for pixels, and for a version exported before the
    signature answered per image (it fails the whole request instead).
    """

    probabilities: np.ndarray  # float32 [n, NUM_CLASSES]: contract.PROBABILITIES
    classes: np.ndarray  # int64 [n]: contract.CLASSES
    status: np.ndarray | None = None  # str [n]: contract.IMAGE_STATUS

    @property
    def invalid(self) -> np.ndarray:
        """bool [n]: the rows whose image the server refused."""
        if self.status is None:
            return np.zeros(len(self.classes), bool)
        return self.status != contract.IMAGE_OK

    @staticmethod
    def concat(parts: Sequence[Prediction]) -> Prediction:
        statuses = [p.status for p in parts]
        status = None
        if any(s is not None for s in statuses):
            status = np.concatenate(
                [
                    s if s is not None else np.full(len(p.classes), contract.IMAGE_OK, object)
                    for s, p in zip(statuses, parts, strict=True)
                ]
            )
        return Prediction(
            np.concatenate([p.probabilities for p in parts]),
            np.concatenate([p.classes for p in parts]),
            status,
        )


def one_line(text: str, limit: int = 500) -> str:
    """Server messages can span lines (TF error contexts); stderr gets one line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BaseClient:
    """What every protocol's client shares: the servable asked for (model, version or
    label, checked), batching into requests of at most `batch_size`, and polling status.

    A protocol implements `_status(version)`, `metadata()`, `_send(signature, batch,
    columnar)` (one request for a uint8 array or a list of encoded images) and `close()`,
    and sets `url`, which messages name. `ServingClient` speaks REST; `serving.grpc_client.
    GrpcServingClient` gRPC, with the same methods, return values and errors.

    Encoded images go in requests of at most `batch_size` images and `max_request_bytes`
    bytes (one image above it still goes alone: inputs.MAX_IMAGE_BYTES bounds it).
    """

    url: str

    def __init__(
        self,
        model: str,
        *,
        version: int | None,
        label: str | None,
        retries: int,
        batch_size: int,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ):
        if version is not None and label is not None:
            raise InputError("give a version or a label, not both (TF Serving refuses both)")
        if label is not None and not LABEL_RE.match(label):
            raise InputError(f"label {label!r}: version labels are letters, digits and _ only")
        if version is not None and version < 0:
            raise InputError(f"version {version}: versions are non-negative integers")
        if batch_size < 1:
            raise InputError(f"batch size {batch_size}: must be at least 1")
        if max_request_bytes < 1:
            raise InputError(f"request size {max_request_bytes}: must be at least 1 byte")
        self.model, self.version, self.label = model, version, label
        self.retries, self.batch_size = retries, batch_size
        self.max_request_bytes = max_request_bytes

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        """Which servable a request asks for, for messages: 'mnist version 3'."""
        if self.version is not None:
            return f"{self.model} version {self.version}"
        if self.label is not None:
            return f"{self.model} label {self.label}"
        return f"{self.model} (latest version)"

    def status(self) -> dict[str, Any]:
        """GetModelStatusResponse as the REST status body: {"model_version_status": [...]}.

        For a version, that version; for none, every version the server has seen. TF
        Serving's GetModelStatus ignores a label and lists every version
        (get_model_status_impl.cc), so a label is resolved first, through
        GetModelMetadata (which honours it), and its version's status is returned.
        """
        if self.label is None:
            return self._status(self.version)
        return self._status(self.label_version())

    def label_version(self) -> int:
        """The version the label points at now: GetModelMetadata's model_spec.version.
        ServingError 400 for an unknown label, 404 while its version is not AVAILABLE."""
        spec = self.metadata().get("model_spec", {})
        try:
            return int(spec["version"])
        except (KeyError, TypeError, ValueError):
            raise ServingError(
                f"unexpected metadata response for label {self.label}: model_spec {spec}"
            ) from None

    def _status(self, version: int | None) -> dict[str, Any]:
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        raise NotImplementedError

    def _send(
        self, signature: contract.Signature, batch: np.ndarray | list[bytes], columnar: bool
    ) -> Prediction:
        raise NotImplementedError

    # --- Typed helpers: check, then send in batches of at most `batch_size`.

    def predict_pixels(self, images: np.ndarray, *, columnar: bool = False) -> Prediction:
        """uint8 [n, 28, 28, 1] pixels (checked) -> serving_default (contract.PIXELS)."""
        images = inputs.check_pixels(images, "images")
        return self._batched(images, contract.PIXELS, columnar)

    def predict_image_bytes(self, blobs: Sequence[bytes], *, columnar: bool = False) -> Prediction:
        """Encoded PNG/JPEG images -> predict_image (contract.IMAGE), undecoded."""
        return self._batched(list(blobs), contract.IMAGE, columnar)

    def _batched(
        self, items: np.ndarray | list[bytes], signature: contract.Signature, columnar: bool
    ) -> Prediction:
        if len(items) == 0:
            raise InputError("empty batch: nothing to send (TF Serving refuses empty instances)")
        return Prediction.concat(
            [self._send(signature, items[a:b], columnar) for a, b in self.requests_for(items)]
        )

    def requests_for(self, items: np.ndarray | list[bytes]) -> list[tuple[int, int]]:
        """[start, stop) of each request: at most `batch_size` items, and for encoded
        images at most `max_request_bytes` bytes unless one image alone is larger."""
        if isinstance(items, np.ndarray):
            return [
                (i, min(i + self.batch_size, len(items)))
                for i in range(0, len(items), self.batch_size)
            ]
        spans, start, size = [], 0, 0
        for i, blob in enumerate(items):
            if i > start and (
                i - start == self.batch_size or size + len(blob) > self.max_request_bytes
            ):
                spans.append((start, i))
                start, size = i, 0
            size += len(blob)
        spans.append((start, len(items)))
        return spans

    def wait_until_available(self, seconds: float, poll: float = 1.0) -> dict[str, Any]:
        """Poll status until the version asked for (or, with none, any version) is
        AVAILABLE; raises the last error after `seconds`.

        While waiting, what a server still starting or loading answers is polled through:
        no connection, NOT_FOUND (404: a version loading, or not seen yet; basic_manager.cc),
        UNAVAILABLE and RESOURCE_EXHAUSTED (503, 429), and an unknown label (400: the
        server re-reads its labels config on a poll). Any other error is raised at once.
        """
        deadline = time.monotonic() + seconds
        while True:
            try:
                answer = self.status()
                if any(
                    v.get("state") == "AVAILABLE" for v in answer.get("model_version_status", [])
                ):
                    return answer
                states = ", ".join(
                    f"{v.get('version')} {v.get('state')}"
                    for v in answer.get("model_version_status", [])
                )
                last: Exception = ServingError(
                    f"no AVAILABLE version of {self.describe()} yet ({states})"
                )
            except ServingError as e:
                if not _worth_waiting_for(e):
                    raise
                last = e
            if time.monotonic() + poll > deadline:
                raise ServingError(f"gave up after {seconds:g} s: {last}")
            time.sleep(poll)


def _worth_waiting_for(error: ServingError) -> bool:
    """An error that a server still starting or loading gives (wait_until_available)."""
    if error.status is None or error.status in (404, 429, 503):
        return True
    return error.status == 400 and "Unrecognized servable version label" in error.message
