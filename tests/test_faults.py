"""Faults: what a SIGKILL leaves behind, damaged checkpoints, --restart, and kills mid-run.

A killed run's temporary files are removed by the next run (and only a dead run's: a
live one holds a lock); a checkpoint that cannot be read stops the run with one line
naming the file and the way out, never a silent fresh start over the user's progress.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import tensorflow as tf

from support import memory_splits, run_cli, small_config, small_run_args
from trainer import export, train
from trainer.errors import UserError
from trainer.model import build_model

# Under pytest-xdist (make test), this module's tests share module-scoped fixtures:
# one worker runs them all, so each fixture is built once.
pytestmark = pytest.mark.xdist_group("test_faults")

# A process that takes an flock on argv[1], makes the folders argv[2:], says "ready" and
# waits: a live run in the middle of writing (or, once SIGKILLed, a dead one). Plain
# fcntl, no TensorFlow: it starts in a moment.
HOLDER = (
    "import fcntl, pathlib, sys, time\n"
    "f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    "f.write('pid 1 on a-test-host'); f.flush()\n"
    "[pathlib.Path(d).mkdir() for d in sys.argv[2:]]\n"
    "print('ready', flush=True); time.sleep(600)\n"
)


class Holders:
    """Start lock-holding processes; every one is killed at the end of the test."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, lock: Path, *folders: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(lock), *map(str, folders)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)  # the kernel drops its lock as it dies
        proc.wait(timeout=30)


