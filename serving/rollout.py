"""Move version labels in the served labels config: canary, promote, rollback, show.

    python -m serving.rollout show
    python -m serving.rollout canary --version 3        # canary -> 3
    python -m serving.rollout promote --version 3       # stable -> 3, once 3 is AVAILABLE
    python -m serving.rollout rollback                  # stable -> the stable before
    (--label NAME, --config serving/models.labels.config, --export-dir artifacts/export/mnist,
     --url/--protocol/--grpc-target to ask the server, --wait SECONDS, --offline)

The config is a text-format ModelServerConfig (serving/models.labels.config, which TF
Serving re-reads every --model_config_file_poll_wait_seconds). A change edits only the
label's `value:` in its `version_labels { key: "..." value: N }` entry (or, for a label
not there yet, adds one such line after the model's last label), so every other byte
stays as written, comments included. Before anything is written, the new text is parsed
with the real ModelServerConfig proto (serving.protos, generated from TF Serving's
model_server_config.proto; no TensorFlow) and must equal the old config with that one
label changed; then it replaces the file atomically (a temporary file beside it, then
os.replace), so the server never reads half a file.

Checks, each a one-line error and exit 2: the version must be a numeric version folder
in the export dir (the available ones are listed), and, where the config pins versions
(`specific { versions: ... }`), one of those too. The label must exist for promote and
rollback; the file must exist and parse.

The server's rule (server_core.cc UpdateModelVersionLabelMap, run on every config
reload): a label may only point at a version that is AVAILABLE.
--allow_version_labels_for_unavailable_models (which compose and the Kubernetes manifest
pass) exempts only a label that is new (or keeps its version). Moving an existing label
to a version that is not AVAILABLE yet makes every reload of the file fail with
FAILED_PRECONDITION: the label keeps answering from its old version, the rest of the
edit (a new `specific` version, say) never applies either, and nothing but the server's
log says so. So before moving an existing label (promote, canary on a label that exists,
rollback), this tool asks the server (REST at --url, or gRPC at --grpc-target with
--protocol grpc; the client's defaults and SERVING_* variables) for the target version's
state, and refuses with one line, exit 3, unless it is AVAILABLE; `--wait SECONDS` polls
until it is. A new label needs no check. `--offline` skips it, for a server that is not
running: a server reads its labels when it starts, with the flag exempting them all.

Exit status: 0 done (or nothing to do), 1 the config could not be written or the server
could not be asked, 2 a mistake in the request (above), 3 the target version is not
AVAILABLE on the server (after --wait).

History: every change appends one JSON line to `<config>.history` beside the config
(`{"label", "from", "to", "action", "time"}`); `rollback` undoes the label's latest
change that is not itself undone (a stack: promote 1->2, promote 2->3, rollback -> 2,
rollback -> 1). The config file itself carries no history, so it only ever differs by the
label's value.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from google.protobuf import text_format

from digits import contract
from serving.base import DEFAULT_GRPC_TARGET, DEFAULT_URL, LABEL_RE, BaseClient, ServingError
from serving.inputs import InputError
from serving.protos.tensorflow_serving.config import model_server_config_pb2

DEFAULT_CONFIG = Path(__file__).resolve().parent / "models.labels.config"
EXIT_ERROR, EXIT_USAGE, EXIT_NOT_AVAILABLE = 1, 2, 3
CHECK_TIMEOUT, POLL = 10.0, 1.0  # seconds: one status call; between polls with --wait


class RolloutError(Exception):
    """A user mistake: a bad version, a missing label, a malformed file. Exit 2."""


class NotAvailable(Exception):
    """The server does not have the target version AVAILABLE. Exit 3."""


class ServerUnreachable(Exception):
    """The server could not be asked. Exit 1."""


def version_state(client: BaseClient) -> str:
    """The state the server reports for the client's version: AVAILABLE, LOADING, END, ...
    or "not loaded" when the server has not seen it (NOT_FOUND)."""
    try:
        answer = client.status()
    except ServingError as e:
        if e.status == 404:
            return "not loaded"
        raise ServerUnreachable(
            f"cannot ask the server about version {client.version}: {e}"
        ) from None
    states = [v.get("state", "?") for v in answer.get("model_version_status", [])]
    return states[0] if states else "not loaded"


def require_available(
    make_client: Callable[[int], BaseClient], label: str, old: int, version: int, wait: float
) -> None:
    """Return once the server has `version` AVAILABLE; NotAvailable after `wait` seconds."""
    deadline = time.monotonic() + wait
    with make_client(version) as client:
        while True:
            state = version_state(client)
            if state == "AVAILABLE":
                return
            if time.monotonic() + POLL > deadline:
                waited = f" after waiting {wait:g} s" if wait else ""
                raise NotAvailable(
                    f"version {version} of {client.model} is {state} on {client.url}{waited}, "
                    f"not AVAILABLE: TF Serving would refuse to move the existing label "
                    f"{label!r} from {old} at every config reload (server_core.cc) and keep "
                    f"serving {old}; wait for it (--wait SECONDS), or see "
                    f"python -m serving status --version {version}"
                )
            time.sleep(POLL)


def default_export_dir() -> Path:
    base = os.environ.get("EXPORT_DIR") or "artifacts/export"
    return Path(base) / (os.environ.get("MODEL_NAME") or contract.MODEL_NAME)


def parse(text: str, where: str) -> model_server_config_pb2.ModelServerConfig:
    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as e:
        raise RolloutError(f"{where}: not a valid ModelServerConfig ({e})") from None


def read(path: Path) -> tuple[str, model_server_config_pb2.ModelServerConfig]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RolloutError(f"cannot read {path}: {e.strerror or e}") from None
    return text, parse(text, str(path))


def model_config(config: model_server_config_pb2.ModelServerConfig, model: str, path: Path):
    found = [c for c in config.model_config_list.config if c.name == model]
    if not found:
        names = [c.name for c in config.model_config_list.config]
        raise RolloutError(f"{path}: no model {model!r} in model_config_list (has {names})")
    return found[0]


def labels_span(text: str, model: str) -> tuple[int, int]:
    """Where `model`'s `config { ... }` block is in the text (for a file with several)."""
    starts = [m.start() for m in re.finditer(r"\bconfig\s*\{", text)]
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        if re.search(r'\bname:\s*"' + re.escape(model) + '"', text[start:end]):
            return start, end
    return 0, len(text)


