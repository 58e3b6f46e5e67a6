"""The REST client end to end: real TensorFlow, real HTTP on 127.0.0.1, real files.

The server is tools/standin/, a stand-in for TF Serving that runs the exported
SavedModel and follows the documented REST API; the CLI runs as a subprocess, exactly
as a user runs it. The helpers in support.py are shared with tests/test_integration.py,
which runs the same checks against the real tensorflow/serving container.

Names and shapes come from digits.contract; test_public_names_are_pinned pins the
literal ones that users and their requests depend on.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image

from digits import contract
from digits.contract import CLASSES, IMAGE, MODEL_NAME, PIXELS, PROBABILITIES
from serving.client import ServingClient, ServingError
from support import (
    CHILD_ENV,
    IDX_IMAGES,
    ROOT,
    SAMPLES,
    TEST_SIZE,
    assert_probabilities_close,
    assert_same_predictions,
    client_json,
    digit_pngs,
    error_line,
    free_ports,
    make_digits,
    needs_image_signature,
    png_bytes,
    run_client,
    status_versions,
    write_png,
)
from tools import make_samples
from tools.standin import BatchingParameters, ModelServer, StandInServer

# Under pytest-xdist (make test), this module's tests share module-scoped fixtures:
# one worker runs them all, so each fixture is built once.
pytestmark = pytest.mark.xdist_group("test_client")

BLANK = [[[0]] * contract.COLS] * contract.ROWS  # one all-black pixels example, as JSON


@pytest.fixture(scope="module")
def server(export_base: Path):
    model = ModelServer(export_base, num_versions=2, labels={"stable": 1, "canary": 2})
    with StandInServer(model) as standin:
        yield standin


@pytest.fixture(scope="module")
def loaded(export_base: Path):
    """The newest version, loaded in-process: what every served answer must equal."""
    return tf.saved_model.load(str(export_base / "2"))


def _signature(loaded, signature: contract.Signature, batch) -> dict[str, tf.Tensor]:
    """Call one of the export's signatures in-process on a batch for its single input."""
    return loaded.signatures[signature.name](**{signature.input: tf.constant(batch)})


# --- status / metadata


def test_status_lists_every_served_version(server) -> None:
    result = run_client("status", url=server.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"model {MODEL_NAME} version 2: AVAILABLE",
        f"model {MODEL_NAME} version 1: AVAILABLE",
    ]
    answer = client_json("status", url=server.url)
    assert answer["model_version_status"][0] == {
        "version": "2",
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }


@pytest.mark.parametrize(
    ("args", "version"),
    [(("--version", "1"), "1"), (("--label", "stable"), "1"), (("--label", "canary"), "2")],
)
def test_status_of_one_version_or_label(server, args, version) -> None:
    """TF Serving's status call ignores a label and lists every version (the stand-in
    too: test_standin.py); the client resolves the label through the metadata call and
    shows the version it points at."""
    answer = client_json("status", *args, url=server.url)
    assert status_versions(answer) == {version: "AVAILABLE"}
    text = run_client("status", *args, url=server.url)
    assert text.returncode == 0, text.stderr
    (line,) = text.stdout.splitlines()
    assert line.startswith(f"model {MODEL_NAME} version {version}: AVAILABLE")
    if args[0] == "--label":
        assert line.endswith(f"(label {args[1]})")


def test_metadata_shows_the_signature_contract(server, loaded) -> None:
    answer = client_json("metadata", "--version", "1", url=server.url)
    assert answer["model_spec"] == {"name": MODEL_NAME, "version": "1", "signature_name": ""}
    signatures = answer["metadata"]["signature_def"]["signature_def"]
    default = signatures[PIXELS.name]
    assert default["method_name"] == "tensorflow/serving/predict"
    images = default["inputs"][PIXELS.input]
    assert images["dtype"] == _dt(PIXELS.dtype)
    assert [d["size"] for d in images["tensor_shape"]["dim"]] == [_size(n) for n in PIXELS.shape]
    for name, (dtype, _) in contract.OUTPUTS.items():
        assert default["outputs"][name]["dtype"] == _dt(dtype)
    assert set(signatures) >= set(loaded.signatures)

    text = run_client("metadata", url=server.url).stdout
    assert f"model {MODEL_NAME} version 2" in text
    pixels_shape = ", ".join(_size(n) for n in PIXELS.shape)
    assert f"  input  {PIXELS.input}: {_dt(PIXELS.dtype)} [{pixels_shape}]" in text
    assert f"  output {PROBABILITIES}: DT_FLOAT [-1, {contract.NUM_CLASSES}]" in text
    assert "__saved_model_init_op" not in text


