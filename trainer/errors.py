"""How `python -m trainer` ends: every exit status, and the exceptions that carry them.

One table, `ExitCode`; `python -m trainer --help` prints it, and orchestrators act on it
(Kubernetes' podFailurePolicy and Kubeflow's restartPolicy: ExitCode, docker/k8s/).
Each exception below names its code; the CLI prints the message as one line (no
traceback) and exits with `e.exit_code`. Kubeflow retries 130, 137, 138 and 143 and
treats every other status as permanent (training-operator pkg/util/train/train_util.go,
IsRetryableExitCode); 137 is SIGKILL's (the kernel's or the orchestrator's, never the
trainer's): OTHER_STATUSES.

A new way to end: add a member to ExitCode (value, meaning, retry) and an exception
class with that `exit_code` here; the CLI and `--help` need no change.
"""

from __future__ import annotations

import enum
import signal
from pathlib import Path
from typing import Any


class ExitCode(enum.IntEnum):
    """The trainer's exit statuses, with what each means and whether to retry."""

    meaning: str
    retry: bool

    def __new__(cls, value: int, meaning: str, retry: bool) -> ExitCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member.meaning, member.retry = meaning, retry
        return member

    DONE = 0, "trained and exported (or the run had finished already)", False
    # TensorFlow failed at run time (XLA, cuDNN, out of memory) and said why in one line;
    # with a traceback instead, a bug in the trainer.
    FAILED = 1, "a runtime failure, named in one line (or, with a traceback, a bug)", False
    USER_ERROR = 2, "a mistake to fix first: a flag, a file, the data, no GPU", False
    # Permanent: retrying trains the same model again.
    HELD_BACK = 3, "the quality gate held the new model back (not published)", False
    # Permanent too: the same settings diverge again; the line says how to resume.
    DIVERGED = 4, "the loss became NaN or infinite: stopped, no checkpoint of it kept", False
    INTERRUPTED = 130, "Ctrl-C (128 + SIGINT): checkpointed; rerun to resume", False
    # Kubeflow's exit code for a user-defined retryable error (128 + SIGUSR1): a TFJob with
    # restartPolicy ExitCode restarts the worker, and the restarted job resumes
    # (kubeflow/training-operator pkg/util/train/train_util.go, IsRetryableExitCode).
    PEER_LOST = 138, "a multi-worker job lost a peer: rerun every worker to resume", True
    # 128 + SIGTERM: what Kubernetes and TFJob take for a retryable stop.
    PREEMPTED = 143, "SIGTERM (preemption, docker stop, eviction): checkpointed", True


# Not the trainer's own, but what an orchestrator sees besides the table's.
OTHER_STATUSES = {
    137: "SIGKILL (out of memory, a lost node): rerun to resume from the last checkpoint",
}


def exit_status_help() -> str:
    """The table as `--help` shows it."""
    rows = {c.value: f"{c.meaning}{' (retry)' if c.retry else ''}" for c in ExitCode}
    rows |= OTHER_STATUSES
    return "exit status:\n" + "\n".join(f"  {k:>3}  {v}" for k, v in sorted(rows.items()))


class TrainerExit(Exception):
    """Ends the run with `exit_code`; the CLI prints the message as one line (unless
    `quiet`: the log said it already)."""

    exit_code: ExitCode
    quiet = False


class UserError(TrainerExit):
    """A mistake the user can fix: bad flag, bad file, missing data.

    The message names the problem and the fix; the CLI prints it without a traceback.
    """

    exit_code = ExitCode.USER_ERROR


class HeldBack(TrainerExit):
    """The new model did not pass the quality gate (trainer.gate); it was kept at
    `path`, not published."""

    exit_code = ExitCode.HELD_BACK

    def __init__(self, decision: Any, path: Path):
        super().__init__(
            f"not published: {decision.reason}; the model is kept in {path}. To publish it "
            "anyway, rerun the same command with --force-publish."
        )
        self.decision, self.path = decision, path


class RuntimeFailure(TrainerExit, RuntimeError):
    """TensorFlow failed at run time for a reason of its own (trainer.strategy.
    runtime_errors), or an export does not answer like the model it was made from."""

    exit_code = ExitCode.FAILED


class Diverged(TrainerExit):
    """The training loss became NaN or infinite (trainer.loop); nothing after the last
    good checkpoint was kept, and the job dir records the divergence (trainer.jobdir),
    so that a rerun may lower --learning-rate and resume from that checkpoint."""

    exit_code = ExitCode.DIVERGED

    def __init__(
        self,
        what: str,
        steps: tuple[int, int],
        learning_rate: float,
        peak: float,
        checkpoint: str | None,
        suspect: str | None = None,
    ):
        first, last = steps
        where = f"at step {last}" if first == last else f"in steps {first}-{last}"
        lower = (
            f"a lower --learning-rate (e.g. {peak / 10:g}; after a divergence, the one "
            "setting a rerun may change)"
        )
        if checkpoint:
            kept = (
                f"nothing after the last good checkpoint was kept: {checkpoint}. To resume "
                f"from it, rerun with {lower}"
            )
        else:
            kept = f"no good checkpoint was written before it. To start again, rerun with {lower}"
        super().__init__(
            f"training diverged: {what} {where} (learning rate {learning_rate:.3g}; peak "
            f"--learning-rate {peak:g}), and {kept}; or start over with --restart."
        )
        # `suspect`: the newest checkpoint, saved just before the diverged steps; the
        # caller removes it, so that a rerun resumes from `checkpoint`.
        self.steps, self.checkpoint, self.suspect = steps, checkpoint, suspect


class PeerLost(TrainerExit):
    """A multi-worker job lost (or never reached) a peer (trainer.strategy.runtime_errors)."""

    exit_code = ExitCode.PEER_LOST


class Preempted(TrainerExit):
    """Raised after a SIGTERM/SIGINT once the checkpoint is safely written
    (trainer.preemption); the loop has logged where and how to resume."""

    quiet = True

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step

    @property
    def exit_code(self) -> ExitCode:  # type: ignore[override]
        return ExitCode.INTERRUPTED if self.signum == signal.SIGINT else ExitCode.PREEMPTED
