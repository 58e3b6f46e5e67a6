"""The shared, TensorFlow-free pieces: the serving contract and the idx reader."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from digits import contract, idx
from support import CHILD_ENV, ROOT, idx_bytes, make_digits


def test_the_public_names_users_depend_on() -> None:
    """These names are in users' requests and code (README, curl examples): renaming one
    breaks every client, so a change here must be deliberate."""
    assert (contract.PIXELS.name, contract.PIXELS.input) == ("serving_default", "images")
    assert (contract.PIXELS.dtype, contract.PIXELS.shape) == ("uint8", (None, 28, 28, 1))
    assert (contract.IMAGE.name, contract.IMAGE.input) == ("predict_image", "image_bytes")
    assert (contract.IMAGE.dtype, contract.IMAGE.shape) == ("string", (None,))
    assert contract.OUTPUTS == {
        "probabilities": ("float32", (None, 10)),
        "classes": ("int64", (None,)),
    }
    assert contract.MODEL_NAME == "mnist"
    # predict_image's answer per image: a refused image's row says so.
    assert contract.PIXELS.outputs == contract.OUTPUTS
    assert contract.IMAGE.outputs == {**contract.OUTPUTS, "image_status": ("string", (None,))}
    assert (contract.IMAGE_STATUS, contract.IMAGE_OK, contract.INVALID_CLASS) == (
        "image_status",
        "ok",
        -1,
    )


def test_versions_are_the_numeric_folders_only(tmp_path: Path) -> None:
    for name in ("3", "10", ".tmp-abc", "2-old", "latest"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert contract.versions(tmp_path) == [3, 10]
    assert contract.versions(tmp_path / "missing") == []


def test_digits_imports_numpy_but_never_tensorflow() -> None:
    code = (
        "import sys, digits.contract, digits.idx; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'trainer')]; "
        "print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=CHILD_ENV, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_idx_reader_reads_gzip_and_raw_alike(tmp_path: Path) -> None:
    images, labels = make_digits(5, seed=3)
    (tmp_path / "a-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images, 2051)))
    (tmp_path / "a-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 2049))
    np.testing.assert_array_equal(idx.read_images(tmp_path / "a-images-idx3-ubyte.gz"), images)
    labels_path = idx.labels_path_for(tmp_path / "a-images-idx3-ubyte")
    np.testing.assert_array_equal(idx.read_labels(labels_path), labels)


@pytest.mark.parametrize(
    ("content", "reader", "message"),
    [
        (b"", idx.read_images, "too short for an idx header"),
        (b"\0\0\x08\x01" + b"\0" * 4, idx.read_images, "it looks like a labels file"),
        (b"\0\0\x08\x03\0\0\0\x01\0\0\0\x1c", idx.read_images, "header truncated"),
        (b"\0\0\x08\x01\0\0\0\x02\x01", idx.read_labels, "truncated: the header says 2 labels"),
        (b"\0\0\x08\x01\0\0\0\x01\x0a", idx.read_labels, "label #0 is 10"),
    ],
)
def test_idx_reader_names_the_file_and_the_problem(tmp_path, content, reader, message) -> None:
    path = tmp_path / "file-idx"
    path.write_bytes(content)
    with pytest.raises(idx.IdxError, match=message) as error:
        reader(path)
    assert str(path) in str(error.value)
