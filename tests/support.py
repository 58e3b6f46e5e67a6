"""What several test modules share: small learnable MNIST-shaped data (as arrays, idx
files and in-memory splits), small training configs, the CLI runners, a trained
two-version export, and free loopback ports. Fixtures that wrap these are in conftest.py.

Each class k draws a bright 7x7 square at its own spot of the 28x28 canvas, plus noise,
so a model that learns anything scores far above chance within two epochs.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from digits import contract

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SIZE, TEST_SIZE = 384, 128
IDX_IMAGES = "t10k-images-idx3-ubyte.gz"
SAMPLES = ROOT / "serving" / "samples"

# Children get the project on the path and quiet TF logs.
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PYTHONUNBUFFERED": "1",
}
for _name in list(CHILD_ENV):
    if _name.startswith("TRAINER_") or _name in (
        "TF_CONFIG",
        "MNIST_IDX_DIR",
        "JOB_COMPLETION_INDEX",
    ):
        del CHILD_ENV[_name]


# --- Data.


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [n, 28, 28] and labels [n]; seed 1 is the train split, 2 the test."""
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


def memory_splits(train: int = TRAIN_SIZE, test: int = TEST_SIZE):
    """The same digits as write_idx_dir, as in-memory `data.Splits` (no TFDS, no files):
    the dtypes and shapes `tfds.load('mnist', as_supervised=True)` gives."""
    import tensorflow as tf

    from trainer import data

    def split(n: int, seed: int) -> tf.data.Dataset:
        images, labels = make_digits(n, seed)
        return tf.data.Dataset.from_tensor_slices((images[..., None], labels.astype(np.int64)))

    return data.Splits(split(train, 1), split(test, 2), train_size=train, test_size=test)


# --- Training.


def small_config(data_dir: Path, tmp: Path, **overrides):
    """A two-epoch run on the small digits that learns them (> 90 %) in seconds."""
    from trainer import config

    values = dict(
        epochs=2,
        batch_size=32,
        learning_rate=3e-3,
        data_dir=str(data_dir),
        job_dir=str(tmp / "job"),
        export_dir=str(tmp / "export"),
        checkpoint_every=5,
    )
    return config.TrainConfig(**{**values, **overrides})


def small_run_args(data_dir: Path, tmp: Path, *extra: str) -> list[str]:
    """The CLI flags of small_config (apart from epochs and checkpoint cadence)."""
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


def two_version_export(tmp: Path) -> Path:
    """Train small_config in-process on in-memory data and copy version 1 to 2, so that
    a server has a version and a label to tell apart; returns EXPORT_DIR/mnist."""
    from trainer import train

    train.run(small_config(tmp / "no-data", tmp), splits=memory_splits())
    base = tmp / "export" / contract.MODEL_NAME
    shutil.copytree(base / "1", base / "2")
    return base


def run_module(
    module: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in a child process from the repo root, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env={**CHILD_ENV, **(env or {})},
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """`python -m trainer ARGS` in a child process, as a user runs it."""
    return run_module("trainer", *args, env=env, timeout=timeout, cwd=cwd)


def exported_probabilities(export_path: str | Path) -> np.ndarray:
    """The served probabilities of an export on the fixed test digits (seed 2)."""
    import tensorflow as tf

    images, _ = make_digits(TEST_SIZE, seed=2)
    sig = tf.saved_model.load(str(export_path)).signatures[contract.PIXELS.name]
    outputs = sig(**{contract.PIXELS.input: tf.constant(images[..., None])})
    return outputs[contract.PROBABILITIES].numpy()


# --- Network.


def free_ports(n: int = 1) -> list[int]:
    """n distinct loopback ports that nothing listens on (connections are refused)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --- The client CLI (test_client.py against the stand-in, test_integration.py against
# the real server).


def run_client(*args: str, url: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """`python -m serving ARGS --url URL` from the repo root, as a user runs it.

    Retries are kept few and fast (one retry, 50 ms backoff) unless a test asks for more.
    """
    child_env = {k: v for k, v in CHILD_ENV.items() if not k.startswith("SERVING_")}
    child_env.update({"SERVING_RETRIES": "1", "SERVING_BACKOFF": "0.05", **env})
    command = [sys.executable, "-m", "serving", *args]
    if url is not None:
        command += ["--url", url]
    return subprocess.run(
        command, cwd=ROOT, env=child_env, capture_output=True, text=True, timeout=120
    )


def client_json(*args: str, url: str) -> dict:
    result = run_client(*args, "--json", url=url)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def error_line(result: subprocess.CompletedProcess, exit_code: int) -> str:
    """The failure is one line on stderr and a non-zero exit, never a traceback."""
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(np.asarray(pixels, np.uint8).reshape(28, 28)).save(path)
    return path


def png_bytes(
    width: int, height: int, bit_depth: int = 8, colour_type: int = 0, row: bytes | None = None
) -> bytes:
    """A PNG written by hand, every row `row` (default: zeros), so that any size can be
    made: a 40000x40000 1-bit image of zeros is 200 MB of rows but ~200 KB compressed.
    colour_type is IHDR's: 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    line = b"\0" + (row if row is not None else bytes((width * channels * bit_depth + 7) // 8))
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(line) for _ in range(height)) + z.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def digit_pngs(folder: Path, n: int = 8) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """n learnable test digits (make_digits, the t10k seed) as 28x28 PNGs."""
    images, labels = make_digits(TEST_SIZE, seed=2)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_png(folder / f"test-{i}.png", images[i]) for i in range(n)]
    return paths, images[:n, :, :, None], labels[:n]


def status_versions(answer: dict) -> dict[str, str]:
    return {v["version"]: v["state"] for v in answer["model_version_status"]}


def needs_image_signature(loaded) -> None:
    import pytest

    if contract.IMAGE.name not in loaded.signatures:
        pytest.skip(
            "this export has no predict_image signature yet (trainer/export.py adds it); "
            f"it has {sorted(loaded.signatures)}"
        )


# Served probabilities agree to a few float32 ulps, not bit for bit, across batchings:
# oneDNN picks its kernels (and so its summation order) by batch shape and CPU, and the
# softmax carries the difference (up to 5.7e-6 relative seen). Classes compare exactly.
PROBABILITY_TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}


def assert_probabilities_close(actual, expected) -> None:
    np.testing.assert_allclose(
        np.asarray(actual, np.float32), np.asarray(expected, np.float32), **PROBABILITY_TOLERANCE
    )


def assert_same_predictions(a: list[dict], b: list[dict]) -> None:
    """Two `predict --json` prediction lists: every field equal but the probabilities,
    which agree within PROBABILITY_TOLERANCE."""
    floats = ("probability", "probabilities")
    assert [{k: v for k, v in r.items() if k not in floats} for r in a] == [
        {k: v for k, v in r.items() if k not in floats} for r in b
    ]
    for key in floats:
        assert_probabilities_close([r[key] for r in a], [r[key] for r in b])
