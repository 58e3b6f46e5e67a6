"""One-shot GPU benchmark: the trainer's GPU settings measured on one GPU, as a README table.

    make bench-gpu                                        # python -m benchmarks.gpu
    .venv/bin/python -m benchmarks.gpu --epochs 3 --out artifacts/bench-gpu
    .venv/bin/python -m benchmarks.gpu --dry-run --data-dir D --out O   # the plumbing, on a CPU

First `nvidia-smi` is recorded (its report, and each GPU's name, driver and memory).
Then the trainer runs once per variant, one after the other, each as its own process in
a fresh job and export dir, as `python -m trainer train --require-gpu` runs (with its
progress events on, benchmarks/harness.py), on the same data and epochs:

- default: the settings the trainer picks for a GPU (trainer/strategy.py: bfloat16
  compute, XLA, 100 steps per compiled call);
- float32, no XLA: `--mixed-precision off --jit-compile off`;
- two other `--steps-per-call` values (--steps-per-call, default 20 and 500), the rest
  as the default.

For each: training images/s (the trainer's history: images / epoch training seconds), the
wall time from process start (interpreter, imports, data, tracing, XLA compilation and
every evaluation included) to 98.15 % and 99.0 % test accuracy, to the first training
step and to exit, the final test accuracy, and the process's peak GPU memory
(`tf.config.experimental.get_memory_info("GPU:0")["peak"]`, read in the trainer's
process after it finished: what TensorFlow's allocator held at most, not what it
reserved).

Meant to take under 8 minutes on one modern GPU: a variant is not started when less than
the longest run so far is left of --budget-seconds; it is listed as skipped. No network:
the data must be prepared in --data-dir, or the idx files be in --idx-dir.

--dry-run runs all of it on the CPU with the device checks stubbed: no nvidia-smi (a
placeholder report), no --require-gpu, no GPU memory (null), 1 epoch unless --epochs is
given. It checks the plumbing (tests/test_bench.py); its numbers mean nothing.

Writes OUT/gpu.json (every measurement, the commands, nvidia-smi, the machine), OUT/gpu.md
(the table, ready for the README), OUT/nvidia-smi.txt and OUT/logs/*.log, and prints the
table. Exit status: 0 done; 1 a run failed (the runs before it are still written; later
variants are not run); 2 bad arguments, no nvidia-smi, missing data or a failed import.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import TARGETS, BenchError
from trainer.config import TrainConfig

BUDGET_SECONDS = 450  # of the 8 minutes: the rest is start-up, nvidia-smi and writing
OTHER_STEPS_PER_CALL = (20, 500)  # around the GPU default of 100: fewer and more
# The trainer as harness.TRAINER_LAUNCH runs it, then, in the same process, the most GPU
# memory it held, as one more event (null without a GPU).
GPU_LAUNCH = (
    "import sys\n"
    "from trainer import cli, outputs\n"
    "outputs.print_events()\n"
    "code = cli.main(sys.argv[1:])\n"
    "if code == 0:\n"
    "    import tensorflow as tf\n"
    "    gpus = tf.config.list_logical_devices('GPU')\n"
    "    peak = tf.config.experimental.get_memory_info('GPU:0')['peak'] if gpus else None\n"
    "    outputs.emit('gpu_memory', peak_bytes=peak)\n"
    "sys.exit(code)\n"
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = harness.Parser(
        prog="python -m benchmarks.gpu",
        description=__doc__.split("\n\n")[0],
        epilog="Details: the module docstring (benchmarks/gpu.py).",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs of every run [the trainer's default; --dry-run: 1]",
    )
    parser.add_argument(
        "--steps-per-call",
        default=",".join(map(str, OTHER_STEPS_PER_CALL)),
        help="the two other --steps-per-call values to compare with the default "
        f"[{','.join(map(str, OTHER_STEPS_PER_CALL))}]",
    )
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=BUDGET_SECONDS,
        help=f"no variant starts when less than the longest run so far is left [{BUDGET_SECONDS}]",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="the plumbing on the CPU: no nvidia-smi, no GPU check, 1 epoch (for tests)",
    )
    harness.add_data_arguments(parser, out="artifacts/bench-gpu")
    args = parser.parse_args(argv)
    try:
        args.steps_per_call = [int(v) for v in args.steps_per_call.split(",")]
    except ValueError:
        parser.error(f"--steps-per-call {args.steps_per_call!r} is not N,M (two integers)")
    if len(args.steps_per_call) != 2 or not all(1 <= v <= 10_000 for v in args.steps_per_call):
        parser.error(
            f"--steps-per-call must be two integers 1 to 10,000, got {args.steps_per_call}"
        )
    if args.epochs is not None and not 1 <= args.epochs <= 10_000:
        parser.error(f"--epochs must be 1 to 10,000, got {args.epochs}")
    if not 0 < args.budget_seconds <= 86_400:
        parser.error(
            f"--budget-seconds must be above 0 and at most 86,400, got {args.budget_seconds}"
        )
    if args.epochs is None and args.dry_run:
        args.epochs = 1
    harness.absolute_paths(args)
    return args


def variants(args: argparse.Namespace) -> list[dict[str, Any]]:
    """What runs, in order: the default first (it is the point), then the others."""
    require = [] if args.dry_run else ["--require-gpu"]
    epochs = [] if args.epochs is None else ["--epochs", str(args.epochs)]
    common = ["--data-dir", str(args.data_dir), *require, *epochs]
    runs = [
        ("default", "the trainer's GPU settings", []),
        ("float32-no-xla", "float32, no XLA", ["--mixed-precision", "off", "--jit-compile", "off"]),
    ]
    runs += [
        (f"steps-per-call-{n}", f"{n} steps per call", ["--steps-per-call", str(n)])
        for n in args.steps_per_call
    ]
    return [
        {"name": name, "label": label, "flags": flags, "command_flags": [*common, *flags]}
        for name, label, flags in runs
    ]


# --- The device.


def nvidia_smi(dry_run: bool) -> dict[str, Any]:
    """nvidia-smi's report and one record per GPU; a BenchError (exit 2) without it."""
    if dry_run:
        return {
            "report": "dry run: nvidia-smi was not called",
            "gpus": [{"name": "dry run (CPU)", "driver": None, "memory": None}],
        }
    if shutil.which("nvidia-smi") is None:
        raise BenchError(
            "nvidia-smi is not on PATH: this benchmark needs an NVIDIA GPU and its driver "
            "(--dry-run checks the plumbing without one)",
            2,
        )
    report = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60)
    query = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if report.returncode != 0 or query.returncode != 0:
        raise BenchError(
            f"nvidia-smi failed (exit {report.returncode or query.returncode}): "
            + (report.stderr or query.stderr or report.stdout).strip().splitlines()[0],
            2,
        )
    gpus = []
    for line in query.stdout.strip().splitlines():
        name, driver, memory = (part.strip() for part in line.split(",", 2))
        gpus.append({"name": name, "driver": driver, "memory": memory})
    return {"report": report.stdout, "gpus": gpus}


