"""Hostile bytes to the `predict_image` signature: refused per image, never decoded.

Anyone who can reach the server chooses the bytes, so trainer/preprocess.py reads the
header first and refuses anything that is not a PNG or JPEG or has a side over
MAX_IMAGE_SIDE before a decoder runs; bytes that pass the header and break the decoder
are caught per image. A refusal is that image's row (class -1, zero probabilities, the
reason in `image_status`), not an error: TF Serving's batching merges concurrent requests
into one graph run and copies an error to all of them (batching_session.cc), so an error
would fail other clients' images. Each case goes, between two good images, through the
exported SavedModel and through the stand-in over REST and gRPC on loopback, with and
without server-side batching; the good images get exactly the answers they get alone.
Odd but valid images (16-bit, alpha, palette transparency, CMYK JPEG) decode to the same
digit as a plain one.
"""

from __future__ import annotations

import base64
import functools
import io
import re
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from digits import contract
from digits.contract import CLASSES, IMAGE, IMAGE_STATUS, MODEL_NAME, PROBABILITIES
from support import (
    TEST_SIZE,
    assert_probabilities_close,
    make_digits,
    needs_image_signature,
    png_bytes,
)
from tools.standin import BatchingParameters, ModelServer, StandInServer
from trainer import preprocess

# Under pytest-xdist (make test), this module's tests share module-scoped fixtures:
# one worker runs them all, so each fixture is built once.
pytestmark = pytest.mark.xdist_group("test_hostile_images")

LIMIT = preprocess.MAX_IMAGE_SIDE


def _digit() -> np.ndarray:
    """A clean learnable test digit, uint8 [28, 28]: white block on black, no noise."""
    images, _ = make_digits(TEST_SIZE, seed=2)
    return np.where(images[0] == 255, 255, 0).astype(np.uint8)


DIGIT = _digit()


def encode(image: np.ndarray | Image.Image, fmt: str, **options) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


GOOD = encode(DIGIT, "PNG")  # the reference: 8-bit grey, white digit on black


