"""The machine's ceiling for this network: how many images/s its training step can go at
all, with nothing around it.

    .venv/bin/python -m benchmarks.calibration                  # prints, writes nothing
    .venv/bin/python -m benchmarks.calibration --images 4096 --rounds 5

The seed network (trainer.model.build_model) trained by plain Adam on one batch held in
memory (repeated by `tf.data.Dataset.from_tensors`: nothing decoded, shuffled or
augmented), in one compiled loop (`tf.range` inside a `tf.function`): forward, backward
and update, no input pipeline, no Python between steps, no weight average. The
precision and XLA are what the trainer picks for this device
(trainer.strategy.device_settings), so a GPU is measured as the trainer uses it. The
ceiling is the best median over the batch sizes measured: a large batch (CEILING_BATCH),
the seed recipe's (32) and the trainer's own (TrainConfig().batch_size), timed in
alternating rounds.
`make bench` (benchmarks/time_to_accuracy.py) reports the trainer's training images/s
as a fraction of it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from benchmarks import harness
from benchmarks.seed_recipe import BATCH_SIZE as SEED_BATCH
from trainer.config import TrainConfig

CEILING_BATCH = 512  # large enough to amortize every per-step cost on a CPU or a GPU
IMAGES_PER_ROUND = 8192  # about 4 s on 2 CPU cores
ROUNDS = 3


def measure(
    batch_sizes: Sequence[int] | None = None, images: int = IMAGES_PER_ROUND, rounds: int = ROUNDS
) -> dict[str, Any]:
    """Images/s of the bare compiled training loop at each batch size (median of
    `rounds` alternating rounds of about `images` images each), and the best of them:
    the ceiling. Runs in this process (imports TensorFlow)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    from trainer import strategy as strategies
    from trainer.model import build_model

    cfg = TrainConfig()
    batch_sizes = list(
        batch_sizes or sorted({CEILING_BATCH, SEED_BATCH, cfg.batch_size}, reverse=True)
    )
    settings = strategies.device_settings(cfg, len(tf.config.list_physical_devices("GPU")))
    rng = np.random.default_rng(0)

    def loop_for(batch: int):
        keras.utils.set_random_seed(1)
        model = build_model(seed=1, dtype=settings.dtype_policy)
        optimizer = keras.optimizers.Adam()  # the seed recipe's
        optimizer.build(model.trainable_variables)
        one_batch = (
            tf.constant(rng.integers(0, 256, (batch, 28, 28, 1), dtype=np.uint8)),
            tf.constant(rng.integers(0, 10, batch, dtype=np.int64)),
        )
        # Fed through an iterator, as the trainer's step is: measured here, the same batch
        # captured as a constant in the loop ran about 25 % slower (8 alternating rounds).
        batches = iter(tf.data.Dataset.from_tensors(one_batch).repeat())

        def step(images, labels):
            with tf.GradientTape() as tape:
                probs = model(images, training=True)
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, probs))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        # XLA compiles the step, as in the trainer (trainer.loop.make_train_steps).
        compiled = tf.function(step, jit_compile=True) if settings.jit_compile else step

        @tf.function
        def train(iterator, steps):
            total = tf.constant(0.0)
            for _ in tf.range(steps):
                total += compiled(*next(iterator))
            return total

        return lambda steps: train(batches, steps)

    loops = {b: loop_for(b) for b in batch_sizes}
    steps = {b: max(images // b, 2) for b in batch_sizes}
    for b in batch_sizes:  # trace and warm up
        float(loops[b](tf.constant(2)))
    rates: dict[int, list[float]] = {b: [] for b in batch_sizes}
    for r in range(rounds):
        for b in batch_sizes if r % 2 == 0 else batch_sizes[::-1]:
            start = time.perf_counter()
            float(loops[b](tf.constant(steps[b])))  # float(): waits for the last step
            rates[b].append(steps[b] * b / (time.perf_counter() - start))
    medians = {b: statistics.median(v) for b, v in rates.items()}
    best = max(medians, key=medians.get)
    return {
        "what": "seed network + Adam, one batch in memory repeated, compiled loop",
        "dtype_policy": settings.dtype_policy,
        "jit_compile": settings.jit_compile,
        "device": tf.config.list_logical_devices()[-1].name,
        "rounds": rounds,
        "steps_per_round": {str(b): steps[b] for b in batch_sizes},
        "images_per_second": {str(b): rates[b] for b in batch_sizes},
        "median_images_per_second": {str(b): medians[b] for b in batch_sizes},
        "ceiling_batch": best,
        "ceiling_images_per_second": medians[best],
    }


def describe(result: dict[str, Any]) -> str:
    """One line: the ceiling, and the loop's speed at each batch size."""
    rates = ", ".join(f"batch {b} {v:,.0f}" for b, v in result["median_images_per_second"].items())
    return (
        f"ceiling {result['ceiling_images_per_second']:,.0f} img/s (seed network + Adam in a "
        f"compiled loop, no input pipeline; img/s by batch: {rates})"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = harness.Parser(
        prog="python -m benchmarks.calibration",
        description=__doc__.split("\n\n")[0],
        epilog="Details: the module docstring (benchmarks/calibration.py).",
    )
    parser.add_argument(
        "--images", type=int, default=IMAGES_PER_ROUND, help=f"per timed round [{IMAGES_PER_ROUND}]"
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"timed rounds [{ROUNDS}]")
    parser.add_argument(
        "--batch-sizes",
        default=None,
        help=f"comma-separated [{CEILING_BATCH}, the seed's {SEED_BATCH} and the trainer's "
        f"{TrainConfig().batch_size}]",
    )
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = (
            [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else None
        )
    except ValueError:
        parser.error(
            f"--batch-sizes {args.batch_sizes!r} is not a comma-separated list of integers"
        )
    for name, value in (("images", args.images), ("rounds", args.rounds)):
        if not 1 <= value <= 10**7:
            parser.error(f"--{name} must be 1 to 10,000,000, got {value}")
    if args.batch_sizes and not all(1 <= b <= 65_536 for b in args.batch_sizes):
        parser.error(f"--batch-sizes must each be 1 to 65,536, got {args.batch_sizes}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return harness.run_main(
        "calibration",
        argv,
        parse_args,
        lambda args: measure(args.batch_sizes, args.images, args.rounds),
        harness.print_json_then(describe),
    )


if __name__ == "__main__":
    sys.exit(main())
