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
from digits.contract import versions
from trainer import outputs
from trainer.config import TrainConfig, env_name
from trainer.outputs import SUMMARY_FILE

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (98.15, 99.0)  # test accuracy in percent: the times to accuracy benchmarks report
# Accuracies arrive as float32 fractions (9815/10000 -> 0.98150003 or 0.98149997): a target
# counts as reached within this many percentage points, far below one image (0.01 pp).
TOLERANCE_PP = 1e-4
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


def print_json_then(
    describe: Callable[[dict[str, Any]], str],
) -> Callable[[argparse.Namespace, dict[str, Any]], int]:
    """A `finish` for run_main: the result as JSON, then its one-line summary; exit 0."""

    def finish(args: argparse.Namespace, result: dict[str, Any]) -> int:
        print(json.dumps(result, indent=1))
        print(describe(result))
        return 0

    return finish


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.write_text(json.dumps(result, indent=1))


# --- Children: start, watch, wait.

# `python -m trainer` (its cli.main) with its progress events on (trainer/outputs.py), so
# that a benchmark follows the run's events, never its log's wording.
TRAINER_LAUNCH = (
    "import sys\n"
    "from trainer import cli, outputs\n"
    "outputs.print_events()\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


def trainer_command(*args: str, launch: str = TRAINER_LAUNCH) -> list[str]:
    """The command that runs the trainer with ARGS (`train ...`) and its events on."""
    return [sys.executable, "-c", launch, *args]


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
    code, the child's own peak RSS, and the first trainer event of each kind it printed
    (`first_events`: kind -> the event's fields and its arrival "time", unix)."""
    first_events: dict[str, dict[str, Any]] = {}

    def on_line(stamp: float, line: str) -> None:
        event = outputs.parse_event(line)
        if event is not None and event["event"] not in first_events:
            first_events[event["event"]] = {**event, "time": stamp}

    start = time.time()  # "process start", as MLPerf's clock starts: before the child exists
    proc, reader = start_child(command, log_path, on_line)
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
        "first_events": first_events,
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


# --- The trainer's results.


def run_trainer(
    flags: list[str], work: Path, log_path: Path, launch: str = TRAINER_LAUNCH
) -> dict[str, Any]:
    """`python -m trainer train FLAGS` (events on; `launch` may add to it) in the fresh
    job and export dirs WORK/job and WORK/export, to its end. Returns run_child's record
    plus what its training summary says: every evaluation with its seconds since process
    start, the time to each of TARGETS, the training images/s, the start-up times, its
    history and settings. A failed run is a BenchError (exit 1) after its last lines."""
    export_dir = work / "export"
    command = trainer_command("train", "--job-dir", str(work / "job"), launch=launch)
    command += ["--export-dir", str(export_dir), *flags]
    run = run_child(command, log_path)
    if run["exit_code"] != 0:
        raise child_failed(run, "the trainer")
    # The trainer's default model name; a fresh export dir holds one version.
    model_dir = export_dir / TrainConfig().model_name
    found = versions(model_dir)
    path = model_dir / str(found[-1]) / SUMMARY_FILE if found else None
    if path is None or not path.is_file():
        raise BenchError(f"the trainer exited 0 but wrote no {model_dir}/*/{SUMMARY_FILE}", 1)
    summary = json.loads(path.read_text())
    history = summary.get("history") or []
    seconds = sum(r["seconds"] for r in history)
    images = sum(r["images_per_second"] * r["seconds"] for r in history)
    record = {
        **run,
        "evaluations": trainer_evaluations(summary, run["process_start"]),
        "timing_source": f"{SUMMARY_FILE} evaluations (unix time of each evaluation)",
        "images_per_second": images / seconds if seconds else None,
        "images_per_second_note": "the trainer's history: images trained / epoch training seconds",
        "startup": startup(run),
        "summary": {
            k: summary.get(k)
            for k in (
                *("strategy", "replicas", "devices", "parameters", "versions", "config"),
                "device_settings",
            )
        },
        "history": history,
    }
    add_targets(record)
    return record


def startup(run: dict[str, Any]) -> dict[str, float | None]:
    """Seconds from process start to the trainer's "run" event (imports done, data
    loaded) and to its first "step" event (model built, train step traced, one step
    trained: the trainer's first compiled call is a single step)."""
    events = run["first_events"]
    return {
        f"to_{name}": events[kind]["time"] - run["process_start"] if kind in events else None
        for name, kind in (("data_loaded", "run"), ("first_step", "step"))
    }


def trainer_evaluations(summary: dict[str, Any], process_start: float) -> list[dict[str, Any]]:
    """The trainer's test evaluations (mid-epoch ones included), each with the unix time
    it finished, from its training summary; plus the seconds since process start."""
    evaluations = summary.get("evaluations")
    if not evaluations:
        raise BenchError(f"the trainer's {SUMMARY_FILE} holds no evaluations", 1)
    return [{**e, "seconds": e["time"] - process_start} for e in evaluations]


def time_to(evaluations: list[dict[str, Any]], target: float) -> float | None:
    """Seconds since process start when test accuracy first reached `target` percent."""
    for e in evaluations:
        if 100 * e["test_accuracy"] >= target - TOLERANCE_PP:
            return e["seconds"]
    return None


def add_targets(run: dict[str, Any]) -> None:
    """A run's time to each of TARGETS and its final accuracy, from its evaluations."""
    evaluations = run["evaluations"]
    run["time_to_target"] = {str(t): time_to(evaluations, t) for t in TARGETS}
    run["final_accuracy"] = evaluations[-1]["test_accuracy"] if evaluations else None


# --- Data.


def is_prepared(data_dir: Path) -> bool:
    """TFDS' mark of a prepared dataset, checked without importing TensorFlow."""
    return any((data_dir / "mnist").glob("*/dataset_info.json"))


def missing_idx_files(idx_dir: Path) -> list[str]:
    return [f for f in IDX_FILES if not (idx_dir / f).is_file()]


def ensure_data(data_dir: Path, idx_dir: Path, log_dir: Path, name: str) -> dict[str, Any] | None:
    """The prepared dataset in `data_dir`, imported from `idx_dir` first when it is
    missing (returns the import's record, else None); a BenchError (exit 2) when neither
    is there."""
    if is_prepared(data_dir):
        return None
    missing = missing_idx_files(idx_dir)
    if missing:
        raise BenchError(
            f"{data_dir} holds no prepared mnist and --idx-dir {idx_dir} lacks "
            f"{', '.join(missing)}; point --data-dir or --idx-dir (MNIST_IDX_DIR) at the data",
            2,
        )
    print(f"{name}: importing MNIST into {data_dir}", flush=True)
    return import_data(data_dir, idx_dir, log_dir / "data-import.log")


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
