"""Kill soak: SIGKILL the trainer at random moments and rerun it, as a flaky machine would.

    .venv/bin/python -m benchmarks.soak                       # make soak: 10 kills
    .venv/bin/python -m benchmarks.soak --kills 3 --epochs 1  # shorter
    make soak SOAK_ARGS="--kills 3 --checkpoint-seconds 10"

First an uninterrupted run of the config, then the same config in a fresh job and export
dir, killed with SIGKILL (no chance to save) N times and rerun after each kill, then
rerun once more to the end. N-1 kills land during training: once the trainer logs that
it has reached a random target step (drawn uniformly over the run, sorted), after a
random delay of up to one checkpoint interval's time, so that a kill may land mid-step,
mid-checkpoint or mid-evaluation. The last kill lands during the export (up to 0.2 s
after one of its moments, picked at random: the quality gate decided, staged, verified,
published), where a kill leaves a staging folder, or a published version without
finished.json. It reports:

- kills survived: every kill was followed by a rerun that resumed, and the last one
  finished (exit 0);
- steps repeated: for each kill, the last step the killed trainer logged minus the step
  the rerun resumed from. Each must be at most one checkpoint interval
  (--checkpoint-every plus --steps-per-call: saves happen between compiled calls). A
  call that finished but was not yet logged when the kill landed is not counted (at
  most --steps-per-call more per kill);
- final test accuracy against the uninterrupted run (resuming is exact up to float
  round-off, so within --tolerance-pp percentage points);
- exactly one version exported, and no temporary files left behind.

The trainer runs as `python -m trainer train` does, with its progress events turned on
(trainer/outputs.py: one JSON line per event, off otherwise): the run's total steps,
"step" after every compiled call, where a rerun resumed, the export's moments, what a
rerun recovered. The soak follows those, never the log's wording. With --alongside the
uninterrupted run trains at the same time as the killed ones (how the test suite's
two-kill variant runs, tests/test_faults.py).

Writes OUT/soak.json (settings, machine, every run with its kill, the summary) and
OUT/logs/*.log, and prints a table. Exit status: 0 every check passed; 1 a check failed
or a run failed unexpectedly; 2 bad arguments or missing data.
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import BenchError
from digits.contract import versions
from trainer import outputs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = harness.Parser(
        prog="python -m benchmarks.soak",
        description=__doc__.split("\n\n")[0],
        epilog="Details: the module docstring (benchmarks/soak.py).",
    )
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs to survive [10]")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the run [2]")
    parser.add_argument(
        "--checkpoint-every", type=int, default=200, help="trainer --checkpoint-every [200]"
    )
    parser.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=0.0,
        help="trainer --checkpoint-seconds [0: off]",
    )
    parser.add_argument(
        "--steps-per-call",
        type=int,
        default=20,
        help="trainer --steps-per-call (saves happen between calls) [20]",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments [0]")
    parser.add_argument(
        "--alongside",
        action="store_true",
        help="run the uninterrupted run at the same time as the killed ones, not before "
        "them: sooner done, but the two compete for the machine (wall times then say little)",
    )
    parser.add_argument(
        "--tolerance-pp",
        type=float,
        default=0.1,
        help="largest test-accuracy difference from the uninterrupted run, in "
        "percentage points [0.1]",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600,
        help="seconds any one trainer process may take before the soak gives up [3600]",
    )
    harness.add_data_arguments(parser, out="artifacts/soak")
    parser.add_argument(
        "trainer_args",
        nargs="*",
        metavar="-- TRAINER_ARGS",
        help="more trainer flags for every run, after `--` (e.g. -- --batch-size 64)",
    )
    args = parser.parse_args(argv)
    for name in ("kills", "epochs", "checkpoint_every", "steps_per_call"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if args.checkpoint_seconds < 0 or args.tolerance_pp < 0 or args.timeout <= 0:
        parser.error("--checkpoint-seconds and --tolerance-pp must be >= 0, --timeout > 0")
    harness.absolute_paths(args)
    return args


# --- One trainer process, killed when a condition is met (or not at all).


class Trainer:
    """A trainer process whose output is logged to a file and whose events are followed."""

    def __init__(self, args: argparse.Namespace, work: Path, log_path: Path) -> None:
        self.command = harness.trainer_command("train", *trainer_flags(args, work))
        self.work, self.log_path = work, log_path
        self.lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self.run_event: dict[str, Any] | None = None  # the run's steps and data, announced
        self.announced = threading.Event()  # set by the "run" event (or by Reference)
        self.resumed: int | None = None
        self.steps: list[tuple[float, int]] = []  # (arrival time, step)
        self.export_phases: list[str] = []  # the outputs.EXPORT_PHASES seen so far
        self.finished_already = False
        self.recovered: list[str] = []

    def start(self) -> None:
        self.started = time.time()
        self.proc, self.reader = harness.start_child(
            self.command,
            self.log_path,
            on_line=lambda stamp, line: self.lines.put((stamp, line)),
            on_end=lambda: self.lines.put(None),
        )

    def _take(self, stamp: float, line: str) -> None:
        event = outputs.parse_event(line)
        kind = event and event["event"]
        if kind == "run":
            self.run_event = event
            self.announced.set()
        elif kind == "step":
            self.steps.append((stamp, event["step"]))
        elif kind == "resumed":
            self.resumed = event["step"]
        elif kind == "finished_already":
            self.finished_already = True
        elif kind == "export":
            self.export_phases.append(event["phase"])
        elif kind == "recovered":
            self.recovered.append(event["message"])

    def seconds_per_step(self, default: float) -> float:
        """This process's pace so far, from its "step N" lines (`default` before two)."""
        if len(self.steps) < 2:
            return default
        (t0, s0), (t1, s1) = self.steps[0], self.steps[-1]
        return (t1 - t0) / max(s1 - s0, 1)

    def run(self, until=None, delay=None, timeout: float = 3600) -> dict[str, Any]:
        """Follow the output; once `until(self)` is true, wait `delay(self)` seconds and
        SIGKILL the process (if it is still running). Returns what happened."""
        self.start()
        deadline, kill_at, waited = time.monotonic() + timeout, None, None
        try:
            while True:
                wait = (kill_at or deadline) - time.monotonic()
                try:
                    item = self.lines.get(timeout=max(wait, 0))
                except queue.Empty:
                    if kill_at is not None:  # the moment has come
                        self.proc.send_signal(signal.SIGKILL)
                        kill_at = None
                        continue
                    raise BenchError(
                        f"a trainer ran past --timeout {timeout:.0f} s; see {self.log_path}", 1
                    ) from None
                if item is None:
                    break  # the output ended: the process is gone (or going)
                self._take(*item)
                if until is not None and until(self):
                    waited = delay(self) if delay else 0.0
                    kill_at, until = time.monotonic() + waited, None
        except BaseException:
            self.proc.kill()  # never leave a trainer behind
            raise
        finally:
            code = self.proc.wait()
            self.reader.join(timeout=30)
        return {
            "command": self.command,
            "log": str(self.log_path),
            "exit_code": code,
            "killed": code == -signal.SIGKILL,
            "delay_seconds": waited,
            "wall_seconds": time.time() - self.started,
            "resumed_from": self.resumed,
            "already_finished": self.finished_already,
            "last_step": self.steps[-1][1] if self.steps else None,
            "recovered": self.recovered,
        }


