"""Classification metrics from labels and predicted probabilities (numpy only).

What TensorBoard's per-epoch pictures and `python -m trainer evaluate`'s report share:
the confusion matrix, per-class precision/recall/F1, the most confidently wrong
examples, and calibration (expected calibration error over confidence bins, as in
Guo et al. 2017, "On Calibration of Modern Neural Networks").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from digits.contract import NUM_CLASSES

CALIBRATION_BINS = 15  # Guo et al.'s choice


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """int64 [10, 10]: row = true class, column = predicted class."""
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(cm, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    return cm


def per_class(cm: np.ndarray) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support for each class ("0".."9"); 0 where undefined."""
    tp = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(tp), where=denominator > 0
    )
    return {
        str(k): {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(actual[k]),
        }
        for k in range(len(cm))
    }


def worst_misclassified(labels: np.ndarray, probabilities: np.ndarray, n: int) -> np.ndarray:
    """Indices of the wrong predictions made with the highest confidence, worst first."""
    predicted = probabilities.argmax(-1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:n]


@dataclass(frozen=True)
class Calibration:
    ece: float  # expected calibration error: sum over bins of |accuracy - confidence| * share
    bin_edges: np.ndarray  # [bins + 1]
    accuracy: np.ndarray  # [bins], NaN where a bin is empty
    confidence: np.ndarray  # [bins], NaN where a bin is empty
    count: np.ndarray  # [bins]


def calibration(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS
) -> Calibration:
    confidence = probabilities.max(-1)
    correct = probabilities.argmax(-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(which, weights=correct, minlength=bins) / count
        conf = np.bincount(which, weights=confidence, minlength=bins) / count
    filled = count > 0
    ece = float(np.sum(np.abs(acc[filled] - conf[filled]) * count[filled]) / max(len(labels), 1))
    return Calibration(ece, edges, acc, conf, count)
