"""Turn a PNG/JPEG of a digit, any size, into MNIST's 28x28 layout, inside the graph.

MNIST's own recipe (LeCun et al.): the digit is scaled, keeping its aspect ratio, to
fit a 20x20 box, then placed in the 28x28 field so that its centre of mass is the
centre. Photos and scans are usually dark ink on light paper, so those are inverted
to MNIST's light-on-dark first. Everything is TF ops (no Python control flow), since
Keras export traces endpoints with autograph off.

The bytes come from anyone who can reach the server, so the header is read before
anything is decoded (`header_status`): only PNG and JPEG are taken, and only up to
MAX_IMAGE_SIDE on each side, so a 40000x40000 PNG of 190 KB is refused without
allocating the 1.6 GB its pixels would take, and without a decoder ever running on it.
GIF, BMP and WebP, which tf.io.decode_image also reads, are refused: the contract
(digits/contract.py) is PNG/JPEG, and a GIF's header does not bound it (TensorFlow sizes
the image by its largest frame: a GIF whose header says 16x16 decoded to 8000x8000).
16-bit PNGs are scaled to 8 bits; PNGs with transparency and CMYK JPEGs are decoded as
colour and made grey (see `_decode`).

A refusal is an answer for that image, not an error (`batch_to_mnist`): TF Serving's
batching merges concurrent requests into one graph run and copies a graph error to every
request in it (batching_session.cc), so an error raised for one client's image would
fail other clients' requests. Each image gets a status, contract.IMAGE_OK or the reason;
bytes that pass the header and then break the decoder (a cut or corrupt PNG/JPEG, or a
JPEG whose markers libjpeg cannot read) are caught per image by tf.data's
`ignore_errors`, the one way a graph can survive a failing op, and marked
contract.IMAGE_UNDECODABLE.
"""

from __future__ import annotations

import tensorflow as tf

from digits.contract import (
    IMAGE_OK,
    IMAGE_UNDECODABLE,
    JPEG_MAGIC,
    MAX_IMAGE_SIDE,
    NOT_AN_IMAGE,
    PNG_MAGIC,
)

SIZE = 28
BOX = 20  # MNIST digits fit a 20x20 box inside the 28x28 field
INK = 0.2  # a pixel brighter than this (after background removal) is part of the digit

# Hostile input. MAX_IMAGE_SIDE (digits/contract.py) takes a 12-megapixel phone photo. An image
# at the limit takes ~150 MB of working memory while it is normalised (~370 MB with
# alpha), and a batch works on PARALLEL_IMAGES at once (batch_to_mnist's num_parallel_calls):
# measured with tf.map_fn, 10 at once took a batch of ten 4096x4096 RGBA PNGs (5 MB) to
# +2.6 GB on 16 threads; 2 at once, +0.4 GB, for ~1.5x the time on batches of small images.
PARALLEL_IMAGES = 2
_HEADER = 32  # bytes read for the checks
_PNG_IHDR_END = 29  # signature, chunk length and type, then IHDR's 13 bytes
_PNG_ALPHA_TYPES = (4, 6)  # IHDR colour types grey+alpha and RGBA (tRNS adds alpha to others)
_JPEG_CMYK = 4  # colour components of a CMYK (Adobe) JPEG


