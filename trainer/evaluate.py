"""Score an exported SavedModel version on the MNIST test split, through the very
signature TF Serving calls (`serving_default`), not the Keras model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from digits.contract import CLASSES, PIXELS, PROBABILITIES, versions
from trainer import data
from trainer.errors import UserError


def resolve_version(base_dir: Path, version: int | None) -> Path:
    available = versions(base_dir)
    if not available:
        raise UserError(f"no exported versions in {base_dir}; run `make train` first.")
    if version is None:
        return base_dir / str(available[-1])
    if version not in available:
        raise UserError(
            f"version {version} is not in {base_dir}; available: " + ", ".join(map(str, available))
        )
    return base_dir / str(version)


def evaluate(version_dir: Path, data_dir: str | Path, batch_size: int = 1000) -> dict[str, Any]:
    splits = data.load(data_dir)
    signature = tf.saved_model.load(str(version_dir)).signatures[PIXELS.name]
    labels, predicted, nll = [], [], 0.0
    for images, batch_labels in splits.test.batch(batch_size):
        out = signature(**{PIXELS.input: images})
        probs = out[PROBABILITIES].numpy()
        label = batch_labels.numpy()
        nll -= float(np.sum(np.log(np.clip(probs[np.arange(len(label)), label], 1e-12, 1.0))))
        labels.append(label)
        predicted.append(out[CLASSES].numpy())
    y, p = np.concatenate(labels), np.concatenate(predicted)
    return {
        "version_dir": str(version_dir),
        "examples": int(len(y)),
        "accuracy": float(np.mean(p == y)),
        "loss": nll / len(y),
        "per_class_accuracy": {
            str(k): float(np.mean(p[y == k] == k)) for k in range(10) if np.any(y == k)
        },
    }
