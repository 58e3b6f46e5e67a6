"""The command line over the clients: status, metadata, predict and load, as tables or JSON.

    python -m serving status [--wait 30]
    python -m serving metadata
    python -m serving predict serving/samples/*.png
    python -m serving predict --idx ../shared/data/mnist/t10k-images-idx3-ubyte.gz

Every option is a flag, and
--url, --timeout, --retries and --backoff also an environment variable (SERVING_URL,
...), which a flag overrides; both are parsed and checked the same way.

PNG/JPEG files go by default, as `{"b64": ...}`, to the `predict_image` signature, which
decodes, inverts, crops, scales and centres them inside the graph, so every client gets
the same preprocessing. `--decode local` instead decodes 28x28 images here and sends
pixels to `serving_default`. `.npy` files and idx files always go to `serving_default`.

Errors are one line on stderr and a non-zero exit, never a traceback: 1 for the server
or the network, 2 for input or usage (caught before anything is sent), 3 when the server
answered but refused some images (`predict_image` answers per image: each refused file
gets its own `error: FILE: why` line on stderr, and the others are still printed). The
`--json` report's field names (`input`, `digit`, `probability`, `probabilities`,
`status`, ...) are this CLI's own output format, kept stable whatever the model's
outputs are called.

`status --label L` shows the version the label points at: TF Serving's status call
ignores labels (it lists every version), so the label is resolved through the metadata
call first. `status --wait S` polls through what a server that is starting or loading
answers (no connection, 404 while a version loads, 429/503, a label not read yet).

Imports requests, numpy, the standard library and `digits` only (never TensorFlow or
the trainer); pillow only for `--decode local`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from digits.contract import COLS, IMAGE, IMAGE_OK, NUM_CLASSES, PIXELS, ROWS
from serving import inputs
from serving.base import (
    DEFAULT_BACKOFF,
    DEFAULT_BATCH_SIZE,
    DEFAULT_GRPC_TARGET,
    DEFAULT_MODEL,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    BaseClient,
    ServingError,
    one_line,
)
from serving.inputs import InputError

PROG = "python -m serving"
PROTOCOLS = ("rest", "grpc")
EXIT_SERVER, EXIT_INPUT, EXIT_REFUSED, EXIT_INTERRUPTED = 1, 2, 3, 130


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), like every other error here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _number(kind: type, *, positive: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite number of `kind` that is >= 0 (or > 0 when `positive`).
    float() takes "nan" and "inf", and NaN passes every comparison below: refused first."""

    def parse(text: str):
        value = kind(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"{text} must be {'above' if positive else '>='} 0")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid float value"
    return parse


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    """An argparse type for one of `choices`, so an environment value is checked too."""

    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    parse.__name__ = "choice"
    return parse