@pytest.fixture
def holders():
    h = Holders()
    try:
        yield h
    finally:
        for proc in h.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run (job dir with checkpoints, export), trained once; each
    test gets its own copy."""
    tmp = tmp_path_factory.mktemp("one-epoch")
    train.run(small_config(tmp / "no-data", tmp, epochs=1), splits=memory_splits())
    return tmp


@pytest.fixture
def run_dir(one_epoch: Path, tmp_path: Path) -> Path:
    shutil.copytree(one_epoch, tmp_path / "run")
    return tmp_path / "run"


def two_epochs(run: Path, **overrides):
    return small_config(run / "no-data", run, epochs=2, **overrides)


# --- Leftovers of a SIGKILL during the export.


def test_next_export_removes_a_killed_exports_staging_and_nothing_else(
    holders: Holders, tmp_path: Path, caplog
) -> None:
    base = tmp_path / "mnist"
    base.mkdir()
    dead, live = (base / f".tmp-{uuid.uuid4().hex}" for _ in range(2))
    killed = holders.start(dead.with_name(dead.name + ".lock"), dead)
    holders.start(live.with_name(live.name + ".lock"), live)  # another run, still exporting
    holders.kill(killed)
    orphan_lock = base / f".tmp-{uuid.uuid4().hex}.lock"  # killed before its folder existed
    orphan_lock.touch()
    kept = [base / "held-back-20260101-000000-abcd1234", base / ".tmp-not-ours", base / "1"]
    for path in kept:
        path.mkdir()
    caplog.set_level(logging.WARNING)

    path = export.export_model(build_model(seed=1), base)

    assert path == base / "2"
    assert not dead.exists() and not dead.with_name(dead.name + ".lock").exists()
    assert not orphan_lock.exists()
    assert live.is_dir() and live.with_name(live.name + ".lock").exists()  # never a live one's
    assert all(p.is_dir() for p in kept)  # the gate's held-back folders stay
    assert f"removed 1 unfinished export(s) of a killed run from {base}: {dead.name}" in (
        caplog.text
    )


# --- Leftovers of a SIGKILL during a checkpoint write.


def _fake_killed_saves(run: Path) -> list[str]:
    """What SIGKILL mid-save left in a real trial (TF 2.21): a shard folder with a
    .tempstate file, the state file's temp copy, a merged but uncommitted checkpoint
    (killed before the state update), and a half-written run.json."""
    ckpts = run / "job/checkpoints"
    latest = Path(tf.train.latest_checkpoint(str(ckpts)))
    temp = ckpts / "ckpt-15_temp"
    temp.mkdir()
    (temp / "part-00000-of-00001.data-00000-of-00001.tempstate3856205895451056998").write_bytes(
        b"\0" * 100
    )
    (ckpts / "checkpoint.tmp3a1f0c2d9e8b47f6a5d4c3b2a1f0e9d8").write_text("model_checkpoint_")
    for f in latest.parent.glob(latest.name + ".*"):
        shutil.copy(f, ckpts / f.name.replace(latest.name, "ckpt-14"))
    (run / "job/run.tmp").write_text('{"epochs": ')
    return [
        "checkpoints/checkpoint.tmp3a1f0c2d9e8b47f6a5d4c3b2a1f0e9d8",
        "checkpoints/ckpt-14.data-00000-of-00001",
        "checkpoints/ckpt-14.index",
        "checkpoints/ckpt-15_temp",
        "run.tmp",
    ]


def test_a_live_runs_leftovers_stay_then_the_rerun_removes_them_says_so_and_resumes(
    run_dir: Path, holders: Holders, caplog
) -> None:
    leftovers = _fake_killed_saves(run_dir)
    holder = holders.start(run_dir / "job/.lock")  # a live run of this job dir
    with pytest.raises(UserError, match="is in use by a running trainer") as e:
        train.run(two_epochs(run_dir), splits=memory_splits())
    assert "(pid 1 on a-test-host)" in str(e.value) and "another --job-dir" in str(e.value)
    assert all((run_dir / "job" / p).exists() for p in leftovers)  # its files, not touched
    holders.kill(holder)  # now it is a dead run: its leftovers go, the run resumes
    caplog.set_level(logging.INFO)

    summary = train.run(two_epochs(run_dir), splits=memory_splits())

    assert f"removed the leftovers of a killed run in {run_dir / 'job'}: " + ", ".join(
        leftovers
    ) in (caplog.text)
    assert not any((run_dir / "job" / p).exists() for p in leftovers)
    assert "resuming from" in caplog.text and "ckpt-12: epoch 2, step 0 of 12" in caplog.text
    assert [r["epoch"] for r in summary["history"]] == [2]
    names = {p.name for p in (run_dir / "job/checkpoints").iterdir()}
    assert not any("temp" in n or ".tmp" in n or n.startswith("ckpt-14") for n in names)
    assert sorted(p.name for p in (run_dir / "job").iterdir()) == [
        "checkpoints",
        "finished.json",
        "logs",
        "run.json",
    ]  # the lock is gone with the run


# --- Damaged checkpoints.


def _truncate_data(ckpt: Path) -> Path:
    (data,) = ckpt.parent.glob(ckpt.name + ".data-*")
    with open(data, "r+b") as f:
        f.truncate(1000)
    return data


def _garble_data(ckpt: Path) -> Path:
    (data,) = ckpt.parent.glob(ckpt.name + ".data-*")
    with open(data, "r+b") as f:
        f.seek(5000)
        f.write(b"\xff" * 64)
    return data


def _truncate_index(ckpt: Path) -> Path:
    index = ckpt.with_name(ckpt.name + ".index")
    with open(index, "r+b") as f:
        f.truncate(50)
    return index


def _remove_index(ckpt: Path) -> Path:
    index = ckpt.with_name(ckpt.name + ".index")
    index.unlink()
    return index


def _garble_state(ckpt: Path) -> Path:
    state = ckpt.parent / "checkpoint"
    state.write_text("model_checkpoint_path: ckpt-12\x00\x17garbage {{{")
    return state


def _empty_state(ckpt: Path) -> Path:
    state = ckpt.parent / "checkpoint"
    state.write_text("")
    return state


@pytest.mark.parametrize(
    "damage, says",
    [
        (_truncate_data, "is unreadable (Read less bytes than requested)"),
        (_garble_data, "is unreadable (TensorBundle at"),
        (_truncate_index, "is unreadable (not an sstable (bad magic number))"),
        (_remove_index, "is missing (named by"),
        (_garble_state, "is unreadable."),
        (_empty_state, "is unreadable."),
    ],
)
def test_a_damaged_checkpoint_stops_with_the_file_and_the_way_out(
    run_dir: Path, damage, says: str
) -> None:
    ckpt = Path(tf.train.latest_checkpoint(str(run_dir / "job/checkpoints")))
    damaged = damage(ckpt)
    with pytest.raises(UserError) as e:
        train.run(two_epochs(run_dir), splits=memory_splits())
    message = str(e.value)
    assert str(damaged) in message and says in message, message
    assert "rerun with --restart" in message and f"{run_dir / 'job'}/old-<time>" in message
    assert "\n" not in message
    assert not (run_dir / "job/.lock").exists()  # the failed run let go of the job dir


def test_cli_damaged_checkpoint_is_one_line_then_restart_starts_over(
    data_dir: Path, run_dir: Path
) -> None:
    args = small_run_args(data_dir, run_dir, "--epochs", "1", "--checkpoint-every", "5")
    data = _truncate_data(Path(tf.train.latest_checkpoint(str(run_dir / "job/checkpoints"))))

    damaged = run_cli(*args)
    assert damaged.returncode == 2, damaged.stderr[-3000:]
    assert "Traceback" not in damaged.stderr
    last = damaged.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: checkpoint file {data} is unreadable (")
    assert last.endswith("restore the file from a backup.")

    restarted = run_cli(*args, env={"TRAINER_RESTART": "1"})
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    (aside,) = (run_dir / "job").glob("old-*")
    assert f"--restart: moved the earlier run's files into {aside}; starting over" in (
        restarted.stderr
    )
    assert "resuming from" not in restarted.stderr
    assert (aside / "checkpoints" / data.name).stat().st_size == 1000  # kept as it was
    assert (run_dir / "job/finished.json").is_file()
    assert sorted(p.name for p in (run_dir / "export/mnist").iterdir()) == ["1", "2"]


# --- --restart on a job dir that is a mount point (compose bind-mounts /artifacts/job).


def test_restart_moves_the_job_dirs_files_and_leaves_the_folder(run_dir: Path, caplog) -> None:
    """The job dir itself stays (same inode: a mount point cannot be renamed); its files
    move into JOB_DIR/old-<time>/, a second --restart keeps the first one's folder."""
    job = run_dir / "job"
    inode, before = job.stat().st_ino, sorted(p.name for p in job.iterdir())
    caplog.set_level(logging.INFO)
    again = small_config(run_dir / "no-data", run_dir, epochs=1, restart=True)
    train.run(again, splits=memory_splits())
    assert job.stat().st_ino == inode
    (aside,) = job.glob("old-*")
    assert sorted(p.name for p in aside.iterdir()) == before
    assert "resuming from" not in caplog.text
    assert sorted(p.name for p in job.iterdir()) == sorted([*before, aside.name])
    train.run(again, splits=memory_splits())
    assert len(list(job.glob("old-*"))) == 2 and aside.is_dir()  # the first kept as it was