def trainer_flags(args: argparse.Namespace, work: Path) -> list[str]:
    return [
        *("--data-dir", str(args.data_dir)),
        *("--job-dir", str(work / "job"), "--export-dir", str(work / "export")),
        *("--epochs", str(args.epochs), "--checkpoint-every", str(args.checkpoint_every)),
        *("--checkpoint-seconds", str(args.checkpoint_seconds)),
        *("--steps-per-call", str(args.steps_per_call)),
        *args.trainer_args,
    ]


# --- Inputs and outputs.


def exported(work: Path) -> tuple[list[str], float | None]:
    """The version folders of a run's export dir, and the newest one's test accuracy."""
    export_dir = work / "export"
    if not export_dir.is_dir():
        return [], None
    models = [p for p in export_dir.iterdir() if p.is_dir()]
    found = [m / str(v) for m in sorted(models) for v in versions(m)]  # newest last
    accuracy = None
    if found:
        summary = json.loads((found[-1] / outputs.SUMMARY_FILE).read_text())
        accuracy = summary["test_accuracy"]
    return [str(v.relative_to(export_dir)) for v in found], accuracy


def leftovers(work: Path) -> list[str]:
    """Temporary files a finished run must not leave: staging folders, lock files,
    TensorFlow's unfinished checkpoint files."""
    job = work / "job"
    found = list((work / "export").glob("*/.tmp-*"))
    found += [
        p
        for p in (job / outputs.CHECKPOINTS_DIR).glob("*")
        if outputs.CHECKPOINT_TEMP.search(p.name)
    ]
    found += [*job.glob("*.tmp"), *job.glob(outputs.LOCK_FILE)]
    return sorted(str(p.relative_to(work)) for p in found)


