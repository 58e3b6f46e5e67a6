"""Atomic, versioned SavedModel export in TF Serving's layout.

EXPORT_DIR/<model_name>/<version>/ where <version> is one above the highest numeric
folder present. Two signatures: `serving_default` (uint8 pixels) and `predict_image`
(PNG/JPEG bytes, decoded and MNIST-normalised in the graph), both returning
`probabilities` and `classes`, and `predict_image` also `image_status`, its answer per
image (digits/contract.py); warmup records for both go in `assets.extra/`.

Everything is written into a non-numeric `.tmp-*` folder (TF Serving's poller ignores
non-numeric names) and checked there, then renamed into place, so the server never
sees a half-written version (tensorflow/serving#1086, #631). The process holds a lock
(`.tmp-<id>.lock`) while it stages, so that an export killed midway (SIGKILL) leaves a
staging folder that the next export recognises as stale and removes; another live
export's folder is never touched, nor anything else that is not a `.tmp-<32 hex>` folder
(the quality gate's `held-back-*` folders stay).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from digits import contract
from digits.contract import IMAGE, IMAGE_SHAPE, NUM_CLASSES, PIXELS, versions
from trainer import outputs, preprocess, warmup
from trainer.errors import RuntimeFailure
from trainer.jobdir import OwnerLock
from trainer.outputs import HELD_BACK_PREFIX, STAGING, SUMMARY_FILE

log = logging.getLogger(__name__)

# The serving contract (digits/contract.py) as TensorFlow specs: each signature's one
# input, keyed by signature name. Endpoints and warmup records both use these.
INPUT_SPECS = {
    sig.name: tf.TensorSpec(sig.shape, tf.as_dtype(sig.dtype), name=sig.input)
    for sig in contract.SIGNATURES
}
EXPORT_TOLERANCE = 1e-5  # largest probability difference between the export and Keras


def _serving_outputs(model: keras.Model, images: tf.Tensor) -> dict[str, tf.Tensor]:
    # TF Serving does not check request shapes against the signature
    # (tensorflow/serving#1527), so the graph does.
    images = tf.ensure_shape(images, (None, *IMAGE_SHAPE))
    # An empty batch would reach oneDNN's conv kernel, which rejects it; answer it here.
    probabilities = tf.cond(
        tf.shape(images)[0] > 0,
        lambda: model(tf.cast(images, tf.float32), training=False),
        lambda: tf.zeros((0, NUM_CLASSES), tf.float32),
    )
    return {
        contract.PROBABILITIES: probabilities,
        contract.CLASSES: tf.argmax(probabilities, axis=-1, output_type=tf.int64),
    }


def _image_outputs(model: keras.Model, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
    """predict_image: the classification of every image the preprocessing took, and for
    each refused one contract.INVALID_CLASS, zero probabilities and the reason."""
    pixels, status = preprocess.batch_to_mnist(image_bytes)
    answer = _serving_outputs(model, pixels)
    taken = tf.equal(status, contract.IMAGE_OK)
    return {
        contract.PROBABILITIES: tf.where(taken[:, None], answer[contract.PROBABILITIES], 0.0),
        contract.CLASSES: tf.where(
            taken, answer[contract.CLASSES], tf.constant(contract.INVALID_CLASS, tf.int64)
        ),
        contract.IMAGE_STATUS: status,
    }


def _write_saved_model(model: keras.Model, path: Path) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=PIXELS.name,
        fn=lambda images: _serving_outputs(model, images),
        input_signature=[INPUT_SPECS[PIXELS.name]],
    )
    archive.add_endpoint(
        name=IMAGE.name,
        fn=lambda image_bytes: _image_outputs(model, image_bytes),
        input_signature=[INPUT_SPECS[IMAGE.name]],
    )
    archive.write_out(str(path), verbose=False)


def check_export(path: Path, model: keras.Model, num: int = 32, seed: int = 0) -> float:
    """Load the SavedModel with TensorFlow and compare it with the Keras model.

    Returns the largest absolute difference in probabilities; raises if the outputs
    disagree, or are not finite (NaN > tolerance is False: checked first), so a broken
    export never becomes a version.
    """
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num, *IMAGE_SHAPE), dtype=np.uint8)
    loaded = tf.saved_model.load(str(path))
    served = loaded.signatures[PIXELS.name](**{PIXELS.input: tf.constant(images)})
    # A direct call, not model.predict: under MultiWorkerMirroredStrategy predict is a
    # collective op, and the other workers may already have finished.
    expected = model(tf.constant(images, tf.float32), training=False).numpy()
    if not np.isfinite(served[contract.PROBABILITIES].numpy()).all():
        raise RuntimeFailure(
            "the exported model answers NaN or infinite probabilities (its weights are not "
            "finite: the training diverged); not publishing it"
        )
    diff = float(np.max(np.abs(served[contract.PROBABILITIES].numpy() - expected)))
    # Two graphs may pick different kernels (oneDNN chooses by shape): probabilities agree
    # to round-off, not bit for bit, so a class may flip only where the top two are tied
    # within that tolerance (random-pixel inputs can come close).
    top2 = np.sort(expected, axis=-1)[:, -2:]
    flipped = (served[contract.CLASSES].numpy() != expected.argmax(-1)) & (
        top2[:, 1] - top2[:, 0] > 2 * EXPORT_TOLERANCE
    )
    if diff > EXPORT_TOLERANCE or flipped.any():
        raise RuntimeFailure(f"exported model disagrees with the Keras model (max diff {diff})")
    warmup.replay(path, loaded)  # a bad warmup record would fail TF Serving's load
    return diff


def export_model(
    model: keras.Model,
    base_dir: str | Path,
    *,
    summary: dict[str, Any] | None = None,
    is_chief: bool = True,
    publish: bool = True,
    key: str | None = None,
) -> Path | None:
    """Write the next version under `base_dir`; returns its path (None on non-chiefs).

    With a `key` (jobdir.JobDir.export_key), a version (or held-back folder) whose
    training_summary.json carries the same key is this very export, published by an
    earlier process of the run that was killed before it could record that: it is
    returned and nothing is published twice.

    With `publish=False` (the quality gate said no) the verified model is renamed to a
    non-numeric `held-back-<time>` folder instead, which TF Serving ignores, and that
    path is returned. Non-chief workers of a multi-worker job write to a scratch folder
    and delete it: saving may need every worker, but only the chief's copy is kept.
    """
    base_dir = Path(base_dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(base_dir)
    staging = base_dir / f".tmp-{uuid.uuid4().hex}"
    lock = _staging_lock(staging)
    lock.acquire()  # a fresh name: always ours; taken before the folder exists
    try:
        _write_saved_model(model, staging)
        outputs.emit("export", phase="staged")
        if not is_chief:
            return None
        earlier = _exported_before(base_dir, key, publish)
        if earlier is not None:  # checked after writing: every worker writes, or none
            message = (
                f"{earlier} already holds this run's export (published before the trainer "
                "was killed); not exporting it again"
            )
            log.warning(message)
            outputs.emit("recovered", message=message)
            return earlier
        warmup.write(staging, base_dir.name, INPUT_SPECS)
        diff = check_export(staging, model)
        log.info("export verified: matches the Keras model (max diff %.1e); warmup replays", diff)
        outputs.emit("export", phase="verified")
        if summary is not None:
            (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        if not publish:
            stamp = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{staging.name[5:13]}"
            held = base_dir / f"{HELD_BACK_PREFIX}{stamp}"
            os.rename(staging, held)
            return held
        return _publish(staging, base_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        lock.release()  # after the folder is gone or renamed: see remove_stale_staging


def _exported_before(base_dir: Path, key: str | None, publish: bool) -> Path | None:
    """The version (publish) or held-back folder (not) whose summary carries `key`."""
    if key is None:
        return None
    if publish:
        candidates = [base_dir / str(v) for v in versions(base_dir)]
    else:
        candidates = sorted(base_dir.glob(f"{HELD_BACK_PREFIX}*"))
    for path in reversed(candidates):
        try:
            if json.loads((path / SUMMARY_FILE).read_text()).get("export_key") == key:
                return path
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _staging_lock(staging: Path) -> OwnerLock:
    return OwnerLock(staging.with_name(staging.name + ".lock"))


def remove_stale_staging(base_dir: Path) -> list[str]:
    """Remove the staging folders (and lock files) of exports whose process is gone.

    An exporter takes its lock before it creates its folder and lets go only once the
    folder is renamed or deleted, so a folder whose lock can be taken (or that has no
    lock file: an export from before locks) belongs to no live process.
    """
    removed = []
    for path in sorted(base_dir.iterdir()):
        name = path.name.removesuffix(".lock")
        if not STAGING.match(name) or (path.name != name and (base_dir / name).exists()):
            continue  # not ours, or a lock file whose folder is handled on its own
        lock = _staging_lock(base_dir / name)
        if lock.acquire() is not True:
            continue  # a live export, maybe another worker's or another run's
        try:
            if (base_dir / name).exists():
                shutil.rmtree(base_dir / name, ignore_errors=True)
                removed.append(name)
        finally:
            lock.release()
    if removed:
        message = (
            f"removed {len(removed)} unfinished export(s) of a killed run from {base_dir}: "
            + ", ".join(removed)
        )
        log.warning(message)
        outputs.emit("recovered", message=message)
    return removed


def _publish(staging: Path, base_dir: Path) -> Path:
    """Rename the staged folder to the next free version number.

    rename(2) is atomic and fails on a non-empty target, so two concurrent exports
    can never share a version: the loser retries with the next number.
    """
    _fsync_tree(staging)
    version = (versions(base_dir) or [0])[-1] + 1
    while True:
        target = base_dir / str(version)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.exists():
                raise
            version += 1
            continue
        _fsync_dir(base_dir)
        return target


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