def _bounds(mask_1d: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """First and one-past-last index where mask is true; the whole range if none."""
    n = tf.shape(mask_1d)[0]
    idx = tf.range(n)
    lo = tf.reduce_min(tf.where(mask_1d, idx, n))
    hi = tf.reduce_max(tf.where(mask_1d, idx, -1)) + 1
    empty = hi <= lo
    return tf.where(empty, 0, lo), tf.where(empty, n, hi)


def read_header(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
    """What one encoded image's header says, read without decoding it.

    Keys: `known` (a PNG or JPEG), `width`, `height`, `alpha` (a PNG with an alpha
    channel or a tRNS transparency chunk), `cmyk` (a four-component JPEG). libjpeg
    reads a JPEG's markers up to the first scan (tf.image.extract_jpeg_shape), which
    fails on a header cut short.
    """
    head = tf.strings.substr(image_bytes, 0, _HEADER)  # shorter if the bytes are
    head = tf.strings.substr(tf.strings.join([head, b"\0" * _HEADER]), 0, _HEADER)
    values = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)
    is_png = (
        (tf.strings.substr(head, 0, 8) == PNG_MAGIC)
        & (tf.strings.substr(head, 12, 4) == b"IHDR")
        & (tf.strings.length(image_bytes) >= _PNG_IHDR_END)  # cut inside IHDR: no size to read
    )
    is_jpeg = tf.strings.substr(head, 0, 3) == JPEG_MAGIC
    jpeg = tf.cond(
        is_jpeg,
        lambda: tf.image.extract_jpeg_shape(image_bytes, output_type=tf.int64),  # h, w, components
        lambda: tf.zeros([3], tf.int64),
    )
    big_endian = tf.constant([2**24, 2**16, 2**8, 1], tf.int64)
    alpha_type = is_png & tf.reduce_any(values[25] == _PNG_ALPHA_TYPES)
    alpha = tf.cond(  # \C: any byte, even outside UTF-8; a false hit in pixel data is harmless
        is_png & ~alpha_type,
        lambda: tf.strings.regex_full_match(image_bytes, r"\C*tRNS\C*"),
        lambda: alpha_type,
    )
    return {
        "known": is_png | is_jpeg,
        "width": tf.where(is_png, tf.reduce_sum(values[16:20] * big_endian), jpeg[1]),
        "height": tf.where(is_png, tf.reduce_sum(values[20:24] * big_endian), jpeg[0]),
        "alpha": alpha,
        "cmyk": is_jpeg & (jpeg[2] == _JPEG_CMYK),
    }


def header_status(image_bytes: tf.Tensor, header: dict[str, tf.Tensor]) -> tf.Tensor:
    """contract.IMAGE_OK when the header allows decoding, else why not (a string scalar):
    not a PNG or JPEG, no pixels, or a side over MAX_IMAGE_SIDE."""
    width, height = header["width"], header["height"]
    empty = (width < 1) | (height < 1)
    too_big = (width > MAX_IMAGE_SIDE) | (height > MAX_IMAGE_SIDE)
    pixels = tf.strings.format("{}x{} pixels", (width, height))
    return tf.where(
        ~header["known"],
        tf.strings.format(NOT_AN_IMAGE + " ({} bytes)", tf.strings.length(image_bytes)),
        tf.where(
            empty,
            pixels + " (empty)",
            tf.where(
                too_big, pixels + f", over the {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} limit", IMAGE_OK
            ),
        ),
    )


def _decode(image_bytes: tf.Tensor, header: dict[str, tf.Tensor]) -> tf.Tensor:
    """A checked PNG/JPEG -> uint8 [h, w, 1], grey."""

    def opaque() -> tf.Tensor:  # 16-bit PNGs come out scaled to 8 bits
        image = tf.io.decode_image(image_bytes, channels=1, expand_animations=False)
        return tf.ensure_shape(image, [None, None, 1])

    def transparent() -> tf.Tensor:
        # channels=1 would drop the alpha and leave whatever colour transparent pixels
        # hold: usually black, so black ink on a transparent canvas vanished. What is
        # opaque is the drawing; transparent pixels take the opposite shade to it.
        rgba = tf.io.decode_png(image_bytes, channels=4)
        r, g, b, alpha = (tf.cast(rgba[..., i], tf.float32) / 255.0 for i in range(4))
        grey = 0.2989 * r + 0.587 * g + 0.114 * b  # tf.image.rgb_to_grayscale, one [h, w] at a time
        shade = tf.reduce_sum(alpha * grey) / tf.maximum(tf.reduce_sum(alpha), 1e-6)
        backdrop = tf.where(shade < 0.5, 1.0, 0.0)
        composite = alpha * grey + (1.0 - alpha) * backdrop
        return tf.image.convert_image_dtype(composite[..., None], tf.uint8)

    def cmyk() -> tf.Tensor:  # libjpeg cannot turn CMYK into grey; TensorFlow makes it RGB
        return tf.image.rgb_to_grayscale(tf.io.decode_jpeg(image_bytes, channels=3))

    return tf.cond(header["alpha"], transparent, lambda: tf.cond(header["cmyk"], cmyk, opaque))


def to_mnist(image_bytes: tf.Tensor, header: dict[str, tf.Tensor] | None = None) -> tf.Tensor:
    """One encoded image (scalar string) whose header passed `header_status` -> uint8
    [28, 28, 1], white digit on black."""
    header = read_header(image_bytes) if header is None else header
    image = _decode(image_bytes, header)
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


def _one_image(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(pixels, status) for one image; the decoder runs only when the header passed."""
    header = read_header(image_bytes)
    status = header_status(image_bytes, header)
    pixels = tf.cond(
        tf.equal(status, IMAGE_OK),
        lambda: to_mnist(image_bytes, header),
        lambda: tf.zeros([SIZE, SIZE, 1], tf.uint8),
    )
    return pixels, status


def _each_image(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(pixels, status) for every image at once (tf.map_fn); any op error fails it all."""
    return tf.map_fn(
        _one_image,
        image_bytes,
        fn_output_signature=(
            tf.TensorSpec([SIZE, SIZE, 1], tf.uint8),
            tf.TensorSpec([], tf.string),
        ),
        parallel_iterations=PARALLEL_IMAGES,
    )


def _image_by_image(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(pixels, status) image by image, each carrying its index; an image whose ops fail
    is dropped by `ignore_errors`, and the missing indices become IMAGE_UNDECODABLE."""
    n = tf.shape(image_bytes, out_type=tf.int64)[0]
    last = (tf.constant(-1, tf.int64), tf.zeros([SIZE, SIZE, 1], tf.uint8), tf.constant(IMAGE_OK))
    answered = (
        tf.data.Dataset.range(n)
        .map(
            lambda i: (i, *_one_image(tf.gather(image_bytes, i))),
            num_parallel_calls=PARALLEL_IMAGES,
            deterministic=False,  # the index travels with each image
        )
        .ignore_errors()
        .concatenate(tf.data.Dataset.from_tensors(last))  # never empty, for one batch of all
        .batch(n + 1)
    )
    index, pixels, status = answered.get_single_element()
    kept = index >= 0
    index = tf.boolean_mask(index, kept)[:, None]
    pixels = tf.scatter_nd(index, tf.boolean_mask(pixels, kept), tf.stack([n, SIZE, SIZE, 1]))
    status = tf.tensor_scatter_nd_update(
        tf.fill(tf.reshape(n, [1]), IMAGE_UNDECODABLE), index, tf.boolean_mask(status, kept)
    )
    return pixels, status


def batch_to_mnist(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """[n] encoded images -> (uint8 [n, 28, 28, 1], string [n] status), per image.

    A refused image's pixels are zeros and its status says why. Images are decoded
    PARALLEL_IMAGES at a time. All at once first (tf.map_fn, the fast way), inside a
    one-element dataset whose `ignore_errors` catches an error in any of them; only then
    again image by image, which costs a dataset step per image (~2x the time of the
    first way on small PNGs), so that only the broken ones are marked.
    """
    n = tf.shape(image_bytes)[0]
    missed = (
        tf.constant(False),
        tf.zeros(tf.stack([n, SIZE, SIZE, 1]), tf.uint8),
        tf.fill(tf.reshape(n, [1]), IMAGE_UNDECODABLE),
    )
    done, pixels, status = (
        tf.data.Dataset.from_tensors(image_bytes)
        .map(lambda batch: (tf.constant(True), *_each_image(batch)))
        .ignore_errors()
        .concatenate(tf.data.Dataset.from_tensors(missed))
        .take(1)
        .get_single_element()
    )
    return tf.cond(done, lambda: (pixels, status), lambda: _image_by_image(image_bytes))
