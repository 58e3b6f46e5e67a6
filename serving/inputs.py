"""Read and check what the client sends: image files, .npy arrays, MNIST idx files.

Everything is checked here, before a request leaves the machine. TF Serving does
not check request shapes against the signature (tensorflow/serving#1527), and its
JSON reader only asks whether a uint8 value is a JSON integer (util/json_tensor.cc,
AddValueToTensor), not whether it fits in 0-255; so a wrong input would reach the
graph, or be silently wrapped, instead of being refused with a clear message.

numpy, the standard library and the shared `digits` package only; pillow is imported
lazily, and only for `--decode local`.
"""

from __future__ import annotations

import io
import math
import os
import stat
from pathlib import Path
from typing import BinaryIO

import numpy as np

from digits import idx
from digits.contract import COLS, IMAGE_SHAPE, JPEG_MAGIC, MAX_IMAGE_SIDE, PNG_MAGIC, ROWS

MAX_IMAGE_BYTES = 10 * 2**20  # a digit photo is far smaller; bigger is a mistake
# The pixel data of one .npy file: the 60,000 training images as uint8 (47 MB) or the
# 10,000 test images as float64 (63 MB) fit; a file is read only after its header,
# checked against this, says how much data follows.
MAX_ARRAY_BYTES = 128 * 2**20
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class InputError(Exception):
    """A problem with the user's input. The message is one line that names the input."""


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a file") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None


def _read(path: Path, limit: int, what: str) -> bytes:
    """The whole file, refused once it runs past `limit` bytes: at most limit + 1 bytes
    are read, so a huge file (or a device like /dev/zero) costs no more than the limit."""
    with _open(path) as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise InputError(f"cannot read {path}: {e.strerror or e}") from None
        if len(data) > limit:
            size = os.fstat(f.fileno()).st_size  # 0 for a device or a pipe
            found = f"{size:,} bytes is over" if size > limit else "runs past"
            raise InputError(
                f"{path}: {found} the {limit:,}-byte limit for {what}; scale it down first"
            )
    return data


# --- Encoded images (PNG/JPEG), sent as {"b64": ...} to the predict_image signature.


