"""What a run leaves for people and programs to read: its files, by name, and the
progress events a tool can follow. No TensorFlow, so that tools (benchmarks, tests)
import it to find a run's outputs and follow a running trainer without parsing its log.

    JOB_DIR/run.json                 the config the run started with (checked on resume)
    JOB_DIR/finished.json            written after the export: a rerun stops at once
    JOB_DIR/checkpoints/             tf.train.CheckpointManager's files
    JOB_DIR/logs/                    TensorBoard (trainer/summaries.py)
    JOB_DIR/.lock                    held while a run uses the job dir
    EXPORT_DIR/MODEL/<version>/      a SavedModel, with training_summary.json and eval/
    EXPORT_DIR/MODEL/held-back-*/    a model the quality gate did not publish
    EXPORT_DIR/MODEL/.tmp-<hex>/     an export being written (TF Serving ignores it)

Events are off unless a tool turns them on (`print_events` before `trainer.cli.main`
in the trainer's process, or `events_to` around `trainer.train.run`); each is one
line, EVENT_PREFIX + a JSON object with "event" and its fields:

    run               steps_per_epoch, total_steps, epochs, batch_size, train_images
    resumed           step, checkpoint: resumed from that checkpoint
    finished_already  step: the job dir's run had finished; nothing to do
    step              step: after every compiled call (--steps-per-call steps; the
                      process's first call is one step, so its event tells a tool
                      when training began: start-up and tracing done, make bench)
    export            phase: one of EXPORT_PHASES, in that order
    recovered         message: what a rerun found of a killed run and cleaned up
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

# --- The job dir (trainer/jobdir.py).
RUN_FILE = "run.json"
FINISHED_FILE = "finished.json"
LOCK_FILE = ".lock"
CHECKPOINTS_DIR = "checkpoints"
LOGS_DIR = "logs"
CHECKPOINT_STATE = "checkpoint"  # tf.train.CheckpointManager's list of committed checkpoints
# What a killed checkpoint write leaves (seen with SIGKILL mid-save, TF 2.21):
# `ckpt-N_temp/` shard folders holding `*.tempstate<random>` files (BundleWriter writes
# to a temp name and renames), and `checkpoint.tmp<hex>` (the state file is written to a
# temp name and renamed: file_io.atomic_write_string_to_file).
CHECKPOINT_TEMP = re.compile(r"(_temp$|\.tempstate\d*$|^checkpoint\.tmp)")

# --- Each exported version (trainer/export.py, trainer/report/).
SUMMARY_FILE = "training_summary.json"
EVAL_DIR = "eval"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
HELD_BACK_PREFIX = "held-back-"
STAGING = re.compile(r"^\.tmp-[0-9a-f]{32}$")  # what export_model stages in, nothing else

# --- Events.
EVENT_PREFIX = "@trainer-event "
# The export's moments: the gate decided, the SavedModel is staged, verified (warmup
# replayed; just before the rename), published (just before finished.json).
EXPORT_PHASES = ("gate", "staged", "verified", "published")

_events_to: TextIO | None = None


def print_events(stream: TextIO | None = None) -> None:
    """Print every event from now on to `stream` (stdout by default)."""
    global _events_to
    _events_to = stream or sys.stdout


@contextmanager
def events_to(stream: TextIO) -> Iterator[None]:
    """Events go to `stream` inside the block (in-process runs: tests)."""
    global _events_to
    previous, _events_to = _events_to, stream
    try:
        yield
    finally:
        _events_to = previous


def emit(event: str, **fields: Any) -> None:
    """One event, if a tool asked for them; otherwise nothing."""
    if _events_to is not None:
        _events_to.write(f"{EVENT_PREFIX}{json.dumps({'event': event, **fields})}\n")
        _events_to.flush()


def parse_event(line: str) -> dict[str, Any] | None:
    """The event a line of the trainer's output carries; None for any other line."""
    _, found, payload = line.partition(EVENT_PREFIX)
    if not found:
        return None
    try:
        event = json.loads(payload)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None
