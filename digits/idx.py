"""Read and check MNIST idx files (http://yann.lecun.com/exdb/mnist/), gzipped or not.

The format: a big-endian header, magic number 0x00000803 for uint8 3-D arrays (images)
or 0x00000801 for uint8 1-D arrays (labels), one uint32 per dimension, then the raw
bytes. Every check names the file and the exact problem, because a bad file found
halfway through training costs an hour. Used by `python -m trainer data import` (which
adds the published checksums) and by the client's `predict --idx`.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from digits.contract import COLS, NUM_CLASSES, ROWS

IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
GZIP_MAGIC = b"\x1f\x8b"


class IdxError(ValueError):
    """A missing, unreadable or malformed idx file; the message names it and the fix."""


def load(path: str | Path) -> bytes:
    """The file's uncompressed bytes (gzip by name or by content, else raw)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise IdxError(f"{path}: is a directory, not an idx file.") from None
    except OSError as e:
        raise IdxError(f"{path}: cannot be read ({e.strerror or e}).") from None
    if path.suffix != ".gz" and not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise IdxError(f"{path}: cannot be read as gzip ({e}); download it again.") from None


def _header(path: Path, data: bytes, magic: int, ndim: int, kind: str) -> tuple[int, ...]:
    if len(data) < 4:
        raise IdxError(f"{path}: only {len(data)} bytes, too short for an idx header.")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        other = {IMAGES_MAGIC: "an images file", LABELS_MAGIC: "a labels file"}.get(found)
        hint = f" (it looks like {other}; are the files swapped?)" if other else ""
        raise IdxError(
            f"{path}: magic number {found} (0x{found:08x}), expected {magic} (0x{magic:08x}) "
            f"for idx {kind}{hint}."
        )
    need = 4 + 4 * ndim
    if len(data) < need:
        raise IdxError(f"{path}: header truncated ({len(data)} of {need} bytes).")
    return struct.unpack(">" + "I" * ndim, data[4:need])


def _check_size(path: Path, data: bytes, header: int, count: int, item: int, what: str) -> None:
    expected = header + count * item
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "has trailing bytes"
        raise IdxError(
            f"{path}: {state}: the header says {count:,} {what} ({expected:,} bytes) but the "
            f"data is {len(data):,} bytes; download it again."
        )


def parse_images(data: bytes, path: str | Path) -> np.ndarray:
    """uint8 [n, 28, 28] from an idx3 file's bytes; `path` names it in errors."""
    path = Path(path)
    count, rows, cols = _header(path, data, IMAGES_MAGIC, 3, "images")
    if (rows, cols) != (ROWS, COLS):
        raise IdxError(f"{path}: images are {rows}x{cols}, expected {ROWS}x{COLS} for MNIST.")
    _check_size(path, data, 16, count, rows * cols, "images")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, cols)


def parse_labels(data: bytes, path: str | Path) -> np.ndarray:
    """uint8 [n] labels 0-9 from an idx1 file's bytes; `path` names it in errors."""
    path = Path(path)
    (count,) = _header(path, data, LABELS_MAGIC, 1, "labels")
    _check_size(path, data, 8, count, 1, "labels")
    labels = np.frombuffer(data, dtype=np.uint8, offset=8)
    if count and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise IdxError(f"{path}: label #{bad} is {labels[bad]}, but MNIST labels are 0-9.")
    return labels


def read_images(path: str | Path) -> np.ndarray:
    return parse_images(load(path), path)


def read_labels(path: str | Path) -> np.ndarray:
    return parse_labels(load(path), path)


def labels_path_for(images_path: str | Path) -> Path:
    """The labels file published beside an images file: t10k-images-idx3 -> t10k-labels-idx1."""
    images_path = Path(images_path)
    return images_path.with_name(images_path.name.replace("images-idx3", "labels-idx1"))