def read_image_bytes(path: str | Path) -> bytes:
    """The file's bytes, after checking that they are a PNG or JPEG of sane size.

    Only the signature (magic bytes) is checked: decoding is the server's job in the
    default mode, and a truncated image still fails there with a 400 and a message.
    """
    path = Path(path)
    data = _read(path, MAX_IMAGE_BYTES, "a digit image")
    if not data:
        raise InputError(f"{path}: is empty (0 bytes), not an image")
    if not (data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC)):
        raise InputError(f"{path}: is not a PNG or JPEG image (it starts with {data[:8]!r})")
    size = image_size(data)
    if size and max(size) > MAX_IMAGE_SIDE:
        # The server's predict_image refuses it from the header too; say so before sending.
        raise InputError(
            f"{path}: is {size[0]}x{size[1]} pixels, over the server's "
            f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} limit; scale it down first"
        )
    return data


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's first SOF marker, without decoding;
    None where the header does not say (the server then decides)."""
    if data.startswith(PNG_MAGIC) and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    i = 2  # JPEG: walk the marker segments up to the first start-of-frame
    while data.startswith(JPEG_MAGIC) and i + 9 <= len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn, not DHT/JPG/DAC
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(
                data[i + 5 : i + 7], "big"
            )
        i += 2 + length
    return None


def decode_local(path: str | Path) -> np.ndarray:
    """Decode a 28x28 image here into MNIST's layout: uint8 [28, 28, 1], light on dark.

    Deliberately simple: grayscale, no resizing (other sizes are refused; the server's
    `predict_image` signature crops, scales and centres any size). Dark-on-light
    images (border brighter than mid-grey, as in scans) are inverted, the same test
    the server-side preprocessing starts with.
    """
    path = Path(path)
    data = read_image_bytes(path)
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise InputError(
            "--decode local needs pillow (pip install pillow); or use the default --decode server"
        ) from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"{path}: cannot be decoded as an image ({e})") from None
    if pixels.shape != (ROWS, COLS):
        h, w = pixels.shape
        raise InputError(
            f"{path}: is {w}x{h} pixels; --decode local takes 28x28 images only "
            "(the default --decode server resizes any size up to "
            f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE})"
        )
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 127.5:
        pixels = 255 - pixels
    return pixels[..., None]


# --- Pixel arrays, sent as uint8 integers to the serving_default signature.


def _batch_shape(shape: tuple[int, ...], dtype: np.dtype, source: str) -> tuple[int, ...]:
    """The [n, 28, 28, 1] shape of pixels of `shape` and `dtype`, or InputError saying
    why they are not pixels. Needs no data: `read_npy` asks before reading any."""
    shape = tuple(shape)
    if shape in ((ROWS, COLS), IMAGE_SHAPE):
        shape = (1, *IMAGE_SHAPE)
    elif len(shape) == 3 and shape[1:] == (ROWS, COLS):
        shape = (*shape, 1)
    elif not (len(shape) == 4 and shape[1:] == IMAGE_SHAPE):
        raise InputError(
            f"{source}: shape {shape} is not 28x28 pixels; expected (28, 28), (28, 28, 1), "
            "(n, 28, 28) or (n, 28, 28, 1)"
        )
    if shape[0] == 0:
        raise InputError(f"{source}: empty batch (0 images); send at least one image")
    if dtype.kind not in "iuf":
        raise InputError(f"{source}: dtype {dtype} is not a pixel type; use uint8 0-255")
    return shape


def check_pixels(array: np.ndarray, source: str) -> np.ndarray:
    """Return `array` as uint8 [n, 28, 28, 1], n >= 1, or raise InputError saying why.

    Accepts one image (28x28 or 28x28x1) or a batch (n x 28 x 28 [x 1]) of raw
    0-255 pixel values, in any integer dtype or as floats holding whole numbers.
    """
    a = np.asarray(array)
    a = a.reshape(_batch_shape(a.shape, a.dtype, source))
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        if bad.any():
            i = int(np.argwhere(bad)[0][0])
            what = "NaN" if np.isnan(a).any() else "an infinite value"
            raise InputError(f"{source}: image #{i} contains {what}; pixels must be 0-255")
        if not np.array_equal(a, np.round(a)):
            raise InputError(
                f"{source}: holds non-integer pixel values (e.g. {a[a != np.round(a)][0]:g}); "
                "the model takes raw 0-255 integers (scale [0, 1] floats by 255 and round)"
            )
    low, high = a.min(), a.max()
    if low < 0 or high > 255:
        raise InputError(
            f"{source}: pixel values run from {low:g} to {high:g}; they must be 0-255 "
            "(TF Serving would not refuse them: it wraps them into uint8)"
        )
    return a.astype(np.uint8)


def read_npy(path: str | Path) -> np.ndarray:
    """A .npy file of pixels, checked by `check_pixels`.

    The header (numpy.lib.format) is read first and its shape and dtype checked, so
    that a small file claiming a huge array is refused before anything is allocated,
    and at most MAX_ARRAY_BYTES of data are read.
    """
    path = Path(path)
    with _open(path) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # 3.0 only adds UTF-8 field names: a structured dtype, not pixels
                raise ValueError(f"format version {version[0]}.{version[1]} holds no pixels")
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"{path}: is not a readable .npy array ({e})") from None
        source = str(path)
        _batch_shape(shape, dtype, source)
        size = math.prod(shape) * dtype.itemsize
        if size > MAX_ARRAY_BYTES:
            raise InputError(
                f"{path}: its header says {shape} {dtype} values ({size:,} bytes), over the "
                f"{MAX_ARRAY_BYTES:,}-byte limit for a .npy file; split it, or store uint8 pixels"
            )
        try:
            # A regular file says how much follows the header: a short one is refused
            # before the header's size is allocated (pipes are read up to the size).
            info = os.fstat(f.fileno())
            got = info.st_size - f.tell() if stat.S_ISREG(info.st_mode) else size
            if got >= size:
                buffer = bytearray(size)
                got = f.readinto(buffer)
        except OSError as e:
            raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    if got < size:
        raise InputError(
            f"{path}: is truncated: its header says {shape} {dtype} values ({size:,} bytes) "
            f"but {got:,} bytes follow it"
        )
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    return check_pixels(array, source)


# --- MNIST idx files: the shared reader (digits/idx.py), its errors as InputError.


def read_idx_images(path: str | Path) -> np.ndarray:
    """uint8 [n, 28, 28, 1] from an idx3 images file (gzipped or not)."""
    try:
        return idx.read_images(path)[..., None]
    except idx.IdxError as e:
        raise InputError(str(e)) from None


def read_idx_labels(path: str | Path) -> np.ndarray:
    """uint8 [n] labels 0-9 from an idx1 labels file (gzipped or not)."""
    try:
        return idx.read_labels(path)
    except idx.IdxError as e:
        raise InputError(str(e)) from None


labels_path_for = idx.labels_path_for
