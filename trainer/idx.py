"""Read and validate the four original MNIST idx files (gzipped or not).

The idx format (http://yann.lecun.com/exdb/mnist/): a big-endian header, magic number
0x00000803 for uint8 3-D arrays (images) or 0x00000801 for uint8 1-D arrays (labels),
one uint32 per dimension, then the raw bytes. Every check here names the file and the
exact problem, because a bad file found halfway through training costs an hour.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.errors import UserError

IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
ROWS = COLS = 28

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


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(
            f"{path}: cannot be read as {'gzip' if path.suffix == '.gz' else 'a file'} "
            f"({e}); download it again."
        ) from None


def _header(path: Path, data: bytes, magic: int, ndim: int, kind: str) -> tuple[int, ...]:
    if len(data) < 4:
        raise UserError(f"{path}: only {len(data)} bytes, too short for an idx header.")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        other = {IMAGES_MAGIC: "an images file", LABELS_MAGIC: "a labels file"}.get(found)
        hint = f" (it looks like {other}; are the files swapped?)" if other else ""
        raise UserError(
            f"{path}: magic number {found} (0x{found:08x}), expected {magic} (0x{magic:08x}) "
            f"for idx {kind}{hint}."
        )
    need = 4 + 4 * ndim
    if len(data) < need:
        raise UserError(f"{path}: header truncated ({len(data)} of {need} bytes).")
    return struct.unpack(">" + "I" * ndim, data[4:need])


def _check_size(path: Path, data: bytes, header: int, count: int, item: int, what: str) -> None:
    expected = header + count * item
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "has trailing bytes"
        raise UserError(
            f"{path}: {state}: the header says {count:,} {what} ({expected:,} bytes) but the "
            f"data is {len(data):,} bytes; download it again."
        )


def read_images(path: Path) -> tuple[np.ndarray, str]:
    data = _read_bytes(path)
    count, rows, cols = _header(path, data, IMAGES_MAGIC, 3, "images")
    if (rows, cols) != (ROWS, COLS):
        raise UserError(f"{path}: images are {rows}x{cols}, expected {ROWS}x{COLS} for MNIST.")
    _check_size(path, data, 16, count, rows * cols, "images")
    images = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, cols)
    return images, hashlib.md5(data).hexdigest()


def read_labels(path: Path) -> tuple[np.ndarray, str]:
    data = _read_bytes(path)
    (count,) = _header(path, data, LABELS_MAGIC, 1, "labels")
    _check_size(path, data, 8, count, 1, "labels")
    labels = np.frombuffer(data, dtype=np.uint8, offset=8)
    if count and labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise UserError(f"{path}: label #{bad} is {labels[bad]}, but MNIST labels are 0-9.")
    return labels, hashlib.md5(data).hexdigest()


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
