"""Recipe probes: what each training knob buys, on real MNIST, with the trainer's recipe.

    .venv/bin/python -m benchmarks.recipe_probe NAME '{"batch": 32, "peak": 1e-3, "aug": "affine"}'

The trainer's own pieces in a plain loop, without its job dir, checkpoints, export and
TensorBoard: its model, optimizer, schedule and weight average (trainer.model.build_recipe),
its compiled train steps (trainer.loop.make_train_steps: label smoothing, the average's
update, the augmentation), fed by its pipeline (trainer.data.train_batches) from the idx
files in memory, on the default strategy. It evaluates the test accuracy at fractions of
the first epoch and after every epoch, with the raw weights and with their moving average;
it prints one line per evaluation and writes artifacts/probes/NAME.json. Accuracy per epoch
does not depend on the machine's speed, so probes can run side by side on a busy machine;
wall times here are not comparable (the trainer and `make bench` measure those).

Knobs, each a trainer flag: batch (--batch-size), peak (--learning-rate: reached after a
linear warmup of `warmup` epochs, --warmup-epochs, then cosine to 0), ls
(--label-smoothing), ema (--ema; 0: off), wd (--weight-decay; 0: Adam), epochs, seed, and
aug: "affine" (--augment: rotation, scale and shift), "shift" (the same augmentation with
its rotation and scale at 0: shifts of up to ±2 px), "none" (--no-augment); clean
(--clean-epochs: the last N epochs undistorted); aug_scale (no flag: the distortions'
maxima times this, to measure weaker or stronger ones). at: where else to evaluate, in
epochs from the start (default: fractions of the first epoch); until: stop after this
many epochs (the schedule still spans `epochs`). The idx files: MNIST_IDX_DIR,
else ../shared/data/mnist.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.harness import DEFAULT_IDX_DIR  # noqa: E402
from digits import idx  # noqa: E402
from trainer import data  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.loop import make_train_steps  # noqa: E402
from trainer.model import build_recipe  # noqa: E402
from trainer.strategy import STEPS_PER_CALL  # noqa: E402

IDX_DIR = Path(os.environ.get("MNIST_IDX_DIR") or DEFAULT_IDX_DIR)
PROBES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8)  # fractions of the first epoch
# Which of data.augment_params' four (rotation, scale, x shift, y shift) each "aug" keeps.
AUGMENTATIONS = {"none": None, "shift": (0.0, 0.0, 1.0, 1.0), "affine": (1.0, 1.0, 1.0, 1.0)}


def probe(name, batch=32, peak=1e-3, warmup=0.1, epochs=10, ls=0.1, ema=0.999, wd=0.0,
          aug="affine", seed=42, aug_scale=1.0, clean=0, at=PROBES, until=None):  # fmt: skip
    if aug not in AUGMENTATIONS:
        raise SystemExit(f"error: aug {aug!r} is not one of {', '.join(AUGMENTATIONS)}")
    cfg = TrainConfig(
        batch_size=batch,
        learning_rate=peak,
        warmup_epochs=warmup,
        epochs=epochs,
        label_smoothing=ls,
        ema=ema,
        weight_decay=wd,
        augment=aug != "none",
        seed=seed,
    )
    splits = idx.read_folder(IDX_DIR)
    train, test = splits["train"], splits["test"]
    source = data.cached(
        tf.data.Dataset.from_tensor_slices((train.images[..., None], train.labels.astype("int64")))
    )
    x_test, y_test = test.images[..., None], test.labels
    per_epoch = data.steps_per_epoch(len(train.labels), batch)
    model, optimizer, average = build_recipe(cfg, per_epoch, epochs * per_epoch)
    strategy = tf.distribute.get_strategy()
    train_steps = make_train_steps(
        model, optimizer, strategy, batch, label_smoothing=ls, average=average, augment=cfg.augment
    )
    keep = AUGMENTATIONS[aug]
    if keep is not None:
        keep = tuple(k * aug_scale for k in keep)

    def batches(epoch: int) -> tf.data.Dataset:
        ds = data.train_batches(
            source, size=len(train.labels), global_batch=batch, seed=seed, epoch=epoch,
            augment=cfg.augment, distort=epoch < epochs - clean,
        )  # fmt: skip
        if keep is not None:
            ds = ds.map(lambda images, labels, params: (images, labels, params * keep))
        return ds

    @tf.function
    def predict(x):
        return tf.argmax(model(x, training=False), -1)

    def accuracy() -> float:
        right = sum(
            int(np.sum(predict(x_test[i : i + 1000]).numpy() == y_test[i : i + 1000]))
            for i in range(0, len(x_test), 1000)
        )
        return right / len(x_test)

    def averaged_accuracy() -> float | None:
        if average is None:
            return None
        with average.applied():
            return accuracy()

    out = {"name": name, "config": dict(batch=batch, peak=peak, warmup=warmup, ls=ls, ema=ema,
                                        wd=wd, aug=aug, epochs=epochs, seed=seed,
                                        aug_scale=aug_scale, clean=clean),
           "evaluations": []}  # fmt: skip
    start = time.time()
    # Global steps to evaluate at (fractions of epochs from the run's start), and every
    # epoch's end; `until` (epochs) stops the run early, with the schedule unchanged.
    last = round((until if until is not None else epochs) * per_epoch)
    probes = {round(f * per_epoch): f for f in at}
    probes.update({e * per_epoch: e for e in range(1, epochs + 1)})
    for epoch in range(epochs):
        if epoch * per_epoch >= last:
            break
        iterator = iter(batches(epoch))
        base, done = epoch * per_epoch, 0
        stops = sorted(p - base for p in probes if base < p <= min(base + per_epoch, last))
        for stop in stops:
            while done < stop:
                n = min(STEPS_PER_CALL["cpu"], stop - done)
                train_steps(iterator, tf.constant(n))
                done += n
            row = (probes[base + stop], accuracy(), averaged_accuracy(),
                   round(time.time() - start, 1))  # fmt: skip
            out["evaluations"].append(row)
            print(name, row, flush=True)
    folder = Path("artifacts/probes")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    probe(sys.argv[1], **(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}))