def _size(n: int | None) -> str:
    """A contract dimension as TF Serving's metadata writes it: -1 for any size."""
    return "-1" if n is None else str(n)


def _dt(dtype: str) -> str:
    """A contract dtype as TF Serving's metadata writes it: float32 -> DT_FLOAT."""
    return {"float32": "DT_FLOAT"}.get(dtype, f"DT_{dtype.upper()}")


def test_public_names_reach_clients_as_documented(server) -> None:
    """The literal names users send and read (test_contract.py pins digits.contract's):
    a request as the README's curl example writes it, and the CLI's --json fields, which
    are its own output format whatever the model's outputs are called."""
    body = {"signature_name": "serving_default", "instances": [[[[0]] * 28] * 28]}
    answer = requests.post(f"{server.url}/v1/models/mnist:predict", json=body, timeout=60)
    assert set(answer.json()["predictions"][0]) == {"probabilities", "classes"}
    sample = str(SAMPLES / "digit-7.png")
    (row,) = client_json("predict", "--decode", "local", sample, url=server.url)["predictions"]
    assert set(row) == {"input", "signature", "digit", "probability", "probabilities", "status"}
    assert row["signature"] == "serving_default" and row["status"] == "ok"


# --- predict


def test_predict_idx_batches_report_accuracy(server, loaded, idx_dir: Path) -> None:
    """100 images in requests of 32, 32, 32, 4; answers match the in-process signature
    (one batch of 100: classes equal, probabilities within a few ulps)."""
    idx = str(idx_dir / IDX_IMAGES)
    report = client_json(
        "predict", "--idx", idx, "--count", "100", "--batch-size", "32", url=server.url
    )
    images, labels = make_digits(TEST_SIZE, seed=2)
    expected = _signature(loaded, PIXELS, images[:100, :, :, None])
    digits = [r["digit"] for r in report["predictions"]]
    assert digits == expected[CLASSES].numpy().tolist()
    # JSON carries float32 exactly (shortest round-trip form), but batches of 32 and one
    # of 100 may run different kernels: support.PROBABILITY_TOLERANCE says why.
    assert_probabilities_close(
        [r["probabilities"] for r in report["predictions"]], expected[PROBABILITIES].numpy()
    )
    assert [r["label"] for r in report["predictions"]] == labels[:100].tolist()
    assert report["count"] == 100 and report["accuracy"] > 0.9  # chance is 0.1
    assert report["accuracy"] == pytest.approx(np.mean(np.array(digits) == labels[:100]))

    text = run_client("predict", "--idx", idx, "--count", "20", "--show", "3", url=server.url)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[1].split()[:4] == ["input", "digit", "prob", "label"]
    assert lines[2].startswith(f"{IDX_IMAGES}[0] ")
    assert "... 17 more rows" in lines[5]
    assert lines[6].startswith("accuracy: ") and "t10k-labels-idx1-ubyte.gz" in lines[6]


