"""The job directory: a run's checkpoints, TensorBoard logs and bookkeeping files.

    JOB_DIR/run.json        the run's record: its config, the settings that shape the
                            model (compared when resuming), its learning-rate schedule,
                            and whether it diverged or finished training
    JOB_DIR/finished.json   written after the export: a rerun says "finished" and stops
    JOB_DIR/checkpoints/    tf.train.CheckpointManager's files (the last 3)
    JOB_DIR/logs/           TensorBoard event files (trainer/summaries.py)
    JOB_DIR/.lock           held while a run uses the job dir (removed when it ends)
    JOB_DIR/old-<time>/     what --restart moved out of the way (kept, not deleted)

(The names live in trainer/outputs.py, which tools read too.)

Only the chief writes here. In a multi-worker job every worker must take part in
saving, so the others save to a scratch folder beside the checkpoints and delete it at
the end (the TensorFlow multi-worker convention).

Crash safety. A run killed with SIGKILL (out of memory, a node lost) leaves what it was
writing: TensorFlow's unfinished checkpoint files and our own half-written JSON. The
chief locks the job dir for the whole run (`OwnerLock`: an flock, which the kernel
drops when its process dies), so whoever takes the lock knows that no live run is
writing there, and removes those leftovers, saying so. A checkpoint that cannot be read
stops the run with one line naming the file; it is never silently replaced by a fresh
start. `--restart` moves the old run's files aside and starts over.

A resumed run is the run it says it is. run.json records every setting that shapes the
model (RESULT_SETTINGS, the precision and the data's size); a rerun that differs stops
with one line that lists each difference and the two ways out (the original flags, or
--restart). Two changes are allowed on purpose: raising --epochs (a new learning-rate
cycle for the added epochs, trainer/schedule.py) and, after a divergence, another
--learning-rate (from the last good checkpoint on). Once training is complete run.json
says so, so that a multi-worker job's chief, restarted alone after its peers have gone,
finishes the export without waiting for them (trainer.train).
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

from trainer import outputs, schedule
from trainer.config import TrainConfig
from trainer.errors import UserError
from trainer.outputs import CHECKPOINT_STATE as STATE_FILE
from trainer.outputs import CHECKPOINTS_DIR, FINISHED_FILE, LOCK_FILE, RUN_FILE
from trainer.strategy import Cluster

log = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 3
# The settings that shape the trained model: a resumed run must have the same ones, or
# it is not the run it says it is. How it runs (strategy, devices, XLA, steps per call,
# checkpoint cadence) may change between reruns: that changes float round-off only.
# Besides these, run.json records the precision (the resolved --mixed-precision) and the
# data itself: how many training images, and a fingerprint of the first ones (train.py),
# so a moved copy of the same data (another --data-dir) is the same run, and other data
# is not.
RESULT_SETTINGS = (
    "epochs",
    "batch_size",
    "learning_rate",
    "warmup_epochs",
    "weight_decay",
    "label_smoothing",
    "ema",
    "augment",
    "clean_epochs",
    "seed",
)
OLD_PREFIX = "old-"  # --restart's folders inside the job dir
# Besides TensorFlow's temporary files (outputs.CHECKPOINT_TEMP), a write killed between
# the merge and the state update leaves complete `ckpt-N.*` files the state does not name.
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

    def acquire(self, wait: bool = False) -> bool | None:
        """Take the lock (creating the file); False when a live process holds it (with
        `wait`: block until it lets go), None when the filesystem cannot lock (then
        nothing can be proven stale)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
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
        self.path.mkdir(parents=True, exist_ok=True)
        locked = self._lock(self.lock)  # never move or clean a live run's files
        if self.cfg.restart:
            self._move_aside()
        elif locked:
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
        return latest

    def plan(
        self, precision: str | None, data: dict[str, Any], steps_per_epoch: int
    ) -> list[schedule.Segment]:
        """This run's learning-rate schedule, after checking that a resumed run has the
        settings its job dir's run started with (UserError listing every difference
        otherwise). The chief records a fresh run's settings, and an allowed change
        (more epochs; another learning rate after a divergence), in run.json."""
        cfg = self.cfg
        current = {
            **{k: getattr(cfg, k) for k in RESULT_SETTINGS},
            "precision": precision or "float32",
            **data,  # train_images, data_fingerprint
        }
        resuming = not (cfg.restart and not self.is_chief) and self._latest() is not None
        record = self.record() if resuming else None
        if record is None:
            # A fresh start (or a checkpoint from before run.json: nothing to compare).
            record = {
                **cfg.to_dict(),
                **current,
                "cycles": [cfg.epochs],
                "peaks": [[0, cfg.learning_rate]],
                "run_id": uuid.uuid4().hex,  # tells this run's export from any other
            }
            if self.is_chief and not resuming:
                write_json(self.path / RUN_FILE, record)
        else:
            record, changes = _allowed_changes(record, current, _step(self._latest()), self.path)
            if changes:
                for change in changes:
                    log.warning("%s", change)
                if self.is_chief:
                    write_json(self.path / RUN_FILE, record)
        peaks = [(int(first), float(peak)) for first, peak in record["peaks"]]
        return schedule.segments(record["cycles"], peaks, steps_per_epoch, cfg.warmup_epochs)

    def record(self) -> dict[str, Any] | None:
        """run.json, or None when there is none (or it cannot be read)."""
        return read_record(self.path)

    def mark_trained(self, step: int) -> None:
        """Training is complete: a restarted chief goes straight to the export."""
        self._update(trained={"epochs": self.cfg.epochs, "step": step})

    def mark_diverged(self, steps: tuple[int, int], checkpoint: str | None) -> None:
        """The run diverged in `steps`; a rerun may change --learning-rate."""
        self._update(diverged={"steps": list(steps), "checkpoint": checkpoint})

    def retire(self, checkpoint: str) -> None:
        """Delete `checkpoint`, the newest, which a diverged step followed at once, so
        that the checkpoint before it (if any) is the one a rerun resumes from."""
        if not self.is_chief:
            return
        state = tf.train.get_checkpoint_state(str(self.checkpoint_dir))
        paths, stamps = (
            (state.all_model_checkpoint_paths, state.all_model_checkpoint_timestamps)
            if state
            else ([], [])
        )
        stamps = list(stamps) or [0.0] * len(paths)
        kept = [(Path(p).name, t) for p, t in zip(paths, stamps, strict=True) if p != checkpoint]
        for f in Path(checkpoint).parent.glob(Path(checkpoint).name + ".*"):
            f.unlink(missing_ok=True)
        if kept:
            # The only public API for the state file; deprecated in favour of a
            # CheckpointManager, which cannot drop a checkpoint: its warning is noise here.
            # Names relative to the folder, as the manager writes them (a job dir moves).
            tf_log = tf.get_logger()
            level = tf_log.level
            tf_log.setLevel(logging.ERROR)
            try:
                tf.compat.v1.train.update_checkpoint_state(
                    str(self.checkpoint_dir),
                    kept[-1][0],
                    all_model_checkpoint_paths=[name for name, _ in kept],
                    all_model_checkpoint_timestamps=[t for _, t in kept],
                    last_preserved_timestamp=state.last_preserved_timestamp,
                )
            finally:
                tf_log.setLevel(level)
        else:
            (self.checkpoint_dir / STATE_FILE).unlink(missing_ok=True)

    def _update(self, **fields: Any) -> None:
        record = self.record()
        if self.is_chief and record is not None:
            write_json(self.path / RUN_FILE, {**record, **fields})

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
            "To start over, rerun with --restart (the job dir's files are kept in "
            f"{self.path}/{OLD_PREFIX}<time>); to keep the progress, restore the file from a "
            "backup."
        )

    def _remove_leftovers(self) -> None:
        """Delete what a killed run of this job dir was writing. Only called with the
        job dir's lock held: no live run writes here, so every temporary file is stale."""
        found: list[Path] = [p for p in self.path.glob("*.tmp") if p.is_file()]  # write_json
        ckpt_dir = self.cfg.checkpoint_dir
        if ckpt_dir.is_dir():
            found += [p for p in ckpt_dir.iterdir() if outputs.CHECKPOINT_TEMP.search(p.name)]
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
            names = ", ".join(sorted(str(p.relative_to(self.path)) for p in found))
            message = f"removed the leftovers of a killed run in {self.path}: {names}"
            log.warning(message)
            outputs.emit("recovered", message=message)

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
        """--restart: move the earlier run's files into JOB_DIR/old-<time>/, kept, not
        deleted. The job dir itself stays where it is: it may be a mount point (compose
        bind-mounts it, Kubernetes mounts a volume there), which cannot be renamed
        (EBUSY), and a sibling folder may be on another filesystem; inside it, every
        entry moves with one rename. The checkpoints go first: a kill midway leaves no
        checkpoint to resume without its run.json. Called with the job dir locked."""
        entries = sorted(
            (
                p
                for p in self.path.iterdir()
                if p.name != LOCK_FILE
                and not p.name.startswith((OLD_PREFIX, ".scratch-"))  # kept; a worker's
            ),
            key=lambda p: p.name != CHECKPOINTS_DIR,
        )
        if not entries:
            log.info("--restart: %s holds no earlier run; starting fresh", self.path)
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside, n = self.path / f"{OLD_PREFIX}{stamp}", 1
        while aside.exists():
            n += 1
            aside = self.path / f"{OLD_PREFIX}{stamp}-{n}"
        aside.mkdir()
        for p in entries:
            os.rename(p, aside / p.name)
        log.warning("--restart: moved the earlier run's files into %s; starting over", aside)


