"""Write a few sample digit PNGs from the MNIST test set, for trying the served model.

    python -m tools.make_samples --idx-dir ../shared/data/mnist   # make samples IDX_DIR=...

Writes `digit-<label>.png` (28x28 grayscale, MNIST's white digit on black) for the
first test image of each chosen label, plus `digit-<label>-dark-on-light.png`: the
same pixels inverted, as a scan or a photo of ink on paper looks. The server-side
`predict_image` signature (and `--decode local`) invert such images back, so both
files should get the same answer.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from serving import inputs

DIGITS = (7, 2, 1, 0, 4)  # the labels of the first five MNIST test images
DARK_ON_LIGHT = 7
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "serving" / "samples"


def write_samples(
    images_path: Path, out_dir: Path, digits=DIGITS, dark_on_light: int = DARK_ON_LIGHT
) -> list[Path]:
    from PIL import Image  # a dev-time script: pillow is in requirements.txt

    images = inputs.read_idx_images(images_path)
    labels = inputs.read_idx_labels(inputs.labels_path_for(images_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for digit in digits:
        found = np.flatnonzero(labels[: len(images)] == digit)
        if not len(found):
            raise inputs.InputError(f"{images_path}: no image labelled {digit}")
        pixels = images[found[0], :, :, 0]
        variants = [("", pixels)]
        if digit == dark_on_light:
            variants.append(("-dark-on-light", 255 - pixels))
        for suffix, p in variants:
            path = out_dir / f"digit-{digit}{suffix}.png"
            Image.fromarray(p).save(path, optimize=True)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    default_idx = os.environ.get("MNIST_IDX_DIR") or "../shared/data/mnist"
    parser = argparse.ArgumentParser(
        prog="python -m tools.make_samples", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--idx-dir",
        type=Path,
        default=Path(default_idx),
        help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
        "[default: $MNIST_IDX_DIR, else ../shared/data/mnist]",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder [default: {DEFAULT_OUT}]"
    )
    args = parser.parse_args(argv)
    images_path = args.idx_dir / "t10k-images-idx3-ubyte.gz"
    try:
        for path in write_samples(images_path, args.out):
            print(f"wrote {path} ({path.stat().st_size} bytes)")
    except inputs.InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
