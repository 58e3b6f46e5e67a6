"""Hostile bytes to the `predict_image` signature: refused from the header, never decoded.

Anyone who can reach the server chooses the bytes, so trainer/preprocess.py reads the
header first and refuses, with an InvalidArgumentError that names the image and the
limit, anything that is not a PNG or JPEG or has a side over MAX_IMAGE_SIDE, before a
decoder runs. TF Serving answers that error with HTTP 400 {"error": ...} and gRPC
INVALID_ARGUMENT; the stand-in (serving/standin.py) does the same. Each case goes
through the exported SavedModel and through the stand-in over REST and gRPC on
loopback, and a good image is answered afterwards. Odd but valid images (16-bit,
alpha, palette transparency, CMYK JPEG) decode to the same digit as a plain one.
"""

from __future__ import annotations

import base64
import functools
import io
import re
import struct
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from digits.contract import CLASSES, IMAGE, MODEL_NAME, PROBABILITIES
from serving.standin import ModelServer, StandInServer
from support import (
    TEST_SIZE,
    assert_probabilities_close,
    make_digits,
    needs_image_signature,
    png_bytes,
)
from trainer import preprocess

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
    return f"image_bytes[1] is {width}x{height} pixels, over the {LIMIT}x{LIMIT} limit"


NOT_AN_IMAGE = "image_bytes[1] is not a PNG or JPEG image"

# name: (the hostile bytes, built on first use; text the error must contain). Each is
# sent second in a batch after GOOD, so the refusal names image_bytes[1].
HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    # Decoding would take 1.6 GB for the uint8 pixels, 6.4 GB once they are floats.
    "40000x40000 PNG (190 KB)": (_huge_png, _too_big(40_000, 40_000)),
    "PNG one pixel too wide": (lambda: png_bytes(LIMIT + 1, 8), _too_big(LIMIT + 1, 8)),
    "PNG one pixel too tall": (lambda: png_bytes(8, LIMIT + 1), _too_big(8, LIMIT + 1)),
    "60000x60000 JPEG header": (lambda: _jpeg_claiming(60_000, 60_000), _too_big(60_000, 60_000)),
    "JPEG too wide": (lambda: _jpeg_claiming(LIMIT + 1, 28), _too_big(LIMIT + 1, 28)),
    "PNG 0 pixels wide": (lambda: png_bytes(0, 5), "image_bytes[1] is 0x5 pixels (empty)"),
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
    # A header that passes, then bad data: the decoder's own InvalidArgumentError.
    "PNG cut inside IDAT": (lambda: _noise("PNG")[:2000], "Invalid PNG data"),
    "PNG with a zeroed run in IDAT": (_corrupt_idat, "Invalid PNG data"),
    "JPEG cut inside its scan": (_cut_inside_scan, "Invalid JPEG data or crop window"),
    "JPEG cut before its first scan": (_cut_before_first_scan, "Invalid JPEG data, size"),
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
    outputs = loaded.signatures[IMAGE.name](**{IMAGE.input: tf.constant(images)})
    return {k: v.numpy() for k, v in outputs.items()}


# --- Through the SavedModel.


@pytest.mark.parametrize("case", list(HOSTILE))
def test_saved_model_refuses(loaded, case: str) -> None:
    before = _predict(loaded, [GOOD])
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(HOSTILE[case][1])):
        _predict(loaded, [GOOD, _bytes(case)])
    after = _predict(loaded, [GOOD])  # and the next request is answered as before
    np.testing.assert_array_equal(after[CLASSES], before[CLASSES])
    assert_probabilities_close(after[PROBABILITIES], before[PROBABILITIES])


def test_images_at_the_limit_are_taken(loaded) -> None:
    wide, tall = png_bytes(LIMIT, 8), png_bytes(8, LIMIT)
    assert _predict(loaded, [GOOD, wide, tall])[CLASSES].shape == (3,)


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
    with pytest.raises(tf.errors.InvalidArgumentError):
        _predict(loaded, [huge])
    answer = requests.post(
        f"{server.url}/v1/models/{MODEL_NAME}:predict",
        json={
            "signature_name": IMAGE.name,
            "instances": [{"b64": base64.b64encode(huge).decode()}],
        },
        timeout=60,
    )
    assert answer.status_code == 400
    assert _peak_rss_mb() - start < 256


# --- Through the stand-in, as TF Serving answers: 400 / INVALID_ARGUMENT, and on.


def _rest(server, images: list[bytes]) -> requests.Response:
    instances = [{"b64": base64.b64encode(b).decode()} for b in images]
    return requests.post(
        f"{server.url}/v1/models/{MODEL_NAME}:predict",
        json={"signature_name": IMAGE.name, "instances": instances},
        timeout=60,
    )


def _grpc(server, images: list[bytes]) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = IMAGE.name
    request.inputs[IMAGE.input].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return stub.Predict(request, timeout=60)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_standin_answers_400_and_goes_on(server, case: str) -> None:
    message = HOSTILE[case][1]
    answer = _rest(server, [GOOD, _bytes(case)])
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert list(body) == ["error"] and message in body["error"]
    assert "[Op:" not in body["error"]  # TF Serving's message: no Python eager wrapper

    with pytest.raises(grpc.RpcError) as caught:
        _grpc(server, [GOOD, _bytes(case)])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()

    good = _rest(server, [GOOD])
    assert good.status_code == 200 and len(good.json()["predictions"]) == 1
    assert len(_grpc(server, [GOOD]).outputs[CLASSES].int64_val) == 1


# --- Odd but valid images: decoded, to the same digit as the plain grey PNG.

_normalise = tf.function(preprocess.batch_to_mnist)


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
