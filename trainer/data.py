"""MNIST from TFDS into tf.data pipelines, and the offline import from idx files.

Pipeline order follows the tf.data performance guide: read -> cache -> shuffle ->
batch -> (augment, vectorized) -> prefetch. Batches hold the *global* batch; the
strategy splits them across replicas.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf
import tensorflow_datasets as tfds

from digits import idx
from trainer.errors import UserError

log = logging.getLogger(__name__)

NAME = "mnist"
VERSION = "3.0.1"  # the version tfds.load("mnist") reads in tensorflow-datasets 4.9.x
DOWNLOAD_HOST = "storage.googleapis.com"  # where TFDS fetches MNIST from
MAX_SHIFT = 2.0  # pixels, for --augment
MAX_ROTATION = 10.0  # degrees
MAX_SCALE = 0.1  # ±10 %
READ_BATCH = 1024  # examples parsed and decoded at once (read_split)


@dataclass(frozen=True)
class Splits:
    """Unbatched (image uint8 [28,28,1], label int64) datasets and their sizes."""

    train: tf.data.Dataset
    test: tf.data.Dataset
    train_size: int
    test_size: int


def is_prepared(data_dir: str | Path) -> bool:
    return tfds.builder(NAME, data_dir=str(data_dir)).is_prepared()


def _features() -> tfds.features.FeaturesDict:
    # The same features as TFDS's own `mnist` builder, so tfds.load reads the result.
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
        }
    )


def import_idx(idx_dir: str | Path, data_dir: str | Path) -> dict[str, int] | None:
    """Validate the four idx files and write them as the TFDS `mnist` dataset.

    TFDS builds into a temporary folder and renames it into place, so an interrupted
    import leaves no half-prepared dataset behind. Returns the split sizes, or None
    when the dataset is already there (importing again is a no-op, like `make`).
    """
    if is_prepared(data_dir):
        log.info(
            "TFDS '%s' is already prepared in %s; nothing to import (delete %s to import again)",
            NAME,
            data_dir,
            Path(data_dir) / NAME,
        )
        return None
    if not Path(idx_dir).is_dir():
        raise UserError(f"--idx-dir {str(idx_dir)!r} is not a directory.")
    try:
        splits = idx.read_folder(idx_dir)  # every file validated before anything is written
    except idx.IdxError as e:
        raise UserError(str(e)) from None
    for name, split in splits.items():
        expected = idx.PUBLISHED_COUNTS[name]
        note = (
            "byte-identical to the published MNIST files"
            if split.published
            else (
                f"NOT the published MNIST files ({len(split.labels):,} examples; MNIST has "
                f"{expected:,})"
            )
        )
        log.info("idx %s split: %s images, %s", name, f"{len(split.labels):,}", note)
    start = time.monotonic()
    tfds.dataset_builders.store_as_tfds_dataset(
        name=NAME,
        version=VERSION,
        features=_features(),
        split_datasets={
            name: tf.data.Dataset.from_tensor_slices(
                {"image": split.images[..., None], "label": split.labels.astype("int64")}
            )
            for name, split in splits.items()
        },
        data_dir=str(data_dir),
        description="MNIST imported from the original idx files (python -m trainer data import).",
        disable_shuffling=True,  # keep the idx order; the training pipeline shuffles
    )
    log.info("prepared TFDS '%s' in %s in %.0f s", NAME, data_dir, time.monotonic() - start)
    return {name: len(split.labels) for name, split in splits.items()}


def ensure_prepared(data_dir: str | Path, idx_dir: str | Path | None) -> None:
    """Make sure `tfds.load('mnist', data_dir=...)` can read without a download.

    With an idx dir, import from it; without one, let TFDS download (clusters with
    internet) and turn a failed download into one line that says how to fix it.
    """
    if is_prepared(data_dir):
        return
    if idx_dir is not None:
        log.info("TFDS '%s' is not prepared in %s; importing from %s", NAME, data_dir, idx_dir)
        import_idx(idx_dir, data_dir)
        return
    fix = (
        "Fix: import the four idx .gz files with `python -m trainer data import --idx-dir DIR` "
        "(or `make data IDX_DIR=DIR`, or set MNIST_IDX_DIR=DIR for `make train`)."
    )
    # TFDS retries a dead network for minutes; one quick probe answers first.
    try:
        socket.create_connection((DOWNLOAD_HOST, 443), timeout=5).close()
    except OSError as e:
        raise UserError(
            f"MNIST is not in {data_dir} and TFDS cannot download it ({DOWNLOAD_HOST} is "
            f"unreachable: {e}). {fix}"
        ) from None
    log.info("TFDS '%s' is not prepared in %s; downloading it with TFDS", NAME, data_dir)
    try:
        tfds.builder(NAME, data_dir=str(data_dir)).download_and_prepare()
    except Exception as e:  # noqa: BLE001 - any download failure has the same fix
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UserError(
            f"MNIST is not in {data_dir} and TFDS could not download it ({reason}). {fix}"
        ) from None


def prepare(data_dir: str | Path, idx_dir: str | Path | None, *, is_chief: bool = True) -> None:
    """The chief imports/downloads; other workers wait for it (shared data volume)."""
    if is_chief:
        ensure_prepared(data_dir, idx_dir)
        return
    deadline = time.monotonic() + 1800
    while not is_prepared(data_dir):
        if time.monotonic() > deadline:
            raise UserError(f"MNIST never appeared in {data_dir}; is the chief running?")
        log.info("waiting for the chief to prepare MNIST in %s", data_dir)
        time.sleep(5)


def load(data_dir: str | Path) -> Splits:
    """Read the prepared dataset; never downloads."""
    builder = tfds.builder(NAME, data_dir=str(data_dir))
    if not builder.is_prepared():
        raise UserError(
            f"MNIST is not prepared in {data_dir}; run `python -m trainer data import "
            "--idx-dir DIR` first."
        )
    info = builder.info
    return Splits(  # every pipeline built on these inherits the option
        train=read_split(builder, "train").with_options(without_autotune()),
        test=read_split(builder, "test").with_options(without_autotune()),
        train_size=info.splits["train"].num_examples,
        test_size=info.splits["test"].num_examples,
    )


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> tf.data.Dataset:
    """A split's (image, label) examples in stored order: what `tfds.load(...,
    as_supervised=True, shuffle_files=False)` gives, read READ_BATCH at a time.

    Why not tfds.load: it parses and decodes one example at a time, 4.6 s for the 60,000
    training images on 2 cores, which every run waited for before its first step (and
    the test split before its first evaluation). The same files, parsed in batches and
    decoded by TFDS's own image feature, take 1.0 s, and give the same arrays in the same
    order (tests/test_data.py; docs/benchmarks.md). Anything but TFRecord files (TFDS's
    default, and what `data import` writes) goes through TFDS's reader as before.
    """
    info = builder.info
    if info.file_format != tfds.core.FileFormat.TFRECORD:
        return builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    spec = {
        name: tf.io.FixedLenFeature(tensor.shape, tensor.tf_dtype)
        for name, tensor in info.features.get_serialized_info().items()
    }
    image = info.features["image"]

    def decode(records: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        examples = tf.io.parse_example(records, spec)
        # What TFDS's decode_batch_example does (it also reads the deprecated
        # FeatureConnector.dtype, a warning in every run); labels are stored as decoded.
        images = tf.map_fn(
            image.decode_example,
            examples["image"],
            fn_output_signature=tf.TensorSpec(image.shape, image.tf_dtype),
            parallel_iterations=10,
        )
        return images, examples["label"]

    files = [str(path) for path in info.splits[split].filepaths]
    return (
        tf.data.TFRecordDataset(files)
        .batch(READ_BATCH)
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        .unbatch()
    )


def steps_per_epoch(train_size: int, global_batch: int) -> int:
    """Full global batches per epoch (the remainder is dropped: equal batches keep every
    step's loss scaling exact under any strategy)."""
    steps = train_size // global_batch
    if steps == 0:
        raise UserError(
            f"--batch-size {global_batch} is larger than the {train_size} training images."
        )
    return steps


def without_autotune() -> tf.data.Options:
    """Options that turn tf.data's autotuning thread off, for every pipeline of a run.

    Why: deleting an iterator (every epoch's end) joins that thread, and the thread can
    miss the cancellation's wake-up and sleep out its optimisation period, which doubles up
    to 60 s: `Model::OptimizeLoop` (tensorflow/core/framework/model.cc) re-checks
    `IsCancelled()`, which tsl's `CancellationManager::StartCancelWithStatus`
    (xla/tsl/framework/cancellation.cc) sets only after it has run the wake-up callback.
    Measured under `make bench`: 58, 0, 55 and 8 s lost at the four epoch ends of one run,
    the main thread in `~RootDataset::Iterator` (py-spy --native); 0.00 s at each with
    this. Our pipelines are light (decoded once into a cache, parameters drawn per batch):
    without the tuner, AUTOTUNE means one parallel call per core and prefetch's own buffer
    growth, and the input pipeline still feeds the step as fast as in-memory batches do
    (docs/benchmarks.md).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def _options(multi_worker: bool) -> tf.data.Options:
    options = without_autotune()
    options.deterministic = True
    # TFDS writes MNIST as a single file per split, so FILE sharding would leave
    # workers without data; DATA sharding gives each worker every n-th batch.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
        if multi_worker
        else tf.data.experimental.AutoShardPolicy.OFF
    )
    return options


def augment_params(n: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """float32 [n, 4] in [-1, 1): each image's rotation, scale, and x and y shift, as
    fractions of their maxima. Cheap: the pipeline draws these; the images are
    transformed in the training step (`apply_augmentation`)."""
    return tf.random.stateless_uniform([n, 4], seed=seed, minval=-1.0, maxval=1.0)


def apply_augmentation(images: tf.Tensor, params: tf.Tensor) -> tf.Tensor:
    """Distort each image of a batch by its own affine transform about the centre:
    rotation within ±MAX_ROTATION degrees, scaling within ±MAX_SCALE, and a shift within
    ±MAX_SHIFT pixels on each axis, as handwriting varies (the classic MNIST
    augmentations). One vectorized op per batch (no per-image map), bilinear, zero fill.
    """
    angle = params[:, 0] * MAX_ROTATION * math.pi / 180
    scale = 1.0 + params[:, 1] * MAX_SCALE
    dx, dy = params[:, 2] * MAX_SHIFT, params[:, 3] * MAX_SHIFT
    # Projective transform rows map output to input coordinates: input = A (out - c) + c - d.
    a0, a1 = tf.cos(angle) / scale, -tf.sin(angle) / scale
    b0, b1 = tf.sin(angle) / scale, tf.cos(angle) / scale
    c = (tf.cast(tf.shape(images)[1], tf.float32) - 1) / 2
    zeros = tf.zeros_like(a0)
    transforms = tf.stack(
        [a0, a1, c - (a0 + a1) * c - dx, b0, b1, c - (b0 + b1) * c - dy, zeros, zeros], axis=1
    )
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def augment_images(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """`apply_augmentation` with parameters drawn from `seed`."""
    return apply_augmentation(images, augment_params(tf.shape(images)[0], seed))


def cached(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Keep decoded MNIST in memory (47 MB) so later epochs skip decoding."""
    return ds.cache()


def train_batches(
    ds: tf.data.Dataset,
    *,
    size: int,
    global_batch: int,
    seed: int,
    epoch: int,
    skip_batches: int = 0,
    augment: bool,
    distort: bool = True,
    multi_worker: bool = False,
) -> tf.data.Dataset:
    """One epoch of shuffled global batches, reproducible from (seed, epoch).

    A fixed order per epoch is what lets a resumed run skip exactly the batches it
    already trained on. `ds` should be the cached training split. With `augment`, each
    element is (images, labels, augmentation parameters): the pipeline only draws the
    parameters, and the training step transforms the images (`apply_augmentation`), on
    the accelerator where there is one, so the input pipeline stays light on the host.
    With `distort` False (a --clean-epochs epoch) the parameters are all zero: the
    identity transform, which feeds the same compiled training step the images unchanged.
    """
    ds = ds.shuffle(size, seed=seed * 1_000_003 + epoch, reshuffle_each_iteration=False)
    # Equal-size batches keep every step's loss scaling exact under any strategy.
    ds = ds.batch(global_batch, drop_remainder=True)
    if augment:
        # Pair each batch with its own seed *before* skipping, so a resumed epoch
        # shifts its remaining batches exactly as the uninterrupted one would have.
        seeds = tf.data.Dataset.random(seed=seed * 1_000_003 + epoch).batch(2)
        ds = (
            tf.data.Dataset.zip((ds, seeds))
            .skip(skip_batches)
            .map(
                lambda batch, s: (
                    *batch,
                    augment_params(tf.shape(batch[1])[0], s) * (1.0 if distort else 0.0),
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        )
    else:
        ds = ds.skip(skip_batches)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(multi_worker))


def eval_batches(
    ds: tf.data.Dataset, *, global_batch: int, multi_worker: bool = False
) -> tf.data.Dataset:
    """The test split in order; the last, partial batch is kept (metrics are summed)."""
    return ds.batch(global_batch).prefetch(tf.data.AUTOTUNE).with_options(_options(multi_worker))
