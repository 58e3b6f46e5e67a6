"""Serving speed, side by side in one run; loopback only, every loop bounded.

    python -m benchmarks.bench_serving --export-dir artifacts/export/mnist --job-dir artifacts/job

1. In-process, on the same inputs: the exported `serving_default` signature against
   the Keras model rebuilt from the job's checkpoint, via `model.predict` (what most
   examples call) and via a direct `model(x)` call. Latency p50/p99 at batch 1, and
   throughput at batch 256. Then the `predict_image` signature on the sample PNGs
   (serving/samples/), decoding and normalising in the graph, with its answer per image.
2. Over HTTP: the client's round trip (`serving.client.ServingClient`, row format,
   batch 1) to the loopback stand-in (`python -m tools.standin`, in its own process),
   reusing one kept-alive connection (one requests.Session) and opening a fresh
   connection per request (`Connection: close`), with pixels and with one PNG. The
   stand-in is not TF Serving (a Python HTTP server around the same SavedModel, parsing
   JSON in Python): compare the HTTP rows with each other, not with a production server.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402 - after the TF log level is set

from digits.contract import IMAGE, IMAGE_SHAPE, PIXELS, PROBABILITIES, versions  # noqa: E402

SAMPLES = ROOT / "serving" / "samples"

MAX_ITERS = 100_000  # a typo like --iters 1e9 must not run for days


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.array(seconds) * 1e3, [50, 99])
    return float(p50), float(p99)


def time_calls(fn: Callable[[], object], iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def throughput(fn: Callable[[], object], batch: int, iters: int, warmup: int) -> float:
    """Images per second over `iters` calls of a `batch`-image function."""
    total = sum(time_calls(fn, iters, warmup))
    return batch * iters / total


def find_version(export_dir: Path) -> Path:
    """A version folder, or the highest numeric one under a model folder (TF Serving's pick)."""
    if (export_dir / "saved_model.pb").is_file():
        return export_dir
    found = versions(export_dir)
    if not found:
        raise SystemExit(
            f"error: {export_dir} holds no SavedModel version folder; run `make train` "
            "or pass --export-dir EXPORT_DIR/MODEL_NAME"
        )
    return export_dir / str(found[-1])


def start_standin(model_base: Path, log, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """`python -m tools.standin --port 0` in its own process (no GIL shared with the
    client); returns it and the URL its ready line names once it listens.

    Its output goes to the file `log` (a pipe nobody reads could fill up and stall it),
    which is read back for that line.
    """
    from tools.standin import READY

    command = [sys.executable, "-m", "tools.standin", "--model-base-path", str(model_base)]
    proc = subprocess.Popen(
        [*command, "--port", "0"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    ready = re.compile(re.escape(READY) + r"(\S+)")
    deadline = time.monotonic() + timeout
    while True:
        found = ready.search(Path(log.name).read_text(errors="replace"))
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"error: the stand-in server exited; its log: {log.name}")
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"error: the stand-in did not start within {timeout} s")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--export-dir",
        type=Path,
        default=Path("artifacts/export/mnist"),
        help="model folder (its highest numeric version is used) or one version folder "
        "[default: artifacts/export/mnist]",
    )
    parser.add_argument(
        "--job-dir",
        type=Path,
        default=Path("artifacts/job"),
        help="the training job whose checkpoints/ rebuild the Keras model [default: artifacts/job]",
    )
    parser.add_argument(
        "--iters", type=int, default=200, help="batch-1 calls timed per row [default: 200]"
    )
    parser.add_argument(
        "--batches", type=int, default=20, help="batch-256 calls timed per row [default: 20]"
    )
    parser.add_argument(
        "--http-iters", type=int, default=200, help="HTTP round trips timed per row [default: 200]"
    )
    parser.add_argument(
        "--warmup", type=int, default=10, help="untimed calls before each row [default: 10]"
    )
    args = parser.parse_args(argv)
    for name in ("iters", "batches", "http_iters", "warmup"):
        value = getattr(args, name)
        if not 0 <= value <= MAX_ITERS or (name != "warmup" and value == 0):
            parser.error(f"--{name.replace('_', '-')} {value}: use 1..{MAX_ITERS}")

    version_dir = find_version(args.export_dir)
    checkpoints = args.job_dir / "checkpoints"

    import tensorflow as tf

    from serving.client import ServingClient, ServingError
    from trainer.model import build_model

    latest = tf.train.latest_checkpoint(str(checkpoints))
    if latest is None:
        raise SystemExit(
            f"error: no checkpoint in {checkpoints}; pass --job-dir of the run that "
            f"exported {version_dir}"
        )
    loaded = tf.saved_model.load(str(version_dir))
    signature = loaded.signatures[PIXELS.name]
    model = build_model()
    tf.train.Checkpoint(model=model).restore(latest).expect_partial()

    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, size=(1, *IMAGE_SHAPE), dtype=np.uint8)
    big = rng.integers(0, 256, size=(256, *IMAGE_SHAPE), dtype=np.uint8)
    one_t, big_t = tf.constant(one), tf.constant(big)
    one_f, big_f = tf.constant(one, tf.float32), tf.constant(big, tf.float32)

    served = signature(**{PIXELS.input: big_t})[PROBABILITIES].numpy()
    keras_out = model.predict(big.astype(np.float32), verbose=0, batch_size=256)
    diff = float(np.max(np.abs(served - keras_out)))

    print(f"export     {version_dir}")
    print(f"checkpoint {latest}  (max |SavedModel - Keras| = {diff:.1e})")
    print(
        f"TensorFlow {tf.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; {args.iters} x batch 1, {args.batches} x batch 256, "
        f"{args.http_iters} HTTP round trips"
    )
    print()
    print(f"{'in-process, same inputs':<36}{'p50 ms':>9}{'p99 ms':>9}{'img/s @256':>13}")
    rows = [
        (f"SavedModel {PIXELS.name}", lambda x_u8, x_f: signature(**{PIXELS.input: x_u8})),
        ("Keras model.predict", lambda x_u8, x_f: model.predict(x_f, verbose=0, batch_size=256)),
        ("Keras model(x) direct call", lambda x_u8, x_f: model(x_f, training=False)),
    ]
    for name, fn in rows:
        small, large = partial(fn, one_t, one_f), partial(fn, big_t, big_f)
        p50, p99 = percentiles_ms(time_calls(small, args.iters, args.warmup))
        rate = throughput(large, 256, args.batches, min(args.warmup, 3))
        print(f"{name:<36}{p50:>9.2f}{p99:>9.2f}{rate:>13,.0f}")
    pngs = [p.read_bytes() for p in sorted(SAMPLES.glob("*.png"))]
    if IMAGE.name in loaded.signatures and pngs:
        images = loaded.signatures[IMAGE.name]
        one_png = tf.constant(pngs[:1])
        many_png = tf.constant([pngs[i % len(pngs)] for i in range(256)])
        p50, p99 = percentiles_ms(
            time_calls(lambda: images(**{IMAGE.input: one_png}), args.iters, args.warmup)
        )
        rate = throughput(
            lambda: images(**{IMAGE.input: many_png}), 256, args.batches, min(args.warmup, 3)
        )
        name = f"SavedModel {IMAGE.name} (28x28 PNGs)"
        print(f"{name:<36}{p50:>9.2f}{p99:>9.2f}{rate:>13,.0f}")

    print()
    print(f"{'HTTP round trip, batch 1, stand-in':<36}{'p50 ms':>9}{'p99 ms':>9}")
    log = tempfile.NamedTemporaryFile("w", prefix="bench-standin-", suffix=".log", delete=False)
    proc, url = start_standin(version_dir.parent, log)
    n = args.http_iters
    try:
        with ServingClient(url, retries=0) as reuse:
            reuse_times = time_calls(partial(reuse.predict_pixels, one), n, args.warmup)
        with ServingClient(url, retries=0) as fresh:
            fresh.session.headers["Connection"] = "close"  # a new TCP connection every time
            fresh_times = time_calls(partial(fresh.predict_pixels, one), n, args.warmup)
        p50, p99 = percentiles_ms(reuse_times)
        print(f"{'client, one Session (kept alive)':<36}{p50:>9.2f}{p99:>9.2f}")
        p50, p99 = percentiles_ms(fresh_times)
        print(f"{'client, fresh connection each':<36}{p50:>9.2f}{p99:>9.2f}")
        if IMAGE.name in loaded.signatures and pngs:
            with ServingClient(url, retries=0) as reuse:
                png_times = time_calls(partial(reuse.predict_image_bytes, pngs[:1]), n, args.warmup)
            p50, p99 = percentiles_ms(png_times)
            print(f"{'client, one PNG to ' + IMAGE.name:<36}{p50:>9.2f}{p99:>9.2f}")
    except ServingError as e:
        raise SystemExit(f"error: {e} (the stand-in's log: {log.name})") from None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    os.unlink(log.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
