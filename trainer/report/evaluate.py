"""Score an exported SavedModel version on the MNIST test split through the very
signature TF Serving calls (`serving_default`), not the Keras model, and write the
evaluation report beside it:

    <version>/eval/metrics.json             accuracy, loss, per-class precision/recall/F1,
                                            confusion matrix, calibration (ECE and bins)
    <version>/eval/confusion_matrix.png
    <version>/eval/worst_misclassified.png  the 25 most confidently wrong test digits
    <version>/eval/reliability.png          reliability diagram
    <version>/eval/report.md                all of it on one page, pictures embedded

The trainer writes it for every new version before publishing it; `python -m trainer
evaluate` (`make evaluate`) writes it again for any version.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from digits.contract import PIXELS, PROBABILITIES, versions
from trainer.errors import UserError
from trainer.outputs import EVAL_DIR, METRICS_FILE, REPORT_FILE
from trainer.report import metrics, pictures

WORST = 25


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


def predict(version_dir: Path, test: tf.data.Dataset, batch_size: int = 1000):
    """Labels, probabilities and images of the test split, through `serving_default`."""
    signature = tf.saved_model.load(str(version_dir)).signatures[PIXELS.name]
    labels, probabilities, images = [], [], []
    for batch_images, batch_labels in test.batch(batch_size):
        out = signature(**{PIXELS.input: batch_images})
        probabilities.append(out[PROBABILITIES].numpy())
        labels.append(batch_labels.numpy())
        images.append(batch_images.numpy())
    return np.concatenate(labels), np.concatenate(probabilities), np.concatenate(images)


def score(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """Every number of the report, JSON-ready."""
    predicted = probabilities.argmax(-1)
    p_true = probabilities[np.arange(len(labels)), labels]
    cm = metrics.confusion_matrix(labels, predicted)
    cal = metrics.calibration(labels, probabilities)
    edges = cal.bin_edges
    bins = zip(edges[:-1], edges[1:], cal.count, cal.accuracy, cal.confidence, strict=True)
    return {
        "examples": int(len(labels)),
        "accuracy": float(np.mean(predicted == labels)),
        "loss": float(-np.mean(np.log(np.clip(p_true, 1e-12, 1.0)))),
        "per_class_accuracy": {
            str(k): float(np.mean(predicted[labels == k] == k))
            for k in range(metrics.NUM_CLASSES)
            if np.any(labels == k)
        },
        "per_class": metrics.per_class(cm),
        "confusion_matrix": cm.tolist(),
        "calibration": {
            "expected_calibration_error": cal.ece,
            "bins": [  # empty bins have no accuracy or confidence: null
                {
                    "from": float(lo),
                    "to": float(hi),
                    "count": int(n),
                    "accuracy": None if n == 0 else float(a),
                    "confidence": None if n == 0 else float(c),
                }
                for lo, hi, n, a, c in bins
            ],
        },
    }


def evaluate(version_dir: Path, test: tf.data.Dataset) -> dict[str, Any]:
    """Score `version_dir` on `test` and write its eval/ report; returns the scores."""
    labels, probabilities, images = predict(version_dir, test)
    result = {"version_dir": str(version_dir), **score(labels, probabilities)}
    result["report"] = str(write_report(version_dir, result, labels, probabilities, images))
    return result


def write_report(
    version_dir: Path,
    result: dict[str, Any],
    labels: np.ndarray,
    probabilities: np.ndarray,
    images: np.ndarray,
) -> Path:
    """Write eval/ whole or not at all (built in a temporary folder, then renamed)."""
    target = Path(version_dir) / EVAL_DIR
    staging = Path(version_dir) / f".{EVAL_DIR}-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        cm = np.asarray(result["confusion_matrix"])
        worst = metrics.worst_misclassified(labels, probabilities, WORST)
        captions = [
            f"{labels[i]} → {probabilities[i].argmax()} ({probabilities[i].max():.0%})"
            for i in worst
        ]
        files = {
            "confusion_matrix.png": pictures.confusion_matrix(cm),
            "reliability.png": pictures.reliability_diagram(
                metrics.calibration(labels, probabilities)
            ),
        }
        if len(worst):
            files["worst_misclassified.png"] = pictures.digit_grid(
                images[worst], captions, cols=5, title="true → predicted (confidence)"
            )
        for name, png in files.items():
            (staging / name).write_bytes(png)
        (staging / METRICS_FILE).write_text(json.dumps(result, indent=2) + "\n")
        (staging / REPORT_FILE).write_text(report_markdown(result, version_dir, len(worst)))
        old = target.with_name(f".{EVAL_DIR}-old-{uuid.uuid4().hex}")
        if target.exists():
            os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def report_markdown(result: dict[str, Any], version_dir: Path, worst: int) -> str:
    version_dir = Path(version_dir)
    cal = result["calibration"]
    lines = [
        f"# Evaluation: {version_dir.parent.name} version {version_dir.name}",
        "",
        f"Scored through the `{PIXELS.name}` signature (what TF Serving runs) on "
        f"{result['examples']:,} test images, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "| accuracy | loss | expected calibration error | errors |",
        "| ---: | ---: | ---: | ---: |",
        f"| {percent(result['accuracy'])} | {result['loss']:.4f} | "
        f"{percent(cal['expected_calibration_error'])} | "
        f"{round(result['examples'] * (1 - result['accuracy']))} |",
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, m in result["per_class"].items():
        lines.append(
            f"| {k} | {percent(m['precision'])} | {percent(m['recall'])} | "
            f"{percent(m['f1'])} | {m['support']:,} |"
        )
    lines += [
        "",
        "## Confusion matrix",
        "",
        "Rows are the true digit, columns the predicted one.",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "## The worst mistakes",
        "",
        *(
            [
                "The wrong answers given with the highest confidence: true → predicted "
                "(confidence).",
                "",
                "![worst misclassified digits](worst_misclassified.png)",
            ]
            if worst
            else ["No test image was misclassified."]
        ),
        "",
        "## Calibration",
        "",
        "How far the model's confidence is from its accuracy, per confidence bin; the "
        "expected calibration error is the average gap, weighted by how many images fall "
        "in each bin.",
        "",
        "![reliability diagram](reliability.png)",
        "",
    ]
    return "\n".join(lines)


def percent(x: float) -> str:
    """How report.md writes a share: 99.15%."""
    return f"{100 * x:.2f}%"
