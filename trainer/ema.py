"""Weight averaging: an exponential moving average (EMA) of the trainable weights, which
evaluation and the export use instead of the last step's weights.

Averaged weights generalise better than the noisy last iterate (Polyak averaging; what
`tf.train.ExponentialMovingAverage` and Keras' `use_ema` do). The decay warms up as
min(decay, (1 + n) / (10 + n)) after n updates, as ExponentialMovingAverage's
`num_updates` does, so the average is useful from the first hundred steps; Keras'
`use_ema` uses a fixed momentum, which drags the random initial weights along for
thousands of steps, and would hide how fast the model gets good.

Updates run in cross-replica context after each optimizer step: every replica (and
worker) holds the same weights after the all-reduce, so assigning the mirrored averages
there keeps them identical everywhere without any communication.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import tensorflow as tf


class WeightAverage(tf.Module):
    """Averages of `variables`; checkpointed with the model (it is a tf.Module)."""

    def __init__(self, variables: list, decay: float):
        super().__init__(name="weight_average")
        self.decay = decay
        # Behind a function: the model's variables are checkpointed with the model, so
        # this module must not track (and save) them a second time.
        self._weights = lambda: variables
        self.averages = [tf.Variable(tf.identity(v), trainable=False) for v in variables]
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False)

    def update(self) -> None:
        """One step: average <- d * average + (1 - d) * weight. Call inside tf.function."""
        n = tf.cast(self.updates, tf.float32)
        d = tf.minimum(self.decay, (1.0 + n) / (10.0 + n))
        for average, v in zip(self.averages, self._weights(), strict=True):
            average.assign(d * average + (1.0 - d) * tf.cast(v, average.dtype))
        self.updates.assign_add(1)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averages in the model's variables for the block (evaluation, export);
        the training weights are back afterwards."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        for average, v in zip(self.averages, self._weights(), strict=True):
            saved = tf.identity(v)
            v.assign(average)
            average.assign(saved)
