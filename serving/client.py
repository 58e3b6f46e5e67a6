"""REST client and CLI for the `mnist` model served by TF Serving.

    python -m serving.client status
    python -m serving.client metadata
    python -m serving.client predict serving/samples/*.png
    python -m serving.client predict --idx ../shared/data/mnist/t10k-images-idx3-ubyte.gz

Follows TF Serving's REST API (tensorflow/serving g3doc/api_rest.md):
`GET /v1/models/{name}[/versions/{v}|/labels/{l}]` (status), the same + `/metadata`,
and `POST ...:predict` with a row (`instances`) or columnar (`inputs`) body. Errors come
back as `{"error": "..."}` with an HTTP status; the CLI prints that message and the
status on one line of stderr and exits non-zero (1: server or network, 2: input).

PNG/JPEG files go by default, as `{"b64": ...}`, to the `predict_image` signature, which
decodes, inverts, crops, scales and centres them inside the graph, so every client gets
the same preprocessing. `--decode local` instead decodes 28x28 images here and sends
pixels to `serving_default`. `.npy` files and idx files always go to `serving_default`.

Imports requests, numpy and the standard library only (never TensorFlow or the trainer).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from serving import inputs
from serving.inputs import InputError

DEFAULT_URL = "http://127.0.0.1:8501"
DEFAULT_MODEL = "mnist"
PIXELS_SIGNATURE, PIXELS_INPUT = "serving_default", "images"
IMAGE_SIGNATURE, IMAGE_INPUT = "predict_image", "image_bytes"
CONNECT_TIMEOUT = 3.05  # seconds; just over a multiple of 3 s, TCP's SYN retransmit step
# Version labels are word characters only (g3doc/serving_config.md, "REST Usage").
LABEL_RE = re.compile(r"^[A-Za-z0-9_]+$")
EXIT_SERVER, EXIT_INPUT, EXIT_INTERRUPTED = 1, 2, 130


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
    probabilities: np.ndarray  # float32 [n, 10]
    classes: np.ndarray  # int64 [n]


def one_line(text: str, limit: int = 500) -> str:
    """Server messages can span lines (TF error contexts); stderr gets one line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ServingClient:
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
        timeout: float = 35.0,
        retries: int = 3,
        backoff: float = 0.5,
        batch_size: int = 64,
    ):
        if version is not None and label is not None:
            raise InputError("give a version or a label, not both (TF Serving refuses both)")
        if label is not None and not LABEL_RE.match(label):
            raise InputError(f"label {label!r}: version labels are letters, digits and _ only")
        if version is not None and version < 0:
            raise InputError(f"version {version}: versions are non-negative integers")
        if batch_size < 1:
            raise InputError(f"batch size {batch_size}: must be at least 1")
        self.url, self.model = url.rstrip("/"), model
        self.version, self.label = version, label
        self.timeout = (CONNECT_TIMEOUT, timeout)
        self.retries, self.batch_size = retries, batch_size
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

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- URLs (api_rest.md: "/versions/${VERSION}" or "/labels/${LABEL}", both optional)

    def model_path(self) -> str:
        path = f"/v1/models/{self.model}"
        if self.version is not None:
            path += f"/versions/{self.version}"
        elif self.label is not None:
            path += f"/labels/{self.label}"
        return path

    def describe(self) -> str:
        """Which servable a request asks for, for messages: 'mnist version 3'."""
        if self.version is not None:
            return f"{self.model} version {self.version}"
        if self.label is not None:
            return f"{self.model} label {self.label}"
        return f"{self.model} (latest version)"

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

    # --- Typed helpers: check, then send in batches of at most `batch_size`.

    def predict_pixels(self, images: np.ndarray, *, columnar: bool = False) -> Prediction:
        """uint8 [n, 28, 28, 1] pixels (checked) -> serving_default."""
        images = inputs.check_pixels(images, "images")
        return self._batched(
            [
                images[i : i + self.batch_size].tolist()
                for i in range(0, len(images), self.batch_size)
            ],
            PIXELS_SIGNATURE,
            PIXELS_INPUT,
            columnar,
        )

    def predict_image_bytes(self, blobs: Sequence[bytes], *, columnar: bool = False) -> Prediction:
        """Encoded PNG/JPEG images -> predict_image, each as {"b64": ...}.

        api_rest.md "Encoding binary values": binary DT_STRING values must be sent as
        {"b64": <base64>}; the server decodes any such object for a string input.
        """
        encoded = [{"b64": base64.b64encode(b).decode("ascii")} for b in blobs]
        return self._batched(
            [encoded[i : i + self.batch_size] for i in range(0, len(encoded), self.batch_size)],
            IMAGE_SIGNATURE,
            IMAGE_INPUT,
            columnar,
        )

    def _batched(self, batches: list[list], signature: str, name: str, columnar: bool):
        if not batches:
            raise InputError("empty batch: nothing to send (TF Serving refuses empty instances)")
        parts = [
            self.predict(b, signature=signature, input_name=name, columnar=columnar)
            for b in batches
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
            probabilities, classes = outputs["probabilities"], outputs["classes"]
        else:
            rows = answer["predictions"]
            if not isinstance(rows, list) or len(rows) != n:
                raise bad(f"expected {n} predictions")
            probabilities = [r["probabilities"] for r in rows]
            classes = [r["classes"] for r in rows]
        p = np.asarray(probabilities, dtype=np.float32)
        c = np.asarray(classes, dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"{type(e).__name__}: {e}") from None
    if p.shape != (n, 10) or c.shape != (n,):
        raise bad(f"shapes {p.shape} and {c.shape}, expected ({n}, 10) and ({n},)")
    return Prediction(p, c)


# --- CLI -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), like every other error here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _env(name: str, default: Any, kind: type) -> Any:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise InputError(
            f"{name}={raw!r} is not a valid {kind.__name__}; unset it or fix it"
        ) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _number(kind: type, *, positive: bool = False):
    """An argparse type: a number of `kind` that is >= 0 (or > 0 when `positive`)."""

    def parse(text: str):
        value = kind(text)
        if value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"{text} must be {'above' if positive else '>='} 0")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid float value"
    return parse


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=_env("SERVING_URL", DEFAULT_URL, str),
        help=f"TF Serving's REST address [default: {DEFAULT_URL}; env: SERVING_URL]",
    )
    common.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model name, as in models.config [default: {DEFAULT_MODEL}]",
    )
    which = common.add_mutually_exclusive_group()
    which.add_argument(
        "--version",
        type=_number(int),
        help="ask for this model version [default: the latest one served]",
    )
    which.add_argument(
        "--label",
        help="ask for the version with this label, e.g. stable or canary [default: none]",
    )
    common.add_argument(
        "--timeout",
        type=_number(float, positive=True),
        default=_env("SERVING_TIMEOUT", 35.0, float),
        help="seconds to wait for a response, after connecting "
        "[default: 35, just over TF Serving's 30 s REST timeout; env: SERVING_TIMEOUT]",
    )
    common.add_argument(
        "--retries",
        type=_number(int),
        default=_env("SERVING_RETRIES", 3, int),
        help="retries on connection errors and HTTP 503 [default: 3; env: SERVING_RETRIES]",
    )
    common.add_argument(
        "--backoff",
        type=_number(float),
        default=_env("SERVING_BACKOFF", 0.5, float),
        help="backoff factor in seconds: retry n>1 waits backoff*2^(n-1) "
        "[default: 0.5; env: SERVING_BACKOFF]",
    )
    common.add_argument(
        "--json", action="store_true", help="print JSON for machines [default: a table]"
    )

    parser = _Parser(
        prog="python -m serving.client",
        description="Query the digit model on TF Serving over REST (status, metadata, predict).",
        epilog="Every command also takes --url, --model, --version or --label, --timeout, "
        "--retries, --backoff and --json, after the command name (see COMMAND --help). "
        "Exit status: 0 ok, 1 server or network error, 2 bad input or usage.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    status = sub.add_parser("status", parents=[common], help="versions and their states")
    status.add_argument(
        "--wait",
        type=_number(float),
        default=0.0,
        help="poll up to this many seconds for an AVAILABLE version [default: 0, ask once]",
    )
    sub.add_parser("metadata", parents=[common], help="signatures: inputs and outputs")
    predict = sub.add_parser(
        "predict",
        parents=[common],
        help="predict digits from image/.npy files or an idx file",
        description="Predict digits. FILEs: PNG/JPEG images (any size with the default "
        "--decode server) or .npy arrays of 0-255 pixels shaped (28, 28), (n, 28, 28) "
        "or with a trailing 1.",
    )
    predict.add_argument("files", nargs="*", metavar="FILE", help="PNG, JPEG or .npy files")
    predict.add_argument(
        "--idx",
        type=Path,
        help="an MNIST idx images file (e.g. t10k-images-idx3-ubyte.gz): send its first "
        "--count images to serving_default and report accuracy [default: none]",
    )
    predict.add_argument(
        "--labels",
        type=Path,
        help="idx labels for --idx [default: the labels-idx1 file beside it]",
    )
    predict.add_argument(
        "--count",
        type=int,
        default=100,
        help="how many images to take from --idx [default: 100]",
    )
    predict.add_argument(
        "--format",
        choices=("row", "columnar"),
        default="row",
        help="request body: row ('instances') or columnar ('inputs') [default: row]",
    )
    predict.add_argument(
        "--decode",
        choices=("server", "local"),
        default="server",
        help="images: 'server' sends the file bytes (b64) to the predict_image signature; "
        "'local' decodes 28x28 images here and sends pixels to serving_default "
        "[default: server]",
    )
    predict.add_argument(
        "--batch-size",
        type=_positive_int,
        default=64,
        help="examples per request; keep it at most batching.config's max_batch_size [default: 64]",
    )
    predict.add_argument(
        "--show",
        type=_number(int),
        default=10,
        help="table rows to print for --idx [default: 10]",
    )
    return parser


@dataclass
class _Batch:
    """Inputs bound for one signature, with the names the table shows."""

    names: list[str]
    signature: str
    pixels: np.ndarray | None = None  # serving_default
    blobs: list[bytes] | None = None  # predict_image


def _gather(args: argparse.Namespace) -> tuple[list[_Batch], int, np.ndarray | None, str | None]:
    """Read and check every input before any request is sent.

    Returns the batches (images for predict_image first, then pixels, with the --idx
    images last), how many --idx images there are, their labels, and the labels file.
    """
    if not args.files and args.idx is None:
        raise InputError("nothing to predict: give image/.npy FILEs or --idx PATH")
    pixel_names: list[str] = []
    pixel_arrays: list[np.ndarray] = []
    blobs: list[bytes] = []
    blob_names: list[str] = []
    labels = labels_file = None
    n_idx = 0

    for name in args.files:
        path = Path(name)
        suffix = path.suffix.lower()
        if suffix == ".npy":
            array = inputs.read_npy(path)
            pixel_arrays.append(array)
            pixel_names += (
                [name] if len(array) == 1 else [f"{name}[{i}]" for i in range(len(array))]
            )
        elif suffix in inputs.IMAGE_SUFFIXES:
            if args.decode == "local":
                pixel_arrays.append(inputs.decode_local(path)[None])
                pixel_names.append(name)
            else:
                blobs.append(inputs.read_image_bytes(path))
                blob_names.append(name)
        else:
            raise InputError(f"{name}: unknown file type; use .png, .jpg, .jpeg or .npy")

    if args.idx is not None:
        if args.count < 1:
            raise InputError(f"--count {args.count}: empty batch; take at least 1 image")
        images = inputs.read_idx_images(args.idx)[: args.count]
        if len(images) == 0:
            raise InputError(f"{args.idx}: holds no images (empty batch)")
        labels_file = args.labels or inputs.labels_path_for(args.idx)
        if args.labels is not None or labels_file.exists():
            labels = inputs.read_idx_labels(labels_file)[: len(images)]
            if len(labels) < len(images):
                raise InputError(
                    f"{labels_file}: holds {len(labels)} labels for {len(images)} images"
                )
        pixel_arrays.append(images)
        pixel_names += [f"{args.idx.name}[{i}]" for i in range(len(images))]
        n_idx = len(images)

    batches = []
    if blobs:
        batches.append(_Batch(blob_names, IMAGE_SIGNATURE, blobs=blobs))
    if pixel_arrays:
        batches.append(_Batch(pixel_names, PIXELS_SIGNATURE, pixels=np.concatenate(pixel_arrays)))
    return batches, n_idx, labels, str(labels_file) if labels_file is not None else None


def _predict(client: ServingClient, args: argparse.Namespace) -> int:
    batches, n_idx, labels, labels_file = _gather(args)
    columnar = args.format == "columnar"
    rows: list[dict[str, Any]] = []
    for batch in batches:
        try:
            if batch.blobs is not None:
                result = client.predict_image_bytes(batch.blobs, columnar=columnar)
            else:
                result = client.predict_pixels(batch.pixels, columnar=columnar)
        except ServingError as e:
            if e.status == 400 and batch.signature in e.message and "not found" in e.message:
                e.message += (
                    f" (this model version has no {batch.signature} signature; re-export it, "
                    "or use --decode local for 28x28 images)"
                )
            raise
        for name, p, c in zip(batch.names, result.probabilities, result.classes, strict=True):
            rows.append(
                {
                    "input": name,
                    "signature": batch.signature,
                    "digit": int(c),
                    "probability": float(p[c]),
                    "probabilities": [float(x) for x in p],
                }
            )

    report: dict[str, Any] = {
        "model": args.model,
        "version": args.version,
        "label": args.label,
        "format": args.format,
        "predictions": rows,
    }
    idx_rows = rows[len(rows) - n_idx :] if n_idx else []  # the idx images come last
    if labels is not None:
        for row, label in zip(idx_rows, labels, strict=True):
            row["label"] = int(label)
        correct = sum(r["digit"] == r["label"] for r in idx_rows)
        report.update(labels_file=labels_file, count=len(idx_rows), correct=correct)
        report["accuracy"] = correct / len(idx_rows)

    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model {client.describe()} at {client.url}, {args.format} format")
    shown = rows[: len(rows) - n_idx + min(args.show, n_idx)]
    _print_table(shown)
    if len(shown) < len(rows):
        print(f"... {len(rows) - len(shown)} more rows (--show N prints more, --json all)")
    if labels is not None:
        print(
            f"accuracy: {report['accuracy']:.2%} ({report['correct']}/{report['count']}) "
            f"against {labels_file}"
        )
    elif args.idx is not None:
        print(f"no labels file {labels_file}: accuracy not computed (pass --labels PATH)")
    return 0


def _print_table(rows: list[dict[str, Any]]) -> None:
    """One row per input: digit, its probability, then every class in whole percent."""
    width = max([len("input")] + [len(r["input"]) for r in rows])
    has_label = any("label" in r for r in rows)
    head = f"{'input':<{width}}  digit   prob" + ("  label" if has_label else "")
    print(head + "  |" + "".join(f"{k:>4}" for k in range(10)))
    for r in rows:
        line = f"{r['input']:<{width}}  {r['digit']:>5}  {r['probability']:.3f}"
        if has_label:
            mark = "" if r.get("label") in (None, r["digit"]) else " x"
            line += f"  {r.get('label', ''):>3}{mark:<2}"
        cells = "".join(
            f"{round(100 * p):>4}" if p >= 0.005 else "   ." for p in r["probabilities"]
        )
        print(line + "  |" + cells)


def _status(client: ServingClient, args: argparse.Namespace) -> int:
    answer = client.wait_until_available(args.wait) if args.wait else client.status()
    versions = answer.get("model_version_status", [])
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        for v in versions:
            status = v.get("status", {})
            line = f"model {client.model} version {v.get('version')}: {v.get('state')}"
            code, message = status.get("error_code", "OK"), status.get("error_message", "")
            if code != "OK" or message:
                line += f" ({code}: {one_line(message)})"
            print(line)
    if not any(v.get("state") == "AVAILABLE" for v in versions):
        print(f"error: no AVAILABLE version of {client.describe()}", file=sys.stderr)
        return EXIT_SERVER
    return 0


def _shape(info: dict[str, Any]) -> str:
    shape = info.get("tensor_shape", {})
    if shape.get("unknown_rank"):
        return "[?]"
    return "[" + ", ".join(str(d.get("size")) for d in shape.get("dim", [])) + "]"


def _metadata(client: ServingClient, args: argparse.Namespace) -> int:
    answer = client.metadata()
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    spec = answer.get("model_spec", {})
    print(f"model {spec.get('name')} version {spec.get('version')}")
    signatures = answer.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
    for name in sorted(signatures):
        if name.startswith("__"):  # __saved_model_init_op: TF's own, not servable
            continue
        sig = signatures[name]
        print(f"signature {name} ({sig.get('method_name', '')})")
        for kind in ("inputs", "outputs"):
            for key, info in sorted(sig.get(kind, {}).items()):
                print(f"  {kind[:-1]:<6} {key}: {info.get('dtype')} {_shape(info)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with ServingClient(
            args.url,
            args.model,
            version=args.version,
            label=args.label,
            timeout=args.timeout,
            retries=args.retries,
            backoff=args.backoff,
            batch_size=getattr(args, "batch_size", 64),
        ) as client:
            command = {"status": _status, "metadata": _metadata, "predict": _predict}
            return command[args.command](client, args)
    except InputError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_INPUT
    except ServingError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_SERVER
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `... | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0
    except Exception as e:  # a bug here: say what it was, in one line, and how to see more
        if os.environ.get("SERVING_DEBUG"):
            raise
        print(
            f"error: unexpected {type(e).__name__}: {one_line(str(e))} "
            "(set SERVING_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_SERVER


if __name__ == "__main__":
    sys.exit(main())