# --- The soak, top to bottom.


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    harness.ensure_data(args.data_dir, args.idx_dir, logs, "soak")
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        # --- The uninterrupted run: the accuracy to match (before the kills, or with
        # --alongside at the same time, in a thread). It announces the run's total steps.
        reference = Reference(Trainer(args, Path(tmp) / "reference", logs / "uninterrupted.log"))
        print(f"soak: uninterrupted run{' (alongside)' if args.alongside else ''} ...", flush=True)
        reference.start(args.timeout)
        announced = reference.announced()
        total = announced["total_steps"]
        if not args.alongside:
            reference.result()

        # --- The kills: N-1 during training, at random steps; the last during the export.
        work = Path(tmp) / "soak"
        targets = sorted(rng.randint(1, max(total - 1, 1)) for _ in range(args.kills - 1))
        plan = [("train", t) for t in targets] + [("export", None)]
        if args.kills == 1:
            plan = [("train", rng.randint(1, max(total - 1, 1)))]
        runs: list[dict[str, Any]] = []
        pace = [0.05]  # seconds per step, from the last process that logged two steps
        for i, (phase, target) in enumerate(plan, 1):
            if phase == "train":
                # Up to one checkpoint interval's time after the target step: mid-step,
                # mid-checkpoint or mid-evaluation.
                def until(t: Trainer, target=target) -> bool:
                    return bool(t.steps) and t.steps[-1][1] >= target

                def delay(t: Trainer) -> float:
                    return rng.uniform(0, t.seconds_per_step(pace[0]) * args.checkpoint_every)
            else:
                # Soon after a random moment of the export: while staging, verifying,
                # renaming, writing the report or finished.json.
                target = rng.choice(outputs.EXPORT_PHASES)

                def until(t: Trainer, target=target) -> bool:
                    return target in t.export_phases

                def delay(t: Trainer) -> float:
                    return rng.uniform(0, 0.2)

            where = f"step {target}" if phase == "train" else f"the export's '{target}' moment"
            print(f"soak: kill {i}/{len(plan)} after {where} ...", flush=True)
            trainer = Trainer(args, work, logs / f"kill-{i}.log")
            record = trainer.run(until, delay, args.timeout)
            record.update(kill=i, phase=phase, target_step=target)
            runs.append(record)
            pace[0] = trainer.seconds_per_step(pace[0])
            if record["exit_code"] == 0:
                print("soak:   the run finished before the kill landed", flush=True)
                break
            if not record["killed"]:
                raise harness.child_failed(record, f"rerun {i}")
            print(
                f"soak:   killed {record['delay_seconds']:.1f} s later, at step "
                f"{record['last_step']} (resumed from {record['resumed_from'] or 0}), "
                f"{record['wall_seconds']:.0f} s",
                flush=True,
            )

        # --- The last rerun, to the end.
        if runs[-1]["exit_code"] != 0:
            print("soak: final rerun ...", flush=True)
            final = Trainer(args, work, logs / "final.log").run(timeout=args.timeout)
            final.update(kill=None, phase="final", target_step=None)
            runs.append(final)
            if final["exit_code"] != 0:
                raise harness.child_failed(final, "the final rerun")
        exported_versions, accuracy = exported(work)
        left = leftovers(work)
        uninterrupted = reference.result()
    return {
        "benchmark": "soak",
        "started": started,
        "finished": time.time(),
        "settings": {
            "kills": args.kills,
            "epochs": args.epochs,
            "checkpoint_every": args.checkpoint_every,
            "checkpoint_seconds": args.checkpoint_seconds,
            "steps_per_call": args.steps_per_call,
            "total_steps": total,
            "seed": args.seed,
            "tolerance_pp": args.tolerance_pp,
            "alongside": args.alongside,
            "data_dir": str(args.data_dir),
            "train_images": announced["train_images"],
            "trainer_args": args.trainer_args,
            "argv": sys.argv,
        },
        "machine": harness.machine_info(),
        "uninterrupted": uninterrupted,
        "runs": runs,
        "summary": summarize(args, uninterrupted, runs, exported_versions, accuracy, left),
    }


