"""TF Serving warmup records: `assets.extra/tf_serving_warmup_requests` in each version.

TF Serving replays these requests when it loads a version, before marking it
AVAILABLE, so the first real request does not pay for graph setup
(tensorflow/serving g3doc/saved_model_warmup.md). The file is a TFRecord of
serialized `PredictionLog`s; a bad record fails the whole version load, so every
export replays its own records through TensorFlow before it is published.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from digits import contract

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
BATCH_SIZES = (1, 8, 32)  # common request sizes, so each batch shape is traced once


def _sample_digits(n: int) -> np.ndarray:
    """Plausible light-on-dark strokes: warmup needs valid inputs, not real digits."""
    rng = np.random.default_rng(0)
    images = np.zeros((n, 28, 28, 1), np.uint8)
    for i in range(n):
        r, c = rng.integers(6, 14, size=2)
        images[i, r : r + 10, c : c + 3] = 255
    return images


def _refused_images() -> list[bytes]:
    """Images predict_image answers per image instead of decoding: one its header refuses,
    one that passes the header and breaks the decoder (a PNG cut after IHDR)."""
    png = tf.io.encode_png(_sample_digits(1)[0]).numpy()
    return [b"not an image", png[:40]]


def requests(
    model_name: str, signatures: dict[str, tf.TensorSpec]
) -> list[predict_pb2.PredictRequest]:
    """One request per batch size for each signature, and for an image signature one
    more with refused images among valid ones, so that the per-image answer's path (the
    header refusal, the decoder error caught per image) is set up before traffic too.

    `signatures` maps signature name -> its input's spec: a string input gets encoded
    PNGs, a pixel input the pixels themselves.
    """
    out = []
    for signature, spec in signatures.items():
        batches: list[np.ndarray | list[bytes]] = [_sample_digits(n) for n in BATCH_SIZES]
        if spec.dtype == tf.string:
            batches = [[tf.io.encode_png(p).numpy() for p in b] for b in batches]
            good = batches[1]
            batches.append([good[0], *_refused_images(), *good[1:]])
        for batch in batches:
            if spec.dtype == tf.string:
                value = np.array(batch, dtype=object)
                tensor = tf.make_tensor_proto(value, dtype=tf.string)
            else:
                tensor = tf.make_tensor_proto(batch, dtype=tf.uint8)
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
            )
            request.inputs[spec.name].CopyFrom(tensor)
            out.append(request)
    return out


def write(version_dir: Path, model_name: str, signatures: dict[str, tf.TensorSpec]) -> Path:
    path = Path(version_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests(model_name, signatures):
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return path


def read(version_dir: Path) -> list[predict_pb2.PredictRequest]:
    records = tf.data.TFRecordDataset(str(Path(version_dir) / WARMUP_FILE))
    return [
        prediction_log_pb2.PredictionLog.FromString(r.numpy()).predict_log.request for r in records
    ]


def replay(version_dir: Path, loaded=None) -> int:
    """Run every warmup request through the SavedModel, as TF Serving will; returns the
    number replayed. Raises if any request does not run or returns the wrong batch."""
    loaded = loaded or tf.saved_model.load(str(version_dir))
    count = 0
    for request in read(version_dir):
        signature = loaded.signatures[request.model_spec.signature_name]
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        outputs = signature(**inputs)
        batch = next(iter(inputs.values())).shape[0]
        for name, value in outputs.items():
            if value.shape[0] != batch:
                raise RuntimeError(f"warmup: output {name} has batch {value.shape[0]} != {batch}")
        if contract.IMAGE_STATUS in outputs:  # exactly the planted images refused
            sent = next(iter(inputs.values())).numpy().tolist()
            refused = [
                s.decode() != contract.IMAGE_OK for s in outputs[contract.IMAGE_STATUS].numpy()
            ]
            if refused != [b in _refused_images() for b in sent]:
                raise RuntimeError(f"warmup: predict_image refused the wrong images: {refused}")
        count += 1
    return count