def _with_header(data: bytes, offset: int, fields: bytes) -> bytes:
    return data[:offset] + fields + data[offset + len(fields) :]


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small baseline JPEG whose start-of-frame says width x height."""
    data = encode(DIGIT, "JPEG")
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height, width
    return _with_header(data, sof + 5, struct.pack(">HH", height, width))


def _animated_gif() -> bytes:
    out = io.BytesIO()
    first, second = Image.fromarray(DIGIT), Image.fromarray(255 - DIGIT)
    first.save(out, "GIF", save_all=True, append_images=[second])
    return out.getvalue()


def _noise(fmt: str) -> bytes:
    """64x64 noise: image data of a few KB that does not compress, to cut in the middle."""
    rng = np.random.default_rng(0)
    return encode(rng.integers(0, 256, (64, 64), dtype=np.uint8), fmt)


def _cut_inside_scan() -> bytes:
    data = _noise("JPEG")
    scan = data.index(b"\xff\xda")  # SOS: the header ends here, the scan follows
    return data[: (scan + len(data)) // 2]


def _corrupt_idat() -> bytes:
    data = bytearray(_noise("PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 100 : start + 200] = bytes(100)
    return bytes(data)


def _cut_before_first_scan() -> bytes:
    data = encode(DIGIT, "JPEG")
    return data[: data.index(b"\xff\xda")]  # SOS: libjpeg needs it to finish the header


@functools.cache
def _huge_png() -> bytes:
    return png_bytes(40_000, 40_000, bit_depth=1)  # 1 bit a pixel: 200 MB of rows to deflate


def _too_big(width: int, height: int) -> str:
    return f"{width}x{height} pixels, over the {LIMIT}x{LIMIT} limit"


NOT_AN_IMAGE = contract.NOT_AN_IMAGE
UNDECODABLE = contract.IMAGE_UNDECODABLE

# name: (the hostile bytes, built on first use; the start of its image_status). Each is
# sent between two good images.
HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    # Decoding would take 1.6 GB for the uint8 pixels, 6.4 GB once they are floats.
    "40000x40000 PNG (190 KB)": (_huge_png, _too_big(40_000, 40_000)),
    "PNG one pixel too wide": (lambda: png_bytes(LIMIT + 1, 8), _too_big(LIMIT + 1, 8)),
    "PNG one pixel too tall": (lambda: png_bytes(8, LIMIT + 1), _too_big(8, LIMIT + 1)),
    "60000x60000 JPEG header": (lambda: _jpeg_claiming(60_000, 60_000), _too_big(60_000, 60_000)),
    "JPEG too wide": (lambda: _jpeg_claiming(LIMIT + 1, 28), _too_big(LIMIT + 1, 28)),
    "PNG 0 pixels wide": (lambda: png_bytes(0, 5), "0x5 pixels (empty)"),
    "text": (lambda: b"hello", f"{NOT_AN_IMAGE} (5 bytes)"),
    "no bytes": (lambda: b"", f"{NOT_AN_IMAGE} (0 bytes)"),
    "PNG cut inside IHDR": (lambda: GOOD[:20], f"{NOT_AN_IMAGE} (20 bytes)"),
    # tf.io.decode_image reads these, but the contract is PNG/JPEG, and a GIF's header
    # does not bound it: TensorFlow sizes a GIF by its largest frame, not the header.
    "GIF": (lambda: encode(DIGIT, "GIF"), NOT_AN_IMAGE),
    "animated GIF": (_animated_gif, NOT_AN_IMAGE),
    "65535x65535 GIF header": (
        lambda: _with_header(encode(DIGIT, "GIF"), 6, struct.pack("<HH", 65535, 65535)),
        NOT_AN_IMAGE,
    ),
    "BMP": (lambda: encode(DIGIT, "BMP"), NOT_AN_IMAGE),
    "30000x30000 top-down BMP header": (
        lambda: _with_header(encode(DIGIT, "BMP"), 18, struct.pack("<ii", 30000, -30000)),
        NOT_AN_IMAGE,
    ),
    "WebP": (lambda: encode(DIGIT, "WEBP"), NOT_AN_IMAGE),
    # A header that passes, then bad data: the decoder fails on it (or libjpeg's marker
    # reader, before the first scan), and only that image is marked.
    "PNG cut inside IDAT": (lambda: _noise("PNG")[:2000], UNDECODABLE),
    "PNG with a zeroed run in IDAT": (_corrupt_idat, UNDECODABLE),
    "JPEG cut inside its scan": (_cut_inside_scan, UNDECODABLE),
    "JPEG cut before its first scan": (_cut_before_first_scan, UNDECODABLE),
}


def _bytes(case: str) -> bytes:
    return HOSTILE[case][0]()


@pytest.fixture(scope="module")
def loaded(export_base: Path):
    loaded = tf.saved_model.load(str(export_base / "2"))
    needs_image_signature(loaded)
    return loaded


@pytest.fixture(scope="module")
def server(export_base: Path):
    with StandInServer(ModelServer(export_base), grpc_port=0) as standin:
        yield standin


def _predict(loaded, images: list[bytes]) -> dict[str, np.ndarray]:
    outputs = loaded.signatures[IMAGE.name](**{IMAGE.input: tf.constant(images, tf.string)})
    return {k: v.numpy() for k, v in outputs.items()}


def _status(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def assert_refused_between_good_ones(classes, probabilities, statuses, case: str, good) -> None:
    """Rows: GOOD, the hostile image, GOOD. The hostile one is refused with its reason;
    the good ones get exactly what GOOD gets alone (`good`: classes, probabilities)."""
    statuses = [_status(s) for s in statuses]
    assert statuses[0] == statuses[2] == contract.IMAGE_OK
    assert statuses[1].startswith(HOSTILE[case][1]), statuses[1]
    assert int(classes[1]) == contract.INVALID_CLASS
    np.testing.assert_array_equal(np.asarray(probabilities[1]), np.zeros(10, np.float32))
    np.testing.assert_array_equal(np.asarray(classes)[[0, 2]], np.repeat(good[0], 2))
    assert_probabilities_close(np.asarray(probabilities)[[0, 2]], np.repeat(good[1], 2, axis=0))


@pytest.fixture(scope="module")
def good(loaded) -> tuple[np.ndarray, np.ndarray]:
    alone = _predict(loaded, [GOOD])
    return alone[CLASSES], alone[PROBABILITIES]


# --- Through the SavedModel.


@pytest.mark.parametrize("case", list(HOSTILE))
def test_saved_model_refuses_only_that_image(loaded, good, case: str) -> None:
    out = _predict(loaded, [GOOD, _bytes(case), GOOD])
    assert_refused_between_good_ones(
        out[CLASSES], out[PROBABILITIES], out[IMAGE_STATUS], case, good
    )


def test_exact_reasons(loaded) -> None:
    out = _predict(loaded, [b"hello", b"", png_bytes(LIMIT + 1, 8), png_bytes(0, 5)])
    assert [_status(s) for s in out[IMAGE_STATUS]] == [
        f"{NOT_AN_IMAGE} (5 bytes)",
        f"{NOT_AN_IMAGE} (0 bytes)",
        f"{LIMIT + 1}x8 pixels, over the {LIMIT}x{LIMIT} limit",
        "0x5 pixels (empty)",
    ]


def test_images_at_the_limit_are_taken(loaded) -> None:
    wide, tall = png_bytes(LIMIT, 8), png_bytes(8, LIMIT)
    out = _predict(loaded, [GOOD, wide, tall])
    assert out[CLASSES].shape == (3,)
    assert [_status(s) for s in out[IMAGE_STATUS]] == [contract.IMAGE_OK] * 3


def test_all_refused_and_empty_batches_are_answered(loaded) -> None:
    out = _predict(loaded, [b"x", b"y"])
    assert out[CLASSES].tolist() == [contract.INVALID_CLASS] * 2
    empty = _predict(loaded, [])
    assert empty[CLASSES].shape == (0,) and empty[IMAGE_STATUS].shape == (0,)


def _peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def test_huge_png_is_refused_without_allocating(loaded, server) -> None:
    """The 40000x40000 PNG is refused from its header: the process's peak memory does
    not move by more than noise, where decoding would add 1.6 GB at least."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS (Linux)
    except OSError:
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs)")
    huge = _huge_png()
    start = _peak_rss_mb()
    assert _status(_predict(loaded, [huge])[IMAGE_STATUS][0]) == _too_big(40_000, 40_000)
    answer = requests.post(
        f"{server.url}/v1/models/{MODEL_NAME}:predict",
        json={
            "signature_name": IMAGE.name,
            "instances": [{"b64": base64.b64encode(huge).decode()}],
        },
        timeout=60,
    )
    assert answer.status_code == 200
    assert answer.json()["predictions"][0][IMAGE_STATUS] == _too_big(40_000, 40_000)
    assert _peak_rss_mb() - start < 256


