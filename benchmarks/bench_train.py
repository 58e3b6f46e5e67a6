"""Training throughput of the real train step (and input pipeline) per global batch size.

    .venv/bin/python -m benchmarks.bench_train --batch-sizes 64,128,256 --rounds 5

Shared machines swing 2x from minute to minute, so the contenders take turns within one
run (round-robin, `--rounds` times) and the table quotes medians and ratios to the first
batch size. Images are synthetic (throughput does not depend on pixel values); the step
is `trainer.loop.make_train_steps` (`--steps-per-call` steps per compiled call), the
pipeline `trainer.data.train_batches`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer import data  # noqa: E402
from trainer.loop import make_train_steps  # noqa: E402
from trainer.model import build_model  # noqa: E402


def contender(batch: int, images: int, augment: bool, per_call: int):
    """Compiled steps for one batch size, as a function: run(n) trains n steps, waits."""
    rng = np.random.default_rng(0)
    source = tf.data.Dataset.from_tensor_slices(
        (
            rng.integers(0, 256, (images, 28, 28, 1), dtype=np.uint8),
            rng.integers(0, 10, images).astype("int64"),
        )
    ).cache()
    strategy = tf.distribute.get_strategy()
    model = build_model(seed=0)
    optimizer = keras.optimizers.Adam(1e-3)
    steps = make_train_steps(model, optimizer, strategy, batch, augment=augment)
    batches = data.train_batches(
        source, size=images, global_batch=batch, seed=0, epoch=0, augment=augment
    ).repeat()
    it = iter(strategy.experimental_distribute_dataset(batches))

    def run(n: int) -> None:
        while n > 0:
            _, _, loss = steps(it, tf.constant(min(per_call, n)))
            n -= per_call
        float(loss)  # wait for the last step

    run(per_call + 1)  # trace and warm up
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="128,256", help="comma-separated [128,256]")
    parser.add_argument("--images", type=int, default=60_000, help="per timed round [60000]")
    parser.add_argument("--rounds", type=int, default=3, help="turns each contender gets [3]")
    parser.add_argument("--steps-per-call", type=int, default=20, help="as the trainer's [20]")
    parser.add_argument("--no-augment", action="store_true", help="time without random shifts")
    args = parser.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    pool = 4096  # distinct synthetic images; cached, so the pipeline cost is like MNIST's
    contenders = {b: contender(b, pool, not args.no_augment, args.steps_per_call) for b in sizes}
    rates: dict[int, list[float]] = {b: [] for b in sizes}
    for r in range(args.rounds):
        order = sizes if r % 2 == 0 else sizes[::-1]  # alternate who goes first
        for b in order:
            steps = max(1, args.images // b)
            start = time.perf_counter()
            contenders[b](steps)
            rates[b].append(steps * b / (time.perf_counter() - start))
            print(f"round {r + 1} batch {b:>4}: {rates[b][-1]:8.0f} img/s", flush=True)
    base = statistics.median(rates[sizes[0]])
    print(f"\n{'batch':>6} {'median img/s':>13} {'min':>8} {'max':>8} {'ratio':>6}")
    for b in sizes:
        med = statistics.median(rates[b])
        print(f"{b:>6} {med:>13.0f} {min(rates[b]):>8.0f} {max(rates[b]):>8.0f} {med / base:>6.2f}")
    print(
        f"\n{tf.config.list_logical_devices()[-1].name}, TF {tf.__version__}, "
        f"augment={'off' if args.no_augment else 'on'}, {args.steps_per_call} steps per call, "
        f"{args.images} images per round"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
