"""What the benchmarks that run the trainer share: arguments, child processes, data, the
machine, and how a benchmark ends.

Each benchmark is `python -m benchmarks.NAME`: its `main(argv)` parses with `Parser`
(a usage mistake is one line and exit 2), runs, and ends through `run_main`, which turns
a BenchError into one line on stderr and its exit status. Children (the trainer, the
seed recipe, the data import) run in the project root with `child_env()`, their output
copied to a log file; a failed child's last lines are printed before the one-line error.
TensorFlow is not imported here: `--help` and bad arguments answer at once.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from digits import idx
from trainer.config import TrainConfig, env_name

ROOT = Path(__file__).resolve().parents[1]
TAIL_LINES = 25  # of a failed child's output
DEFAULT_IDX_DIR = "../shared/data/mnist"  # where this project's machines keep MNIST
IDX_FILES = tuple(f"{stem}.gz" for pair in idx.FILES.values() for stem in pair)


class BenchError(Exception):
    """Ends the run with one line on stderr and `exit_code`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (exit 2), not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BenchError(f"{message} (see `{self.prog} --help`)", 2)


def add_data_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """--data-dir (the trainer's flag, env and default), --idx-dir and --out."""
    field = TrainConfig.__dataclass_fields__["data_dir"]
    parser.add_argument(
        "--data-dir",
        default=os.environ.get(env_name(field)) or field.default,
        help=f"TFDS data dir with the prepared mnist [env {env_name(field)}, else {field.default}]",
    )
    parser.add_argument(
        "--idx-dir",
        default=os.environ.get("MNIST_IDX_DIR") or DEFAULT_IDX_DIR,
        help="the four MNIST idx .gz files, imported into --data-dir when it lacks the "
        f"dataset [env MNIST_IDX_DIR, else {DEFAULT_IDX_DIR}]",
    )
    parser.add_argument("--out", default=out, help=f"output folder [{out}]")


def absolute_paths(args: argparse.Namespace) -> None:
    """Children run in the project root: make the data and output paths absolute."""
    for name in ("data_dir", "idx_dir", "out"):
        setattr(args, name, Path(getattr(args, name)).expanduser().resolve())


def run_main(
    name: str,
    argv: Sequence[str] | None,
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace], dict[str, Any]],
    finish: Callable[[argparse.Namespace, dict[str, Any]], int],
) -> int:
    """Parse, run, and hand the result to `finish` (which writes and prints it and
    returns the exit status); a BenchError on the way is one line and its status."""
    try:
        args = parse_args(argv)
        result = run(args)
    except BenchError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return e.exit_code
    return finish(args, result)


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.write_text(json.dumps(result, indent=1))


# --- Children: start, watch, wait.


def child_env() -> dict[str, str]:
    """The environment a user's shell gives: no TRAINER_* / MNIST_IDX_DIR / TF_CONFIG
    (the trainer must run with its defaults), TF's C++ INFO lines off, output unbuffered
    (lines are timestamped as they arrive)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TRAINER_") and k not in ("MNIST_IDX_DIR", "TF_CONFIG")
    }
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return env


def start_child(
    command: list[str],
    log_path: Path,
    on_line: Callable[[float, str], None] = lambda stamp, line: None,
    on_end: Callable[[], None] = lambda: None,
) -> tuple[subprocess.Popen, threading.Thread]:
    """Start `command` in the project root, its output (stdout and stderr) copied to
    `log_path`. A thread drains the pipe (a full pipe would stall the child) and hands each
    line, without its newline, to `on_line` with its arrival time (unix); then `on_end`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )

    def pump() -> None:
        with log_path.open("w") as log:
            for line in proc.stdout:
                log.write(line)
                on_line(time.time(), line.rstrip("\n"))
        on_end()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return proc, reader


def run_child(command: list[str], log_path: Path) -> dict[str, Any]:
    """Run `command` to its end (see start_child); returns its start and end (unix), exit
    code and the child's own peak RSS."""
    start = time.time()  # "process start", as MLPerf's clock starts: before the child exists
    proc, reader = start_child(command, log_path)
    # wait4 reaps this one child and gives its own rusage (RUSAGE_CHILDREN would add up
    # every child this process ever waited for).
    _, status, usage = os.wait4(proc.pid, 0)
    end = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
    reader.join()
    proc.stdout.close()
    return {
        "command": command,
        "process_start": start,
        "process_end": end,
        "wall_seconds": end - start,
        "exit_code": proc.returncode,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports kilobytes
        "log": str(log_path),
    }


def child_failed(run: dict[str, Any], what: str, exit_code: int = 1) -> BenchError:
    """A failed child: its last lines go to stderr; returns the one-line error to raise."""
    lines = Path(run["log"]).read_text(errors="replace").splitlines()[-TAIL_LINES:]
    print(f"--- last {len(lines)} lines of {what}'s output ---", file=sys.stderr)
    print("\n".join(lines), file=sys.stderr)
    print("---", file=sys.stderr)
    return BenchError(
        f"{what} failed (exit {run['exit_code']}); full output: {run['log']}; command: "
        + " ".join(run["command"]),
        exit_code,
    )


# --- Data.


def is_prepared(data_dir: Path) -> bool:
    """TFDS' mark of a prepared dataset, checked without importing TensorFlow."""
    return any((data_dir / "mnist").glob("*/dataset_info.json"))


def missing_idx_files(idx_dir: Path) -> list[str]:
    return [f for f in IDX_FILES if not (idx_dir / f).is_file()]


def import_data(data_dir: Path, idx_dir: Path, log_path: Path) -> dict[str, Any]:
    """`python -m trainer data import`, as a user runs it; BenchError (exit 2) if it fails."""
    command = [sys.executable, "-m", "trainer", "data", "import"]
    command += ["--idx-dir", str(idx_dir), "--data-dir", str(data_dir)]
    run = run_child(command, log_path)
    if run["exit_code"] != 0:
        raise child_failed(run, "the data import", 2)
    return {k: run[k] for k in ("command", "wall_seconds", "log")}


# --- The machine.


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare this run with another machine's."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        gpus = [line.strip() for line in listing.stdout.splitlines() if line.startswith("GPU")]

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": memory,
        "gpus": gpus,
        "platform": platform.platform(),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "tensorflow": version("tensorflow") or version("tensorflow-cpu"),
        "keras": version("keras"),
        "tensorflow_datasets": version("tensorflow-datasets"),
        "numpy": version("numpy"),
        "git": commit or None,
    }


def machine_line(m: dict[str, Any]) -> str:
    """machine_info in one line, for the end of a benchmark's table."""
    return (
        f"machine: {m['cpu']}, {m['usable_cores']} cores, "
        f"{', '.join(m['gpus']) or 'no GPU'}; TF {m['tensorflow']}, Keras {m['keras']}"
    )
