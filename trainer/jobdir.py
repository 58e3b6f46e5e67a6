"""The job directory: a run's checkpoints, TensorBoard logs and bookkeeping files.

    JOB_DIR/run.json        the config the run started with (checked when resuming)
    JOB_DIR/finished.json   written after the export: a rerun says "finished" and stops
    JOB_DIR/checkpoints/    tf.train.CheckpointManager's files (the last 3)
    JOB_DIR/logs/           TensorBoard event files (trainer/summaries.py)
    JOB_DIR/.lock           held while a run uses the job dir (removed when it ends)

Only the chief writes here. In a multi-worker job every worker must take part in
saving, so the others save to a scratch folder beside the checkpoints and delete it at
the end (the TensorFlow multi-worker convention).

Crash safety. A run killed with SIGKILL (out of memory, a node lost) leaves what it was
writing: TensorFlow's unfinished checkpoint files and our own half-written JSON. The
chief locks the job dir for the whole run (`OwnerLock`: an flock, which the kernel
drops when its process dies), so whoever takes the lock knows that no live run is
writing there, and removes those leftovers, saying so. A checkpoint that cannot be read
stops the run with one line naming the file; it is never silently replaced by a fresh
start. `--restart` moves the old job dir aside and starts over.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import tensorflow as tf

from trainer.config import TrainConfig
from trainer.errors import UserError
from trainer.strategy import Cluster

log = logging.getLogger(__name__)

FINISHED_FILE = "finished.json"
RUN_FILE = "run.json"  # the config the job dir was started with
LOCK_FILE = ".lock"
STATE_FILE = "checkpoint"  # tf.train.CheckpointManager's list of committed checkpoints
KEEP_CHECKPOINTS = 3

# What a killed checkpoint write leaves (seen with SIGKILL mid-save, TF 2.21):
# `ckpt-N_temp/` shard folders holding `*.tempstate<random>` files (BundleWriter writes
# to a temp name and renames), `checkpoint.tmp<hex>` (the state file is written to a
# temp name and renamed: file_io.atomic_write_string_to_file), and, killed between the
# merge and the state update, complete `ckpt-N.*` files that the state does not name.
_TF_TEMP = re.compile(r"(_temp$|\.tempstate\d*$|^checkpoint\.tmp)")
_CKPT_FILE = re.compile(r"^(ckpt-\d+)\.(index|data-\d+-of-\d+)$")


class OwnerLock:
    """An exclusive, non-blocking flock on `path`, taken by the process that owns
    something (a job dir, an export's staging folder) for as long as it works on it.

    The kernel drops an flock when its process dies, however it dies, so a lock that
    can be taken marks what it guards as a dead process's leftover, and one that cannot
    as a live run's: across PID namespaces (containers on one host) too, and on NFS
    across hosts (Linux emulates flock there with POSIX locks).
    """

    def __init__(self, path: Path):
        self.path, self.fd = Path(path), None

    def acquire(self) -> bool | None:
        """Take the lock (creating the file); False when a live process holds it, None
        when the filesystem cannot lock (then nothing can be proven stale)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return False
                log.warning("cannot lock %s (%s): leftovers there are left alone", self.path, e)
                return None
            # Its last holder may have unlinked the file between our open and our lock:
            # then we hold a lock on a file nobody else will find; start again.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            held = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (
                held.st_dev,
                held.st_ino,
            ):
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
                self.fd = fd
                return True
            os.close(fd)

    def holder(self) -> str:
        """Who holds the lock, as it wrote itself in ("pid 12 on host"), for messages."""
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def release(self) -> None:
        """Unlink, then unlock: whoever waits finds no file, or a fresh one."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None


class JobDir:
    """Use as `with JobDir(cfg, cluster) as job:` around everything that touches it."""

    def __init__(self, cfg: TrainConfig, cluster: Cluster | None = None):
        self.cfg, self.path = cfg, Path(cfg.job_dir)
        self.is_chief = cluster is None or cluster.is_chief
        self.checkpoint_dir = cfg.checkpoint_dir
        if not self.is_chief:
            self.checkpoint_dir = (
                self.checkpoint_dir.parent / f".scratch-{cluster.task_type}-{cluster.task_index}"
            )
        self.lock = OwnerLock(self.path / LOCK_FILE)

    def __enter__(self) -> JobDir:
        if not self.is_chief:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            return self
        if self.cfg.restart:
            self._move_aside()
        self.path.mkdir(parents=True, exist_ok=True)
        if self._lock(self.lock):
            self._remove_leftovers()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def checkpoints(self, ckpt: tf.train.Checkpoint) -> tf.train.CheckpointManager:
        return tf.train.CheckpointManager(
            ckpt, str(self.checkpoint_dir), max_to_keep=KEEP_CHECKPOINTS
        )

    def resume(self, ckpt: tf.train.Checkpoint) -> str | None:
        """Restore the newest checkpoint into `ckpt` and return its path; on a fresh job
        dir, record the starting config instead and return None. A checkpoint that
        cannot be read raises UserError naming the file and the way out."""
        if self.cfg.restart and not self.is_chief:
            # The chief moves the old job dir aside (maybe not yet): never resume from it.
            return None
        latest = self._latest()
        if latest:
            self._check_same_batch()
            try:
                ckpt.restore(latest).assert_existing_objects_matched()
            except AssertionError as e:
                raise UserError(
                    f"checkpoint {latest} does not fit this model ({_first_line(e)}); it was "
                    "written by another version of the trainer. " + self._way_out()
                ) from None
            except (tf.errors.OpError, IndexError, ValueError) as e:
                reason = _first_line(e, latest)
                raise UserError(
                    f"checkpoint file {_culprit(latest, e)} is unreadable ({reason}). "
                    + self._way_out()
                ) from None
        elif self.is_chief:
            # run_id tells this run's export from any other (see export_key).
            write_json(self.path / RUN_FILE, {**self.cfg.to_dict(), "run_id": uuid.uuid4().hex})
        return latest

    def export_key(self, step: int) -> str | None:
        """What names this run's export at `step`, kept in its training_summary.json, so
        that a rerun after a kill between the publish and finished.json finds the version
        it published instead of exporting a second one. None without a run_id (a job dir
        from before run ids, or a non-chief)."""
        try:
            run_id = json.loads((self.path / RUN_FILE).read_text()).get("run_id")
        except (OSError, ValueError):
            return None
        return f"{run_id}/step-{step}" if run_id and self.is_chief else None

    def finished(self) -> dict[str, Any] | None:
        """What finished.json recorded (export path and summary), if the run finished."""
        try:
            return json.loads((self.path / FINISHED_FILE).read_text())
        except (OSError, ValueError):
            return None

    def mark_finished(self, summary: dict[str, Any]) -> None:
        write_json(
            self.path / FINISHED_FILE, {"export_path": summary["export_path"], "summary": summary}
        )

    def close(self) -> None:
        """A non-chief's scratch checkpoints served only to take part in saving; the
        chief lets go of the job dir."""
        if not self.is_chief:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        self.lock.release()

    def _lock(self, lock: OwnerLock) -> bool:
        """Lock the job dir; True if locked, False if this filesystem cannot lock."""
        got = lock.acquire()
        if got is False:
            raise UserError(
                f"{self.path} is in use by a running trainer ({lock.holder()}); wait for it to "
                "finish or stop it, or train in another --job-dir."
            )
        return bool(got)

    def _check_same_batch(self) -> None:
        """The step counter maps to (epoch, batch) only for the batch size it counted."""
        try:
            started = json.loads((self.path / RUN_FILE).read_text())
        except (OSError, ValueError):
            return  # a job dir from before run.json existed: nothing to compare
        if started.get("batch_size") != self.cfg.batch_size:
            raise UserError(
                f"{self.cfg.job_dir} holds a run with --batch-size {started.get('batch_size')}; "
                f"resume it with that batch size, or start a new run with another --job-dir."
            )

    def _latest(self) -> str | None:
        """The newest committed checkpoint, None when there is none; UserError when the
        state file or the files it names are damaged (tf.train.latest_checkpoint would
        return None for both: a silent fresh start over the user's progress)."""
        state_file = self.cfg.checkpoint_dir / STATE_FILE
        if not state_file.exists():
            return None
        try:
            state = tf.train.get_checkpoint_state(str(self.cfg.checkpoint_dir))
        except (ValueError, tf.errors.OpError):
            state = None
        if state is None or not state.model_checkpoint_path:
            raise UserError(f"checkpoint state file {state_file} is unreadable. " + self._way_out())
        latest = state.model_checkpoint_path
        if not Path(latest + ".index").exists():
            raise UserError(
                f"checkpoint file {latest}.index is missing (named by {state_file}). "
                + self._way_out()
            )
        return latest

    def _way_out(self) -> str:
        return (
            "To start over, rerun with --restart (the job dir is kept aside as "
            f"{self.path}.old-<time>); to keep the progress, restore the file from a backup."
        )

    def _remove_leftovers(self) -> None:
        """Delete what a killed run of this job dir was writing. Only called with the
        job dir's lock held: no live run writes here, so every temporary file is stale."""
        found: list[Path] = [p for p in self.path.glob("*.tmp") if p.is_file()]  # write_json
        ckpt_dir = self.cfg.checkpoint_dir
        if ckpt_dir.is_dir():
            found += [p for p in ckpt_dir.iterdir() if _TF_TEMP.search(p.name)]
            committed = self._committed()
            if committed is not None:  # an unreadable state is for resume() to report
                found += [
                    p
                    for p in ckpt_dir.iterdir()
                    if (m := _CKPT_FILE.match(p.name)) and m.group(1) not in committed
                ]
        for p in found:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if found:
            log.warning(
                "removed the leftovers of a killed run in %s: %s",
                self.path,
                ", ".join(sorted(str(p.relative_to(self.path)) for p in found)),
            )

    def _committed(self) -> set[str] | None:
        """Names (ckpt-N) of the checkpoints the state file lists; None if unreadable."""
        if not (self.cfg.checkpoint_dir / STATE_FILE).exists():
            return set()  # killed during the very first save: nothing was committed
        try:
            state = tf.train.get_checkpoint_state(str(self.cfg.checkpoint_dir))
        except (ValueError, tf.errors.OpError):
            return None
        if state is None:
            return None
        paths = [*state.all_model_checkpoint_paths, state.model_checkpoint_path]
        return {Path(p).name for p in paths if p}

    def _move_aside(self) -> None:
        """--restart: rename the old job dir to JOB_DIR.old-<time>, kept, not deleted."""
        if not self.path.exists() or not any(p.name != LOCK_FILE for p in self.path.iterdir()):
            log.info("--restart: %s holds no earlier run; starting fresh", self.path)
            return
        lock = OwnerLock(self.path / LOCK_FILE)
        self._lock(lock)  # never move a live run's job dir from under it
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.old-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.old-{stamp}-{n}")
        os.rename(self.path, aside)
        lock.path = aside / LOCK_FILE  # it moved with the folder
        lock.release()
        log.warning("--restart: moved the old job dir aside to %s; starting over", aside)


def _first_line(e: BaseException, prefix: str = "") -> str:
    """An error's message without TensorFlow's op decorations and the checkpoint's
    folder (the message names the file already), on one short line."""
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:\w+\]", "", str(e)).strip()
    if prefix:
        text = text.replace(prefix, Path(prefix).name)
    text = " ".join(text.split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _culprit(prefix: str, e: BaseException) -> str:
    """Which file of checkpoint `prefix` the error is about: the index or a data shard."""
    message = str(e)
    named = re.findall(re.escape(prefix) + r"\.(?:index|data-\d+-of-\d+)", message)
    if named:
        return named[0]
    if "sstable" in message or ".index" in message:
        return prefix + ".index"
    shards = sorted(Path(prefix).parent.glob(Path(prefix).name + ".data-*"))
    return str(shards[0]) if len(shards) == 1 else prefix + ".data-*"


def write_json(path: Path, value: Any) -> None:
    """Whole or not at all: a crash mid-write must not leave a half file to trip over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)
