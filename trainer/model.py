"""The seed CNN, with pixel scaling inside the model so it takes raw 0-255 pixels.

Conv2D 64 3x3 relu -> Conv2D 32 3x3 relu -> MaxPool 2x2 -> Flatten -> Dense 10 softmax.
Scaling lives in the graph, so training and serving can never disagree about it.
"""

from __future__ import annotations

import keras

from digits.contract import IMAGE_SHAPE, NUM_CLASSES, PIXELS


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
