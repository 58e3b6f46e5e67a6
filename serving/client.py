"""REST client library for the digit model served by TF Serving.

    from serving.client import ServingClient, ServingError

    with ServingClient("http://127.0.0.1:8501", "mnist") as client:  # version=, label=
        print(client.status()["model_version_status"])
        png = open("serving/samples/digit-7.png", "rb").read()
        result = client.predict_image_bytes([png])  # -> predict_image, decoded in the graph
        print(result.classes[0], result.probabilities[0].max())
        result = client.predict_pixels(pixels)  # uint8 [n, 28, 28, 1] -> serving_default

Every call raises `ServingError` (the server's message, HTTP status and URL) when TF
Serving answers with an error or cannot be reached, and `serving.inputs.InputError` for
input refused before anything is sent. The command line over this library is
`serving.cli` (`python -m serving --help`; `python -m serving.client` runs it too).

Follows TF Serving's REST API (tensorflow/serving g3doc/api_rest.md):
`GET /v1/models/{name}[/versions/{v}|/labels/{l}]` (status), the same + `/metadata`,
and `POST ...:predict` with a row (`instances`) or columnar (`inputs`) body. Errors come
back as `{"error": "..."}` with an HTTP status.

Signature, input and output names and the image spec come from `digits.contract`, the
one definition the trainer's export uses too. PNG/JPEG bytes go, as `{"b64": ...}`, to
the `predict_image` signature, which decodes, inverts, crops, scales and centres them
inside the graph, so every client gets the same preprocessing; pixels go to
`serving_default`.

Imports requests, numpy, the standard library and `digits` only (never TensorFlow or
the trainer).
"""

from __future__ import annotations

import base64
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from digits import contract
from serving import inputs
from serving.inputs import InputError

DEFAULT_URL = "http://127.0.0.1:8501"
DEFAULT_GRPC_TARGET = "127.0.0.1:8500"  # TF Serving's --port, the image's gRPC port
DEFAULT_MODEL = contract.MODEL_NAME
DEFAULT_TIMEOUT = 35.0  # seconds after connecting; just over TF Serving's 30 s REST timeout
DEFAULT_RETRIES, DEFAULT_BACKOFF = 3, 0.5
DEFAULT_BATCH_SIZE = 64  # within batching.config's max_execution_batch_size (128): never split
CONNECT_TIMEOUT = 3.05  # seconds; just over a multiple of 3 s, TCP's SYN retransmit step
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
    """What one or more :predict calls answered, one row per example sent."""

    probabilities: np.ndarray  # float32 [n, NUM_CLASSES]: contract.PROBABILITIES
    classes: np.ndarray  # int64 [n]: contract.CLASSES


