"""Read and check MNIST idx files (http://yann.lecun.com/exdb/mnist/), gzipped or not.

The format: a big-endian header, magic number 0x00000803 for uint8 3-D arrays (images)
or 0x00000801 for uint8 1-D arrays (labels), one uint32 per dimension, then the raw
bytes. Every check names the file and the exact problem, because a bad file found halfway
through training costs an hour. Files are streamed (gzip too): the header is checked
first, then exactly the data it announces is read, and one byte more to tell trailing
bytes; so a file costs the memory its header's count implies, never more (at most
MAX_ITEMS items), whatever it inflates to. A gzip file's trailer records the size it
inflates to: where that disagrees with the header, the data is counted and dropped before
any is kept, so a lying header or a gzip bomb costs no memory at all. Used by the
client's `predict --idx` (one file), and, for a folder of the four published files
(`read_folder`: images and labels that match, and whether they are byte-identical to the
published MNIST), by `python -m trainer data import` and the benchmarks.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from digits.contract import COLS, NUM_CLASSES, ROWS

# split name -> (images file, labels file), as published; each also taken gzipped (.gz).
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
IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
GZIP_MAGIC = b"\x1f\x8b"


# The most images (or labels) one file may hold: MNIST has 70,000, EMNIST's largest split
# 697,932. A header that claims more is refused before any data is read: the files are
# streamed, so memory follows the header's count, and a gzip bomb behind a small count
# stops at the first byte past it.
MAX_ITEMS = 1_000_000


class IdxError(ValueError):
    """A missing, unreadable or malformed idx file; the message names it and the fix."""


@dataclass(frozen=True)
class _File:
    dims: tuple[int, ...]  # the header's: count, then the item's shape
    data: bytes  # what follows the header: exactly what it says
    md5: str  # of the whole uncompressed file


def _open(path: Path) -> BinaryIO:
    """The file's uncompressed bytes as a stream (gzip by name or by content, else raw)."""
    try:
        f = path.open("rb")
    except IsADirectoryError:
        raise IdxError(f"{path}: is a directory, not an idx file.") from None
    except OSError as e:
        raise IdxError(f"{path}: cannot be read ({e.strerror or e}).") from None
    if path.suffix == ".gz" or f.peek(2)[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=f, mode="rb")  # closing it leaves f open: see _read
    return f


def _read(path: Path, magic: int, ndim: int, kind: str, what: str) -> _File:
    """Read an idx file of `kind`, streaming: the header first, checked, then exactly the
    data it announces and one byte more, to tell a file with trailing bytes."""
    f = _open(path)
    raw = f.fileobj if isinstance(f, gzip.GzipFile) else f
    try:
        trailer = None if f is raw else _gzip_trailer_size(raw)
        head = f.read(4 + 4 * ndim)
        dims = _header(path, head, magic, ndim, kind)
        count, item = dims[0], math.prod(dims[1:])
        if count > MAX_ITEMS:
            raise IdxError(
                f"{path}: the header says {count:,} {what}, more than the {MAX_ITEMS:,} an "
                "idx file may hold here; is it an MNIST file?"
            )
        if kind == "images" and dims[1:] != (ROWS, COLS):
            raise IdxError(
                f"{path}: images are {dims[1]}x{dims[2]}, expected {ROWS}x{COLS} for MNIST."
            )
        header, expected = len(head), len(head) + count * item
        if f is raw and os.fstat(raw.fileno()).st_size != expected:  # raw: the size says it
            _wrong_size(path, os.fstat(raw.fileno()).st_size, expected, count, what)
        if trailer is not None and trailer != expected % 2**32:
            # A lying header or a gzip bomb, or several gzip members (the trailer counts
            # only the last): count what it inflates to, keeping none of it, so that
            # either costs no memory; only a file of the announced size is read.
            size = header + _count(f, count * item + 1)
            if size != expected:
                _wrong_size(path, size if size < expected else None, expected, count, what)
            f.seek(header)
        data = f.read(count * item)
        if len(data) < count * item:
            _wrong_size(path, header + len(data), expected, count, what)
        if f.read(1):
            _wrong_size(path, None, expected, count, what)
    except (OSError, EOFError, zlib.error) as e:
        if f is raw:
            raise IdxError(f"{path}: cannot be read ({e.strerror or e}).") from None
        raise IdxError(f"{path}: cannot be read as gzip ({e}); download it again.") from None
    finally:
        f.close()
        raw.close()
    digest = hashlib.md5(head)
    digest.update(data)
    return _File(dims=dims, data=data, md5=digest.hexdigest())


def _gzip_trailer_size(raw: BinaryIO) -> int | None:
    """ISIZE, the last 4 bytes of a gzip file: its last member's uncompressed size mod
    2**32 (RFC 1952, section 2.3.1), read without inflating anything; None where the
    file cannot seek (a pipe) or is too short to be gzip (the gzip reader says why)."""
    if not raw.seekable():
        return None
    size = os.fstat(raw.fileno()).st_size
    if size < 18:  # a 10-byte header and an 8-byte trailer at least
        return None
    raw.seek(size - 4)
    (isize,) = struct.unpack("<I", raw.read(4))
    raw.seek(0)
    return isize