# --- The runs.


def run_variant(args: argparse.Namespace, variant: dict[str, Any], work: Path) -> dict[str, Any]:
    record = harness.run_trainer(
        variant["command_flags"],
        work / variant["name"],
        args.out / "logs" / f"{variant['name']}.log",
        launch=GPU_LAUNCH,
    )
    memory = record["first_events"].get("gpu_memory", {})
    return {
        **{k: variant[k] for k in ("name", "label", "flags")},
        **record,
        "peak_gpu_memory_bytes": memory.get("peak_bytes"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    smi = nvidia_smi(args.dry_run)
    (args.out / "nvidia-smi.txt").write_text(smi["report"])
    data_import = harness.ensure_data(args.data_dir, args.idx_dir, args.out / "logs", "bench-gpu")
    machine = harness.machine_info()
    runs: list[dict[str, Any]] = []
    skipped: list[str] = []
    error = None
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        for variant in variants(args):
            left = args.budget_seconds - (time.time() - started)
            longest = max((r["wall_seconds"] for r in runs), default=0.0)
            if runs and left < longest:
                print(f"bench-gpu: {variant['name']}: skipped ({left:.0f} s of the budget left)")
                skipped.append(variant["name"])
                continue
            print(f"bench-gpu: {variant['name']} ({variant['label']}) ...", flush=True)
            try:
                record = run_variant(args, variant, Path(tmp))
            except BenchError as e:  # keep what ran; the rest would likely fail alike
                error = {"variant": variant["name"], "error": str(e)}
                break
            runs.append(record)
            reached = _seconds(record["time_to_target"][str(TARGETS[-1])])
            print(
                f"bench-gpu:   {record['images_per_second'] or 0:,.0f} img/s, to {TARGETS[-1]}% "
                f"{reached}, final {100 * (record['final_accuracy'] or 0):.2f}%, wall "
                f"{record['wall_seconds']:.1f} s",
                flush=True,
            )
    return {
        "benchmark": "gpu",
        "dry_run": args.dry_run,
        "started": started,
        "finished": time.time(),
        "targets_percent": list(TARGETS),
        "settings": {
            "epochs": args.epochs,  # None: the trainer's default
            "steps_per_call": args.steps_per_call,
            "budget_seconds": args.budget_seconds,
            "data_dir": str(args.data_dir),
            "argv": sys.argv,
        },
        "nvidia_smi": smi,
        "machine": machine,
        "data_import": data_import,
        "commands": [r["command"] for r in runs],
        "runs": runs,
        "skipped": skipped,
        "error": error,
    }


# --- The table.


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def row(r: dict[str, Any]) -> str:
    """One run as a markdown table row."""
    settings = (r["summary"].get("device_settings") or {}) if r.get("summary") else {}
    memory = r["peak_gpu_memory_bytes"]
    cells = [
        r["label"],
        settings.get("dtype_policy") or "float32",
        "on" if settings.get("jit_compile") else "off",
        str(settings.get("steps_per_call", "-")),
        "-" if r["images_per_second"] is None else f"{r['images_per_second']:,.0f}",
        *(_seconds(r["time_to_target"][str(t)]) for t in TARGETS),
        "-" if r["final_accuracy"] is None else f"{100 * r['final_accuracy']:.2f}%",
        _seconds(r["startup"]["to_first_step"]),
        _seconds(r["wall_seconds"]),
        "-" if memory is None else f"{memory / 2**30:.2f} GiB",
    ]
    return "| " + " | ".join(cells) + " |"


def markdown(result: dict[str, Any]) -> str:
    """The README's table: the GPU, the runs, what the columns mean."""
    gpus = ", ".join(
        f"{g['name']}" + (f" ({g['memory']}, driver {g['driver']})" if g["driver"] else "")
        for g in result["nvidia_smi"]["gpus"]
    )
    m = result["machine"]
    epochs = result["settings"]["epochs"]
    length = "the default epochs" if epochs is None else f"{epochs} epoch" + "s" * (epochs != 1)
    day = datetime.date.fromtimestamp(result["started"]).isoformat()
    lines = []
    if result["dry_run"]:
        lines += ["**DRY RUN on the CPU: the plumbing only; these numbers mean nothing.**", ""]
    lines += [
        f"GPU benchmark (`make bench-gpu`, {day}): {gpus}; {m['cpu']}, {m['usable_cores']} "
        f"cores; TF {m['tensorflow']}, Keras {m['keras']}; "
        f"{length}, batch "
        f"{TrainConfig().batch_size}.",
        "",
        "| run | compute | XLA | steps/call | images/s | to 98.15% | to 99.0% | final "
        "| to first step | wall | peak GPU memory |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(row(r) for r in result["runs"]),
        "",
        "Times are wall seconds from process start (imports, data, tracing, XLA compilation "
        "and every evaluation count); images/s is training only; peak GPU memory is "
        "TensorFlow's allocator peak in the trainer's process.",
    ]
    if result["skipped"]:
        lines.append(f"Skipped (over the time budget): {', '.join(result['skipped'])}.")
    if result["error"]:
        lines.append(f"FAILED: {result['error']['variant']}: {result['error']['error']}")
    return "\n".join(lines) + "\n"


def finish(args: argparse.Namespace, result: dict[str, Any]) -> int:
    json_path, md_path = args.out / "gpu.json", args.out / "gpu.md"
    harness.write_json(json_path, result)
    md_path.write_text(markdown(result))
    print()
    print(md_path.read_text(), end="")
    print(f"wrote {json_path}, {md_path}")
    if result["error"]:
        print(f"gpu: {result['error']['error']}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return harness.run_main("gpu", argv, parse_args, run, finish)


if __name__ == "__main__":
    sys.exit(main())
