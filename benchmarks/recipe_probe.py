"""Recipe probes: what each training knob buys, on real MNIST, with the seed network.

    .venv/bin/python -m benchmarks.recipe_probe NAME '{"batch": 32, "peak": 1e-3, "aug": "affine"}'

A plain loop (one optimizer step per Python call, NumPy batches) that evaluates the test
accuracy at fractions of the first epoch and after every epoch, with the raw weights and
with their moving average; it prints one line per evaluation and writes
artifacts/probes/NAME.json. Accuracy per epoch does not depend on the machine's speed, so
probes can run side by side on a busy machine; wall times here are not comparable (the
trainer and `make bench` measure those). Knobs: batch, peak (learning rate after a linear
warmup of `warmup` epochs, then cosine to 0), ls (label smoothing), ema (decay, 0: off),
wd (AdamW decoupled weight decay, 0: Adam), aug ("none", "shift": ±2 px, "affine": the
trainer's rotation/scale/shift), epochs, seed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from digits import idx  # noqa: E402
from trainer.data import augment_images  # noqa: E402
from trainer.model import build_model  # noqa: E402

IDX_DIR = Path(os.environ.get("MNIST_IDX_DIR") or "../shared/data/mnist")
PROBES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8)  # fractions of the first epoch


def shift_only(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    n = tf.shape(images)[0]
    offsets = tf.random.stateless_uniform([n, 2], seed=seed, minval=-2, maxval=3, dtype=tf.int32)
    offsets = tf.cast(offsets, tf.float32)
    ones, zeros = tf.ones([n, 1]), tf.zeros([n, 1])
    transforms = tf.concat(
        [ones, zeros, -offsets[:, :1], zeros, ones, -offsets[:, 1:], zeros, zeros], axis=1
    )
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )


def probe(name, batch=32, peak=1e-3, warmup=0.1, epochs=10, ls=0.1, ema=0.999, wd=0.0,
          aug="affine", seed=42):  # fmt: skip
    read = {k: idx.read_images(IDX_DIR / f"{k}-images-idx3-ubyte.gz") for k in ("train", "t10k")}
    x_train, x_test = read["train"][..., None], read["t10k"][..., None]
    y_train = idx.read_labels(IDX_DIR / "train-labels-idx1-ubyte.gz").astype(np.int64)
    y_test = idx.read_labels(IDX_DIR / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    keras.utils.set_random_seed(seed)
    model = build_model(seed=seed)
    per_epoch = len(x_train) // batch
    total, warm = epochs * per_epoch, int(warmup * per_epoch)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, total - warm, warmup_target=peak, warmup_steps=warm
    )
    opt = (
        keras.optimizers.AdamW(schedule, weight_decay=wd) if wd else keras.optimizers.Adam(schedule)
    )
    opt.build(model.trainable_variables)
    average = [tf.Variable(v) for v in model.trainable_variables]
    updates = tf.Variable(0.0)
    distort = {"none": lambda x, s: x, "shift": shift_only, "affine": augment_images}[aug]

    @tf.function
    def step(x, y, s):
        x = distort(x, s)
        with tf.GradientTape() as tape:
            p = model(x, training=True)
            loss = tf.reduce_mean(
                keras.losses.categorical_crossentropy(tf.one_hot(y, 10), p, label_smoothing=ls)
            )
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        if ema:
            d = tf.minimum(ema, (1 + updates) / (10 + updates))
            for a, v in zip(average, model.trainable_variables, strict=True):
                a.assign(d * a + (1 - d) * v)
            updates.assign_add(1.0)

    @tf.function
    def predict(x):
        return tf.argmax(model(x, training=False), -1)

    def accuracy(averaged: bool) -> float:
        if averaged:
            saved = [v.numpy() for v in model.trainable_variables]
            for a, v in zip(average, model.trainable_variables, strict=True):
                v.assign(a)
        right = sum(
            int(np.sum(predict(x_test[i : i + 1000]).numpy() == y_test[i : i + 1000]))
            for i in range(0, len(x_test), 1000)
        )
        if averaged:
            for s, v in zip(saved, model.trainable_variables, strict=True):
                v.assign(s)
        return right / len(x_test)

    out = {"name": name, "config": dict(batch=batch, peak=peak, warmup=warmup, ls=ls, ema=ema,
                                        wd=wd, aug=aug, epochs=epochs, seed=seed),
           "evaluations": []}  # fmt: skip
    rng, steps, start = np.random.default_rng(seed), 0, time.time()
    probes = {int(f * per_epoch): f for f in PROBES}
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        for b in range(per_epoch):
            i = order[b * batch : (b + 1) * batch]
            step(x_train[i], y_train[i], tf.constant([seed, steps], tf.int64))
            steps += 1
            at = probes.get(b + 1) if epoch == 0 else None
            if at is not None or b + 1 == per_epoch:
                row = (at or epoch + 1, accuracy(False), accuracy(True) if ema else None)
                out["evaluations"].append(row + (round(time.time() - start, 1),))
                print(name, out["evaluations"][-1], flush=True)
    folder = Path("artifacts/probes")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    probe(sys.argv[1], **(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}))
