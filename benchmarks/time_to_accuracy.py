"""Time to accuracy: the seed recipe against the trainer, on real MNIST, on this machine.

    .venv/bin/python -m benchmarks.time_to_accuracy                 # make bench
    .venv/bin/python -m benchmarks.time_to_accuracy --quick         # make bench-quick
    .venv/bin/python -m benchmarks.time_to_accuracy --repeats 3 --out artifacts/bench

Measured the way MLPerf Training and DAWNBench do: wall time from process start (the
`time.time()` taken just before the child is started, so interpreter start-up, imports,
data loading and every evaluation count) until the test accuracy first reaches a target,
here 98.15 % and 99.0 % on the 10,000 test images. Three contenders, each its own process,
one after the other on the same machine:

- seed: `benchmarks/seed_recipe.py`, the seed README's recipe (Keras `model.fit` on NumPy
  arrays from the idx files, unscaled pixels, batch 32); it scores the test set after
  every epoch and writes the times to a JSON file.
- trainer: `python -m trainer train` with its defaults, as a user runs it (only the data
  dir, a fresh job and export dir, and --epochs when given; started through its
  `cli.main` with its progress events on, harness.trainer_command). Its evaluations,
  mid-epoch ones included, come from the training summary it writes beside the version
  (trainer.outputs.SUMMARY_FILE, "evaluations": each with its unix "time"), never from
  its log. Its start-up is timed by its events' arrival: "run" (imports done, data
  loaded) and the first "step" (model built, train step traced, one step trained).
- trainer_10: the same trainer and recipe for 10 epochs (TEN_EPOCHS: the default before
  the shorter run), to show what the shorter default gives up and saves.

Each contender's wall time to exit and its time to 99.0 % are also given as a fraction of
the seed's wall time to exit in the same run (the default run's goals: <= 0.5 and
<= 0.15). --quick runs seed and trainer only (--contenders picks).

With --repeats N the contenders alternate (seed, trainer, trainer, seed, ...), so drift
in a shared machine's speed hits both alike, and the table quotes medians. Peak memory is
each child's own ru_maxrss (os.wait4), not the cumulative RUSAGE_CHILDREN.

The calibration measures this machine's ceiling for the network (benchmarks/calibration.py:
the seed network's forward, backward and Adam update in a tight compiled loop on a batch
in memory, no input pipeline, at a large batch and the trainer's); each contender's
training images/s is reported as a fraction of it (skipped by --quick unless --calibrate).

The input pipeline check times the trainer's compiled train step fed by the real TFDS
pipeline against the same step fed by a batch already in memory (skipped by --quick
unless --pipeline is given): the pipeline should keep up, >= 95 % of the in-memory rate.

Writes OUT/time_to_accuracy.json (every measurement, the commands, the machine),
OUT/time_to_accuracy.png (accuracy against time, both contenders) and OUT/logs/*.log (each
child's output), and prints a table. Exit status: 0 done; 1 a contender failed (its last
lines are printed), or the calibration or the pipeline check failed (the contenders'
results are still written); 2 bad arguments, missing data or a failed data import.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import calibration, harness
from benchmarks.harness import TARGETS, BenchError
from trainer.config import TrainConfig

CONTENDERS = ("seed", "trainer_10", "trainer")
QUICK_CONTENDERS = ("seed", "trainer")
LABELS = {
    "seed": "seed recipe (Keras fit, NumPy arrays, batch 32)",
    "trainer_10": "trainer, 10 epochs",
    "trainer": "trainer (python -m trainer train, defaults)",
}
COLORS = {"seed": "tab:orange", "trainer_10": "tab:green", "trainer": "tab:blue"}
# The trainer's recipe as it ran for 10 epochs before the default run was shortened.
TEN_EPOCHS = [
    "--epochs", "10", "--learning-rate", "2e-3", "--early-eval-epochs", "1", "--eval-at", "none",
    "--clean-epochs", "0",
    "--batch-size", "32",
]  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = harness.Parser(
        prog="python -m benchmarks.time_to_accuracy",
        description=__doc__.split("\n\n")[0],
        epilog="Details: the module docstring (benchmarks/time_to_accuracy.py).",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs for every contender [seed and trainer_10: 10, trainer: its default; "
        "--quick: 1]",
    )
    parser.add_argument(
        "--contenders",
        default=None,
        help=f"comma-separated, run in this order [{','.join(CONTENDERS)}; --quick: "
        f"{','.join(QUICK_CONTENDERS)}]",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per contender, alternating [1]"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 epoch each, no input pipeline check (seconds on small data)",
    )
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="run the input pipeline check even with --quick",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="run the calibration (the machine's ceiling) even with --quick",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=calibration.IMAGES_PER_ROUND,
        help=f"images per calibration round and batch size [{calibration.IMAGES_PER_ROUND}]",
    )
    parser.add_argument(
        "--calibration-rounds",
        type=int,
        default=calibration.ROUNDS,
        help=f"alternating timed calibration rounds [{calibration.ROUNDS}]",
    )
    parser.add_argument(
        "--pipeline-rounds",
        type=int,
        default=3,
        help="alternating timed rounds per feed in the pipeline check [3]",
    )
    parser.add_argument(
        "--pipeline-steps",
        type=int,
        default=0,
        help="train steps per pipeline round [0: one epoch, as the trainer runs it]",
    )
    harness.add_data_arguments(parser, out="artifacts/bench")
    args = parser.parse_args(argv)
    for name in (
        "epochs",
        "repeats",
        "pipeline_rounds",
        "calibration_images",
        "calibration_rounds",
    ):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.pipeline_steps < 0:
        parser.error(f"--pipeline-steps must be 0 (one epoch) or more, got {args.pipeline_steps}")
    # --epochs given (or implied by --quick) goes to both; otherwise each uses its own default.
    args.trainer_epochs = args.epochs if args.epochs is not None else (1 if args.quick else None)
    args.seed_epochs = args.trainer_epochs or 10
    args.run_pipeline = args.pipeline or not args.quick
    names = (
        args.contenders.split(",")
        if args.contenders
        else list(QUICK_CONTENDERS if args.quick else CONTENDERS)
    )
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown or not names or len(set(names)) != len(names):
        parser.error(
            f"--contenders takes distinct names from {', '.join(CONTENDERS)}, got "
            f"{args.contenders!r}"
        )
    args.contenders = names
    args.run_calibration = args.calibrate or not args.quick
    harness.absolute_paths(args)
    return args


# --- Contenders.


def run_seed(args: argparse.Namespace, work: Path, repeat: int) -> dict[str, Any]:
    """One run of the seed recipe; its evaluations come from the JSON file it writes."""
    result_path = work / f"seed-{repeat}.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.seed_recipe",
        "--idx-dir",
        str(args.idx_dir),
        "--epochs",
        str(args.seed_epochs),
        "--out",
        str(result_path),
    ]
    run = harness.run_child(command, args.out / "logs" / f"seed-{repeat}.log")
    if run["exit_code"] != 0:
        raise harness.child_failed(run, "the seed recipe")
    result = json.loads(result_path.read_text())
    evaluations = [
        {
            "epoch": e["epoch"],
            "test_accuracy": e["test_accuracy"],
            "test_loss": e["test_loss"],
            "time": e["time"],
            "seconds": e["time"] - run["process_start"],
        }
        for e in result["evaluations"]
    ]
    trained = sum(e["train_seconds"] for e in result["evaluations"])
    return {
        **run,
        "contender": "seed",
        "repeat": repeat,
        "evaluations": evaluations,
        "timing_source": "seed_recipe's per-epoch callback (unix time after each evaluation)",
        # The child's own clock, started before its imports: the gap to process_start is
        # the interpreter's start-up.
        "self_reported_start": result["process_start"],
        # When model.fit returned; the gap to process_end is the interpreter's shutdown.
        "self_reported_end": result.get("end"),
        "train_images": result["train_images"],
        "test_images": result["test_images"],
        "images_per_second": (
            result["train_images"] * len(evaluations) / trained if trained else None
        ),
        "images_per_second_note": (
            "approximate: training images x epochs / the epochs' time in model.fit "
            "(includes Keras' per-epoch overhead, excludes the test evaluations)"
        ),
    }


def run_trainer(args: argparse.Namespace, work: Path, repeat: int) -> dict[str, Any]:
    """One run of `python -m trainer train` with its defaults, in a fresh job/export dir."""
    flags = ["--data-dir", str(args.data_dir)]
    if args.trainer_epochs is not None:
        flags += ["--epochs", str(args.trainer_epochs)]
    run = harness.run_trainer(
        flags, work / f"trainer-{repeat}", args.out / "logs" / f"trainer-{repeat}.log"
    )
    return {**run, "contender": "trainer", "repeat": repeat}


def run_trainer_10(args: argparse.Namespace, work: Path, repeat: int) -> dict[str, Any]:
    """One run of the trainer's recipe for 10 epochs (TEN_EPOCHS; --epochs overrides)."""
    flags = ["--data-dir", str(args.data_dir), *TEN_EPOCHS]
    if args.epochs is not None or args.quick:
        flags += ["--epochs", str(args.trainer_epochs)]  # the last --epochs wins
    run = harness.run_trainer(
        flags, work / f"trainer_10-{repeat}", args.out / "logs" / f"trainer_10-{repeat}.log"
    )
    return {**run, "contender": "trainer_10", "repeat": repeat}


