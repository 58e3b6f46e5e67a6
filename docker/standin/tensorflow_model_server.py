#!/usr/bin/env python3
"""STAND-IN for TF Serving's `tensorflow_model_server`, inside the stand-in image that
docker/engine.sh builds where the real `tensorflow/serving` image cannot be pulled.

It takes the flags docker/compose.yaml passes the real server, reads the files they name
the way the real server does, and then serves the model with the project's loopback
stand-in (tools/standin/: TF Serving's REST and gRPC APIs, version states, labels and
batching, over TensorFlow's own SavedModel runtime). What it proves is the wiring: the
entry point and every flag the compose file spells out, the mounted config files (a typo
in them fails here as it would there), the read-only export mount, the user, the ports
and the healthcheck. It is not TF Serving: no warmup replay, no C++ runtime.

Behaviour copied from the real server (tensorflow_serving/model_servers/main.cc,
server.cc, server_core.cc), so the compose healthcheck and `make serve` see what they
would see there:
- flags are `--name=value` (booleans also `--name`); an unknown flag stops the server;
- the ports open only once a version is loaded: until the export dir has one, it waits,
  looking again every --file_system_poll_wait_seconds, and then looks for new versions
  at that period;
- version labels on versions that are not loaded yet need
  --allow_version_labels_for_unavailable_models=true, or the server refuses to start
  (FAILED_PRECONDITION, tensorflow/serving#1608);
- --model_config_file is re-read every --model_config_file_poll_wait_seconds, with the
  real label checks: moving a label to a version that is not AVAILABLE fails that reload
  (logged), and the old labels and version policy stay in force;
- --enable_batching with batching.config: a bounded queue, 400 for a request over
  max_batch_size, 503 for a full queue, 429 for a request that outlived
  --rest_api_timeout_in_ms (or its gRPC deadline) in the queue;
- with monitoring.config's prometheus_config enabled, request_count (by status) and
  request_latency are exposed at its path (default /monitoring/prometheus/metrics) on
  the REST port.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import time
from pathlib import Path

BANNER = (
    "STAND-IN tensorflow_model_server (digit-serve docker/standin): serves the model with "
    "tools/standin/ on TensorFlow's runtime; it proves the container wiring, not TF Serving"
)

# The flags this stand-in understands: what docker/compose.yaml and docker/k8s pass, plus
# the image entrypoint's --model_name/--model_base_path. Types as in main.cc.
FLAGS: dict[str, type] = {
    "port": int,
    "rest_api_port": int,
    "rest_api_timeout_in_ms": int,
    "model_name": str,
    "model_base_path": str,
    "model_config_file": str,
    "model_config_file_poll_wait_seconds": int,
    "allow_version_labels_for_unavailable_models": bool,
    "enable_batching": bool,
    "batching_parameters_file": str,
    "monitoring_config_file": str,
    "file_system_poll_wait_seconds": int,
}


class FlagError(Exception):
    pass


def parse_flags(argv: list[str]) -> dict[str, object]:
    values: dict[str, object] = {
        "port": 8500,
        "rest_api_port": 0,
        "model_name": "default",
        "file_system_poll_wait_seconds": 1,
        "allow_version_labels_for_unavailable_models": False,
        "enable_batching": False,
        "rest_api_timeout_in_ms": 30000,
        "model_config_file_poll_wait_seconds": 0,
    }
    for arg in argv:
        match = re.fullmatch(r"--([a-z_0-9]+)(?:=(.*))?", arg, re.S)
        if not match or match.group(1) not in FLAGS:
            raise FlagError(f"unknown command line flag '{arg}'")
        name, raw = match.groups()
        kind = FLAGS[name]
        if kind is bool:
            if raw not in (None, "true", "false", "1", "0"):
                raise FlagError(f"illegal value '{raw}' specified for bool flag '{name}'")
            values[name] = raw in (None, "true", "1")
        elif raw is None:
            raise FlagError(f"flag '{name}' needs a value: --{name}=VALUE")
        else:
            try:
                values[name] = kind(raw)
            except ValueError:
                raise FlagError(f"illegal value '{raw}' specified for flag '{name}'") from None
    return values


def read_text(flag: str, path: object) -> str:
    try:
        return Path(str(path)).read_text()
    except OSError as e:
        raise FlagError(f"--{flag}={path}: cannot read it ({e.strerror})") from None


def model_from_flags(flags: dict[str, object]) -> dict[str, object]:
    """The one model to serve: its name and base path, and the config file to re-read."""
    if not flags.get("model_config_file"):
        if not flags.get("model_base_path"):
            raise FlagError("either --model_config_file or --model_base_path must be given")
        return {"name": flags["model_name"], "base_path": flags["model_base_path"]}
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = flags["model_config_file"]
    try:
        config = text_format.Parse(
            read_text("model_config_file", path), model_server_config_pb2.ModelServerConfig()
        )
    except text_format.ParseError as e:
        raise FlagError(f"--model_config_file={path}: not a ModelServerConfig: {e}") from None
    models = config.model_config_list.config
    if len(models) != 1:
        raise FlagError(f"{path}: the stand-in serves exactly one model, found {len(models)}")
    policy = models[0].model_version_policy
    return {
        "name": models[0].name,
        "base_path": models[0].base_path,
        "config_file": Path(str(path)),
        "versions": list(policy.specific.versions) if policy.HasField("specific") else None,
    }


def batching(flags: dict[str, object]):
    """BatchingParameters from --batching_parameters_file (its defaults without one), or
    None without --enable_batching."""
    if not flags["enable_batching"]:
        return None
    from tools.standin import BatchingParameters

    if not flags.get("batching_parameters_file"):
        return BatchingParameters()
    return BatchingParameters.from_text(
        read_text("batching_parameters_file", flags["batching_parameters_file"])
    )


def metrics_path(flags: dict[str, object]) -> str | None:
    if not flags.get("monitoring_config_file"):
        return None
    from tools.standin.batching import text_field

    text = read_text("monitoring_config_file", flags["monitoring_config_file"])
    if text_field(text, "enable") != "true":
        return None
    return text_field(text, "path") or "/monitoring/prometheus/metrics"


def main(argv: list[str]) -> int:
    print(BANNER, flush=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        flags = parse_flags(argv)
        spec = model_from_flags(flags)
        params, metrics = batching(flags), metrics_path(flags)
    except FlagError as e:
        print(f"tensorflow_model_server (stand-in): {e}", file=sys.stderr, flush=True)
        return 1

    # SIGTERM (docker stop) ends the server; as PID 1 the default action would be ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    from digits import contract
    from tools.standin import ModelServer, StandInServer

    base = Path(str(spec["base_path"]))
    poll = max(int(flags["file_system_poll_wait_seconds"]), 1)
    wanted = spec.get("versions")
    while True:
        found = contract.versions(base)
        if found and (not wanted or set(wanted) <= set(found)):
            break
        print(f"waiting for a version under {base} (looking every {poll} s)", flush=True)
        time.sleep(poll)
    model = ModelServer(
        base,
        str(spec["name"]),
        config_file=spec.get("config_file"),
        allow_version_labels_for_unavailable_models=bool(
            flags["allow_version_labels_for_unavailable_models"]
        ),
        batching=params,
        rest_timeout_ms=int(flags["rest_api_timeout_in_ms"]),
        metrics_path=metrics,
    )
    try:
        server = StandInServer(
            model,
            int(flags["rest_api_port"]),
            int(flags["port"]),
            host="0.0.0.0",
            poll_seconds=poll,
            config_poll_seconds=int(flags.get("model_config_file_poll_wait_seconds") or 0) or None,
        )
    except (OSError, ValueError, RuntimeError) as e:
        # ValueError: a label on a version not loaded yet without
        # --allow_version_labels_for_unavailable_models=true: the real server refuses to
        # start with the same FAILED_PRECONDITION (server_core.cc, tensorflow/serving#1608).
        print(f"tensorflow_model_server (stand-in): {e}", file=sys.stderr, flush=True)
        return 1
    print(
        f"serving {spec['name']} versions {sorted(model.servables)} "
        f"(labels {model.labels or 'none'}): gRPC on 0.0.0.0:{flags['port']}, "
        f"REST on 0.0.0.0:{flags['rest_api_port']}"
        + (f", metrics at {metrics}" if metrics else "")
        + (f", batching up to {params.max_batch_size}" if params else ""),
        flush=True,
    )
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