def one_line(text: str, limit: int = 500) -> str:
    """Server messages can span lines (TF error contexts); stderr gets one line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BaseClient:
    """What every protocol's client shares: the servable asked for (model, version or
    label, checked), batching into requests of at most `batch_size`, and polling status.

    A protocol implements `status()`, `metadata()`, `_send(signature, batch, columnar)`
    (one request for a uint8 array or a list of encoded images) and `close()`, and sets
    `url`, which messages name. `ServingClient` speaks REST; `serving.grpc_client.
    GrpcServingClient` gRPC, with the same methods, return values and errors.
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
    ):
        if version is not None and label is not None:
            raise InputError("give a version or a label, not both (TF Serving refuses both)")
        if label is not None and not LABEL_RE.match(label):
            raise InputError(f"label {label!r}: version labels are letters, digits and _ only")
        if version is not None and version < 0:
            raise InputError(f"version {version}: versions are non-negative integers")
        if batch_size < 1:
            raise InputError(f"batch size {batch_size}: must be at least 1")
        self.model, self.version, self.label = model, version, label
        self.retries, self.batch_size = retries, batch_size

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
        parts = [
            self._send(signature, items[i : i + self.batch_size], columnar)
            for i in range(0, len(items), self.batch_size)
        ]
        return Prediction(
            np.concatenate([p.probabilities for p in parts]),
            np.concatenate([p.classes for p in parts]),
        )

    def wait_until_available(self, seconds: float, poll: float = 1.0) -> dict[str, Any]:
        """Poll status until a version is AVAILABLE; raises the last error after `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                answer = self.status()
                if any(
                    v.get("state") == "AVAILABLE" for v in answer.get("model_version_status", [])
                ):
                    return answer
                last: Exception = ServingError(f"no AVAILABLE version of {self.describe()} yet")
            except ServingError as e:
                last = e
            if time.monotonic() + poll > deadline:
                raise ServingError(f"gave up after {seconds:g} s: {last}")
            time.sleep(poll)


class ServingClient(BaseClient):
    """One `requests.Session` (kept-alive connections) for every call to one model.

    Connection errors and 503 (UNAVAILABLE: the model is still loading, or the batching
    queue is full) are retried `retries` times with exponential backoff (`backoff` *
    2^(n-1) seconds before retry n > 1). Predict is a pure function, so repeating a POST
    is safe. A failed read (a reply cut off, or no reply within `timeout`) is retried at
    most once: a kept-alive connection that the server closed shows up as one, but a
    server too busy to answer in time only gets busier if asked again and again.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        model: str = DEFAULT_MODEL,
        *,
        version: int | None = None,
        label: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        super().__init__(
            model, version=version, label=label, retries=retries, batch_size=batch_size
        )
        self.url = url.rstrip("/")
        self.timeout = (CONNECT_TIMEOUT, timeout)
        retry = Retry(
            total=retries,
            connect=retries,
            read=min(retries, 1),
            status=retries,
            other=0,
            status_forcelist=(503,),
            allowed_methods=frozenset({"GET", "POST"}),
            backoff_factor=backoff,
            raise_on_status=False,  # hand back the last 503 so its {"error"} is shown
        )
        self.session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ServingClient:
        return self

    # --- URLs (api_rest.md: "/versions/${VERSION}" or "/labels/${LABEL}", both optional)

    def model_path(self) -> str:
        path = f"/v1/models/{self.model}"
        if self.version is not None:
            path += f"/versions/{self.version}"
        elif self.label is not None:
            path += f"/labels/{self.label}"
        return path

    # --- The three calls.

    def status(self) -> dict[str, Any]:
        """GetModelStatusResponse as JSON: {"model_version_status": [{version, state, ...}]}."""
        return self._call("GET", self.model_path())

    def metadata(self) -> dict[str, Any]:
        """GetModelMetadataResponse: {"model_spec": ..., "metadata": {"signature_def": ...}}."""
        return self._call("GET", self.model_path() + "/metadata")

    def predict(
        self, values: list, *, signature: str, input_name: str, columnar: bool = False
    ) -> Prediction:
        """One :predict call; `values` is a list with one element per example.

        Row format (api_rest.md "Specifying input tensors in row format"): with one named
        input, `instances` is the bare list of examples. Columnar: `inputs` maps the
        input name to the whole batch. The response mirrors the request: `predictions`
        (a list of {output: value} objects, one per example, since there are two
        outputs) or `outputs` (an object of whole tensors).
        """
        if len(values) == 0:
            raise InputError("empty batch: nothing to send (TF Serving refuses empty instances)")
        body: dict[str, Any] = {"signature_name": signature}
        if columnar:
            body["inputs"] = {input_name: values}
        else:
            body["instances"] = values
        answer = self._call("POST", self.model_path() + ":predict", body)
        return _parse_prediction(answer, len(values), columnar)

    def _send(
        self, signature: contract.Signature, batch: np.ndarray | list[bytes], columnar: bool
    ) -> Prediction:
        """Pixels as nested JSON integers; encoded images as {"b64": ...}.

        api_rest.md "Encoding binary values": binary DT_STRING values must be sent as
        {"b64": <base64>}; the server decodes any such object for a string input.
        """
        if isinstance(batch, np.ndarray):
            values: list = batch.tolist()
        else:
            values = [{"b64": base64.b64encode(b).decode("ascii")} for b in batch]
        return self.predict(
            values, signature=signature.name, input_name=signature.input, columnar=columnar
        )

    # --- HTTP.

    def _call(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
        url = self.url + path
        try:
            response = self.session.request(method, url, json=body, timeout=self.timeout)
        except requests.exceptions.ConnectTimeout:
            raise ServingError(
                f"cannot connect to {self.url}: no answer within {CONNECT_TIMEOUT} s "
                f"(after {self.retries} retries); is TF Serving running there?"
            ) from None
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as e:
            # A read that failed on every try comes back as a ConnectionError too.
            if isinstance(e, requests.exceptions.ReadTimeout) or "Read timed out" in str(e):
                raise ServingError(
                    f"{method} {url}: no response within {self.timeout[1]:g} s "
                    "(raise --timeout, or send smaller batches)"
                ) from None
            if "RemoteDisconnected" in str(e) or "Connection aborted" in str(e):
                raise ServingError(
                    f"{method} {url}: the server closed the connection without a reply"
                ) from None
            raise ServingError(
                f"cannot connect to {self.url} ({_reason(e)}) after {self.retries} retries; "
                "is TF Serving running there? (make serve)"
            ) from None
        except requests.exceptions.RequestException as e:
            raise ServingError(f"{method} {url} failed: {_reason(e)}") from None
        try:
            # TF Serving writes NaN/Infinity tokens (api_rest.md "JSON conformance");
            # Python's json reads them.
            answer = response.json()
        except ValueError:
            answer = None
        if not response.ok:
            if isinstance(answer, dict) and "error" in answer:
                message = one_line(answer["error"])
            else:
                message = f"{response.reason}: {one_line(response.text, 200) or '(empty body)'}"
            raise ServingError(message, response.status_code, url)
        if not isinstance(answer, dict):
            raise ServingError(
                f"not a JSON object: {one_line(response.text, 200)!r}", response.status_code, url
            )
        return answer


def _reason(error: Exception) -> str:
    """'Connection refused' rather than urllib3's nested repr of the pool and retry state."""
    text = str(error)
    found = re.findall(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if found:
        return found[-1].strip()
    for marker in ("Failed to resolve", "Name or service not known"):
        if marker in text:
            return marker
    return one_line(text, 200)


def _parse_prediction(answer: dict[str, Any], n: int, columnar: bool) -> Prediction:
    def bad(why: str) -> ServingError:
        return ServingError(
            f"unexpected predict response ({why}): {one_line(json.dumps(answer), 200)}"
        )

    try:
        if columnar:
            outputs = answer["outputs"]
            probabilities, classes = outputs[contract.PROBABILITIES], outputs[contract.CLASSES]
        else:
            rows = answer["predictions"]
            if not isinstance(rows, list) or len(rows) != n:
                raise bad(f"expected {n} predictions")
            probabilities = [r[contract.PROBABILITIES] for r in rows]
            classes = [r[contract.CLASSES] for r in rows]
        p = np.asarray(probabilities, dtype=np.float32)
        c = np.asarray(classes, dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"{type(e).__name__}: {e}") from None
    if p.shape != (n, contract.NUM_CLASSES) or c.shape != (n,):
        raise bad(
            f"shapes {p.shape} and {c.shape}, expected ({n}, {contract.NUM_CLASSES}) and ({n},)"
        )
    return Prediction(p, c)


if __name__ == "__main__":  # `python -m serving.client ...`: the CLI, as before serving.cli
    from serving.cli import main

    sys.exit(main(prog="python -m serving.client"))
