"""`python -m tools.standin`: serve an export over REST (and gRPC) on loopback."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from digits import contract
from tools.standin import GRPC_SCHEME, READY, BatchingParameters, ModelServer, StandInServer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.standin",
        description="A loopback stand-in for TF Serving's REST and gRPC APIs that runs the "
        "real SavedModel (tools/standin/__init__.py says what it copies from TF Serving).",
    )
    parser.add_argument(
        "--model-base-path",
        type=Path,
        required=True,
        help="folder of numeric version folders, e.g. artifacts/export/mnist [required]",
    )
    parser.add_argument(
        "--model-name",
        default=contract.MODEL_NAME,
        help=f"model name [default: {contract.MODEL_NAME}]",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8501,
        help="port on 127.0.0.1; 0 takes a free one (the ready line names it) [default: 8501]",
    )
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve TF Serving's gRPC API on this port of 127.0.0.1 (TF Serving's is "
        "8500); 0 takes a free one (the ready line names it) [default: no gRPC]",
    )
    parser.add_argument(
        "--num-versions", type=int, default=1, help="serve the N latest versions [default: 1]"
    )
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NAME=VERSION",
        help="a version label, as version_labels in models.labels.config; repeatable",
    )
    parser.add_argument(
        "--model-config-file",
        type=Path,
        default=None,
        help="a models.config for the version policy and labels, in place of "
        "--num-versions and --label, re-read every --model-config-file-poll-wait-seconds "
        "[default: none]",
    )
    parser.add_argument(
        "--model-config-file-poll-wait-seconds",
        type=float,
        default=0,
        help="how often to re-read --model-config-file; 0: never [default: 0, as TF Serving]",
    )
    parser.add_argument(
        "--file-system-poll-wait-seconds",
        type=float,
        default=1,
        help="how often to look for new version folders; 0: never [default: 1, as TF Serving]",
    )
    parser.add_argument(
        "--batching-parameters-file",
        type=Path,
        default=None,
        help="batch requests as --enable_batching does, with this batching.config "
        "[default: no batching]",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    labels = {}
    for item in args.label:
        name, _, number = item.partition("=")
        if not (name and number.isdigit()):
            parser.error(f"--label {item!r}: expected NAME=VERSION, e.g. stable=1")
        labels[name] = int(number)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        batching = (
            BatchingParameters.from_text(args.batching_parameters_file.read_text())
            if args.batching_parameters_file
            else None
        )
        model = ModelServer(
            args.model_base_path,
            args.model_name,
            num_versions=args.num_versions,
            labels=labels,
            config_file=args.model_config_file,
            batching=batching,
        )
        server = StandInServer(
            model,
            args.port,
            args.grpc_port,
            poll_seconds=args.file_system_poll_wait_seconds or None,
            config_poll_seconds=args.model_config_file_poll_wait_seconds or None,
        )
    except (OSError, ValueError, RuntimeError) as e:  # no versions, a bad label, port taken
        print(f"error: {e}", file=sys.stderr)
        return 1
    grpc_part = f" and gRPC on {GRPC_SCHEME}{server.grpc_target}" if server.grpc else ""
    print(
        f"{READY}{server.url}{grpc_part} (model {args.model_name}, versions "
        f"{sorted(model.servables)}, labels {model.labels or 'none'})",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