def _count(f: BinaryIO, limit: int) -> int:
    """How many bytes `f` yields, up to `limit`, read in 1 MiB chunks and dropped."""
    total = 0
    while total < limit and (chunk := f.read(min(2**20, limit - total))):
        total += len(chunk)
    return total


def _header(path: Path, head: bytes, magic: int, ndim: int, kind: str) -> tuple[int, ...]:
    if len(head) < 4:
        raise IdxError(f"{path}: only {len(head)} bytes, too short for an idx header.")
    (found,) = struct.unpack(">I", head[:4])
    if found != magic:
        other = {IMAGES_MAGIC: "an images file", LABELS_MAGIC: "a labels file"}.get(found)
        hint = f" (it looks like {other}; are the files swapped?)" if other else ""
        raise IdxError(
            f"{path}: magic number {found} (0x{found:08x}), expected {magic} (0x{magic:08x}) "
            f"for idx {kind}{hint}."
        )
    need = 4 + 4 * ndim
    if len(head) < need:
        raise IdxError(f"{path}: header truncated ({len(head)} of {need} bytes).")
    return struct.unpack(">" + "I" * ndim, head[4:need])


def _wrong_size(path: Path, size: int | None, expected: int, count: int, what: str) -> None:
    """Raise: the file is not the size its header implies (`size` None: longer, by an
    amount not read)."""
    if size is not None and size < expected:
        state, found = "truncated", f"the data is {size:,} bytes"
    else:
        state = "has trailing bytes"
        found = f"the data is {size:,} bytes" if size is not None else "more follow"
    raise IdxError(
        f"{path}: {state}: the header says {count:,} {what} ({expected:,} bytes) but "
        f"{found}; download it again."
    )


def _images(path: Path) -> tuple[np.ndarray, str]:
    f = _read(path, IMAGES_MAGIC, 3, "images", "images")
    return np.frombuffer(f.data, dtype=np.uint8).reshape(f.dims), f.md5


def _labels(path: Path) -> tuple[np.ndarray, str]:
    f = _read(path, LABELS_MAGIC, 1, "labels", "labels")
    labels = np.frombuffer(f.data, dtype=np.uint8)
    if len(labels) and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise IdxError(f"{path}: label #{bad} is {labels[bad]}, but MNIST labels are 0-9.")
    return labels, f.md5


def read_images(path: str | Path) -> np.ndarray:
    """uint8 [n, 28, 28] from an idx3 images file (gzipped or not)."""
    return _images(Path(path))[0]


def read_labels(path: str | Path) -> np.ndarray:
    """uint8 [n] labels 0-9 from an idx1 labels file (gzipped or not)."""
    return _labels(Path(path))[0]


def labels_path_for(images_path: str | Path) -> Path:
    """The labels file published beside an images file: t10k-images-idx3 -> t10k-labels-idx1."""
    images_path = Path(images_path)
    return images_path.with_name(images_path.name.replace("images-idx3", "labels-idx1"))


# --- A folder of the four published files.


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [n, 28, 28]
    labels: np.ndarray  # uint8 [n]
    published: bool  # both files byte-identical to the published MNIST ones


def find(idx_dir: str | Path, stem: str) -> Path:
    """`stem`.gz in `idx_dir`, or the uncompressed `stem`."""
    idx_dir = Path(idx_dir)
    for name in (stem + ".gz", stem):
        if (idx_dir / name).is_file():
            return idx_dir / name
    raise IdxError(
        f"{idx_dir}: missing {stem}.gz (or uncompressed {stem}); the folder must hold the "
        f"four MNIST idx files: {', '.join(s + '.gz' for pair in FILES.values() for s in pair)}."
    )


def read_split(idx_dir: str | Path, split: str) -> Split:
    """One split ("train" or "test") of the folder, its two files checked together."""
    images_stem, labels_stem = FILES[split]
    images_path, labels_path = find(idx_dir, images_stem), find(idx_dir, labels_stem)
    images, images_md5 = _images(images_path)
    labels, labels_md5 = _labels(labels_path)
    if len(images) != len(labels):
        raise IdxError(
            f"{idx_dir}: {images_path.name} holds {len(images):,} images but "
            f"{labels_path.name} holds {len(labels):,} labels; they must match."
        )
    if len(images) == 0:
        raise IdxError(f"{images_path}: holds no images.")
    published = (
        images_md5 == PUBLISHED_MD5[images_stem] and labels_md5 == PUBLISHED_MD5[labels_stem]
    )
    return Split(images=images, labels=labels, published=published)


def read_folder(idx_dir: str | Path) -> dict[str, Split]:
    """Every split of a folder of the four files, each file checked before it is used."""
    return {split: read_split(idx_dir, split) for split in FILES}