def test_row_and_columnar_requests_agree(server, idx_dir: Path, tmp_path: Path) -> None:
    idx = str(idx_dir / IDX_IMAGES)
    row = client_json("predict", "--idx", idx, "--count", "16", url=server.url)
    col = client_json(
        "predict", "--idx", idx, "--count", "16", "--format", "columnar", url=server.url
    )
    assert row["format"] == "row" and col["format"] == "columnar"
    assert_same_predictions(row["predictions"], col["predictions"])  # ulps apart at most

    # The same through the library, and for .npy files holding a batch.
    images, _ = make_digits(8, seed=5)
    np.save(tmp_path / "batch.npy", images)
    with ServingClient(server.url) as client:
        a = client.predict_pixels(images[..., None])
        b = client.predict_pixels(images[..., None], columnar=True)
    assert_probabilities_close(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(a.classes, b.classes)
    npy = client_json("predict", str(tmp_path / "batch.npy"), url=server.url)
    assert [r["digit"] for r in npy["predictions"]] == a.classes.tolist()
    assert npy["predictions"][3]["input"].endswith("batch.npy[3]")


def test_version_and_label_reach_the_right_version(server, idx_dir: Path) -> None:
    idx = str(idx_dir / IDX_IMAGES)
    for args in (("--version", "1"), ("--label", "canary")):
        report = client_json("predict", "--idx", idx, "--count", "4", *args, url=server.url)
        assert report["count"] == 4
    assert report["label"] == "canary" and report["version"] is None


def test_predict_pngs_with_the_predict_image_signature(server, loaded, tmp_path: Path) -> None:
    """The default: PNG bytes go as {"b64": ...} and the graph decodes them."""
    needs_image_signature(loaded)
    paths, _, _ = digit_pngs(tmp_path, n=4)
    samples = sorted(SAMPLES.glob("*.png"))
    files = [*paths, *samples]
    for fmt in ("row", "columnar"):
        report = client_json("predict", *map(str, files), "--format", fmt, url=server.url)
        rows = report["predictions"]
        assert [Path(r["input"]).name for r in rows] == [p.name for p in files]
        assert {r["signature"] for r in rows} == {IMAGE.name}
        assert {r["status"] for r in rows} == {contract.IMAGE_OK}
        expected = _signature(loaded, IMAGE, [p.read_bytes() for p in files])
        assert [r["digit"] for r in rows] == expected[CLASSES].numpy().tolist()
        assert_probabilities_close(  # a few ulps: support.PROBABILITY_TOLERANCE
            [r["probabilities"] for r in rows], expected[PROBABILITIES].numpy()
        )

    # The dark-on-light sample is inverted by the graph: same answer as the original.
    by_name = {Path(r["input"]).name: r for r in rows}
    assert by_name["digit-7-dark-on-light.png"]["digit"] == by_name["digit-7.png"]["digit"]

    text = run_client("predict", str(paths[0]), url=server.url)
    assert text.returncode == 0, text.stderr
    header, row = text.stdout.splitlines()[1:3]
    assert header.split()[:3] == ["input", "digit", "prob"]
    assert row.split()[0].endswith("test-0.png") and row.split()[1] == str(rows[0]["digit"])


def _corrupt_png(path: Path) -> Path:
    """A PNG whose header the client accepts (magic, 64x64) and whose pixel data is
    broken: only decoding, on the server, finds out."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start + 100 : start + 200] = bytes(100)
    path.write_bytes(bytes(data))
    return path


def test_each_refused_image_is_one_line_and_the_others_are_answered(
    server, loaded, tmp_path: Path
) -> None:
    """predict_image answers per image: a corrupt file gets a row marked refused (class
    contract.INVALID_CLASS, the reason in contract.IMAGE_STATUS), the others their digits,
    exactly as when sent alone; the CLI names each refused file on stderr and exits 3."""
    needs_image_signature(loaded)
    paths, _, _ = digit_pngs(tmp_path, n=3)
    bad = [_corrupt_png(tmp_path / "corrupt.png"), _corrupt_png(tmp_path / "again.png")]
    files = [paths[0], bad[0], paths[1], bad[1], paths[2]]
    expected = _signature(loaded, IMAGE, [p.read_bytes() for p in paths])
    for fmt in ("row", "columnar"):
        result = run_client("predict", *map(str, files), "--json", "--format", fmt, url=server.url)
        assert result.returncode == 3, result.stderr
        assert result.stderr.splitlines() == [
            f"error: {bad[0]}: {contract.IMAGE_UNDECODABLE}",
            f"error: {bad[1]}: {contract.IMAGE_UNDECODABLE}",
        ]
        rows = json.loads(result.stdout)["predictions"]
        good = [rows[i] for i in (0, 2, 4)]
        assert [r["digit"] for r in good] == expected[CLASSES].numpy().tolist()
        assert_probabilities_close(
            [r["probabilities"] for r in good], expected[PROBABILITIES].numpy()
        )
        assert {r["status"] for r in good} == {contract.IMAGE_OK}
        for row in (rows[1], rows[3]):
            assert row["digit"] == contract.INVALID_CLASS and row["probability"] == 0.0
            assert row["probabilities"] == [0.0] * contract.NUM_CLASSES
            assert row["status"] == contract.IMAGE_UNDECODABLE
    text = run_client("predict", *map(str, files), url=server.url)
    assert text.returncode == 3 and len(text.stderr.splitlines()) == 2
    table = text.stdout.splitlines()
    assert table[3].startswith(str(bad[0])) and "refused: " in table[3]
    assert table[2].split()[1] == str(expected[CLASSES].numpy()[0])


def test_predict_pngs_decoded_locally(server, loaded, tmp_path: Path) -> None:
    """--decode local: 28x28 PNGs -> pixels -> serving_default, with labels right."""
    paths, images, labels = digit_pngs(tmp_path, n=8)
    inverted = write_png(tmp_path / "inverted.png", 255 - images[0])
    report = client_json(
        "predict", "--decode", "local", *map(str, paths), str(inverted), url=server.url
    )
    rows = report["predictions"]
    assert {r["signature"] for r in rows} == {PIXELS.name}
    expected = _signature(loaded, PIXELS, images)
    assert [r["digit"] for r in rows[:-1]] == expected[CLASSES].numpy().tolist()
    assert np.mean([r["digit"] for r in rows[:-1]] == labels) > 0.8
    # Inverted back to exactly the same pixels, but at another position of the batch,
    # which may take another kernel path: same digit, probabilities within a few ulps.
    assert rows[-1]["digit"] == rows[0]["digit"]
    assert_probabilities_close(rows[-1]["probabilities"], rows[0]["probabilities"])


def test_sample_pngs_are_small_mnist_digits() -> None:
    files = sorted(SAMPLES.glob("*.png"))
    names = [p.name for p in files]
    assert "digit-7-dark-on-light.png" in names and len(names) >= 6
    for path in files:
        assert path.name.startswith("digit-") and path.stat().st_size < 1024
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (28, 28))
    with (
        Image.open(SAMPLES / "digit-7.png") as a,
        Image.open(SAMPLES / "digit-7-dark-on-light.png") as b,
    ):
        np.testing.assert_array_equal(255 - np.asarray(a), np.asarray(b))


def test_make_samples_writes_the_first_image_of_each_label(idx_dir: Path, tmp_path: Path) -> None:
    written = make_samples.write_samples(
        idx_dir / IDX_IMAGES, tmp_path, digits=(3, 5), dark_on_light=5
    )
    assert [p.name for p in written] == ["digit-3.png", "digit-5.png", "digit-5-dark-on-light.png"]
    images, labels = make_digits(TEST_SIZE, seed=2)
    first5 = images[np.flatnonzero(labels == 5)[0]]
    with Image.open(tmp_path / "digit-5.png") as five, Image.open(written[2]) as dark:
        np.testing.assert_array_equal(np.asarray(five), first5)
        np.testing.assert_array_equal(np.asarray(dark), 255 - first5)


# --- Bad input, clear errors: one stderr line and a non-zero exit each.


def _npy(path: Path, array: np.ndarray) -> str:
    np.save(path, array)
    return str(path)


def _file(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _folder(path: Path) -> str:
    path.mkdir()
    return str(path)


def _jpeg(path: Path, size: tuple[int, int]) -> str:
    Image.fromarray(np.zeros(size, np.uint8)).save(path, quality=90)
    return str(path)


def _png(path: Path, size: tuple[int, int]) -> str:
    Image.fromarray(np.zeros(size, np.uint8)).save(path)
    return str(path)


BAD_INPUTS = {
    # name: (make the arguments in tmp, text the one error line must contain)
    "missing file": (lambda t: [str(t / "nope.png")], "cannot read"),
    "a folder": (lambda t: [_folder(t / "scans.png")], "is a directory, not a file"),
    "not an image": (lambda t: [_file(t / "notes.png", b"hello")], "is not a PNG or JPEG image"),
    "empty file": (lambda t: [_file(t / "e.png", b"")], "is empty (0 bytes)"),
    "huge png": (
        lambda t: [_file(t / "huge.png", png_bytes(5000, 1))],
        "is 5000x1 pixels, over the server's 4096x4096 limit",
    ),
    "huge jpeg": (lambda t: [_jpeg(t / "huge.jpg", (1, 4097))], "is 4097x1 pixels"),
    "unknown type": (lambda t: [str(t / "digits.txt")], "unknown file type"),
    "wrong size npy": (lambda t: [_npy(t / "w.npy", np.zeros((32, 32), np.uint8))], "(32, 32)"),
    "wrong size png, local decode": (
        lambda t: ["--decode", "local", _png(t / "big.png", (32, 32))],
        "is 32x32 pixels",
    ),
    "NaN": (lambda t: [_npy(t / "n.npy", np.full((28, 28), np.nan))], "contains NaN"),
    "out of range": (lambda t: [_npy(t / "r.npy", np.full((28, 28), 300))], "must be 0-255"),
    "fractions": (lambda t: [_npy(t / "f.npy", np.full((28, 28), 0.5))], "non-integer"),
    "empty batch npy": (lambda t: [_npy(t / "z.npy", np.zeros((0, 28, 28)))], "empty batch"),
    "nothing given": (lambda t: [], "nothing to predict"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_before_sending(server, tmp_path: Path, case: str) -> None:
    make_args, message = BAD_INPUTS[case]
    seen = server.model.requests_seen
    line = error_line(run_client("predict", *make_args(tmp_path), url=server.url), 2)
    assert line.startswith("error: ") and message in line
    assert server.model.requests_seen == seen  # nothing reached the server


def test_bad_idx_files_and_counts(server, idx_dir: Path) -> None:
    labels = str(idx_dir / "t10k-labels-idx1-ubyte.gz")
    line = error_line(run_client("predict", "--idx", labels, url=server.url), 2)
    assert "magic number 2049" in line and "labels file" in line
    idx = str(idx_dir / IDX_IMAGES)
    assert "empty batch" in error_line(
        run_client("predict", "--idx", idx, "--count", "0", url=server.url), 2
    )
    usage = error_line(run_client("status", "--version", "1", "--label", "x", url=server.url), 2)
    assert "not allowed with argument --version" in usage


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("status", "--model", "nope"), "HTTP 404 from {url}/v1/models/nope: Could not find any"),
        (("status", "--version", "9"), "HTTP 404 from {url}/v1/models/{model}/versions/9: Could"),
        (
            ("predict", "--version", "9", "--idx", "IDX"),
            "HTTP 404 from {url}/v1/models/{model}/versions/9:predict: Servable not found",
        ),
        (
            ("predict", "--label", "nope", "--idx", "IDX"),
            "HTTP 400 from {url}/v1/models/{model}/labels/nope:predict: Unrecognized servable "
            "version label: nope",
        ),
        (("metadata", "--model", "nope"), "HTTP 404"),
    ],
)
def test_server_errors_are_shown_with_their_status(server, idx_dir, args, message) -> None:
    args = [str(idx_dir / IDX_IMAGES) if a == "IDX" else a for a in args]
    line = error_line(run_client(*args, url=server.url), 1)
    assert message.format(url=server.url, model=MODEL_NAME) in line


def test_server_message_reaches_library_callers(server) -> None:
    with ServingClient(server.url) as client:
        with pytest.raises(ServingError) as caught:
            client.predict([BLANK], signature="nope", input_name=PIXELS.input)
    assert caught.value.status == 400
    assert caught.value.message == 'Serving signature name: "nope" not found in signature def'


def test_server_down_is_one_clear_line_and_fast() -> None:
    url = f"http://127.0.0.1:{free_ports()[0]}"
    started = time.monotonic()
    result = run_client("status", "--retries", "2", "--backoff", "0.01", url=url)
    line = error_line(result, 1)
    assert f"cannot connect to {url} (Connection refused) after 2 retries" in line
    assert time.monotonic() - started < 15  # bounded: a few refused connects, no long sleeps


@pytest.fixture
def silent_server():
    """A loopback socket that accepts connections and never answers (a hung server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_hung_server_is_a_timeout_retried_at_most_once(silent_server: str) -> None:
    started = time.monotonic()
    result = run_client("status", "--timeout", "0.5", "--retries", "3", url=silent_server)
    line = error_line(result, 1)
    assert f"GET {silent_server}/v1/models/{MODEL_NAME}: no response within 0.5 s" in line
    assert time.monotonic() - started < 10  # two reads of 0.5 s, not four


def test_503_is_retried_then_reported(server) -> None:
    """503 (UNAVAILABLE: the batching queue is full) is retried with backoff, boundedly."""
    model = server.model
    try:
        model.unavailable_requests, seen = 2, model.requests_seen
        ok = run_client("status", "--retries", "3", "--backoff", "0.01", url=server.url)
        assert ok.returncode == 0, ok.stderr
        assert model.requests_seen - seen == 3  # two 503s, then the answer

        model.unavailable_requests, seen = 5, model.requests_seen
        line = error_line(
            run_client("status", "--retries", "1", "--backoff", "0", url=server.url), 1
        )
        assert "HTTP 503" in line and "unavailable" in line
        assert model.requests_seen - seen == 2  # the first try and one retry: bounded
    finally:
        model.unavailable_requests = 0


@pytest.fixture
def loading_server(export_base: Path, tmp_path: Path):
    """Versions 1 and 2, and a version 3 held in LOADING until `server.gate` is set."""
    base = tmp_path / MODEL_NAME
    base.mkdir()
    for v in (1, 2):
        (base / str(v)).symlink_to(export_base / str(v))
    gate = threading.Event()
    model = ModelServer(
        base, num_versions=3, loading_gate=lambda v: gate.wait(120) if v == 3 else None
    )
    with StandInServer(model) as standin:
        (base / "3").symlink_to(export_base / "1")
        model.refresh()
        deadline = time.monotonic() + 60
        while model.states.get(3) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        standin.gate = gate
        yield standin
        gate.set()


def test_404_while_loading_is_not_retried_but_status_wait_waits(loading_server, idx_dir) -> None:
    """A version still loading answers 404 "Servable not found" (basic_manager.cc): a
    predict fails at once, without retries; `status --wait` polls through it."""
    server, model = loading_server, loading_server.model
    seen = model.requests_seen
    args = ("predict", "--version", "3", "--idx", str(idx_dir / IDX_IMAGES), "--count", "1")
    line = error_line(run_client(*args, "--retries", "3", url=server.url), 1)
    assert line.endswith(
        f"/versions/3:predict: Servable not found for request: Specific({MODEL_NAME}, 3)"
    )
    assert "HTTP 404" in line and model.requests_seen - seen == 1  # not retried
    line = error_line(run_client("status", "--version", "3", url=server.url), 1)
    assert "no AVAILABLE version" in line and "version 3" in line

    threading.Timer(1.5, server.gate.set).start()
    started = time.monotonic()
    waited = run_client("status", "--version", "3", "--wait", "60", url=server.url)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.strip() == f"model {MODEL_NAME} version 3: AVAILABLE"
    assert 1 < time.monotonic() - started < 60


def test_429_from_the_batching_queue_is_retried(export_base: Path) -> None:
    """A request that timed out in the batching queue gets RESOURCE_EXHAUSTED, HTTP 429
    (batching_session.cc); the client retries it with backoff, like 503."""
    params = BatchingParameters(max_batch_size=4, num_batch_threads=1, max_enqueued_batches=4)
    model = ModelServer(export_base, batching=params, rest_timeout_ms=300)
    with StandInServer(model) as server:
        model.batcher.hold = threading.Event()
        blocker = threading.Thread(
            target=lambda: ServingClient(server.url).predict_pixels(np.zeros((1, 28, 28, 1)))
        )
        blocker.start()
        while model.batcher.batches_taken < 1:
            time.sleep(0.005)
        answers = []
        client = ServingClient(server.url, retries=2, backoff=0.01)
        retried = threading.Thread(
            target=lambda: answers.append(client.predict_pixels(np.zeros((2, 28, 28, 1))))
        )
        retried.start()
        while model.batcher.queued() < 1:
            time.sleep(0.005)
        time.sleep(0.5)  # the queued request outlives its 300 ms
        model.batcher.hold.set()
        for thread in (blocker, retried):
            thread.join(60)
        client.close()
        assert answers and answers[0].classes.shape == (2,)
        assert model.metrics.requests(MODEL_NAME, "RESOURCE_EXHAUSTED") == 1
        assert model.metrics.requests(MODEL_NAME, "OK") == 2

        # Without retries the 429 is the answer, with the server's message.
        model.batcher.hold, taken = threading.Event(), model.batcher.batches_taken
        blocker = threading.Thread(
            target=lambda: ServingClient(server.url).predict_pixels(np.zeros((1, 28, 28, 1)))
        )
        blocker.start()
        while model.batcher.batches_taken == taken:
            time.sleep(0.005)
        threading.Timer(0.6, model.batcher.hold.set).start()
        with ServingClient(server.url, retries=0) as once, pytest.raises(ServingError) as caught:
            once.predict_pixels(np.zeros((1, 28, 28, 1)))
        blocker.join(60)
    assert caught.value.status == 429
    assert caught.value.message == "Run() timeout exceeded while waiting in batching queue"


def test_images_go_in_requests_bounded_by_bytes(server) -> None:
    """Encoded images are sent at most `batch_size` and `max_request_bytes` a request;
    one image over the byte limit still goes, alone."""
    blobs = [p.read_bytes() for p in sorted(SAMPLES.glob("*.png"))]  # a few hundred bytes
    size = max(map(len, blobs))
    with ServingClient(server.url, max_request_bytes=2 * size, batch_size=64) as client:
        assert client.requests_for(blobs) == [
            (i, min(i + 2, len(blobs))) for i in range(0, len(blobs), 2)
        ]
        seen = server.model.requests_seen
        result = client.predict_image_bytes(blobs)
        assert server.model.requests_seen - seen == (len(blobs) + 1) // 2
    with ServingClient(server.url) as whole:
        expected = whole.predict_image_bytes(blobs)
    np.testing.assert_array_equal(result.classes, expected.classes)
    with ServingClient(server.url, max_request_bytes=1, batch_size=2) as tiny:
        assert tiny.requests_for(blobs[:3]) == [(0, 1), (1, 2), (2, 3)]
    with ServingClient(server.url, batch_size=2) as few:
        assert few.requests_for(blobs[:5]) == [(0, 2), (2, 4), (4, 5)]
        assert few.requests_for(np.zeros((5, 28, 28, 1))) == [(0, 2), (2, 4), (4, 5)]


def test_retry_settings_come_from_the_environment_too(server) -> None:
    url = f"http://127.0.0.1:{free_ports()[0]}"
    line = error_line(run_client("status", url=url, SERVING_RETRIES="0"), 1)
    assert "after 0 retries" in line
    bad = error_line(run_client("status", url=url, SERVING_RETRIES="many"), 2)
    assert "SERVING_RETRIES='many' is not a valid int" in bad
    # Checked as the flag is: --timeout 0 is refused, and so is SERVING_TIMEOUT=0.
    bad = error_line(run_client("status", url=url, SERVING_TIMEOUT="0"), 2)
    assert "SERVING_TIMEOUT='0': 0 must be above 0" in bad


@pytest.mark.parametrize(
    "args, env, message",
    [
        (("status", "--timeout", "nan"), {}, "argument --timeout: nan is not a finite number"),
        (("status", "--wait", "inf"), {}, "argument --wait: inf is not a finite number"),
        (("status", "--backoff=-inf"), {}, "argument --backoff: -inf is not a finite number"),
        (("load", "--seconds", "Infinity"), {}, "--seconds: Infinity is not a finite number"),
        (("status",), {"SERVING_TIMEOUT": "NaN"}, "SERVING_TIMEOUT='NaN': NaN is not a finite"),
    ],
)
def test_number_flags_refuse_nan_and_inf(args, env, message) -> None:
    """float() reads "nan" and "inf", and NaN is neither below 0 nor 0: without their own
    check they passed, and --timeout nan or --wait inf reached the HTTP layer."""
    line = error_line(run_client(*args, url="http://127.0.0.1:9", **env), 2)
    assert message in line


def test_one_session_reuses_one_connection(server) -> None:
    before = len(server.model.connections)
    with ServingClient(server.url) as client:
        for _ in range(5):
            client.status()
    assert len(server.model.connections) - before == 1
    for _ in range(3):  # without a session, every request opens its own connection
        requests.get(f"{server.url}/v1/models/{MODEL_NAME}", timeout=10)
    assert len(server.model.connections) - before == 4


# --- The stand-in follows TF Serving's documented REST behaviour (what the above relies on).


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        (
            ":predict",
            {"instances": [BLANK], "inputs": [BLANK]},
            400,
            "only one of 'inputs' or 'instances'",
        ),
        (
            ":predict",
            {"signature_name": PIXELS.name},
            400,
            "Missing 'inputs' or 'instances' key",
        ),
        (":predict", {"instances": []}, 400, "No values in 'instances' array"),
        (":predict", {"instances": [[[[1.0]] * 28] * 28]}, 400, "is not of expected type: uint8"),
        (":predict", {"instances": [[[[0]] * 32] * 32]}, 400, "[1,32,32,1]"),
        (":predict", {"instances": [BLANK[:27]] + [BLANK]}, 400, "Expecting shape"),
        (":predict", {"signature_name": 1, "instances": [BLANK]}, 400, "must be a string value"),
        ("/versions/7:predict", {"instances": [BLANK]}, 404, f"Specific({MODEL_NAME}, 7)"),
        (
            "/labels/nope:predict",
            {"instances": [BLANK]},
            400,
            "Unrecognized servable version label",
        ),
        ("/versions/1/labels/stable", None, 400, "Malformed request"),
    ],
)
def test_standin_answers_errors_as_tf_serving_does(server, path, body, status, error) -> None:
    url = f"{server.url}/v1/models/{MODEL_NAME}{path}"
    response = requests.post(url, json=body) if body is not None else requests.get(url)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert error in response.json()["error"]


