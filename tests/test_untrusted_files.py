"""Untrusted files cost bounded memory and get exit 2 with one line.

What a user points the client (`python -m serving predict`) or the data import at may be
huge, endless or lying in its header: a 1 GiB "PNG", /dev/zero, a gzip bomb behind an
idx header, a 128-byte .npy that claims 10^12 values. Each is refused after reading at
most a limit's worth, never by running out of memory. Every command runs as a child
process whose peak RSS is measured (wait4(2)).
"""

from __future__ import annotations

import gzip
import os
import signal
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from digits import idx
from serving import inputs
from serving.inputs import MAX_ARRAY_BYTES, MAX_IMAGE_BYTES, InputError
from support import CHILD_ENV, ROOT, free_ports, idx_bytes, make_digits

# The interpreter with numpy and requests peaks near 50 MiB here; each bound below is
# that plus the limit the code promises, with room to spare.
BASE_MIB = 100


# A small process that runs the command and writes its peak RSS (wait4's ru_maxrss) to
# argv[1]. Measured from pytest itself, a child's peak would start at pytest's own size:
# Linux carries the forking process's high-water mark across fork and exec.
TRAMPOLINE = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status) % 256)\n"
)


def measured(*command: str, timeout: float = 60) -> tuple[int, str, float]:
    """Run `python COMMAND` from the repo root: (exit code, stderr, peak RSS in MiB).
    A child still running after `timeout` is killed (what an endless read does)."""
    env = {k: v for k, v in CHILD_ENV.items() if not k.startswith("SERVING_")}
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "maxrss"
        proc = subprocess.Popen(
            [sys.executable, "-c", TRAMPOLINE, str(peak_file), sys.executable, *command],
            cwd=ROOT,
            env={**env, "SERVING_RETRIES": "0"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a process group: the timeout kills the command too
        )
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
            return proc.returncode, stderr, float("inf")
        return proc.returncode, stderr, int(peak_file.read_text()) / 1024  # Linux: KiB


def one_line(code: int, stderr: str) -> str:
    assert code == 2, (code, stderr[-2000:])
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


def predict(*args: str) -> tuple[int, str, float]:
    """The client's predict; nothing listens at the URL: the inputs are checked first."""
    (port,) = free_ports(1)
    return measured("-m", "serving", "predict", *args, "--url", f"http://127.0.0.1:{port}")


def npy_header(shape: tuple[int, ...], descr: str = "<f8", version: int = 1) -> bytes:
    """A .npy file's magic and header for `shape`, with no data after it."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    size = 4 if version == 2 else 2
    pad = -(len(text) + 1 + 8 + size) % 64
    text += " " * pad + "\n"
    length = struct.pack("<I" if version == 2 else "<H", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + length + text.encode()


def gzip_bomb(path: Path, header: bytes, zeros: int) -> Path:
    """`header` then `zeros` zero bytes, gzip-compressed: ~1 KB per MB."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    chunk = bytes(2**20)
    with path.open("wb") as f:
        f.write(z.compress(header))
        for _ in range(zeros // len(chunk)):
            f.write(z.compress(chunk))
        f.write(z.flush())
    return path


# --- The client's image and .npy files.


def test_a_huge_image_file_is_refused_after_reading_the_limit(tmp_path: Path) -> None:
    huge = tmp_path / "huge.png"
    with huge.open("wb") as f:  # a PNG signature, then 1 GiB (sparse: no disk, no time)
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(2**30)
    code, stderr, peak = predict(str(huge))
    assert one_line(code, stderr) == (
        f"error: {huge}: 1,073,741,824 bytes is over the {MAX_IMAGE_BYTES:,}-byte limit for a "
        "digit image; scale it down first"
    )
    assert peak < BASE_MIB + MAX_IMAGE_BYTES / 2**20, peak  # not the file's 1 GiB


def test_an_endless_file_is_refused_after_reading_the_limit(tmp_path: Path) -> None:
    endless = tmp_path / "zero.png"
    endless.symlink_to("/dev/zero")  # reads never end; its size says 0
    code, stderr, peak = predict(str(endless))
    assert one_line(code, stderr) == (
        f"error: {endless}: runs past the {MAX_IMAGE_BYTES:,}-byte limit for a digit image; "
        "scale it down first"
    )
    assert peak < BASE_MIB + MAX_IMAGE_BYTES / 2**20, peak


def test_a_small_npy_claiming_a_huge_array_is_refused_from_its_header(tmp_path: Path) -> None:
    claims = tmp_path / "claims.npy"
    claims.write_bytes(npy_header((1_275_510_204, 28, 28)))  # 10^12 float64 values
    assert claims.stat().st_size == 128
    code, stderr, peak = predict(str(claims))
    assert one_line(code, stderr) == (
        f"error: {claims}: its header says (1275510204, 28, 28) float64 values "
        f"(7,999,999,999,488 bytes), over the {MAX_ARRAY_BYTES:,}-byte limit for a .npy "
        "file; split it, or store uint8 pixels"
    )
    assert peak < BASE_MIB, peak


@pytest.mark.parametrize("version", [1, 2])
def test_an_npy_shorter_than_its_header_says_is_truncated(tmp_path: Path, version: int) -> None:
    short = tmp_path / "short.npy"
    short.write_bytes(npy_header((100, 28, 28), "|u1", version) + bytes(1000))
    with pytest.raises(InputError) as e:
        inputs.read_npy(short)
    assert str(e.value) == (
        f"{short}: is truncated: its header says (100, 28, 28) uint8 values (78,400 bytes) "
        "but 1,000 bytes follow it"
    )


def test_a_short_npy_claiming_just_under_the_limit_costs_no_memory(tmp_path: Path) -> None:
    """Its size is read from the file system before the header's size is allocated."""
    claims = tmp_path / "claims.npy"
    count = MAX_ARRAY_BYTES // (28 * 28) - 1
    claims.write_bytes(npy_header((count, 28, 28), "|u1"))
    code, stderr, peak = predict(str(claims))
    assert one_line(code, stderr) == (
        f"error: {claims}: is truncated: its header says ({count}, 28, 28) uint8 values "
        f"({count * 28 * 28:,} bytes) but 0 bytes follow it"
    )
    assert peak < BASE_MIB + MAX_ARRAY_BYTES / 2**20 / 4, peak  # not the claimed 128 MiB


@pytest.mark.parametrize(
    "shape, descr, says",
    [
        ((3, 32, 32), "|u1", "shape (3, 32, 32) is not 28x28 pixels"),
        ((0, 28, 28), "|u1", "empty batch (0 images)"),
        ((28, 28), "<U4", "dtype <U4 is not a pixel type"),
    ],
)
def test_npy_shape_and_dtype_are_refused_before_any_data_is_read(
    tmp_path: Path, shape, descr: str, says: str
) -> None:
    path = tmp_path / "bad.npy"
    path.write_bytes(npy_header(shape, descr))  # no data at all: the header decides
    with pytest.raises(InputError, match=r"^" + str(path) + ": ") as e:
        inputs.read_npy(path)
    assert says in str(e.value)


@pytest.mark.parametrize(
    "array",
    [
        make_digits(5, seed=2)[0],  # uint8 (n, 28, 28)
        np.asfortranarray(make_digits(1, seed=2)[0][0].astype(">u2")),  # big-endian, Fortran
        make_digits(3, seed=2)[0][..., None].astype(np.float64),  # whole-number floats
    ],
)
def test_npy_files_read_as_numpy_writes_them(tmp_path: Path, array: np.ndarray) -> None:
    path = tmp_path / "ok.npy"
    np.save(path, array)
    pixels = inputs.read_npy(path)
    assert pixels.dtype == np.uint8 and pixels.shape[1:] == (28, 28, 1)
    np.testing.assert_array_equal(pixels.reshape(array.shape), np.load(path))


# --- idx files: the client's --idx and the data import.


def test_a_gzip_bomb_behind_an_idx_header_costs_only_what_the_header_says(
    tmp_path: Path,
) -> None:
    """A 256 KB .gz whose header says 10,000 images (7.8 MB) but which inflates to
    256 MiB: reading stops at the first byte past the 7.8 MB."""
    bomb = gzip_bomb(tmp_path / IDX_BOMB, struct.pack(">IIII", 2051, 10_000, 28, 28), 2**28)
    assert bomb.stat().st_size < 2**20
    code, stderr, peak = predict("--idx", str(bomb))
    assert one_line(code, stderr) == (
        f"error: {bomb}: has trailing bytes: the header says 10,000 images (7,840,016 bytes) "
        "but more follow; download it again."
    )
    assert peak < BASE_MIB + 8, peak  # the 7.8 MB the header promised, not 256 MiB


def test_a_gzip_bomb_whose_trailer_disagrees_with_its_header_costs_no_memory(
    tmp_path: Path,
) -> None:
    """A 256 KB .gz whose header says 200,000 images (157 MB), within the limit, but which
    inflates to 256 MiB: its gzip trailer records that size, so the data is counted and
    dropped, never kept; the header's 157 MB is not spent."""
    bomb = gzip_bomb(tmp_path / IDX_BOMB, struct.pack(">IIII", 2051, 200_000, 28, 28), 2**28)
    code, stderr, peak = predict("--idx", str(bomb))
    assert one_line(code, stderr) == (
        f"error: {bomb}: has trailing bytes: the header says 200,000 images (156,800,016 "
        "bytes) but more follow; download it again."
    )
    assert peak < BASE_MIB, peak  # not the 157 MB the header claims


def test_an_idx_split_into_several_gzip_members_reads_whole(tmp_path: Path) -> None:
    """Concatenated gzip members (`cat a.gz b.gz`, bgzip) are one file to gzip; the
    trailer counts only the last member, so it disagrees with the header, yet the file
    is read."""
    images, _ = make_digits(10, seed=1)
    data = idx_bytes(images, 2051)
    path = tmp_path / IDX_BOMB
    path.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]))
    np.testing.assert_array_equal(idx.read_images(path), images)


