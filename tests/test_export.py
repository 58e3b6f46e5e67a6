"""The export contract TF Serving relies on: atomic versions, both signatures, warmup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from digits import contract, idx
from support import ROOT
from trainer import config, data, export, preprocess, train, warmup
from trainer.model import build_model

# Under pytest-xdist (make test), this module's tests share module-scoped fixtures:
# one worker runs them all, so each fixture is built once.
pytestmark = pytest.mark.xdist_group("test_export")

SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="module")
def model() -> tf.keras.Model:
    return build_model(seed=1)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One plain export of `model`, for the tests that only read it."""
    return export.export_model(model, tmp_path_factory.mktemp("exported") / "mnist")


def _dirs(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir()) if base.exists() else []


def test_versions_count_up_and_ignore_non_numeric_folders(model, tmp_path: Path) -> None:
    base = tmp_path / "mnist"
    (base / "3").mkdir(parents=True)
    (base / "3" / "saved_model.pb").write_bytes(b"an older version")
    (base / "latest").mkdir()
    (base / ".tmp-crashed").mkdir()
    path = export.export_model(model, base)
    assert path == base / "4"
    assert contract.versions(base) == [3, 4]
    assert _dirs(base) == [".tmp-crashed", "3", "4", "latest"]  # nothing else left behind


def test_failed_export_leaves_no_version_and_no_staging(model, tmp_path: Path, monkeypatch) -> None:
    def broken(*_a, **_k):
        raise RuntimeError("simulated crash after writing, before publishing")

    monkeypatch.setattr(export, "check_export", broken)
    base = tmp_path / "mnist"
    with pytest.raises(RuntimeError, match="simulated crash"):
        export.export_model(model, base)
    assert _dirs(base) == []


def test_staging_is_invisible_to_tf_serving_until_renamed(model, tmp_path: Path, monkeypatch):
    seen = []
    real_publish = export._publish

    def spy(staging: Path, base_dir: Path) -> Path:
        seen.append(
            (staging.name, contract.versions(base_dir), sorted(p.name for p in staging.iterdir()))
        )
        return real_publish(staging, base_dir)

    monkeypatch.setattr(export, "_publish", spy)
    path = export.export_model(model, tmp_path / "mnist", summary={"note": "x"})
    (staging_name, numeric_before, contents) = seen[0]
    assert staging_name.startswith(".tmp-") and numeric_before == []
    # Everything, warmup and summary included, is in place before the rename.
    assert {"saved_model.pb", "variables", "assets.extra", "training_summary.json"} <= set(contents)
    assert path.name == "1"


def test_a_racing_exporter_never_shares_a_version(model, tmp_path: Path, monkeypatch) -> None:
    base = tmp_path / "mnist"
    (base / "1").mkdir(parents=True)  # version 1 exists and is not empty (another exporter's)
    (base / "1" / "saved_model.pb").write_bytes(b"the other exporter's version")
    monkeypatch.setattr(export, "versions", lambda _b: [])  # a stale view: "next is 1"
    path = export.export_model(model, base)
    assert path.name == "2" and (path / "saved_model.pb").is_file()
    assert _dirs(base / "1") == ["saved_model.pb"]  # untouched
    assert (base / "1" / "saved_model.pb").read_bytes() == b"the other exporter's version"


def test_warmup_records_replay_through_the_saved_model(exported: Path) -> None:
    path = exported
    requests = warmup.read(path)
    by_signature = {}
    for r in requests:
        by_signature.setdefault(r.model_spec.signature_name, []).append(r)
        assert r.model_spec.name == "mnist"
    assert set(by_signature) == {"serving_default", "predict_image"}
    assert [
        r.inputs["images"].tensor_shape.dim[0].size for r in by_signature["serving_default"]
    ] == list(warmup.BATCH_SIZES)
    assert all("image_bytes" in r.inputs for r in by_signature["predict_image"])
    # predict_image has one more: refused images among valid ones (its per-image path).
    sizes = [
        r.inputs["image_bytes"].tensor_shape.dim[0].size for r in by_signature["predict_image"]
    ]
    assert sizes == [*warmup.BATCH_SIZES, warmup.BATCH_SIZES[1] + 2]
    assert warmup.replay(path) == len(requests) == 2 * len(warmup.BATCH_SIZES) + 1


def test_warmup_replay_fails_an_export_that_fails_refused_images(model, tmp_path, monkeypatch):
    """The per-image answer is part of what every export is checked for: a signature
    that failed on a refused image (as before it answered per image) is no version."""
    real = export._image_outputs

    def all_or_nothing(model, image_bytes):
        outputs = real(model, image_bytes)
        ok = tf.reduce_all(tf.equal(outputs[contract.IMAGE_STATUS], contract.IMAGE_OK))
        check = tf.debugging.Assert(ok, [outputs[contract.IMAGE_STATUS]])
        with tf.control_dependencies([check]):
            return {k: tf.identity(v) for k, v in outputs.items()}

    monkeypatch.setattr(export, "_image_outputs", all_or_nothing)
    with pytest.raises(tf.errors.InvalidArgumentError):
        export.export_model(model, tmp_path / "mnist")
    assert contract.versions(tmp_path / "mnist") == []