class Reference:
    """The uninterrupted run, in a thread; `result()` waits for it and checks it."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer, self.record, self.error = trainer, None, None
        self.checked: dict[str, Any] | None = None

    def start(self, timeout: float) -> None:
        def go() -> None:
            try:
                self.record = self.trainer.run(timeout=timeout)
            except BaseException as e:  # noqa: BLE001 - re-raised by result()
                self.error = e
            finally:
                self.trainer.announced.set()  # ended: no announcement is still to come

        self.thread = threading.Thread(target=go, daemon=True)
        self.thread.start()

    def announced(self) -> dict[str, Any]:
        """The run's "run" event (total steps, training images), once it is out."""
        self.trainer.announced.wait()
        if self.trainer.run_event is None:  # it ended first: say why
            self.result()
            raise BenchError("the uninterrupted run announced no total steps", 1)
        return self.trainer.run_event

    def result(self) -> dict[str, Any]:
        if self.checked is not None:
            return self.checked
        self.thread.join()
        if self.error is not None:
            raise self.error
        record, t = self.record, self.trainer
        if record["exit_code"] != 0:
            raise harness.child_failed(record, "the uninterrupted run")
        total = self.announced()["total_steps"]
        if record["last_step"] != total:
            raise BenchError(
                f"the uninterrupted run ended at step {record['last_step']}, not {total}; "
                f"see {record['log']}",
                1,
            )
        found, accuracy = exported(t.work)
        self.checked = {
            **record,
            "versions": found,
            "test_accuracy": accuracy,
        }
        print(
            f"soak:   uninterrupted: {total} steps, {record['wall_seconds']:.0f} s, test "
            f"accuracy {100 * accuracy:.2f}%",
            flush=True,
        )
        return self.checked


def summarize(
    args: argparse.Namespace,
    reference: dict[str, Any],
    runs: list[dict[str, Any]],
    exported_versions: list[str],
    accuracy: float | None,
    left: list[str],
) -> dict[str, Any]:
    """What the soak promises, each with its numbers and whether it held."""
    bound = args.checkpoint_every + args.steps_per_call
    kills = []
    for killed, rerun in zip(runs, runs[1:], strict=False):
        if not killed["killed"]:
            continue
        reached = max(killed["last_step"] or 0, killed["resumed_from"] or 0)
        resumed = reached if rerun["already_finished"] else (rerun["resumed_from"] or 0)
        kills.append(
            {
                "kill": killed["kill"],
                "phase": killed["phase"],
                "target": killed["target_step"],
                "delay_seconds": killed["delay_seconds"],
                "reached_step": reached,
                "rerun_resumed_from": resumed,
                "rerun_found_it_finished": rerun["already_finished"],
                "steps_repeated": max(reached - resumed, 0),
            }
        )
    repeated = [k["steps_repeated"] for k in kills]
    landed = sum(r["killed"] for r in runs)
    diff = None if accuracy is None else 100 * (accuracy - reference["test_accuracy"])
    checks = {
        "kills_survived": landed == args.kills and runs[-1]["exit_code"] == 0,
        "steps_repeated_within_bound": all(r <= bound for r in repeated),
        "accuracy_within_tolerance": diff is not None and abs(diff) <= args.tolerance_pp,
        "exactly_one_version": len(exported_versions) == 1,
        "no_leftovers": not left,
    }
    return {
        "kills_planned": args.kills,
        "kills_landed": landed,
        "kills_survived": landed if runs[-1]["exit_code"] == 0 else 0,
        "kills": kills,
        "steps_repeated_total": sum(repeated),
        "steps_repeated_max": max(repeated, default=0),
        "steps_repeated_bound_per_kill": bound,
        "final_test_accuracy": accuracy,
        "uninterrupted_test_accuracy": reference["test_accuracy"],
        "accuracy_difference_pp": diff,
        "versions_exported": exported_versions,
        "leftovers": left,
        "recovered": [line for r in runs for line in r["recovered"]],
        "soak_wall_seconds": sum(r["wall_seconds"] for r in runs),
        "uninterrupted_wall_seconds": reference["wall_seconds"],
        "checks": checks,
        "passed": all(checks.values()),
    }