def _option(
    parser: Any,
    flag: str,
    help: str,
    *,
    default: Any = None,
    shown: Any = None,
    env: str | None = None,
    type: Callable[[str], Any] | None = None,
    **kwargs: Any,
) -> None:
    """Add `flag`, whose value is the flag, else $`env` (when set and not empty), else
    `default`. The environment value is parsed and checked by the flag's own `type`; the
    help ends "[default: `shown` (or `default`); env: `env`]".
    """
    note = f"default: {default if shown is None else shown}" + (f"; env: {env}" if env else "")
    raw = os.environ.get(env, "") if env else ""
    if raw != "":
        kind = type or str
        try:
            default = kind(raw)
        except ValueError:
            raise InputError(
                f"{env}={raw!r} is not a valid {kind.__name__}; unset it or fix it"
            ) from None
        except argparse.ArgumentTypeError as e:
            raise InputError(f"{env}={raw!r}: {e}; unset it or fix it") from None
    if type is not None:
        kwargs["type"] = type
    parser.add_argument(flag, default=default, help=f"{help} [{note}]", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _option(
        common,
        "--protocol",
        "the API to call: REST at --url, or gRPC at --grpc-target",
        default="rest",
        env="SERVING_PROTOCOL",
        type=_choice(PROTOCOLS),
        metavar="{rest,grpc}",
    )
    _option(common, "--url", "TF Serving's REST address", default=DEFAULT_URL, env="SERVING_URL")
    _option(
        common,
        "--grpc-target",
        "TF Serving's gRPC address, host:port (grpc://host:port too), for --protocol grpc",
        default=DEFAULT_GRPC_TARGET,
        env="SERVING_GRPC_TARGET",
    )
    _option(common, "--model", "model name, as in models.config", default=DEFAULT_MODEL)
    which = common.add_mutually_exclusive_group()
    _option(
        which,
        "--version",
        "ask for this model version",
        shown="the latest one served",
        type=_number(int),
    )
    _option(
        which,
        "--label",
        "ask for the version with this label, e.g. stable or canary",
        shown="none",
    )
    _option(
        common,
        "--timeout",
        "seconds to wait for a response, after connecting",
        default=DEFAULT_TIMEOUT,
        shown=f"{DEFAULT_TIMEOUT:g}, just over TF Serving's 30 s REST timeout",
        env="SERVING_TIMEOUT",
        type=_number(float, positive=True),
    )
    _option(
        common,
        "--retries",
        "retries on connection errors, HTTP 429 and 503 (gRPC RESOURCE_EXHAUSTED and UNAVAILABLE)",
        default=DEFAULT_RETRIES,
        env="SERVING_RETRIES",
        type=_number(int),
    )
    _option(
        common,
        "--backoff",
        "backoff factor in seconds: retry n>1 waits backoff*2^(n-1)",
        default=DEFAULT_BACKOFF,
        env="SERVING_BACKOFF",
        type=_number(float),
    )
    _option(
        common,
        "--json",
        "print JSON for machines",
        default=False,
        shown="a table",
        action="store_true",
    )

    parser = _Parser(
        prog=PROG,
        description="Query the digit model on TF Serving over REST or gRPC (status, metadata, "
        "predict), or load-test it (load).",
        epilog="Every command also takes --protocol, --url or --grpc-target, --model, --version "
        "or --label, --timeout, --retries, --backoff and --json, after the command name (see "
        "COMMAND --help). Exit status: 0 ok, 1 server or network error, 2 bad input or usage, "
        "3 the server refused some images (each named on stderr).",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    status = sub.add_parser("status", parents=[common], help="versions and their states")
    _option(
        status,
        "--wait",
        "poll up to this many seconds for an AVAILABLE version (through 404 while it loads)",
        default=0.0,
        shown="0, ask once",
        type=_number(float),
    )
    sub.add_parser("metadata", parents=[common], help="signatures: inputs and outputs")
    predict = sub.add_parser(
        "predict",
        parents=[common],
        help="predict digits from image/.npy files or an idx file",
        description="Predict digits. FILEs: PNG/JPEG images (any size with the default "
        f"--decode server) or .npy arrays of 0-255 pixels shaped ({ROWS}, {COLS}), "
        f"(n, {ROWS}, {COLS}) or with a trailing 1.",
    )
    predict.add_argument("files", nargs="*", metavar="FILE", help="PNG, JPEG or .npy files")
    _option(
        predict,
        "--idx",
        "an MNIST idx images file (e.g. t10k-images-idx3-ubyte.gz): send its first "
        f"--count images to {PIXELS.name} and report accuracy",
        shown="none",
        type=Path,
    )
    _option(
        predict,
        "--labels",
        "idx labels for --idx",
        shown="the labels-idx1 file beside it",
        type=Path,
    )
    _option(predict, "--count", "how many images to take from --idx", default=100, type=int)
    _option(
        predict,
        "--format",
        "request body: row ('instances') or columnar ('inputs')",
        default="row",
        choices=("row", "columnar"),
    )
    _option(
        predict,
        "--decode",
        f"images: 'server' sends the file bytes (b64) to the {IMAGE.name} signature; "
        f"'local' decodes {ROWS}x{COLS} images here and sends pixels to {PIXELS.name}",
        default="server",
        choices=("server", "local"),
    )
    _option(
        predict,
        "--batch-size",
        "examples per request; keep it at most batching.config's max_batch_size",
        default=DEFAULT_BATCH_SIZE,
        type=_positive_int,
    )
    _option(predict, "--show", "table rows to print for --idx", default=10, type=_number(int))

    load = sub.add_parser(
        "load",
        parents=[common],
        help="load-test the server: concurrent clients for a bounded time",
        description="Send predict requests from --concurrency threads, each with its own "
        "client and connection, for --seconds (or --requests in all); report requests/s, "
        "images/s, latency p50/p95/p99 and errors by kind. Loopback targets only unless "
        "--allow-remote. Exit 1 when any request failed.",
    )
    _option(load, "--concurrency", "worker threads", default=8, type=_positive_int)
    _option(load, "--seconds", "how long to send", default=20.0, type=_number(float, positive=True))
    _option(
        load, "--requests", "stop after this many requests", shown="no limit", type=_positive_int
    )
    _option(load, "--batch", "examples per request", default=1, type=_positive_int)
    _option(
        load,
        "--input",
        f"'pixels' (uint8, {PIXELS.name}) or 'image' (the sample PNGs, {IMAGE.name})",
        default="pixels",
        choices=("pixels", "image"),
    )
    _option(
        load,
        "--allow-remote",
        "allow a target that is not a loopback address",
        default=False,
        action="store_true",
    )
    return parser


@dataclass
class _Batch:
    """Inputs bound for one signature, with the names the table shows."""

    names: list[str]
    signature: str
    pixels: np.ndarray | None = None  # for PIXELS (serving_default)
    blobs: list[bytes] | None = None  # for IMAGE (predict_image)


def _gather(args: argparse.Namespace) -> tuple[list[_Batch], int, np.ndarray | None, str | None]:
    """Read and check every input before any request is sent.

    Returns the batches (encoded images for IMAGE first, then pixels, with the --idx
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
        batches.append(_Batch(blob_names, IMAGE.name, blobs=blobs))
    if pixel_arrays:
        batches.append(_Batch(pixel_names, PIXELS.name, pixels=np.concatenate(pixel_arrays)))
    return batches, n_idx, labels, str(labels_file) if labels_file is not None else None


def _predict(client: BaseClient, args: argparse.Namespace) -> int:
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
                    f"or use --decode local for {ROWS}x{COLS} images)"
                )
            raise
        status = result.status if result.status is not None else [IMAGE_OK] * len(result.classes)
        for name, p, c, why in zip(
            batch.names, result.probabilities, result.classes, status, strict=True
        ):
            rows.append(
                {
                    "input": name,
                    "signature": batch.signature,
                    "digit": int(c),
                    "probability": float(p[c]) if why == IMAGE_OK else 0.0,
                    "probabilities": [float(x) for x in p],
                    "status": str(why),
                }
            )
    refused = [r for r in rows if r["status"] != IMAGE_OK]

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
    else:
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
    for row in refused:  # one line each, after the answers, which are all printed
        print(f"error: {row['input']}: {one_line(row['status'])}", file=sys.stderr)
    return EXIT_REFUSED if refused else 0


def _print_table(rows: list[dict[str, Any]]) -> None:
    """One row per input: digit, its probability, then every class in whole percent."""
    width = max([len("input")] + [len(r["input"]) for r in rows])
    has_label = any("label" in r for r in rows)
    head = f"{'input':<{width}}  digit   prob" + ("  label" if has_label else "")
    print(head + "  |" + "".join(f"{k:>4}" for k in range(NUM_CLASSES)))
    for r in rows:
        if r.get("status", IMAGE_OK) != IMAGE_OK:
            print(f"{r['input']:<{width}}  {'-':>5}  {'-':>5}  | refused: {one_line(r['status'])}")
            continue
        line = f"{r['input']:<{width}}  {r['digit']:>5}  {r['probability']:.3f}"
        if has_label:
            mark = "" if r.get("label") in (None, r["digit"]) else " x"
            line += f"  {r.get('label', ''):>3}{mark:<2}"
        cells = "".join(
            f"{round(100 * p):>4}" if p >= 0.005 else "   ." for p in r["probabilities"]
        )
        print(line + "  |" + cells)


def _status(client: BaseClient, args: argparse.Namespace) -> int:
    answer = client.wait_until_available(args.wait) if args.wait else client.status()
    versions = answer.get("model_version_status", [])
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        for v in versions:
            status = v.get("status", {})
            line = f"model {client.model} version {v.get('version')}: {v.get('state')}"
            if client.label is not None:
                line += f" (label {client.label})"
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


def _metadata(client: BaseClient, args: argparse.Namespace) -> int:
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


def make_client(args: argparse.Namespace) -> BaseClient:
    """The client `args` ask for: REST (`ServingClient`) or gRPC (`GrpcServingClient`),
    each imported only then: grpcio takes a while to import and REST users need none of
    it, and `--help` needs neither."""
    if args.protocol == "grpc":
        from serving.grpc_client import GrpcServingClient

        cls, address = GrpcServingClient, args.grpc_target
    else:
        if args.url.startswith("grpc://"):
            raise InputError(
                f"--url {args.url}: a gRPC address; use --protocol grpc --grpc-target "
                f"{args.url.removeprefix('grpc://')}"
            )
        from serving.client import ServingClient

        cls, address = ServingClient, args.url
    return cls(
        address,
        args.model,
        version=args.version,
        label=args.label,
        timeout=args.timeout,
        retries=args.retries,
        backoff=args.backoff,
        batch_size=getattr(args, "batch_size", DEFAULT_BATCH_SIZE),
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "load":
            from serving import load

            return load.command(args, lambda: make_client(args))
        with make_client(args) as client:
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