def test_predict_image_signature_contract(exported: Path) -> None:
    path = exported
    sig = tf.saved_model.load(str(path)).signatures["predict_image"]
    (spec,) = sig.structured_input_signature[1].values()
    assert (spec.name, spec.dtype, spec.shape.as_list()) == ("image_bytes", tf.string, [None])
    assert sig.structured_outputs["probabilities"].shape.as_list() == [None, 10]
    assert sig.structured_outputs["classes"].dtype == tf.int64
    assert {
        name: (t.dtype.name, tuple(t.shape.as_list())) for name, t in sig.structured_outputs.items()
    } == contract.IMAGE.outputs
    empty = sig(image_bytes=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, 10) and empty["classes"].shape == (0,)
    pixels = tf.saved_model.load(str(path)).signatures["serving_default"]
    assert pixels(images=tf.zeros([0, 28, 28, 1], tf.uint8))["probabilities"].shape == (0, 10)
    # A refused image is a row of its own, not an error.
    refused = sig(image_bytes=tf.constant([b"not an image"]))
    assert refused["classes"].numpy().tolist() == [contract.INVALID_CLASS]
    assert refused["probabilities"].numpy().tolist() == [[0.0] * 10]
    assert refused["image_status"].numpy().tolist() == [b"not a PNG or JPEG image (12 bytes)"]


def _blob(shape: tuple[int, int], box: tuple[int, int, int, int], ink: int, paper: int):
    img = np.full((*shape, 1), paper, np.uint8)
    top, left, h, w = box
    img[top : top + h, left : left + w] = ink
    return img


@pytest.mark.parametrize("encode", [tf.io.encode_png, tf.io.encode_jpeg])
def test_images_are_normalised_like_mnist(encode) -> None:
    # A dark stroke on white paper, off-centre in a large, non-square photo.
    photo = _blob((300, 180), (40, 20, 150, 40), ink=10, paper=245)
    out = preprocess.to_mnist(encode(photo)).numpy()[..., 0].astype(float)
    assert out.shape == (28, 28)
    assert out[0].max() < 30 and out[:, 0].max() < 30  # background now dark: inverted
    ys, xs = np.nonzero(out > 50)
    assert ys.max() - ys.min() + 1 <= 21 and xs.max() - xs.min() + 1 <= 21  # fits the 20x20 box
    assert ys.max() - ys.min() + 1 >= 19  # and fills it along the long side
    total = out.sum()
    cy, cx = (out.sum(1) @ np.arange(28)) / total, (out.sum(0) @ np.arange(28)) / total
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1  # centre of mass at the centre


@pytest.fixture(scope="module")
def mnist_model(tmp_path_factory) -> Path:
    """A model trained briefly on real MNIST (12k images), exported: the class
    agreement below means something only with real digits."""
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"real MNIST idx files not found at {SHARED_MNIST}")
    tmp = tmp_path_factory.mktemp("mnist")
    splits = {s: idx.read_split(SHARED_MNIST, s) for s in ("train", "test")}

    def ds(split, n):
        return tf.data.Dataset.from_tensor_slices(
            (splits[split].images[:n, ..., None], splits[split].labels[:n].astype("int64"))
        )

    cfg = config.TrainConfig(
        epochs=1,
        batch_size=64,
        learning_rate=2e-3,
        augment=False,
        data_dir=str(tmp / "d"),
        job_dir=str(tmp / "job"),
        export_dir=str(tmp / "export"),
        checkpoint_every=10_000,
    )
    summary = train.run(
        cfg, splits=data.Splits(ds("train", 12_000), ds("test", 1000), 12_000, 1000)
    )
    assert summary["test_accuracy"] > 0.9
    return Path(summary["export_path"])


def test_predict_image_agrees_with_serving_default_on_real_digits(mnist_model: Path) -> None:
    images = idx.read_images(SHARED_MNIST / "t10k-images-idx3-ubyte.gz")
    pixels = images[-300:, ..., None]  # not seen in training
    loaded = tf.saved_model.load(str(mnist_model))
    by_pixels = loaded.signatures["serving_default"](images=tf.constant(pixels))["classes"].numpy()

    pngs = tf.constant([tf.io.encode_png(p).numpy() for p in pixels])
    by_png = loaded.signatures["predict_image"](image_bytes=pngs)["classes"].numpy()
    assert np.mean(by_png == by_pixels) >= 0.98

    # The same digits as a phone might see them: dark ink on paper, 4x larger, JPEG.
    big = tf.image.resize(pixels, [112, 112]).numpy()
    paper = np.clip(255 - big, 0, 255).astype(np.uint8)
    jpegs = tf.constant([tf.io.encode_jpeg(p, quality=90).numpy() for p in paper])
    by_jpeg = loaded.signatures["predict_image"](image_bytes=jpegs)["classes"].numpy()
    assert np.mean(by_jpeg == by_pixels) >= 0.95


def test_sample_pngs_agree_with_their_pixels(mnist_model: Path) -> None:
    samples = sorted((ROOT / "serving" / "samples").glob("*.png"))
    if not samples:
        pytest.skip("no serving/samples/*.png yet")
    loaded = tf.saved_model.load(str(mnist_model))
    for png in samples:
        raw = png.read_bytes()
        by_png = loaded.signatures["predict_image"](image_bytes=tf.constant([raw]))
        pixels = tf.image.resize(tf.io.decode_png(raw, channels=1), [28, 28])
        if float(tf.reduce_mean(pixels[0])) > 127:  # a dark-on-light sample
            pixels = 255 - pixels
        by_pixels = loaded.signatures["serving_default"](
            images=tf.cast(tf.round(pixels), tf.uint8)[None]
        )
        assert int(by_png["classes"][0]) == int(by_pixels["classes"][0]), png.name
