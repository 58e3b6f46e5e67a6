"""The pictures people look at, drawn with matplotlib: confusion matrix, grids of digits
with captions, and the reliability diagram. Each function returns PNG bytes, which
TensorBoard (`tf.summary.image`) and the evaluation report both use.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in containers

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402

from trainer.report.metrics import Calibration  # noqa: E402


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def confusion_matrix(cm: np.ndarray, title: str = "Confusion matrix") -> bytes:
    """Counts in every cell; colour by each row's share, so rare errors stay visible."""
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    n = len(cm)
    ax.set(
        xticks=range(n),
        yticks=range(n),
        xlabel="predicted",
        ylabel="true",
        title=f"{title} ({int(cm.trace())}/{int(cm.sum())} right)",
    )
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8, color=colour)
    return _png(fig)


def digit_grid(
    images: np.ndarray, captions: Sequence[str] | None = None, cols: int = 8, title: str = ""
) -> bytes:
    """uint8 or float images [n, 28, 28(, 1)] in a grid, each with an optional caption.

    One mosaic in one axes, not an axes per digit: the trainer draws grids at every
    epoch's end, and 16 digits took 0.85 s as subplots against 0.13 s as a mosaic."""
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    # Mosaic cells in pixels: the digit with a 2-pixel margin each side and room above it
    # for the caption; white between them. The figure gives each cell 1.3 x 1.45 inches.
    width, height, top = 32, 36, 7
    mosaic = np.full((rows * height, cols * width), 255, np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        y, x = r * height + top, c * width + 2
        mosaic[y : y + 28, x : x + 28] = np.asarray(images[k]).reshape(28, 28)
    title_inches = 0.4
    fig = plt.figure(figsize=(1.3 * cols, 1.45 * rows + title_inches), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1 - title_inches / (1.45 * rows + title_inches)))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
    ax.axis("off")
    for k, caption in enumerate(captions[:n] if captions is not None else []):
        r, c = divmod(k, cols)
        x, y = c * width + width / 2 - 0.5, r * height + top - 1
        ax.text(x, y, caption, ha="center", va="bottom", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def reliability_diagram(cal: Calibration) -> bytes:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    edges = cal.bin_edges
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    filled = cal.count > 0
    ax.bar(centres[filled], cal.accuracy[filled], width=width, edgecolor="black", label="accuracy")
    ax.bar(
        centres[filled],
        (cal.confidence - cal.accuracy)[filled],
        bottom=cal.accuracy[filled],
        width=width,
        fill=False,
        hatch="//",
        edgecolor="tab:red",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence (top probability)",
        ylabel="accuracy",
        title=f"Reliability diagram (ECE {100 * cal.ece:.2f}%)",
    )
    ax.legend(loc="upper left")
    return _png(fig)