# --- Through the stand-in, as TF Serving answers: 200, one row per image.


def _rest(url: str, images: list[bytes]) -> requests.Response:
    instances = [{"b64": base64.b64encode(b).decode()} for b in images]
    return requests.post(
        f"{url}/v1/models/{MODEL_NAME}:predict",
        json={"signature_name": IMAGE.name, "instances": instances},
        timeout=120,
    )


def _grpc(server, images: list[bytes]) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = IMAGE.name
    request.inputs[IMAGE.input].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return stub.Predict(request, timeout=120)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_standin_answers_each_image(server, good, case: str) -> None:
    images = [GOOD, _bytes(case), GOOD]
    answer = _rest(server.url, images)
    assert answer.status_code == 200, answer.text
    rows = answer.json()["predictions"]
    assert_refused_between_good_ones(
        [r[CLASSES] for r in rows],
        [r[PROBABILITIES] for r in rows],
        [r[IMAGE_STATUS] for r in rows],
        case,
        good,
    )
    response = _grpc(server, images)
    assert_refused_between_good_ones(
        list(response.outputs[CLASSES].int64_val),
        np.reshape(response.outputs[PROBABILITIES].float_val, (3, 10)),
        list(response.outputs[IMAGE_STATUS].string_val),
        case,
        good,
    )


