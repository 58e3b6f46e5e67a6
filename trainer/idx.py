"""Validate the four original MNIST idx files for `python -m trainer data import`.

Parsing and the per-file checks (magic numbers, sizes, counts, labels) are the shared
numpy-only reader, `digits.idx`, that the client's `predict --idx` uses too; this module
adds what an import needs: the folder of four files, images and labels that match, and
whether they are byte-identical to the published MNIST.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digits import idx
from trainer.errors import UserError

# split name -> (images file, labels file), as published.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
PUBLISHED_COUNTS = {"train": 60_000, "test": 10_000}
# MD5 of the uncompressed published files.
PUBLISHED_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [n, 28, 28]
    labels: np.ndarray  # uint8 [n]
    published: bool  # both files byte-identical to the published MNIST ones


def _find(idx_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (idx_dir / name).is_file():
            return idx_dir / name
    raise UserError(
        f"{idx_dir}: missing {stem}.gz (or uncompressed {stem}); the folder must hold the "
        f"four MNIST idx files: {', '.join(s + '.gz' for pair in FILES.values() for s in pair)}."
    )


def _read(path: Path, parse) -> tuple[np.ndarray, str]:
    """The parsed array and the MD5 of the uncompressed file; UserError if it is bad."""
    try:
        data = idx.load(path)
        return parse(data, path), hashlib.md5(data).hexdigest()
    except idx.IdxError as e:
        raise UserError(str(e)) from None


def read_images(path: Path) -> tuple[np.ndarray, str]:
    return _read(path, idx.parse_images)


def read_labels(path: Path) -> tuple[np.ndarray, str]:
    return _read(path, idx.parse_labels)


def read_split(idx_dir: Path, split: str) -> Split:
    images_stem, labels_stem = FILES[split]
    images_path, labels_path = _find(idx_dir, images_stem), _find(idx_dir, labels_stem)
    images, images_md5 = read_images(images_path)
    labels, labels_md5 = read_labels(labels_path)
    if len(images) != len(labels):
        raise UserError(
            f"{idx_dir}: {images_path.name} holds {len(images):,} images but "
            f"{labels_path.name} holds {len(labels):,} labels; they must match."
        )
    if len(images) == 0:
        raise UserError(f"{images_path}: holds no images.")
    published = (
        images_md5 == PUBLISHED_MD5[images_stem] and labels_md5 == PUBLISHED_MD5[labels_stem]
    )
    return Split(images=images, labels=labels, published=published)


def read_all(idx_dir: str | Path) -> dict[str, Split]:
    idx_dir = Path(idx_dir)
    if not idx_dir.is_dir():
        raise UserError(f"--idx-dir {str(idx_dir)!r} is not a directory.")
    return {split: read_split(idx_dir, split) for split in FILES}
