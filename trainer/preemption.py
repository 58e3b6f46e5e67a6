"""Stopping on request: SIGTERM (preemption, `docker stop`, pod eviction) and Ctrl-C
become a flag that the training loop checks between compiled calls, so it can write a
checkpoint and then stop (raising errors.Preempted) with an exit status the orchestrator
understands: ExitCode.PREEMPTED for SIGTERM, ExitCode.INTERRUPTED for Ctrl-C.

In a multi-worker job only the signalled worker sees its flag, and a worker that saves
and leaves alone strands the others in the next collective. So the loop all-reduces
the flags after every compiled call (trainer.loop.make_agreement: two floats), and
every worker saves the same step and stops, whichever one was signalled.

Why not tf.distribute.experimental.PreemptionCheckpointHandler, which is built for
this (tensorflow/python/distribute/failure_handling/failure_handling.py, TF 2.21)? It
saves at its own count of calls to itself and adds a variable of its own to the
checkpoint; it restores, when created, from the CheckpointManager it is given (a
non-chief's writes to its scratch folder, while every worker here resumes from the
chief's checkpoints); without a `termination_watcher_fn` it takes over SIGTERM
(signal.signal in its constructor), with one it polls it from a thread once a second;
after the save it calls `exit_fn` (by default sys.exit(42)) from inside the loop, past
the job dir's lock and scratch clean-up, unless that function raises; and the
signalled worker waits for every peer's acknowledgement through the coordination
service with no timeout of its own. The all-reduced flags give the same guarantee (one
step, every worker) in the loop that already checkpoints, with no thread and no second
checkpoint manager.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class StopFlag:
    signum: int | None = None


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """While inside, SIGTERM and SIGINT set `flag.signum` instead of killing the process."""
    flag = StopFlag()

    def handler(signum: int, _frame: Any) -> None:
        flag.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