def test_standin_response_shapes_follow_the_request_format(server) -> None:
    url = f"{server.url}/v1/models/{MODEL_NAME}:predict"
    row = requests.post(url, json={"instances": [BLANK, BLANK]}).json()
    assert set(row) == {"predictions"} and len(row["predictions"]) == 2
    assert set(row["predictions"][0]) == {CLASSES, PROBABILITIES}
    col = requests.post(url, json={"inputs": {PIXELS.input: [BLANK, BLANK]}}).json()
    assert set(col) == {"outputs"} and len(col["outputs"][PROBABILITIES]) == 2
    assert requests.get(server.url + "/not-the-api").status_code == 404


# What the client must never import (pillow only for --decode local).
HEAVY = ("tensorflow", "tensorflow_serving", "trainer", "keras", "PIL")


def test_client_imports_neither_tensorflow_nor_the_trainer() -> None:
    code = (
        "import sys, serving.client, serving.grpc_client, serving.cli, serving.load, "
        "serving.rollout; "
        f"heavy = {HEAVY!r}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**CHILD_ENV},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def _pins(name: str) -> dict[str, str]:
    lines = (ROOT / name).read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


def test_client_requirements_pin_the_versions_tested_here() -> None:
    """requirements-client.txt (.venv-client, for make predict and make load) pins the
    versions these tests run the client with, and agrees with requirements.txt."""
    from importlib.metadata import version

    client = _pins("requirements-client.txt")
    assert {"numpy", "requests", "grpcio", "protobuf"} <= set(client)
    assert {name: version(name) for name in client} == client
    runtime = _pins("requirements.txt")
    assert {n: v for n, v in runtime.items() if n in client} == {
        n: v for n, v in client.items() if n in runtime
    }


def _imported(importtime_stderr: str) -> list[str]:
    """The modules a `python -X importtime` run imported, from its stderr."""
    return re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", importtime_stderr, re.M)


def test_the_standin_runs_tensorflow_but_never_the_trainer() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tools.standin", "--help"],
        cwd=ROOT,
        env={**CHILD_ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--port PORT" in result.stdout and "0 takes a free one" in result.stdout
    imported = _imported(result.stderr)
    assert "tensorflow" in imported
    assert [m for m in imported if m.split(".")[0] == "trainer"] == []


def test_the_commands_import_neither_tensorflow_nor_the_trainer() -> None:
    """`python -m serving`, run as users run it, with every import listed by -X
    importtime; a status call exercises a command's imports."""
    url = f"http://127.0.0.1:{free_ports()[0]}"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "serving", "status", "--retries", "0"]
        + ["--url", url],
        cwd=ROOT,
        env={k: v for k, v in CHILD_ENV.items() if not k.startswith("SERVING_")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    imported = _imported(result.stderr)
    assert "numpy" in imported and "requests" in imported  # the listing was read
    assert [m for m in imported if m.split(".")[0] in HEAVY] == []
    said = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 1 and len(said) == 1, result.stderr
    assert said[0].startswith(f"error: cannot connect to {url}")


def test_help_imports_neither_client_library() -> None:
    """`python -m serving --help` needs argparse, not requests or grpcio: each client is
    imported when a command runs (serving.cli make_client)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "serving", "--help"],
        cwd=ROOT,
        env={**CHILD_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "status" in result.stdout, result.stderr
    imported = _imported(result.stderr)
    assert "serving.cli" in imported
    assert [m for m in imported if m.split(".")[0] in ("requests", "grpc", *HEAVY)] == []


def test_python_m_serving_client_is_not_a_command() -> None:
    """The command line is `python -m serving`; `python -m serving.client` (the library)
    says so in one line instead of silently doing nothing."""
    result = subprocess.run(
        [sys.executable, "-m", "serving.client", "status"],
        cwd=ROOT,
        env={**CHILD_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = error_line(result, 2)
    assert "use python -m serving" in line and result.stdout == ""
