"""The serving contract: what every exported version takes and returns.

`trainer/export.py` builds the signatures from these names and specs, `trainer/warmup.py`
writes requests for them, and `serving/` sends requests to them; a rename here reaches
all three. Plain Python (dtype names as strings), so the client needs no TensorFlow.

    serving_default  images       uint8  [n, 28, 28, 1]  raw pixels, white digit on black
    predict_image    image_bytes  string [n]             PNG/JPEG bytes, up to 4096x4096
    both ->          probabilities float32 [n, 10], classes int64 [n]
    predict_image -> also image_status string [n]: "ok", or why that image was refused

predict_image answers per image, so one bad image fails only its own row (TF Serving's
batching merges concurrent requests into one graph run, and a graph error would fail every
request in it): a refused image gets class INVALID_CLASS, all-zero probabilities and, in
image_status, the reason (NOT_AN_IMAGE, a size over MAX_IMAGE_SIDE, IMAGE_UNDECODABLE).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = "mnist"  # the default model name: the folder TF Serving serves
ROWS = COLS = 28
IMAGE_SHAPE = (ROWS, COLS, 1)  # one example of the pixel input
NUM_CLASSES = 10
# predict_image refuses a larger PNG/JPEG from its header, before decoding it (a 190 KB
# PNG can claim 40000x40000 pixels); 4096 takes a 12-megapixel phone photo.
MAX_IMAGE_SIDE = 4096
# The encodings predict_image takes, by their first bytes (the client checks them before
# sending; the graph before decoding). A PNG's IHDR then holds width and height.
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"

PROBABILITIES = "probabilities"  # float32 [n, NUM_CLASSES]: softmax output
CLASSES = "classes"  # int64 [n]: argmax of probabilities
OUTPUTS = {PROBABILITIES: ("float32", (None, NUM_CLASSES)), CLASSES: ("int64", (None,))}
# predict_image's per-image answer. A string, which TF Serving's REST API writes as text
# (only outputs named *_bytes come back base64) and gRPC as string_val.
IMAGE_STATUS = "image_status"
IMAGE_OK = "ok"  # the image_status of an image that was classified
INVALID_CLASS = -1  # the class of a refused image; its probabilities are all zero
# The reasons image_status gives, where they do not depend on the image's numbers
# ("0x5 pixels (empty)", "5000x1 pixels, over the 4096x4096 limit" do).
NOT_AN_IMAGE = "not a PNG or JPEG image"  # followed by " (N bytes)"
IMAGE_UNDECODABLE = "cannot be decoded (corrupt or cut PNG/JPEG data)"
IMAGE_OUTPUTS = {**OUTPUTS, IMAGE_STATUS: ("string", (None,))}


@dataclass(frozen=True)
class Signature:
    """One serving signature with its single input."""

    name: str  # signature_name in a request
    input: str  # the input's key in a request
    dtype: str  # the input's dtype, as TensorFlow names it
    shape: tuple[int | None, ...]  # the input's shape; None = any size (the batch)
    outputs: dict[str, tuple[str, tuple[int | None, ...]]]  # name -> (dtype, shape)


PIXELS = Signature("serving_default", "images", "uint8", (None, *IMAGE_SHAPE), OUTPUTS)
IMAGE = Signature("predict_image", "image_bytes", "string", (None,), IMAGE_OUTPUTS)
SIGNATURES = (PIXELS, IMAGE)  # PIXELS first: TF Serving's default signature


def versions(model_dir: str | Path) -> list[int]:
    """The version folders TF Serving would load from `model_dir`, ascending.

    TF Serving's file-system poller takes only numeric folder names as versions and
    ignores every other name (a `.tmp-*` staging folder, say).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir())