def read_record(job_dir: str | Path) -> dict[str, Any] | None:
    """A job dir's run.json, or None when there is none (or it cannot be read)."""
    try:
        record = json.loads((Path(job_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def training_complete(cfg: TrainConfig) -> dict[str, Any] | None:
    """run.json's record when its run has trained all of --epochs (a restarted process
    only has the export left), else None. Reads one file: no TensorFlow."""
    record = None if cfg.restart else read_record(cfg.job_dir)
    trained = (record or {}).get("trained") or {}
    return record if trained.get("epochs") == cfg.epochs == record.get("epochs") else None


def _step(checkpoint: str | None) -> int:
    """The step a checkpoint was saved at: its number (Loop.save numbers them so)."""
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0


def _allowed_changes(
    record: dict[str, Any], current: dict[str, Any], step: int, job_dir: Path
) -> tuple[dict[str, Any], list[str]]:
    """run.json's record updated for this run's settings, and what changed on purpose;
    UserError listing every difference that is not allowed."""
    record = dict(record)
    record.setdefault("cycles", [record.get("epochs", current["epochs"])])
    record.setdefault("peaks", [[0, record.get("learning_rate", current["learning_rate"])]])
    changes, refused = [], []
    for name, now in current.items():
        if name not in record:  # run.json from an older trainer: nothing to compare
            continue
        was = record[name]
        if was == now:
            continue
        if name == "data_fingerprint" and record.get("train_images") != current["train_images"]:
            continue  # another size says it already
        if name == "epochs" and now > was:
            changes.append(
                f"--epochs {was} -> {now}: epochs 1-{was} keep their learning-rate schedule; "
                f"epochs {was + 1}-{now} get a cycle of their own (warmup, then cosine decay "
                f"to 0 at epoch {now})"
            )
            record["cycles"] = [*record["cycles"], now]
            record.pop("trained", None)
        elif name == "learning_rate" and record.get("diverged"):
            changes.append(
                f"--learning-rate {was:g} -> {now:g} after the divergence: from step {step} on"
            )
            record["peaks"] = [p for p in record["peaks"] if p[0] < step] + [[step, now]]
            record.pop("diverged")
        else:
            refused.append(_difference(name, was, now))
            continue
        record[name] = now
    if refused:
        raise UserError(
            f"{job_dir} holds a run with other settings than this command's: "
            f"{'; '.join(refused)}. Resume it with its own settings, or start over with "
            f"--restart (its files are kept in {job_dir}/{OLD_PREFIX}<time>)."
        )
    return record, changes


def _difference(name: str, was: Any, now: Any) -> str:
    """One refused difference as the user would write the flags: `--seed 42 (now 7)`."""
    if name == "precision":
        return f"--mixed-precision {_precision(was)} (now {_precision(now)})"
    if name == "train_images":
        return f"the data: {was:,} training images (now {now:,})"
    if name == "data_fingerprint":
        return "the data: its first training images differ (another data set)"
    if isinstance(was, bool):
        return f"--{'' if was else 'no-'}{name} (now --{'' if now else 'no-'}{name})"
    flag = "--" + name.replace("_", "-")
    if name == "epochs":
        return f"{flag} {was} (now {now}: epochs can be raised, not lowered)"
    if isinstance(was, float):
        return f"{flag} {was:g} (now {now:g})"
    return f"{flag} {was} (now {now})"


def _precision(policy: str) -> str:
    return "off" if policy == "float32" else policy


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