def test_restart_never_renames_the_job_dir_itself(run_dir: Path, monkeypatch) -> None:
    """Renaming a mount point fails with EBUSY (rename(2)); so does any rename of the job
    dir here. Before, --restart renamed it and ended in that traceback."""
    job = run_dir / "job"
    rename = os.rename

    def mount_point_rename(src, dst, *args, **kwargs):
        if Path(src).resolve() == job.resolve():
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(src))
        return rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", mount_point_rename)
    summary = train.run(two_epochs(run_dir, restart=True), splits=memory_splits())
    assert [r["epoch"] for r in summary["history"]] == [1, 2]  # started over
    assert len(list(job.glob("old-*"))) == 1


# --- Checkpoint cadence: steps or seconds, whichever comes first.


def test_checkpoint_seconds_saves_between_the_step_checkpoints(tmp_path: Path) -> None:
    cfg = small_config(
        tmp_path / "no-data",
        tmp_path,
        epochs=1,
        checkpoint_every=1000,  # never, by steps: only the epoch's end (12) and the clock
        checkpoint_seconds=1e-6,  # due after every call
        steps_per_call=2,
    )
    train.run(cfg, splits=memory_splits())
    state = tf.train.get_checkpoint_state(str(cfg.checkpoint_dir))
    assert [Path(p).name for p in state.all_model_checkpoint_paths] == [
        "ckpt-8",
        "ckpt-10",
        "ckpt-12",
    ]


# --- A kill between the publish and finished.json: the rerun publishes nothing twice.


def test_an_export_published_before_a_kill_is_found_not_repeated(tmp_path: Path, caplog) -> None:
    base, model = tmp_path / "mnist", build_model(seed=1)
    first = export.export_model(
        model, base, summary={"export_key": "run-a/step-48"}, key="run-a/step-48"
    )
    caplog.set_level(logging.WARNING)
    again = export.export_model(
        model, base, summary={"export_key": "run-a/step-48"}, key="run-a/step-48"
    )
    assert again == first == base / "1"
    assert "already holds this run's export" in caplog.text
    other = export.export_model(
        model, base, summary={"export_key": "run-a/step-96"}, key="run-a/step-96"
    )
    assert other == base / "2"  # more epochs of the same run: a new version
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]


# --- The kill soak, two kills on the small digits (`make soak` runs ten on real MNIST).


def test_two_sigkills_cost_at_most_a_checkpoint_interval_each(
    data_dir: Path, tmp_path: Path
) -> None:
    from benchmarks import soak

    out = tmp_path / "soak"
    code = soak.main(
        [
            *("--kills", "2", "--epochs", "2", "--checkpoint-every", "5", "--steps-per-call", "2"),
            *("--seed", "3", "--alongside", "--timeout", "240"),
            *("--data-dir", str(data_dir), "--out", str(out)),
            *(
                "--",
                "--learning-rate",
                "0.003",
                "--first-epoch-evals",
                "1",
                "--histogram-every",
                "0",
            ),
        ]
    )
    result = json.loads((out / "soak.json").read_text())
    summary = result["summary"]
    assert code == 0, summary
    assert summary["kills_landed"] == summary["kills_survived"] == 2
    assert [k["phase"] for k in summary["kills"]] == ["train", "export"]
    assert all(k["steps_repeated"] <= 5 + 2 for k in summary["kills"])
    assert summary["steps_repeated_total"] <= 2 * (5 + 2)
    assert abs(summary["accuracy_difference_pp"]) <= 0.1
    assert summary["versions_exported"] == ["mnist/1"] and summary["leftovers"] == []
    assert result["runs"][-1]["exit_code"] == 0
