"""Turn a PNG/JPEG of a digit, any size, into MNIST's 28x28 layout, inside the graph.

MNIST's own recipe (LeCun et al.): the digit is scaled, keeping its aspect ratio, to
fit a 20x20 box, then placed in the 28x28 field so that its centre of mass is the
centre. Photos and scans are usually dark ink on light paper, so those are inverted
to MNIST's light-on-dark first. Everything is TF ops (no Python control flow), since
Keras export traces endpoints with autograph off.
"""

from __future__ import annotations

import tensorflow as tf

SIZE = 28
BOX = 20  # MNIST digits fit a 20x20 box inside the 28x28 field
INK = 0.2  # a pixel brighter than this (after background removal) is part of the digit


def _bounds(mask_1d: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """First and one-past-last index where mask is true; the whole range if none."""
    n = tf.shape(mask_1d)[0]
    idx = tf.range(n)
    lo = tf.reduce_min(tf.where(mask_1d, idx, n))
    hi = tf.reduce_max(tf.where(mask_1d, idx, -1)) + 1
    empty = hi <= lo
    return tf.where(empty, 0, lo), tf.where(empty, n, hi)


def to_mnist(image_bytes: tf.Tensor) -> tf.Tensor:
    """One encoded image (scalar string) -> uint8 [28, 28, 1], white digit on black."""
    image = tf.io.decode_image(image_bytes, channels=1, expand_animations=False)
    image = tf.ensure_shape(image, [None, None, 1])
    x = tf.image.convert_image_dtype(image, tf.float32)[..., 0]  # [h, w] in [0, 1]

    # Background = the border's median-ish level (mean of the border pixels).
    border = tf.concat([x[0, :], x[-1, :], x[:, 0], x[:, -1]], axis=0)
    background = tf.reduce_mean(border)
    dark_on_light = background > 0.5
    x = tf.where(dark_on_light, 1.0 - x, x)
    background = tf.where(dark_on_light, 1.0 - background, background)
    x = tf.clip_by_value((x - background) / tf.maximum(1.0 - background, 1e-3), 0.0, 1.0)
    x = x / tf.maximum(tf.reduce_max(x), 1e-3)  # full contrast, like MNIST's 0-255 range

    # Crop to the digit's bounding box.
    ink = x > INK
    top, bottom = _bounds(tf.reduce_any(ink, axis=1))
    left, right = _bounds(tf.reduce_any(ink, axis=0))
    x = x[top:bottom, left:right]

    # Pad to a square (keeps the aspect ratio), then scale into the 20x20 box.
    h, w = tf.shape(x)[0], tf.shape(x)[1]
    side = tf.maximum(h, w)
    x = tf.pad(
        x,
        [
            [(side - h) // 2, side - h - (side - h) // 2],
            [(side - w) // 2, side - w - (side - w) // 2],
        ],
    )
    x = tf.image.resize(x[..., None], [BOX, BOX], method="area", antialias=True)[..., 0]

    # Place in the 28x28 field with the centre of mass at the centre. The 4-pixel
    # margin is empty, so a roll of at most 4 moves the digit without wrapping it.
    margin = (SIZE - BOX) // 2
    x = tf.pad(x, [[margin, margin], [margin, margin]])
    total = tf.maximum(tf.reduce_sum(x), 1e-6)
    coords = tf.range(SIZE, dtype=tf.float32)
    cy = tf.reduce_sum(tf.reduce_sum(x, axis=1) * coords) / total
    cx = tf.reduce_sum(tf.reduce_sum(x, axis=0) * coords) / total
    centre = SIZE / 2  # where MNIST puts it: mean centre of mass over its digits is (14.0, 14.0)
    shift = tf.cast(
        tf.round(tf.clip_by_value(tf.stack([centre - cy, centre - cx]), -margin, margin)), tf.int32
    )
    x = tf.roll(x, shift=shift, axis=[0, 1])
    return tf.cast(tf.round(x * 255.0), tf.uint8)[..., None]


def batch_to_mnist(image_bytes: tf.Tensor) -> tf.Tensor:
    """[batch] of encoded images -> uint8 [batch, 28, 28, 1]."""
    return tf.map_fn(
        to_mnist,
        image_bytes,
        fn_output_signature=tf.TensorSpec([SIZE, SIZE, 1], tf.uint8),
    )
