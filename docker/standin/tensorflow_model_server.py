#!/usr/bin/env python3
"""STAND-IN for TF Serving's `tensorflow_model_server`, inside the stand-in image that
docker/engine.sh builds where the real `tensorflow/serving` image cannot be pulled.

It takes the flags docker/compose.yaml passes the real server, reads the files they name
the way the real server does, and then serves the model with the project's loopback
stand-in (serving/standin.py: TF Serving's REST and gRPC APIs over TensorFlow's own
SavedModel runtime). What it proves is the wiring: the entry point and every flag the
compose file spells out, the mounted config files (a typo in them fails here as it would
there), the read-only export mount, the user, the ports and the healthcheck. It is not
TF Serving: no server-side batching, no warmup replay, no C++ runtime.

Behaviour copied from the real server (tensorflow_serving/model_servers/main.cc,
server.cc), so the compose healthcheck and `make serve` see what they would see there:
- flags are `--name=value` (booleans also `--name`); an unknown flag stops the server;
- the ports open only once a version is loaded: until the export dir has one, it waits,
  looking again every --file_system_poll_wait_seconds;
- version labels on versions that are not loaded yet need
  --allow_version_labels_for_unavailable_models=true, or the server refuses to start
  (FAILED_PRECONDITION, tensorflow/serving#1608);
- one request larger than batching.config's max_batch_size gets 400;
- with monitoring.config's prometheus_config enabled, a request counter is exposed at
  its path (default /monitoring/prometheus/metrics) on the REST port.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path

BANNER = (
    "STAND-IN tensorflow_model_server (digit-serve docker/standin): serves the model with "
    "serving/standin.py on TensorFlow's runtime; it proves the container wiring, not TF Serving"
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


def text_field(text: str, name: str) -> str | None:
    """A scalar field of a text-format proto (`name: value` or `name { value: v }`)."""
    text = re.sub(r"#.*", "", text)
    match = re.search(rf"\b{name}\s*(?::\s*|\{{\s*value\s*:\s*)(\"[^\"]*\"|[^\s}}]+)", text)
    return match.group(1).strip('"') if match else None


def model_from_flags(flags: dict[str, object]) -> dict[str, object]:
    """The one model to serve: name, base path, versions policy and labels."""
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
    model = models[0]
    policy = model.model_version_policy
    which = policy.WhichOneof("policy_choice")
    return {
        "name": model.name,
        "base_path": model.base_path,
        "num_versions": (policy.latest.num_versions or 1) if which in (None, "latest") else None,
        "versions": list(policy.specific.versions) if which == "specific" else None,
        "all": which == "all",
        "labels": dict(model.version_labels),
    }


def batching_limit(flags: dict[str, object]) -> int | None:
    if not flags["enable_batching"]:
        return None
    if not flags.get("batching_parameters_file"):
        return 32  # BatchingParameters' default max_batch_size
    text = read_text("batching_parameters_file", flags["batching_parameters_file"])
    limit = text_field(text, "max_batch_size")
    return int(limit) if limit else 32


def metrics_path(flags: dict[str, object]) -> str | None:
    if not flags.get("monitoring_config_file"):
        return None
    text = read_text("monitoring_config_file", flags["monitoring_config_file"])
    if text_field(text, "enable") != "true":
        return None
    return text_field(text, "path") or "/monitoring/prometheus/metrics"


def main(argv: list[str]) -> int:
    print(BANNER, flush=True)
    try:
        flags = parse_flags(argv)
        spec = model_from_flags(flags)
        limit, metrics = batching_limit(flags), metrics_path(flags)
    except FlagError as e:
        print(f"tensorflow_model_server (stand-in): {e}", file=sys.stderr, flush=True)
        return 1
    labels = spec.get("labels") or {}
    wanted = spec.get("versions")
    if labels and not flags["allow_version_labels_for_unavailable_models"]:
        # server_core.cc checks labels before any version has loaded; at startup no version
        # has, so labels fail unless the flag allows labels for unavailable versions.
        print(
            "tensorflow_model_server (stand-in): FAILED_PRECONDITION: Request to assign label "
            f"to version {next(iter(labels.values()))} of model {spec['name']}, which is not "
            "currently available for inference (set "
            "--allow_version_labels_for_unavailable_models=true)",
            file=sys.stderr,
            flush=True,
        )
        return 1

    # SIGTERM (docker stop) ends the server; as PID 1 the default action would be ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    from digits import contract
    from serving.standin import ModelServer, StandInServer

    base = Path(str(spec["base_path"]))
    poll = max(int(flags["file_system_poll_wait_seconds"]), 1)
    while True:
        found = contract.versions(base)
        if found and (not wanted or set(wanted) <= set(found)):
            break
        print(f"waiting for a version under {base} (looking every {poll} s)", flush=True)
        time.sleep(poll)
    model = ModelServer(
        base,
        str(spec["name"]),
        # `all {}`: every version, those that appear later too.
        num_versions=sys.maxsize if spec.get("all") else int(spec.get("num_versions") or 1),
        versions=wanted,
        labels=labels,
        max_batch_size=limit,
        metrics_path=metrics,
    )
    try:
        server = StandInServer(
            model, int(flags["rest_api_port"]), int(flags["port"]), host="0.0.0.0"
        )
    except (OSError, ValueError, RuntimeError) as e:
        print(f"tensorflow_model_server (stand-in): {e}", file=sys.stderr, flush=True)
        return 1
    print(
        f"serving {spec['name']} versions {sorted(model.servables)} "
        f"(labels {labels or 'none'}): gRPC on 0.0.0.0:{flags['port']}, "
        f"REST on 0.0.0.0:{flags['rest_api_port']}"
        + (f", metrics at {metrics}" if metrics else "")
        + (f", max batch {limit}" if limit else ""),
        flush=True,
    )
    server.start()
    try:
        while True:  # the file-system poll: new versions load, retired ones unload
            time.sleep(poll)
            for version in model.refresh():
                print(f"loaded {spec['name']} version {version}", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
