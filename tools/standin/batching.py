"""Server-side batching, as TF Serving runs it with --enable_batching.

Sources (tensorflow/serving and tensorflow/tensorflow):
- servables/tensorflow/session_bundle_config.proto BatchingParameters and
  bundle_factory_util.h GetQueueOptions: which field sets what; the defaults are
  SharedBatchScheduler's (batching_util/shared_batch_scheduler.h): max_batch_size 1000,
  batch_timeout_micros 0, max_enqueued_batches 10, num_batch_threads one per core, and
  max_execution_batch_size = max_batch_size when splitting is on but it is unset.
- shared_batch_scheduler.h: one scheduler (num_batch_threads threads) for all queues, a
  queue per servable version and signature (batching_session.cc). A queue is a list of
  batches, the last one open. ValidateBatchTaskQueueCapacity refuses a task over
  max_batch_size (INVALID_ARGUMENT) and one that does not fit (UNAVAILABLE, "The batch
  scheduling queue to which this task was submitted is full"); with
  enable_large_batch_splitting a task is cut to fill the open batch and then
  max_execution_batch_size at a time (SplitInputTask). An open batch is scheduled once
  it is full or its first task has waited batch_timeout_micros.
- batching_session.cc ProcessBatch: a batch whose tasks have all outlived their timeout
  while queued fails with RESOURCE_EXHAUSTED ("Run() timeout exceeded while waiting in
  batching queue"); otherwise the tasks' inputs are concatenated (different shapes past
  the batch dimension fail the whole batch, padding being off), the graph runs once,
  and its outputs are split back. Any error is copied to every task in the batch.
Not copied: allowed_batch_sizes (padding up), priority queues, padding of
variable-length inputs; `thread_pool_name` is ignored.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tools.standin.errors import ApiError, failed_precondition, invalid

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class BatchingParameters:
    """The fields of a batching.config (BatchingParameters) that the stand-in uses."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None

    @classmethod
    def from_text(cls, text: str) -> BatchingParameters:
        """A text-format BatchingParameters (batching.config); fields left out keep their
        defaults. (tensorflow-serving-api ships no Python class for the message;
        tests/test_serving_config.py parses the file against every field of it.)"""
        values: dict[str, int | bool] = {}
        for name in (
            "max_batch_size",
            "batch_timeout_micros",
            "max_enqueued_batches",
            "num_batch_threads",
            "max_execution_batch_size",
        ):
            if (value := text_field(text, name)) is not None:
                values[name] = int(value)
        if (split := text_field(text, "enable_large_batch_splitting")) is not None:
            values["enable_large_batch_splitting"] = split == "true"
        return cls(**values)  # type: ignore[arg-type]

    @property
    def execution_limit(self) -> int:
        """The largest batch the graph runs (Queue::max_execution_batch_size)."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size


def text_field(text: str, name: str) -> str | None:
    """A scalar field of a text-format proto: `name: value` or `name { value: v }`."""
    text = re.sub(r"#.*", "", text)
    match = re.search(rf"\b{name}\s*(?::\s*|\{{\s*value\s*:\s*)(\"[^\"]*\"|[^\s}}]+)", text)
    return match.group(1).strip('"') if match else None


@dataclass
class _Request:
    """One Run(): its inputs, its deadline, and the pieces it was cut into."""

    inputs: Arrays
    deadline: float  # time.monotonic() after which it has outlived its timeout
    pieces: int = 0
    results: dict[int, Arrays] = field(default_factory=dict)  # by the piece's start row
    error: ApiError | None = None
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def finish(self, start: int, outputs: Arrays | None, error: ApiError | None) -> None:
        with self.lock:
            if error is not None:
                self.error = self.error or error
            elif outputs is not None:
                self.results[start] = outputs
            self.pieces -= 1
            if self.pieces == 0:
                self.done.set()


@dataclass
class _Piece:
    request: _Request
    start: int
    size: int

    def inputs(self) -> Arrays:
        return {k: v[self.start : self.start + self.size] for k, v in self.request.inputs.items()}


@dataclass
class _Batch:
    pieces: list[_Piece] = field(default_factory=list)
    started: float = 0.0  # when its first piece came

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pieces)


@dataclass
class _Queue:
    run: Callable[[Arrays], Arrays]
    batches: deque[_Batch] = field(default_factory=lambda: deque([_Batch()]))


class BatchScheduler:
    """Queues per (version, signature) key, served by `num_batch_threads` threads.

    `hold` (a test knob, like the real server's slow graph): when set to an Event, a
    thread that has taken a batch waits for it before running the batch.
    """

    def __init__(self, params: BatchingParameters):
        self.params = params
        self.hold: threading.Event | None = None
        self.batches_taken = 0  # batches a thread has taken off a queue (for tests)
        self._queues: dict[object, _Queue] = {}
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"standin-batch-{i}", daemon=True)
            for i in range(max(1, params.num_batch_threads))
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        hold = self.hold
        if hold is not None:
            hold.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def queued(self) -> int:
        """Pieces of requests waiting in the queues, not yet taken (for tests)."""
        with self._cv:
            return sum(len(b.pieces) for q in self._queues.values() for b in q.batches)

    def forget(self, unused: Callable[[object], bool]) -> None:
        """Drop the idle queues whose key `unused` says (an unloaded version's)."""
        with self._cv:
            for key in [k for k, q in self._queues.items() if unused(k)]:
                queue = self._queues[key]
                if len(queue.batches) == 1 and not queue.batches[0].pieces:
                    del self._queues[key]

    def run(
        self,
        key: object,
        run: Callable[[Arrays], Arrays],
        inputs: Arrays,
        timeout: float | None,
    ) -> Arrays:
        """Queue one Run() of `run` on `inputs` (batch-major arrays) and wait for its
        outputs; raises the ApiError the real server gives. `timeout`: seconds the
        request may wait in the queue (its RunOptions timeout; None: no limit)."""
        if any(a.ndim == 0 for a in inputs.values()):
            raise invalid("Batching Run() input tensors must have at least one dimension")
        sizes = {len(a) for a in inputs.values()}
        if len(sizes) != 1:
            # batching_session.cc ComputeInputSize.
            raise invalid("Batching Run() input tensors must have equal 0th-dimension size")
        (size,) = sizes
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        request = _Request(inputs, deadline)
        with self._cv:
            queue = self._queues.setdefault(key, _Queue(run))
            self._schedule(queue, request, size)
            self._cv.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        starts = sorted(request.results)
        return {
            k: np.concatenate([request.results[s][k] for s in starts])
            for k in request.results[starts[0]]
        }

    # --- Queue::ScheduleWithoutOrEagerSplitImpl, under the lock.

    def _schedule(self, queue: _Queue, request: _Request, size: int) -> None:
        p, batches = self.params, queue.batches
        limit = p.execution_limit
        if size > p.max_batch_size:
            raise invalid(
                f"Task size {size} is larger than maximum input batch size {p.max_batch_size}"
            )
        open_size = batches[-1].size
        if p.enable_large_batch_splitting:
            capacity = (p.max_enqueued_batches - len(batches)) * limit + (limit - open_size)
            if size > capacity:
                raise ApiError(
                    "UNAVAILABLE",
                    "The batch scheduling queue to which this task was submitted is full; "
                    f"task size is {size} but scheduling capacity is only {capacity} "
                    f"(num_enqueued_batches={len(batches)}, "
                    f"max_enqueued_batches={p.max_enqueued_batches}, "
                    f"open_batch_size={open_size}, max_execution_batch_size={limit})",
                )
        elif open_size + size > p.max_batch_size and len(batches) >= p.max_enqueued_batches:
            raise ApiError(
                "UNAVAILABLE",
                "The batch scheduling queue to which this task was submitted is full; "
                f"currently {len(batches)} batches enqueued and max_enqueued_batches is "
                f"{p.max_enqueued_batches}",
            )
        # SplitInputTask: the first piece fills the open batch, the rest `limit` each.
        cuts = []
        if size <= limit - open_size or not p.enable_large_batch_splitting:
            cuts.append((0, size))
        else:
            first = limit - open_size
            if first > 0:
                cuts.append((0, first))
            cuts += [(s, min(limit, size - s)) for s in range(max(first, 0), size, limit)]
        request.pieces = len(cuts)
        now = time.monotonic()
        for start, n in cuts:
            if batches[-1].size + n > limit:
                batches.append(_Batch())  # StartNewBatch: the open batch closes
            if not batches[-1].pieces:
                batches[-1].started = now
            batches[-1].pieces.append(_Piece(request, start, n))

    def _ready(self, queue: _Queue, now: float) -> float | None:
        """When the queue's next batch may run (<= now: at once), or None if empty."""
        batches = queue.batches
        if len(batches) > 1:
            return batches[0].started
        open_batch = batches[0]
        if not open_batch.pieces:
            return None
        if open_batch.size >= self.params.execution_limit:
            return open_batch.started
        return open_batch.started + self.params.batch_timeout_micros / 1e6

    def _take(self) -> tuple[_Queue, _Batch] | None:
        """The oldest batch that may run now, off its queue; waits until there is one."""
        while not self._closed:
            now = time.monotonic()
            ready = [
                (t, id(q), q)
                for q in self._queues.values()
                if (t := self._ready(q, now)) is not None
            ]
            due = [item for item in ready if item[0] <= now]
            if due:
                _, _, queue = min(due)
                batch = queue.batches.popleft()
                if not queue.batches:
                    queue.batches.append(_Batch())
                self.batches_taken += 1
                return queue, batch
            wait = min((t for t, _, _ in ready), default=now + 1.0) - now
            self._cv.wait(timeout=max(wait, 0.0005))
        return None

    def _work(self) -> None:
        while True:
            with self._cv:
                taken = self._take()
            if taken is None:
                return
            queue, batch = taken
            # ProcessBatch looks at the tasks' deadlines once, as it dequeues the batch.
            expired = all(p.request.deadline <= time.monotonic() for p in batch.pieces)
            hold = self.hold
            if hold is not None:
                hold.wait()
            self._process(queue, batch, expired)

    # --- BatchingSession::ProcessBatch.

    def _process(self, queue: _Queue, batch: _Batch, expired: bool) -> None:
        pieces = batch.pieces
        error: ApiError | None = None
        outputs: Arrays | None = None
        if self._closed:
            error = ApiError("UNAVAILABLE", "stand-in: the batch scheduler is shutting down")
        elif expired:
            error = ApiError(
                "RESOURCE_EXHAUSTED", "Run() timeout exceeded while waiting in batching queue"
            )
        else:
            try:
                outputs = queue.run(_merge(pieces))
            except ApiError as e:
                error = e
            except Exception as e:  # a stand-in bug: answer every task rather than hang
                error = ApiError("UNKNOWN", f"stand-in: {type(e).__name__}: {e}")
        offset = 0
        for piece in pieces:
            if error is not None:
                piece.request.finish(piece.start, None, error)
                continue
            try:
                part = _slice(outputs, offset, piece.size, batch.size)
            except ApiError as e:
                piece.request.finish(piece.start, None, e)
            else:
                piece.request.finish(piece.start, part, None)
            offset += piece.size


def _merge(pieces: list[_Piece]) -> Arrays:
    """MergeInputTensors: concatenate each input over the batch's pieces."""
    merged = {}
    for name in sorted(pieces[0].request.inputs):
        parts = [p.inputs()[name] for p in pieces]
        if len({a.shape[1:] for a in parts}) > 1:
            raise failed_precondition(
                f"Tensors with name '{name}' from different tasks have different shapes and "
                "padding is turned off. Set pad_variable_length_inputs to true, or ensure "
                "that all tensors with the same name have equal dimensions starting with the "
                "first dim."
            )
        merged[name] = np.concatenate(parts)
    return merged


def _slice(outputs: Arrays | None, offset: int, size: int, total: int) -> Arrays:
    """SplitOutputTensors: each piece's rows of every output."""
    assert outputs is not None
    part = {}
    for name, value in outputs.items():
        if value.ndim == 0:
            raise failed_precondition("Batched output tensor has 0 dimensions")
        if value.shape[0] != total:
            raise failed_precondition(
                "Batched output tensor's 0th dimension does not equal the sum of the 0th "
                "dimension sizes of the input tensors"
            )
        part[name] = value[offset : offset + size]
    return part
