"""The training recipe: the seed network, and how it is optimized.

The seed CNN, with pixel scaling inside the model so it takes raw 0-255 pixels:
Conv2D 64 3x3 relu -> Conv2D 32 3x3 relu -> MaxPool 2x2 -> Flatten -> Dense 10 softmax.
Scaling lives in the graph, so training and serving can never disagree about it.

How it is trained (`build_recipe`): Adam with decoupled weight decay (AdamW), a linear
warmup to the peak learning rate and a cosine decay to 0; label smoothing on the
training loss (trainer/loop.py); an exponential moving average of the weights for
evaluation and export (trainer/ema.py); random affine distortions of the training
images (trainer/data.py), but for the last epoch (--clean-epochs). docs/benchmarks.md
lists what each of these bought.
"""

from __future__ import annotations

import keras

from digits.contract import IMAGE_SHAPE, NUM_CLASSES, PIXELS
from trainer.config import TrainConfig
from trainer.ema import WeightAverage


def build_model(seed: int | None = None, dtype: str | None = None) -> keras.Model:
    """The seed network. `dtype` is a Keras dtype policy for the hidden layers (e.g.
    "mixed_bfloat16": bfloat16 compute, float32 weights); the output stays float32."""
    init = keras.initializers.GlorotUniform
    return keras.Sequential(
        [
            keras.Input(shape=IMAGE_SHAPE, name=PIXELS.input),
            keras.layers.Rescaling(1.0 / 255, name="scale_0_1", dtype=dtype),
            keras.layers.Conv2D(
                64, 3, activation="relu", kernel_initializer=init(seed), dtype=dtype
            ),
            keras.layers.Conv2D(
                32,
                3,
                activation="relu",
                kernel_initializer=init(None if seed is None else seed + 1),
                dtype=dtype,
            ),
            keras.layers.MaxPooling2D(2, dtype=dtype),
            keras.layers.Flatten(dtype=dtype),
            keras.layers.Dense(
                NUM_CLASSES,
                activation="softmax",
                dtype="float32",  # probabilities stay float32 for TF Serving's JSON
                kernel_initializer=init(None if seed is None else seed + 2),
            ),
        ],
        name="mnist_cnn",
    )


def build_recipe(
    cfg: TrainConfig, steps_per_epoch: int, total_steps: int, dtype_policy: str | None = None
) -> tuple[keras.Model, keras.optimizers.Optimizer, WeightAverage | None]:
    """Model, optimizer (built: its slots exist before a restore) and weight average
    (None with --ema 0). `dtype_policy` is the device's (strategy.device_settings). Call
    under the strategy's scope, so that every variable is mirrored."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(seed=cfg.seed, dtype=dtype_policy)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, total_steps - warmup, warmup_target=cfg.learning_rate, warmup_steps=warmup
    )
    if cfg.weight_decay:
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
    if dtype_policy == "mixed_float16":  # float16 needs loss scaling; bfloat16 not
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    average = WeightAverage(model.trainable_variables, cfg.ema) if cfg.ema else None
    return model, optimizer, average


def float32_copy(model: keras.Model) -> keras.Model:
    """The same weights in an all-float32 model: what a mixed-precision run exports, so
    that serving on any device gets float32 in and out (tensorflow/tensorflow#45441)."""
    copy = build_model()
    copy.set_weights(model.get_weights())
    return copy


def summary_text(model: keras.Model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines)