def set_label(text: str, model: str, label: str, version: int) -> str:
    """The config text with `label` pointing at `version`: only the number changes, or
    one line is added when the label is new."""
    start, end = labels_span(text, model)
    block = text[start:end]
    entry = re.compile(
        r'(version_labels\s*\{\s*key:\s*"' + re.escape(label) + r'"\s*value:\s*)(\d+)'
    )
    found = list(entry.finditer(block))
    if len(found) > 1:
        raise RolloutError(f"label {label!r} is set {len(found)} times for {model}; fix the file")
    if found:
        m = found[0]
        block = block[: m.start(2)] + str(version) + block[m.end(2) :]
        return text[:start] + block + text[end:]
    # A new label: one line after the last label, or after the version policy line.
    anchors = list(re.finditer(r"^([ \t]*)(version_labels|model_version_policy)\b.*$", block, re.M))
    if not anchors:
        raise RolloutError(f"cannot place a new label in {model}'s config; add it by hand")
    last = anchors[-1]
    line = f'\n{last.group(1)}version_labels {{ key: "{label}" value: {version} }}'
    block = block[: last.end()] + line + block[last.end() :]
    return text[:start] + block + text[end:]


def write_atomically(path: Path, text: str) -> None:
    """A temporary file in the same folder, fsynced, then os.replace: readers see the old
    file or the new one, never part of one."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def history_path(config: Path) -> Path:
    return config.with_name(config.name + ".history")


def read_history(config: Path) -> list[dict]:
    path = history_path(config)
    if not path.exists():
        return []
    entries = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except ValueError:
                raise RolloutError(f"{path}:{n}: not a JSON line; fix or remove it") from None
    return entries


def undo_stack(entries: list[dict], label: str) -> list[int]:
    """The versions `rollback` returns `label` to, the next one last."""
    stack: list[int] = []
    for e in entries:
        if e.get("label") != label:
            continue
        if e.get("action") == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(int(e["from"]))
    return stack


def change(
    config_path: Path,
    label: str,
    version: int,
    *,
    model: str,
    export_dir: Path | None,
    action: str,
    require_label: bool,
    check: Callable[[str, int, int], None] | None = None,
) -> tuple[int | None, int]:
    """Point `label` at `version`; returns (old version or None, new version).

    `check(label, old, new)` runs before an existing label moves (require_available)."""
    if not LABEL_RE.match(label):
        raise RolloutError(f"label {label!r}: version labels are letters, digits and _ only")
    text, config = read(config_path)
    entry = model_config(config, model, config_path)
    current = entry.version_labels.get(label)
    if current is None and require_label:
        have = dict(entry.version_labels) or "none"
        raise RolloutError(
            f"{config_path}: model {model} has no {label!r} label (labels: {have}); "
            f"set one first: python -m serving.rollout canary --label {label} --version N"
        )
    if export_dir is not None:
        available = contract.versions(export_dir)
        if version not in available:
            raise RolloutError(
                f"version {version} is not in {export_dir} (available: "
                f"{', '.join(map(str, available)) or 'none'}); export it first"
            )
    pinned = list(entry.model_version_policy.specific.versions)
    if entry.model_version_policy.HasField("specific") and version not in pinned:
        raise RolloutError(
            f"version {version} is not among {config_path.name}'s specific versions {pinned}: "
            "TF Serving labels only loaded versions; add it there first (or run the server "
            "with --allow_version_labels_for_unavailable_models)"
        )
    if current == version:
        return current, version
    if current is not None and check is not None:
        check(label, current, version)
    new_text = set_label(text, model, label, version)
    expected = model_server_config_pb2.ModelServerConfig()
    expected.CopyFrom(config)
    model_config(expected, model, config_path).version_labels[label] = version
    if parse(new_text, f"{config_path} (edited)") != expected:
        raise RolloutError(f"{config_path}: the edit changed more than {label}; edit it by hand")
    write_atomically(config_path, new_text)
    record = {
        "label": label,
        "from": current,
        "to": version,
        "action": action,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    history = history_path(config_path)
    old = history.read_text(encoding="utf-8") if history.exists() else ""
    write_atomically(history, old + json.dumps(record) + "\n")
    return current, version


def show(config_path: Path, model: str) -> str:
    _, config = read(config_path)
    entry = model_config(config, model, config_path)
    policy = entry.model_version_policy
    which = policy.WhichOneof("policy_choice") or "latest (default)"
    lines = [f"{config_path}: model {model}, version policy {which}"]
    if policy.HasField("specific"):
        lines[0] += f" {list(policy.specific.versions)}"
    history = read_history(config_path)
    for label, version in sorted(entry.version_labels.items()):
        back = undo_stack(history, label)
        after = f"; rollback -> {back[-1]}" if back else ""
        lines.append(f"  {label} -> {version}{after}")
    if not entry.version_labels:
        lines.append("  no labels")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.rollout",
        description="Point version labels (stable, canary) at versions in the served "
        "labels config, and roll back. Exit 2 for a user mistake.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="the labels config [default: %(default)s]",
    )
    common.add_argument(
        "--model", default=contract.MODEL_NAME, help="model name [default: %(default)s]"
    )
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--protocol",
        choices=("rest", "grpc"),
        default=os.environ.get("SERVING_PROTOCOL") or "rest",
        help="how to ask the server for the version's state [default: $SERVING_PROTOCOL or rest]",
    )
    server.add_argument(
        "--url",
        default=os.environ.get("SERVING_URL") or DEFAULT_URL,
        help=f"TF Serving's REST address [default: $SERVING_URL or {DEFAULT_URL}]",
    )
    server.add_argument(
        "--grpc-target",
        default=os.environ.get("SERVING_GRPC_TARGET") or DEFAULT_GRPC_TARGET,
        help=f"TF Serving's gRPC address [default: $SERVING_GRPC_TARGET or {DEFAULT_GRPC_TARGET}]",
    )
    server.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before moving an existing label, wait up to this long for the version to be "
        "AVAILABLE [default: 0, ask once]",
    )
    server.add_argument(
        "--offline",
        action="store_true",
        help="do not ask the server (it is not running; it reads the labels when it starts)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("show", parents=[common], help="labels, versions and what rollback would do")
    for name, label, text in (
        ("promote", "stable", "point the stable label at VERSION"),
        ("canary", "canary", "point the canary label at VERSION (added if missing)"),
    ):
        cmd = sub.add_parser(name, parents=[common, server], help=text)
        cmd.add_argument("--version", type=int, required=True, help="an exported version")
        cmd.add_argument("--label", default=label, help="the label [default: %(default)s]")
        cmd.add_argument(
            "--export-dir",
            type=Path,
            default=None,
            help="where the versions are, to check VERSION [default: $EXPORT_DIR/$MODEL_NAME "
            "or artifacts/export/mnist]",
        )
    back = sub.add_parser("rollback", parents=[common, server], help="the label's previous version")
    back.add_argument("--label", default="stable", help="the label [default: %(default)s]")
    return parser


def server_check(args: argparse.Namespace) -> Callable[[str, int, int], None] | None:
    """require_available against the server `args` name, or None with --offline."""
    if args.offline:
        return None
    if args.wait < 0:
        raise RolloutError(f"--wait {args.wait:g}: must be 0 or more seconds")

    def make_client(version: int) -> BaseClient:
        options = dict(version=version, retries=1, timeout=CHECK_TIMEOUT)
        try:
            if args.protocol == "grpc":
                from serving.grpc_client import GrpcServingClient

                return GrpcServingClient(args.grpc_target, args.model, **options)
            from serving.client import ServingClient

            return ServingClient(args.url, args.model, **options)
        except InputError as e:
            raise RolloutError(str(e)) from None

    return lambda label, old, new: require_available(make_client, label, old, new, args.wait)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "show":
            print(show(args.config, args.model))
            return 0
        if args.command == "rollback":
            stack = undo_stack(read_history(args.config), args.label)
            if not stack:
                raise RolloutError(
                    f"nothing to roll back: {history_path(args.config)} records no change of "
                    f"{args.label!r} that is not already undone"
                )
            old, new = change(
                args.config,
                args.label,
                stack[-1],
                model=args.model,
                export_dir=None,  # going back to a version that was served
                action="rollback",
                require_label=True,
                check=server_check(args),
            )
        else:
            old, new = change(
                args.config,
                args.label,
                args.version,
                model=args.model,
                export_dir=args.export_dir or default_export_dir(),
                action=args.command,
                require_label=args.command == "promote",
                check=server_check(args),
            )
    except RolloutError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except NotAvailable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NOT_AVAILABLE
    except ServerUnreachable as e:
        print(f"error: {e} (start it, or pass --offline if it is not running)", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        print(f"error: cannot write {args.config}: {e.strerror or e}", file=sys.stderr)
        return EXIT_ERROR
    if old == new:
        print(f"{args.label} already points at version {new} in {args.config}; nothing changed")
    else:
        print(f"{args.label}: {old if old is not None else '(none)'} -> {new} in {args.config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