def test_one_bad_image_fails_nobody_else_in_a_merged_batch(export_base: Path, good) -> None:
    """With batching, concurrent requests run as one batch (batching_session.cc): the
    client with the corrupt image gets its row refused, the other its answer."""
    params = BatchingParameters(max_batch_size=8, num_batch_threads=1, max_enqueued_batches=4)
    model = ModelServer(export_base, batching=params)
    with StandInServer(model) as standin:
        model.batcher.hold = threading.Event()
        first = threading.Thread(target=_rest, args=(standin.url, [GOOD]))
        first.start()
        while model.batcher.batches_taken < 1:
            time.sleep(0.005)
        answers: dict[str, requests.Response] = {}
        mine = threading.Thread(target=lambda: answers.update(mine=_rest(standin.url, [GOOD])))
        theirs = threading.Thread(
            target=lambda: answers.update(theirs=_rest(standin.url, [_corrupt_idat()]))
        )
        for thread in (mine, theirs):
            thread.start()
        while model.batcher.queued() < 2:
            time.sleep(0.005)
        model.batcher.hold.set()
        for thread in (first, mine, theirs):
            thread.join(120)
        assert model.batcher.batches_taken == 2  # the two ran merged, as one batch
    assert answers["mine"].status_code == answers["theirs"].status_code == 200
    (row,) = answers["mine"].json()["predictions"]
    assert row[CLASSES] == good[0][0] and row[IMAGE_STATUS] == contract.IMAGE_OK
    assert_probabilities_close([row[PROBABILITIES]], good[1])
    (refused,) = answers["theirs"].json()["predictions"]
    assert refused[CLASSES] == contract.INVALID_CLASS and refused[IMAGE_STATUS] == UNDECODABLE


# --- Odd but valid images: decoded, to the same digit as the plain grey PNG.

_normalise = tf.function(lambda image_bytes: preprocess.batch_to_mnist(image_bytes)[0])


def _pixels(data: bytes) -> np.ndarray:
    return _normalise(tf.constant([data])).numpy()[0, ..., 0]


def _rgba(ink: int) -> np.ndarray:
    """The digit drawn in `ink` on a fully transparent canvas (transparent = black)."""
    rgba = np.zeros((*DIGIT.shape, 4), np.uint8)
    rgba[..., :3] = np.where(DIGIT[..., None] > 0, ink, 0)
    rgba[..., 3] = DIGIT
    return rgba


def _palette_with_trns() -> bytes:
    data = encode(Image.fromarray(_rgba(ink=0)).convert("P"), "PNG")
    assert b"tRNS" in data  # transparency as a palette entry, not an alpha channel
    return data


def _png16() -> bytes:
    data = encode(DIGIT.astype(np.uint16) * 257, "PNG")
    assert data[24] == 16  # IHDR bit depth
    return data


VARIANTS: dict[str, Callable[[], bytes]] = {
    "16-bit grey PNG": _png16,
    "RGB PNG": lambda: encode(np.repeat(DIGIT[..., None], 3, axis=-1), "PNG"),
    # channels=1 drops alpha and keeps the colour under it, black: black ink vanished.
    "RGBA, black ink on transparent": lambda: encode(_rgba(ink=0), "PNG"),
    "RGBA, white ink on transparent": lambda: encode(_rgba(ink=255), "PNG"),
    "grey+alpha, white ink": lambda: encode(np.stack([np.full_like(DIGIT, 255), DIGIT], -1), "PNG"),
    "palette with tRNS, black ink": _palette_with_trns,
    "interlaced PNG": lambda: encode(DIGIT, "PNG", interlace=1),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_decode_to_the_same_digit(variant: str) -> None:
    np.testing.assert_array_equal(_pixels(VARIANTS[variant]()), _pixels(GOOD))


def test_cmyk_jpeg_decodes_like_the_grey_jpeg(loaded) -> None:
    """libjpeg cannot turn CMYK into grey (channels=1 failed with 'Invalid JPEG data or
    crop window'); it is decoded as RGB, then made grey."""
    paper = Image.fromarray(255 - DIGIT)  # dark ink on paper, as scanned
    grey = encode(paper, "JPEG", quality=95)
    cmyk = encode(paper.convert("CMYK"), "JPEG", quality=95)
    assert tf.image.extract_jpeg_shape(cmyk).numpy()[2] == 4
    np.testing.assert_allclose(_pixels(cmyk), _pixels(grey), atol=8)
    classes = _predict(loaded, [grey, cmyk])[CLASSES]
    assert classes[0] == classes[1]


def test_variants_reach_the_same_class_through_the_saved_model(loaded) -> None:
    outputs = _predict(loaded, [GOOD, *(make() for make in VARIANTS.values())])
    assert set(outputs[CLASSES].tolist()) == {outputs[CLASSES][0]}