def test_an_idx_header_claiming_more_than_the_limit_is_refused_before_reading(
    tmp_path: Path,
) -> None:
    claims = tmp_path / IDX_BOMB
    claims.write_bytes(gzip.compress(struct.pack(">IIII", 2051, 2**32 - 1, 28, 28)))
    with pytest.raises(idx.IdxError) as e:
        idx.read_images(claims)
    assert str(e.value) == (
        f"{claims}: the header says 4,294,967,295 images, more than the "
        f"{idx.MAX_ITEMS:,} an idx file may hold here; is it an MNIST file?"
    )


def test_a_truncated_gzip_idx_is_named_with_the_bytes_it_holds(tmp_path: Path) -> None:
    images, _ = make_digits(10, seed=1)
    whole = gzip.compress(idx_bytes(images, 2051))
    cut = tmp_path / IDX_BOMB
    cut.write_bytes(whole[: len(whole) // 2])  # the gzip stream ends early
    with pytest.raises(idx.IdxError, match=r"cannot be read as gzip .*; download it again\.$"):
        idx.read_images(cut)
    short = tmp_path / "short-images-idx3-ubyte"
    short.write_bytes(idx_bytes(images, 2051)[:-100])  # uncompressed, 100 bytes short
    with pytest.raises(idx.IdxError) as e:
        idx.read_images(short)
    assert str(e.value) == (
        f"{short}: truncated: the header says 10 images (7,856 bytes) but the data is 7,756 "
        "bytes; download it again."
    )


def test_the_data_import_stops_a_gzip_bomb_with_one_line_in_bounded_memory(
    tmp_path: Path,
) -> None:
    """The import's reader (idx.read_folder, what `python -m trainer data import` runs),
    in a child of its own; its checks are those of the client's --idx."""
    folder = tmp_path / "idx"
    folder.mkdir()
    for split, n in (("train", 20), ("t10k", 10)):
        images, labels = make_digits(n, seed=1)
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(labels, 2049))
        )
        if split == "t10k":
            (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(
                gzip.compress(idx_bytes(images, 2051))
            )
    bomb = gzip_bomb(
        folder / "train-images-idx3-ubyte.gz", struct.pack(">IIII", 2051, 20, 28, 28), 2**28
    )
    code, stderr, peak = measured(
        "-c",
        "import sys; from digits import idx\n"
        "try: idx.read_folder(sys.argv[1])\n"
        "except idx.IdxError as e: sys.exit(f'error: {e}')",
        str(folder),
    )
    assert code == 1  # sys.exit(message)
    assert stderr.strip() == (
        f"error: {bomb}: has trailing bytes: the header says 20 images (15,696 bytes) but "
        "more follow; download it again."
    )
    assert peak < BASE_MIB, peak


IDX_BOMB = "t10k-images-idx3-ubyte.gz"