def table(result: dict[str, Any]) -> str:
    s, cfg = result["summary"], result["settings"]
    ok = {True: "ok", False: "FAILED"}
    data = (
        "real MNIST"
        if cfg["train_images"] == 60_000
        else f"{cfg['train_images']} training images (not real MNIST)"
    )
    seconds = f", or {cfg['checkpoint_seconds']:g} s" if cfg["checkpoint_seconds"] else ""
    diff = s["accuracy_difference_pp"]
    rows = [
        (
            "kills survived",
            f"{s['kills_survived']}/{s['kills_planned']} (landed {s['kills_landed']})",
            ok[s["checks"]["kills_survived"]],
        ),
        (
            "steps repeated",
            f"{s['steps_repeated_total']} in total, at most {s['steps_repeated_max']}"
            f" per kill (bound {s['steps_repeated_bound_per_kill']})",
            ok[s["checks"]["steps_repeated_within_bound"]],
        ),
        (
            "test accuracy",
            "-"
            if s["final_test_accuracy"] is None
            else f"{100 * s['final_test_accuracy']:.2f}% against "
            f"{100 * s['uninterrupted_test_accuracy']:.2f}% uninterrupted "
            f"({diff:+.2f} pp, tolerance {cfg['tolerance_pp']:g})",
            ok[s["checks"]["accuracy_within_tolerance"]],
        ),
        (
            "versions exported",
            ", ".join(s["versions_exported"]) or "none",
            ok[s["checks"]["exactly_one_version"]],
        ),
        ("leftovers", ", ".join(s["leftovers"]) or "none", ok[s["checks"]["no_leftovers"]]),
        (
            "wall time",
            f"{s['soak_wall_seconds']:.0f} s killed and rerun, "
            f"{s['uninterrupted_wall_seconds']:.0f} s uninterrupted",
            "",
        ),
    ]
    lines = [
        f"Kill soak on {data}: {cfg['kills']} SIGKILLs, {cfg['epochs']} epoch(s), checkpoint "
        f"every {cfg['checkpoint_every']} steps{seconds}, {cfg['steps_per_call']} steps per call",
        *(f"{a:<18} {b}  {c}" for a, b, c in rows),
        "kill  phase  after                delay  at step  rerun resumed  repeated",
    ]
    for k in s["kills"]:
        after = f"step {k['target']}" if k["phase"] == "train" else k["target"]
        resumed = "finished" if k["rerun_found_it_finished"] else k["rerun_resumed_from"]
        lines.append(
            f"{k['kill']:>4}  {k['phase']:<6} {after:<19} {k['delay_seconds']:4.2f}s  "
            f"{k['reached_step']:>7}  {resumed:>13}  {k['steps_repeated']:>8}"
        )
    lines += [f"recovered: {c}" for c in s["recovered"]]
    lines.append(harness.machine_line(result["machine"]))
    return "\n".join(lines)


def finish(args: argparse.Namespace, result: dict[str, Any]) -> int:
    """Write soak.json, print the table; exit 1 if a check failed."""
    json_path = args.out / "soak.json"
    harness.write_json(json_path, result)
    print()
    print(table(result))
    print(f"wrote {json_path}")
    if not result["summary"]["passed"]:
        failed_checks = [k for k, v in result["summary"]["checks"].items() if not v]
        print(f"soak: FAILED: {', '.join(failed_checks)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return harness.run_main("soak", argv, parse_args, run, finish)


if __name__ == "__main__":
    sys.exit(main())
