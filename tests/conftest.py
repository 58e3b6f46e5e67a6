"""Shared fixtures: small, learnable MNIST-shaped data written as real idx files.

Each class k draws a bright 7x7 square at its own spot of the 28x28 canvas, plus
noise, so a model that learns anything scores far above chance within two epochs.
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SIZE, TEST_SIZE = 384, 128

# Children get the project on the path and quiet TF logs.
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PYTHONUNBUFFERED": "1",
}
for _name in list(CHILD_ENV):
    if _name.startswith("TRAINER_") or _name in ("TF_CONFIG", "MNIST_IDX_DIR"):
        del CHILD_ENV[_name]


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        r, c = 3 + (k // 5) * 12, 1 + (k % 5) * 5
        images[i, r : r + 7, c : c + 5] = 255
    return images, labels


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I" + "I" * array.ndim, magic, *array.shape) + array.tobytes()


def write_idx_dir(path: Path, train: int = TRAIN_SIZE, test: int = TEST_SIZE) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", train, 1), ("t10k", test, 2)):
        images, labels = make_digits(n, seed)
        (path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(images, 2051))
        )
        (path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(labels, 2049))
        )
    return path


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_idx_dir(tmp_path_factory.mktemp("idx"))


@pytest.fixture(scope="session")
def data_dir(idx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TFDS data dir prepared by the project's own import command."""
    out = tmp_path_factory.mktemp("tfds")
    result = run_cli("data", "import", "--idx-dir", str(idx_dir), "--data-dir", str(out))
    assert result.returncode == 0, result.stderr
    return out


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        env={**CHILD_ENV, **(env or {})},
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def small_run_args(data_dir: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        "--data-dir",
        str(data_dir),
        "--job-dir",
        str(tmp / "job"),
        "--export-dir",
        str(tmp / "export"),
        "--batch-size",
        "32",
        "--learning-rate",
        "0.003",
        *extra,
    ]


def exported_probabilities(export_path: str | Path) -> np.ndarray:
    """The served probabilities of an export on the fixed test digits (seed 2)."""
    import tensorflow as tf

    images, _ = make_digits(TEST_SIZE, seed=2)
    sig = tf.saved_model.load(str(export_path)).signatures["serving_default"]
    return sig(images=tf.constant(images[..., None]))["probabilities"].numpy()