# --- Data.


def check_data(args: argparse.Namespace) -> dict[str, Any] | None:
    """Both contenders' inputs exist; imports the TFDS dataset from the idx files when it
    is missing (timed on its own, counted in neither contender's time)."""
    missing = harness.missing_idx_files(args.idx_dir)
    if missing:
        raise BenchError(
            f"--idx-dir {args.idx_dir} lacks {', '.join(missing)}; point --idx-dir (or "
            "MNIST_IDX_DIR) at the folder with the four MNIST idx .gz files",
            2,
        )
    if harness.is_prepared(args.data_dir):
        return None
    print(f"bench: importing MNIST into {args.data_dir} (not timed as part of either contender)")
    return harness.import_data(args.data_dir, args.idx_dir, args.out / "logs" / "data-import.log")


# --- The input pipeline check.


def measure_input_pipeline(data_dir: Path, rounds: int, steps: int = 0) -> dict[str, Any]:
    """Images/s of the trainer's compiled train step fed (a) one synthetic batch already in
    memory, repeated, and (b) the real TFDS pipeline, built exactly as the trainer builds
    it (data.load -> data.cached -> data.train_batches with TrainConfig()'s batch size,
    seed and augmentation, a fresh one per round as per epoch). Rounds alternate; medians.

    The step is the trainer's own: its recipe (model.build_recipe) and its run's train
    steps (loop.train_steps_for) with the device settings it would pick. Runs in this
    process, after the contenders are done.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from trainer import data
    from trainer import strategy as strategies
    from trainer.loop import train_steps_for
    from trainer.model import build_recipe

    cfg = TrainConfig()
    strategy = strategies.choose(cfg.strategy, None, cfg.cpu_devices)  # the trainer's choice
    batch = cfg.batch_size
    settings = strategies.device_settings(cfg, len(tf.config.list_physical_devices("GPU")))
    per_call, dtype, jit = settings.steps_per_call, settings.dtype_policy, settings.jit_compile
    splits = data.load(data_dir)
    source = data.cached(splits.train)
    per_epoch = data.steps_per_epoch(splits.train_size, batch)
    steps = steps or per_epoch
    # Decode once into the in-memory cache: the trainer pays decoding only in its first
    # epoch, and this check is about the steady state.
    for _ in source.batch(4096):
        pass

    with strategy.scope():
        # The learning-rate schedule's length does not change a step's cost.
        model, optimizer, average = build_recipe(cfg, per_epoch, cfg.epochs * per_epoch, dtype)
    # Augmentation runs in the step (the pipeline only draws its parameters), so both
    # feeds pay for it alike.
    train_steps = train_steps_for(cfg, settings, strategy, model, optimizer, average)

    def pipeline(round_: int):
        return data.train_batches(
            source,
            size=splits.train_size,
            global_batch=batch,
            seed=cfg.seed,
            epoch=round_,
            augment=cfg.augment,
        ).repeat()  # .repeat(): --pipeline-steps may exceed an epoch on small data

    rng = np.random.default_rng(0)
    element = (
        tf.constant(rng.integers(0, 256, (batch, 28, 28, 1), dtype=np.uint8)),
        tf.constant(rng.integers(0, 10, batch, dtype=np.int64)),
    )
    if cfg.augment:  # the same element shape as the pipeline's
        element += (data.augment_params(batch, tf.constant([0, 1], tf.int64)),)
    in_memory = tf.data.Dataset.from_tensors(element).repeat()
    feeds = {"in_memory": lambda r: in_memory, "pipeline": pipeline}

    def timed(feed: str, round_: int, n: int) -> float:
        # The iterator is made inside the timing: the trainer makes one per epoch, and
        # the pipeline's shuffle buffer fills then.
        start = time.perf_counter()
        iterator = iter(strategy.experimental_distribute_dataset(feeds[feed](round_)))
        done = 0
        while done < n:
            k = min(per_call, n - done)
            _, _, loss = train_steps(iterator, tf.constant(k))
            done += k
        float(loss)  # wait for the last step
        return n * batch / (time.perf_counter() - start)

    for feed in feeds:  # trace and warm up each feed (their element shapes differ)
        timed(feed, 0, 2 * per_call)
    rates: dict[str, list[float]] = {feed: [] for feed in feeds}
    for r in range(rounds):
        order = list(feeds) if r % 2 == 0 else list(feeds)[::-1]  # alternate who goes first
        for feed in order:
            rates[feed].append(timed(feed, r + 1, steps))
            print(f"bench: pipeline check round {r + 1} {feed:>9}: {rates[feed][-1]:8.0f} img/s")
    memory, pipe = (statistics.median(rates[f]) for f in ("in_memory", "pipeline"))
    return {
        "batch_size": batch,
        "steps_per_call": per_call,
        "dtype_policy": dtype,
        "jit_compile": jit,
        "augment": cfg.augment,
        "steps_per_round": steps,
        "rounds": rounds,
        "strategy": type(strategy).__name__,
        "device": tf.config.list_logical_devices()[-1].name,
        "in_memory_images_per_second": rates["in_memory"],
        "pipeline_images_per_second": rates["pipeline"],
        "in_memory_median": memory,
        "pipeline_median": pipe,
        "ratio": pipe / memory,
        "target_ratio": 0.95,
        "meets_target": pipe / memory >= 0.95,
    }


# --- Summary, table, plot.


def median_or_none(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(
    runs: list[dict[str, Any]],
    ceiling: float | None = None,
    names: Sequence[str] = QUICK_CONTENDERS,
) -> dict[str, Any]:
    """Medians per contender across repeats, the seed/trainer ratios, each contender's wall
    time and time to 99.0 % as a fraction of the seed's wall time, and (given the
    calibration's ceiling, images/s) each contender's training speed as a fraction of it."""
    out: dict[str, Any] = {}
    for name in names:
        mine = [r for r in runs if r["contender"] == name]
        speed = median_or_none([r["images_per_second"] for r in mine])
        out[name] = {
            "repeats": len(mine),
            # Over the repeats that reached it; "reached" says how many did.
            "time_to_target": {
                str(t): median_or_none([r["time_to_target"][str(t)] for r in mine]) for t in TARGETS
            },
            "reached": {
                str(t): sum(r["time_to_target"][str(t)] is not None for r in mine) for t in TARGETS
            },
            "final_accuracy": median_or_none([r["final_accuracy"] for r in mine]),
            "wall_seconds": median_or_none([r["wall_seconds"] for r in mine]),
            "images_per_second": speed,
            "fraction_of_ceiling": speed / ceiling if speed and ceiling else None,
            "to_first_step": median_or_none(
                [r.get("startup", {}).get("to_first_step") for r in mine]
            ),
            "peak_rss_bytes": median_or_none([r["peak_rss_bytes"] for r in mine]),
            "evaluations": median_or_none([len(r["evaluations"]) for r in mine]),
        }
    if "seed" in out and "trainer" in out:
        ratios = {}
        for t in TARGETS:
            seed, trainer = (out[n]["time_to_target"][str(t)] for n in ("seed", "trainer"))
            ratios[str(t)] = seed / trainer if seed and trainer else None
        out["seed_over_trainer"] = ratios
    seed_wall = out.get("seed", {}).get("wall_seconds")
    for name in names:
        if name != "seed" and seed_wall:
            to_99 = out[name]["time_to_target"][str(TARGETS[-1])]
            out[name]["of_seed_wall"] = {
                "wall": out[name]["wall_seconds"] / seed_wall,
                str(TARGETS[-1]): to_99 / seed_wall if to_99 else None,
            }
    return out


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def table(result: dict[str, Any]) -> str:
    """The summary as text: one column per contender, one row per measurement."""
    summary = result["summary"]
    names = result["settings"]["contenders"]
    n = result["settings"]["repeats"]
    # The seed reports its image count itself; the trainer in its first "run" event.
    images = next(
        (
            count
            for run in result["runs"]
            if (
                count := run.get("train_images")
                or run.get("first_events", {}).get("run", {}).get("train_images")
            )
        ),
        None,
    )
    data = "real MNIST" if images == 60_000 else f"{images} training images (not real MNIST)"
    ratios = summary.get("seed_over_trainer", {})

    def ratio(value: float | None, fmt: str = "{:.2f}x") -> str:
        return "-" if value is None else fmt.format(value)

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    def of_seed(c: str, key: str) -> str:
        return ratio(summary[c].get("of_seed_wall", {}).get(key), "{:.2f}")

    rows = [
        (
            f"to {t:.2f}%",
            *(
                _seconds(summary[c]["time_to_target"][str(t)])
                + (
                    f" ({summary[c]['reached'][str(t)]}/{n})"
                    if 0 < summary[c]["reached"][str(t)] < n
                    else ""
                )
                for c in names
            ),
            ratio(ratios.get(str(t))),
        )
        for t in TARGETS
    ]
    rows += [
        ("final accuracy", *(percent(summary[c]["final_accuracy"]) for c in names), ""),
        ("evaluations", *(f"{summary[c]['evaluations']:g}" for c in names), ""),
        ("wall to exit", *(_seconds(summary[c]["wall_seconds"]) for c in names), ""),
        ("wall / seed's", *("" if c == "seed" else of_seed(c, "wall") for c in names), ""),
        (
            f"to {TARGETS[-1]:g}% / seed's wall",
            *("" if c == "seed" else of_seed(c, str(TARGETS[-1])) for c in names),
            "",
        ),
        (
            "images/s",
            *(
                "-"
                if summary[c]["images_per_second"] is None
                else f"{summary[c]['images_per_second']:,.0f}" + ("*" if c == "seed" else "")
                for c in names
            ),
            "",
        ),
        (
            "of ceiling",
            *(
                "-"
                if summary[c]["fraction_of_ceiling"] is None
                else f"{100 * summary[c]['fraction_of_ceiling']:.0f}%"
                for c in names
            ),
            "",
        ),
        ("to first step", *(_seconds(summary[c]["to_first_step"]) for c in names), ""),
        ("peak RSS", *(_gib(summary[c]["peak_rss_bytes"]) for c in names), ""),
    ]
    width = 24
    lines = [
        f"Time to accuracy on {data}: wall seconds since process start, "
        f"median of {n} repeat{'s' if n > 1 else ''}",
        f"{'':<{width}}" + "".join(f"{c:>16}" for c in names) + f"{'seed/trainer':>14}",
        *(
            f"{row[0]:<{width}}" + "".join(f"{v:>16}" for v in row[1:-1]) + f"{row[-1]:>14}"
            for row in rows
        ),
        "* approximate: training images x epochs / time in model.fit",
    ]
    ceiling = result.get("calibration")
    if ceiling and "error" in ceiling:
        lines.append(f"calibration FAILED: {ceiling['error']}")
    elif ceiling:
        lines.append(f"calibration: {calibration.describe(ceiling)}")
    pipe = result.get("input_pipeline")
    if pipe and "error" in pipe:
        lines.append(f"input pipeline check FAILED: {pipe['error']}")
    elif pipe:
        lines.append(
            f"input pipeline (batch {pipe['batch_size']}, {pipe['steps_per_call']} steps per "
            f"call, augment {'on' if pipe['augment'] else 'off'}): in memory "
            f"{pipe['in_memory_median']:,.0f} img/s, TFDS pipeline {pipe['pipeline_median']:,.0f}"
            f" img/s = {100 * pipe['ratio']:.1f}% (target >= 95%: "
            f"{'met' if pipe['meets_target'] else 'NOT met'})"
        )
    lines.append(harness.machine_line(result["machine"]))
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Test accuracy (%) against wall seconds since process start, both contenders."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    summary = result["summary"]
    for name in result["settings"]["contenders"]:
        first = True
        for run in (r for r in result["runs"] if r["contender"] == name):
            xs = [e["seconds"] for e in run["evaluations"]]
            ys = [100 * e["test_accuracy"] for e in run["evaluations"]]
            reached = summary[name]["time_to_target"][str(TARGETS[0])]
            when = "not reached" if reached is None else f"at {reached:.1f} s"
            label = f"{LABELS[name]}: {TARGETS[0]}% {when}" if first else None
            ax.plot(xs, ys, marker="o", ms=4, color=COLORS[name], alpha=1 if first else 0.45,
                    label=label)  # fmt: skip
            first = False
    for target in TARGETS:
        ax.axhline(target, color="gray", linestyle="--", linewidth=1)
        # Labelled in the right margin, where no curve runs.
        ax.annotate(f"{target}%", (1, target), xycoords=("axes fraction", "data"),
                    xytext=(3, 0), textcoords="offset points", ha="left", va="center",
                    fontsize=8, color="gray", annotation_clip=False)  # fmt: skip
    accuracies = [100 * e["test_accuracy"] for r in result["runs"] for e in r["evaluations"]]
    finals = [100 * r["final_accuracy"] for r in result["runs"] if r["final_accuracy"]]
    # Zoom on the targets when both got there-ish; smoke runs on toy data show everything.
    low = 97.0 if finals and min(finals) >= 97.5 else max(0.0, min(accuracies, default=0) - 1)
    ax.set_ylim(low, 100)
    seconds = [e["seconds"] for r in result["runs"] for e in r["evaluations"]]
    ax.set_xlim(0, 1.05 * max(seconds, default=1))  # room for the last markers
    ax.set_xlabel("wall time since process start (s)")
    ax.set_ylabel("test accuracy (%)")
    m = result["machine"]
    ax.set_title(
        f"Time to accuracy, MNIST: {m['cpu']}, {m['usable_cores']} cores, "
        f"{', '.join(g.split(' (')[0] for g in m['gpus']) or 'no GPU'}",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- The run, top to bottom.


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = harness.machine_info()
    data_import = check_data(args)
    runs: list[dict[str, Any]] = []
    contenders = {"seed": run_seed, "trainer_10": run_trainer_10, "trainer": run_trainer}
    with tempfile.TemporaryDirectory(prefix="bench-tta-") as tmp:
        for repeat in range(1, args.repeats + 1):
            # seed, ..., trainer, trainer, ..., seed: each goes first in every other repeat.
            order = args.contenders if repeat % 2 else args.contenders[::-1]
            for name in order:
                print(f"bench: repeat {repeat}/{args.repeats}: {name} ...", flush=True)
                record = contenders[name](args, Path(tmp), repeat)
                harness.add_targets(record)
                runs.append(record)
                print(
                    f"bench:   {name}: {len(record['evaluations'])} evaluations, final "
                    f"{100 * (record['final_accuracy'] or 0):.2f}%, to {TARGETS[0]}% in "
                    f"{_seconds(record['time_to_target'][str(TARGETS[0])])}, wall "
                    f"{record['wall_seconds']:.1f} s, peak RSS {_gib(record['peak_rss_bytes'])}",
                    flush=True,
                )
    ceiling = None
    if args.run_calibration:
        print("bench: calibration (the machine's ceiling) ...", flush=True)
        try:
            ceiling = calibration.measure(
                images=args.calibration_images, rounds=args.calibration_rounds
            )
        except Exception as e:  # noqa: BLE001 - keep the contenders' results (main exits 1)
            traceback.print_exc()
            ceiling = {"error": f"{type(e).__name__}: {e}"}
    pipeline = None
    if args.run_pipeline:
        print("bench: input pipeline check ...", flush=True)
        try:
            pipeline = measure_input_pipeline(
                args.data_dir, args.pipeline_rounds, args.pipeline_steps
            )
        except Exception as e:  # noqa: BLE001 - keep the contenders' results (main exits 1)
            traceback.print_exc()
            pipeline = {"error": f"{type(e).__name__}: {e}"}
    return {
        "benchmark": "time_to_accuracy",
        "started": started,
        "finished": time.time(),
        "targets_percent": list(TARGETS),
        "settings": {
            "repeats": args.repeats,
            "contenders": args.contenders,
            "quick": args.quick,
            "seed_epochs": args.seed_epochs,
            "trainer_epochs": args.trainer_epochs,  # None: the trainer's own default
            "data_dir": str(args.data_dir),
            "idx_dir": str(args.idx_dir),
            "argv": sys.argv,
        },
        "machine": machine,
        "data_import": data_import,
        "commands": [r["command"] for r in runs],
        "runs": runs,
        "summary": summarize(
            runs,
            ceiling.get("ceiling_images_per_second") if ceiling else None,
            args.contenders,
        ),
        "calibration": ceiling,
        "input_pipeline": pipeline,
    }


def finish(args: argparse.Namespace, result: dict[str, Any]) -> int:
    """Write the JSON and the plot, print the table; exit 1 if the calibration or the
    pipeline check failed."""
    json_path, png_path = args.out / "time_to_accuracy.json", args.out / "time_to_accuracy.png"
    harness.write_json(json_path, result)
    plot(result, png_path)
    print()
    print(table(result))
    print(f"wrote {json_path}, {png_path}")
    failed = [
        (what, result[key]["error"].splitlines()[0])
        for what, key in (
            ("calibration", "calibration"),
            ("input pipeline check", "input_pipeline"),
        )
        if result[key] and "error" in result[key]
    ]
    for what, error in failed:
        print(f"time_to_accuracy: the {what} failed ({error})", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    return harness.run_main("time_to_accuracy", argv, parse_args, run, finish)


if __name__ == "__main__":
    sys.exit(main())
