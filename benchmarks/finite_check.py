"""What the divergence checks cost: training images/s with and without the per-call loss
check, and the time of the weight check run before each checkpoint.

    .venv/bin/python -m benchmarks.finite_check                      # 5 rounds of 400 steps
    .venv/bin/python -m benchmarks.finite_check --rounds 2 --steps 100

The step is the trainer's own: its recipe (model.build_recipe) and its run's train steps
(loop.train_steps_for), with the device settings and strategy it would pick and
TrainConfig()'s defaults, fed by its input pipeline (data.cached -> data.train_batches)
over synthetic MNIST-shaped data (60,000 uint8 28x28x1 images, int64 labels: what the
TFDS split holds), so no dataset is needed. Each round runs `--steps` steps the way an
epoch does (trainer.loop.Loop.epoch): calls of `steps_per_call` steps, the loss and
correct count summed on the device, one sync at the end; "checked" also hands each call's
loss sum to Loop.check_loss (the trainer's own method: it reads the previous call's sum
on the host and tests it with np.isfinite), "unchecked" does not. Rounds alternate which
goes first; medians and their ratio are printed. What an epoch does besides (progress,
events, summaries) is the same in both and left out.

The weight check (loop.make_finite_check over the model's, optimizer's and average's
variables, as Loop builds it) runs once before each checkpoint; its time per call is the
median of `--weight-checks` calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types
from collections.abc import Sequence
from typing import Any

from benchmarks import harness
from trainer.config import TrainConfig

ROUNDS = 5
STEPS = 400
WEIGHT_CHECKS = 50
TRAIN_IMAGES = 60_000  # MNIST's training split


def measure(rounds: int = ROUNDS, steps: int = STEPS, weight_checks: int = WEIGHT_CHECKS):
    """Images/s of the trainer's loop, checked and unchecked, and the weight check's ms.
    Runs in this process (imports TensorFlow)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from trainer import data
    from trainer import strategy as strategies
    from trainer.loop import Loop, make_finite_check, train_steps_for
    from trainer.model import build_recipe

    cfg = TrainConfig()
    strategy = strategies.choose(cfg.strategy, None, cfg.cpu_devices)  # the trainer's choice
    batch = cfg.batch_size
    settings = strategies.device_settings(cfg, len(tf.config.list_physical_devices("GPU")))
    per_call = settings.steps_per_call
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (TRAIN_IMAGES, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, TRAIN_IMAGES, dtype=np.int64)
    source = data.cached(tf.data.Dataset.from_tensor_slices((images, labels)))
    per_epoch = data.steps_per_epoch(TRAIN_IMAGES, batch)
    for _ in source.batch(4096):  # fill the cache: the trainer's later epochs read from it
        pass

    with strategy.scope():
        model, optimizer, average = build_recipe(
            cfg, per_epoch, cfg.epochs * per_epoch, settings.dtype_policy
        )
    train_steps = train_steps_for(cfg, settings, strategy, model, optimizer, average)
    averages = average.averages if average is not None else []
    all_finite = make_finite_check([*model.variables, *optimizer.variables, *averages])

    def diverged(what: str, steps: tuple[int, int], after: bool = True) -> None:
        raise harness.BenchError(f"{what} at steps {steps[0]}-{steps[1]}: not a benchmark", 1)

    def timed(checked: bool, round_: int, n: int) -> float:
        # What Loop.epoch does per call, less what both variants would do alike.
        loop = types.SimpleNamespace(unchecked=None, _diverged=diverged)  # check_loss's state
        batches = data.train_batches(
            source,
            size=TRAIN_IMAGES,
            global_batch=batch,
            seed=cfg.seed,
            epoch=round_,
            augment=cfg.augment,
        ).repeat()
        start = time.perf_counter()
        iterator = iter(strategy.experimental_distribute_dataset(batches))
        loss_sum = correct = tf.constant(0.0)
        done = 0
        while done < n:
            k = min(per_call, n - done)
            losses, ok, _ = train_steps(iterator, tf.constant(k))
            if checked:
                Loop.check_loss(loop, (done + 1, done + k, losses))
            loss_sum, correct = loss_sum + losses, correct + ok
            done += k
        float(loss_sum), float(correct)  # wait for the last step, as the epoch's end does
        if checked:
            Loop.check_loss(loop)  # the last call's, as at the end of an epoch
        return n * batch / (time.perf_counter() - start)

    variants = {"checked": True, "unchecked": False}
    for checked in variants.values():  # trace and warm up
        timed(checked, 0, 2 * per_call)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]  # alternate the first
        for name in order:
            rates[name].append(timed(variants[name], r + 1, steps))
            print(f"finite_check: round {r + 1} {name:>9}: {rates[name][-1]:8.0f} img/s")

    bool(all_finite())  # trace
    times = []
    for _ in range(weight_checks):
        start = time.perf_counter()
        if not bool(all_finite()):  # bool(): the host reads it, as Loop.save does
            raise harness.BenchError("the weights are not finite: not a benchmark", 1)
        times.append(time.perf_counter() - start)
    checked, unchecked = (statistics.median(rates[v]) for v in variants)
    return {
        "batch_size": batch,
        "steps_per_call": per_call,
        "dtype_policy": settings.dtype_policy,
        "jit_compile": settings.jit_compile,
        "augment": cfg.augment,
        "ema": average is not None,
        "strategy": type(strategy).__name__,
        "device": tf.config.list_logical_devices()[-1].name,
        "rounds": rounds,
        "steps_per_round": steps,
        "checked_images_per_second": rates["checked"],
        "unchecked_images_per_second": rates["unchecked"],
        "checked_median": checked,
        "unchecked_median": unchecked,
        "checked_over_unchecked": checked / unchecked,
        "weight_check_variables": len(model.variables) + len(optimizer.variables) + len(averages),
        "weight_check_ms_median": 1000 * statistics.median(times),
        "weight_check_ms_max": 1000 * max(times),
        "load_average": os.getloadavg(),
    }


def describe(result: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in result["load_average"])
    return (
        f"per-call loss check: {result['checked_median']:,.0f} img/s checked vs "
        f"{result['unchecked_median']:,.0f} unchecked (ratio "
        f"{result['checked_over_unchecked']:.3f}; medians of {result['rounds']} alternating "
        f"rounds of {result['steps_per_round']} steps, batch {result['batch_size']}, "
        f"{result['steps_per_call']} steps per call, {result['device']}); weight check before "
        f"a checkpoint: {result['weight_check_ms_median']:.2f} ms median "
        f"({result['weight_check_variables']} variables); load average {load}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = harness.Parser(
        prog="python -m benchmarks.finite_check",
        description=__doc__.split("\n\n")[0],
        epilog="Details: the module docstring (benchmarks/finite_check.py).",
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"timed rounds [{ROUNDS}]")
    parser.add_argument(
        "--steps", type=int, default=STEPS, help=f"training steps per round and variant [{STEPS}]"
    )
    parser.add_argument(
        "--weight-checks",
        type=int,
        default=WEIGHT_CHECKS,
        help=f"timed calls of the weight check [{WEIGHT_CHECKS}]",
    )
    args = parser.parse_args(argv)
    for name in ("rounds", "steps", "weight_checks"):
        value = getattr(args, name)
        if not 1 <= value <= 10**6:
            parser.error(f"--{name.replace('_', '-')} must be 1 to 1,000,000, got {value}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return harness.run_main(
        "finite_check",
        argv,
        parse_args,
        lambda args: measure(args.rounds, args.steps, args.weight_checks),
        harness.print_json_then(describe),
    )


if __name__ == "__main__":
    sys.exit(main())
