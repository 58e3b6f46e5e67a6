"""The seed README's training recipe, unchanged, as one contender of the time-to-accuracy bench.

    .venv/bin/python -m benchmarks.seed_recipe --idx-dir ../shared/data/mnist --out seed.json

Keras `model.fit` on in-memory NumPy arrays read from the four idx files: unscaled 0-255
float32 pixels, one-hot labels, batch 32, `compile(optimizer="adam",
loss="categorical_crossentropy", metrics=["accuracy"])`, and the seed network built
in-line: Conv2D(64, 3, relu) -> Conv2D(32, 3, relu) -> MaxPooling2D(2) -> Flatten ->
Dense(10, softmax). Deliberately *not* the trainer's code, so that the benchmark compares
the trainer with what the project started from.

After every epoch a callback scores the 10,000 test images (`model.evaluate`) and
records {epoch, test_accuracy, test_loss, time (unix), train_seconds}; the JSON file at
--out is rewritten after each epoch, so a run that dies still leaves its curve.
`benchmarks.time_to_accuracy` starts this as its own process and reads the file.
"""

import time

# Taken before anything else is imported (TensorFlow's import alone takes seconds): the
# file records it beside the parent's own start time, to show the interpreter start-up.
START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from digits.idx import FILES, read_images, read_labels  # noqa: E402

BATCH_SIZE = 32  # the recipe's (Keras' default for NumPy input)


def load_arrays(idx_dir: Path) -> dict[str, np.ndarray]:
    """The recipe's inputs: float32 [n, 28, 28, 1] pixels 0-255 (not scaled), one-hot labels."""
    arrays = {}
    for split, (images, labels) in FILES.items():
        arrays[f"x_{split}"] = read_images(idx_dir / f"{images}.gz").astype("float32")[..., None]
        arrays[f"y_{split}"] = np.eye(10, dtype="float32")[read_labels(idx_dir / f"{labels}.gz")]
    return arrays


def write_json(path: Path, result: dict) -> None:
    """Write atomically: the parent may read it while a later epoch rewrites it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idx-dir", required=True, help="folder with the four MNIST idx files")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the data [10]")
    parser.add_argument("--out", required=True, help="JSON result file to write")
    args = parser.parse_args()
    out = Path(args.out)

    data = load_arrays(Path(args.idx_dir))  # first: a bad file fails before the long import
    import keras  # after argument parsing, so --help answers at once

    result = {
        "contender": "seed",
        "process_start": START,
        "train_images": len(data["x_train"]),
        "test_images": len(data["x_test"]),
        "batch_size": BATCH_SIZE,
        "epochs": args.epochs,
        "keras": keras.__version__,
        "evaluations": [],
    }

    # --- The seed network, exactly as the README builds it.
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])

    class TestAccuracy(keras.callbacks.Callback):
        """Score the test set after each epoch and stamp the wall time it finished."""

        def on_epoch_begin(self, epoch, logs=None):
            self.began = time.time()

        def on_epoch_end(self, epoch, logs=None):
            trained = time.time()
            loss, accuracy = self.model.evaluate(data["x_test"], data["y_test"], verbose=0)
            result["evaluations"].append(
                {
                    "epoch": epoch + 1,
                    "test_accuracy": float(accuracy),
                    "test_loss": float(loss),
                    "time": time.time(),
                    # Training only (no evaluation): the basis of the images/s estimate.
                    "train_seconds": trained - self.began,
                }
            )
            write_json(out, result)

    # verbose=2: one line per epoch; a progress bar would flood the log file the bench keeps.
    model.fit(
        data["x_train"],
        data["y_train"],
        batch_size=BATCH_SIZE,
        epochs=args.epochs,
        callbacks=[TestAccuracy()],
        verbose=2,
    )
    result["end"] = time.time()
    write_json(out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
