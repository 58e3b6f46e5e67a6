"""idx import (good and corrupt files) and the tf.data pipeline."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from digits import idx
from support import TEST_SIZE, TRAIN_SIZE, idx_bytes, make_digits, run_cli, write_idx_dir
from trainer import cli, data


def test_import_writes_a_tfds_mnist_that_tfds_load_reads(idx_dir: Path, data_dir: Path) -> None:
    # `data_dir` was prepared by `python -m trainer data import`; plain TFDS reads it back.
    train, test = tfds.load(
        "mnist", split=["train", "test"], data_dir=str(data_dir), download=False, as_supervised=True
    )
    images, labels = next(iter(train.batch(TRAIN_SIZE)))
    assert images.shape == (TRAIN_SIZE, 28, 28, 1) and images.dtype == tf.uint8
    assert labels.dtype == tf.int64
    expected_images, expected_labels = make_digits(TRAIN_SIZE, seed=1)
    np.testing.assert_array_equal(images.numpy()[..., 0], expected_images)  # idx order kept
    np.testing.assert_array_equal(labels.numpy(), expected_labels)
    assert sum(1 for _ in test) == TEST_SIZE


def test_import_twice_is_a_no_op(idx_dir: Path, data_dir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in data_dir.rglob("*")}
    result = run_cli("data", "import", "--idx-dir", str(idx_dir), "--data-dir", str(data_dir))
    assert result.returncode == 0
    assert "already prepared" in result.stderr and "nothing to import" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in data_dir.rglob("*")} == before


def _corrupt(path: Path, transform) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(transform(raw)))


def _set_label(raw: bytes) -> bytes:
    return raw[:8] + bytes([12]) + raw[9:]


CORRUPTIONS = {
    "bad magic": (
        "train-images-idx3-ubyte.gz",
        lambda r: struct.pack(">I", 1234) + r[4:],
        "magic number 1234 (0x000004d2), expected 2051",
    ),
    "truncated": (
        "t10k-images-idx3-ubyte.gz",
        lambda r: r[:-100],
        "truncated: the header says 128 images",
    ),
    "trailing bytes": ("train-labels-idx1-ubyte.gz", lambda r: r + b"\0\0", "has trailing bytes"),
    "wrong size": (
        "train-images-idx3-ubyte.gz",
        lambda r: r[:8] + struct.pack(">II", 32, 24) + r[16:],
        "images are 32x24, expected 28x28",
    ),
    "label out of range": (
        "train-labels-idx1-ubyte.gz",
        _set_label,
        "label #0 is 12, but MNIST labels are 0-9",
    ),
    "count mismatch": (
        "t10k-labels-idx1-ubyte.gz",
        lambda r: struct.pack(">II", 2049, 127) + r[8:-1],
        "holds 128 images but t10k-labels-idx1-ubyte.gz holds 127 labels",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_idx_files_are_named_with_the_problem(tmp_path: Path, case: str, capsys) -> None:
    """The first case as a user runs it (a process: its exit status and stderr); the others
    through the same cli.main in-process, since only the idx check differs between them
    and a process start (TensorFlow's import) is most of each one's time."""
    name, transform, message = CORRUPTIONS[case]
    src = write_idx_dir(tmp_path / "idx", train=64, test=128)
    _corrupt(src / name, transform)
    out = tmp_path / "tfds"
    args = ("data", "import", "--idx-dir", str(src), "--data-dir", str(out))
    if case == min(CORRUPTIONS):
        result = run_cli(*args)
        code, stderr = result.returncode, result.stderr
    else:
        code, stderr = cli.main(list(args)), capsys.readouterr().err
    assert code == 2
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and message in line, line
    assert "Traceback" not in stderr
    assert not out.exists()  # validated before anything is written


def test_swapped_files_are_spotted(tmp_path: Path) -> None:
    src = write_idx_dir(tmp_path, train=8, test=8)
    images, labels = src / "train-images-idx3-ubyte.gz", src / "train-labels-idx1-ubyte.gz"
    tmp = src / "swap"
    images.rename(tmp)
    labels.rename(images)
    tmp.rename(labels)
    with pytest.raises(idx.IdxError, match="are the files swapped"):
        idx.read_folder(src)


def test_missing_file_and_not_gzip(tmp_path: Path) -> None:
    src = write_idx_dir(tmp_path, train=8, test=8)
    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(idx.IdxError, match="missing t10k-labels-idx1-ubyte.gz"):
        idx.read_folder(src)
    (src / "t10k-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip")
    with pytest.raises(idx.IdxError, match="cannot be read as gzip"):
        idx.read_folder(src)


def test_uncompressed_files_are_accepted_and_published_md5_recognised(tmp_path: Path) -> None:
    src = write_idx_dir(tmp_path, train=8, test=8)
    for gz in src.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    splits = idx.read_folder(src)
    assert len(splits["train"].labels) == 8 and not splits["train"].published


@pytest.mark.parametrize("read_batch", [100, 1024])  # several batches and a remainder; one
def test_splits_are_what_tfds_load_reads_in_stored_order(
    data_dir: Path, monkeypatch, read_batch: int
) -> None:
    """data.load reads TFDS's files in batches (data.read_split): the same elements,
    types and order as tfds.load(as_supervised=True, shuffle_files=False)."""
    monkeypatch.setattr(data, "READ_BATCH", read_batch)
    splits = data.load(data_dir)
    for name, ds, size in (("train", splits.train, TRAIN_SIZE), ("test", splits.test, TEST_SIZE)):
        ref = tfds.load(
            "mnist", split=name, data_dir=str(data_dir), as_supervised=True,
            shuffle_files=False, download=False,
        )  # fmt: skip
        assert ds.element_spec == ref.element_spec
        ours, theirs = (next(iter(d.batch(10_000))) for d in (ds, ref))
        assert ours[0].shape[0] == size
        np.testing.assert_array_equal(ours[0].numpy(), theirs[0].numpy())
        np.testing.assert_array_equal(ours[1].numpy(), theirs[1].numpy())


def test_train_batches_are_reproducible_and_resume_skips_exactly(data_dir: Path) -> None:
    splits = data.load(data_dir)
    source = data.cached(splits.train)

    def batches(epoch: int, skip: int = 0, part: int = 1) -> list[list]:
        """Part 1 of every batch (the labels) or part 2 (each image's augmentation)."""
        ds = data.train_batches(
            source,
            size=splits.train_size,
            global_batch=32,
            seed=7,
            epoch=epoch,
            skip_batches=skip,
            augment=True,
        )
        return [b[part].numpy().tolist() for b in ds]

    def labels(epoch: int, skip: int = 0) -> list[list[int]]:
        return batches(epoch, skip)

    def params(epoch: int, skip: int = 0) -> list[list[float]]:
        return batches(epoch, skip, part=2)

    assert params(0, skip=5) == params(0)[5:]  # a resumed epoch distorts as it would have
    first = labels(0)
    assert len(first) == TRAIN_SIZE // 32  # global batches, remainder dropped
    assert labels(0) == first  # same (seed, epoch) -> same order
    assert labels(1) != first  # a new order every epoch
    assert labels(0, skip=5) == first[5:]  # a resumed epoch continues where it stopped
    assert sorted(sum(first, [])) == sorted(splits_labels(splits))  # a full permutation


def test_a_clean_epoch_feeds_the_images_undistorted_through_the_same_step(
    data_dir: Path,
) -> None:
    """--clean-epochs: the same batches and element structure (so the compiled step is
    reused), with parameters that make the augmentation the exact identity."""
    splits = data.load(data_dir)
    source = data.cached(splits.train)

    def first_batch(distort: bool):
        ds = data.train_batches(
            source, size=splits.train_size, global_batch=32, seed=7, epoch=3,
            augment=True, distort=distort,
        )  # fmt: skip
        return next(iter(ds))

    images, labels, params = first_batch(distort=False)
    distorted = first_batch(distort=True)
    np.testing.assert_array_equal(labels.numpy(), distorted[1].numpy())
    assert not np.any(params.numpy()) and np.any(distorted[2].numpy())
    np.testing.assert_array_equal(data.apply_augmentation(images, params).numpy(), images.numpy())
    assert np.any(data.apply_augmentation(images, distorted[2]).numpy() != images.numpy())


def test_no_pipeline_of_a_run_starts_tf_datas_autotuning_thread(data_dir: Path) -> None:
    """Deleting an iterator joins that thread, which can sleep up to 60 s first
    (data.without_autotune): every pipeline the trainer, the quality gate and the
    export report build from the splits must have it off."""
    splits = data.load(data_dir)
    pipelines = {
        "train split": splits.train,
        "test split": splits.test,
        "an epoch": data.train_batches(
            data.cached(splits.train), size=splits.train_size, global_batch=32, seed=7,
            epoch=0, augment=True,
        ),
        "evaluation": data.eval_batches(splits.test, global_batch=32),
        "a report's batches": splits.test.batch(32).map(lambda x, y: (x, y)),
    }  # fmt: skip
    # Unset (None) means on: TF's default.
    tuned = [name for name, ds in pipelines.items() if ds.options().autotune.enabled is not False]
    assert not tuned
    assert len(next(iter(pipelines["an epoch"]))[0]) == 32  # and they still run


def splits_labels(splits: data.Splits) -> list[int]:
    return [int(label) for _, label in splits.train]


def test_augmentation_is_a_bounded_random_affine_transform() -> None:
    """A centred square: rotation and scaling about the centre keep its centre of mass,
    the shift moves it by at most MAX_SHIFT pixels; its ink changes at most with the
    scale squared; every image gets its own transform, reproducibly from the seed."""
    images = np.zeros((64, 28, 28, 1), np.uint8)
    images[:, 10:18, 10:18] = 255
    seed = tf.constant([3, 4], tf.int64)
    out = data.augment_images(tf.constant(images), seed).numpy()
    assert out.dtype == np.uint8 and out.shape == images.shape
    np.testing.assert_array_equal(out, data.augment_images(tf.constant(images), seed).numpy())
    rows, cols = np.mgrid[0:28, 0:28]
    ink = images[0, ..., 0].astype(float).sum()
    for img in out[..., 0].astype(float):
        mass = img.sum()
        assert (1 - data.MAX_SCALE) ** 2 * 0.9 <= mass / ink <= (1 + data.MAX_SCALE) ** 2 * 1.1
        centre = np.array([(img * rows).sum(), (img * cols).sum()]) / mass
        assert np.all(np.abs(centre - 13.5) <= data.MAX_SHIFT + 0.3)
    assert len({img.tobytes() for img in out}) == len(out)  # all different


def test_missing_dataset_without_idx_dir_or_network_is_one_clear_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    result = run_cli(
        "--data-dir",
        str(empty),
        "--job-dir",
        str(tmp_path / "j"),
        "--export-dir",
        str(tmp_path / "e"),
    )
    if "downloading it with TFDS" in result.stderr:
        pytest.skip("this machine can reach TFDS's download server")
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: MNIST is not in") and "python -m trainer data import" in line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "j").exists() and not (tmp_path / "e").exists()


def test_published_md5s_match_the_shared_files_when_present() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    if not shared.is_dir():
        pytest.skip(f"no MNIST idx files at {shared}")
    test = idx.read_split(shared, "test")
    assert test.published and len(test.labels) == idx.PUBLISHED_COUNTS["test"]


def test_idx_bytes_helper_roundtrip(tmp_path: Path) -> None:
    images, _ = make_digits(3, seed=0)
    path = tmp_path / "x-images-idx3-ubyte"
    path.write_bytes(idx_bytes(images, 2051))
    np.testing.assert_array_equal(idx.read_images(path), images)
    shutil.rmtree(tmp_path)
