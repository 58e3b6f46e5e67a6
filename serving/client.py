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
input refused before anything is sent. `predict_image` answers per image: an image the
server refuses (not a PNG or JPEG, over the size limit, corrupt) comes back as its own
row, `result.status[i]` saying why (contract.IMAGE_STATUS), while the other rows are
classified. The command line over this library is `serving.cli` (`python -m serving
--help`).

Status codes as TF Serving sends them (model_servers/http_server.cc ToHTTPStatusCode):
400 for a bad request or an unknown label, 404 for an unknown model or version and for a
version that is still loading (core/basic_manager.cc: "Servable not found"), 429 for a
request that timed out in the batching queue (RESOURCE_EXHAUSTED), 503 when that queue
is full (UNAVAILABLE, "The batch scheduling queue ... is full"), 504 past
--rest_api_timeout_in_ms.

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
from typing import Any

import numpy as np
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from digits import contract
from serving.base import (
    DEFAULT_BACKOFF,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MODEL,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    BaseClient,
    Prediction,
    ServingError,
    one_line,
)
from serving.inputs import InputError

CONNECT_TIMEOUT = 3.05  # seconds; just over a multiple of 3 s, TCP's SYN retransmit step
RETRIED_STATUSES = (429, 503)  # RESOURCE_EXHAUSTED, UNAVAILABLE: the batching queue


class ServingClient(BaseClient):
    """One `requests.Session` (kept-alive connections) for every call to one model.

    Connection errors, 429 (a request timed out in the batching queue) and 503 (the
    batching queue is full) are retried `retries` times with exponential backoff
    (`backoff` * 2^(n-1) seconds before retry n > 1). Predict is a pure function, so
    repeating a POST is safe. A failed read (a reply cut off, or no reply within
    `timeout`) is retried at most once: a kept-alive connection that the server closed
    shows up as one, but a server too busy to answer in time only gets busier if asked
    again and again. 404 is not retried here: a version that is loading answers it, and
    only `status --wait` (`wait_until_available`) waits for one.
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
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ):
        super().__init__(
            model,
            version=version,
            label=label,
            retries=retries,
            batch_size=batch_size,
            max_request_bytes=max_request_bytes,
        )
        self.url = url.rstrip("/")
        self.timeout = (CONNECT_TIMEOUT, timeout)
        retry = Retry(
            total=retries,
            connect=retries,
            read=min(retries, 1),
            status=retries,
            other=0,
            status_forcelist=RETRIED_STATUSES,
            allowed_methods=frozenset({"GET", "POST"}),
            backoff_factor=backoff,
            raise_on_status=False,  # hand back the last answer so its {"error"} is shown
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

    def _status(self, version: int | None) -> dict[str, Any]:
        """GET status: {"model_version_status": [{version, state, status}, ...]}."""
        path = f"/v1/models/{self.model}"
        return self._call("GET", path if version is None else f"{path}/versions/{version}")

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

    name = contract.IMAGE_STATUS  # predict_image's per-image answer; absent for pixels
    try:
        if columnar:
            outputs = answer["outputs"]
            probabilities, classes = outputs[contract.PROBABILITIES], outputs[contract.CLASSES]
            status = outputs.get(name)
        else:
            rows = answer["predictions"]
            if not isinstance(rows, list) or len(rows) != n:
                raise bad(f"expected {n} predictions")
            probabilities = [r[contract.PROBABILITIES] for r in rows]
            classes = [r[contract.CLASSES] for r in rows]
            status = [r[name] for r in rows] if rows and name in rows[0] else None
        p = np.asarray(probabilities, dtype=np.float32)
        c = np.asarray(classes, dtype=np.int64)
        s = None if status is None else np.asarray([str(x) for x in status], dtype=object)
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"{type(e).__name__}: {e}") from None
    if p.shape != (n, contract.NUM_CLASSES) or c.shape != (n,) or (s is not None and len(s) != n):
        raise bad(
            f"shapes {p.shape} and {c.shape}, expected ({n}, {contract.NUM_CLASSES}) and ({n},)"
        )
    return Prediction(p, c, s)


if __name__ == "__main__":  # the command line is `python -m serving`, not this module
    print(
        "error: python -m serving.client is not a command; use python -m serving "
        "(python -m serving --help)",
        file=sys.stderr,
    )
    sys.exit(2)
