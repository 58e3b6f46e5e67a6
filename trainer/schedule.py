"""The learning-rate schedule over a run's whole life, when resuming changed it.

A run starts with one cycle: a linear warmup from 0 to the peak --learning-rate over
--warmup-epochs, then a cosine decay to 0 at the end of --epochs (Keras' CosineDecay, as
trainer/model.py builds it). Two changes are allowed when resuming a job dir
(trainer/jobdir.py checks every other setting):

- Raising --epochs appends a cycle. The epochs planned before keep their own cycle,
  unchanged, to its end (where the learning rate reaches 0); the added epochs get one of
  their own: warmup (--warmup-epochs, at most half the cycle) and cosine decay to 0 at
  the new end, with the same peak: a warm restart (SGDR, Loshchilov & Hutter 2017). So
  `--epochs 10` then `--epochs 15` trains the same model whether the 15 came mid-run or
  after the 10 had finished.
- After a divergence (trainer.errors.Diverged), another --learning-rate: from the last
  good checkpoint's step on, every cycle peaks at the new value; the shape stays.

A `Segment` is a range of steps with one cycle and one peak; run.json keeps the cycles
and peaks, and training_summary.json lists the segments.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass

import keras
import tensorflow as tf


@dataclass(frozen=True)
class Segment:
    """Steps [first_step, last_step) trained at `peak` within the cycle of steps
    [cycle_start, cycle_end), which warms up over its first `warmup_steps`."""

    first_step: int
    last_step: int
    cycle_start: int
    cycle_end: int
    warmup_steps: int
    peak: float

    def to_dict(self) -> dict:
        return asdict(self)


def segments(
    cycle_ends: list[int],
    peaks: list[tuple[int, float]],
    steps_per_epoch: int,
    warmup_epochs: float,
) -> list[Segment]:
    """The segments of cycles ending at epochs `cycle_ends` (ascending; the first starts
    at 0) with the peak learning rates `peaks` ((first step, peak), ascending)."""
    warmup = round(warmup_epochs * steps_per_epoch)
    starts = [p[0] for p in peaks]
    result = []
    for start_epoch, end_epoch in zip([0, *cycle_ends[:-1]], cycle_ends, strict=True):
        start, end = start_epoch * steps_per_epoch, end_epoch * steps_per_epoch
        # The first cycle warms up exactly as planned; an added one at most half its length.
        cycle_warmup = warmup if start == 0 else min(warmup, (end - start) // 2)
        cuts = sorted({start, *(s for s in starts if start < s < end)})
        for first, last in zip(cuts, [*cuts[1:], end], strict=True):
            peak = peaks[bisect.bisect_right(starts, first) - 1][1]
            result.append(Segment(first, last, start, end, cycle_warmup, peak))
    return result


class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate at each step of `segments`: each segment's own CosineDecay,
    from its cycle's start; past the last segment, its final value (0)."""

    def __init__(self, parts: list[Segment]):
        self.parts = parts
        self.firsts = [p.first_step for p in parts]
        self.curves = [
            keras.optimizers.schedules.CosineDecay(
                0.0,
                p.cycle_end - p.cycle_start - p.warmup_steps,
                warmup_target=p.peak,
                warmup_steps=p.warmup_steps,
            )
            for p in parts
        ]

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        index = tf.reduce_sum(tf.cast(step >= tf.constant(self.firsts, tf.float32), tf.int32))
        values = [
            curve(step - float(p.cycle_start))
            for p, curve in zip(self.parts, self.curves, strict=True)
        ]
        return tf.gather(tf.stack(values), tf.maximum(index - 1, 0))

    def at(self, step: int) -> float:
        """The learning rate of step `step` (0-based), in Python (for messages)."""
        i = self._index(step)
        return float(self.curves[i](step - self.parts[i].cycle_start))

    def cycle_end(self, step: int) -> int:
        """The step at which the cycle that trains step `step` (0-based) ends."""
        return self.parts[self._index(step)].cycle_end

    def _index(self, step: int) -> int:
        """The segment that trains step `step`; past the last one, the last."""
        return max(bisect.bisect_right(self.firsts, step) - 1, 0)

    def get_config(self) -> dict:
        return {"parts": [p.to_dict() for p in self.parts]}

    @classmethod
    def from_config(cls, config: dict) -> Schedule:
        return cls([Segment(**p) for p in config["parts"]])
