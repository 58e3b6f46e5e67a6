"""Peak memory of reading hostile files: what each untrusted-file reader costs, in this
tree and, with --before-tree, in another checkout (say `git worktree add /tmp/before REV`).

    .venv/bin/python -m benchmarks.hostile_files                       # this tree only
    .venv/bin/python -m benchmarks.hostile_files --before-tree /tmp/before

Each file is built in a temporary folder (the 1 GiB PNG is sparse: no disk, no time) and
read by the reader the product uses for it, in a child process of its own, in the tree's
root with the tree on PYTHONPATH:

- an idx .gz bomb: digits.idx.read_images, the shared reader behind the client's
  `predict --idx` and the trainer's `data import`;
- a 1 GiB .png and /dev/zero (as zero.png): serving.inputs.read_image_bytes, the client's
  image path;
- a 128-byte .npy whose header claims 10^12 values: serving.inputs.read_npy.

Each child runs under an address-space cap (RLIMIT_AS, --cap-mib) and a wall timeout, so a
reader that grows without end ends in a MemoryError or is killed instead of taking the
machine. Its peak RSS is wait4's ru_maxrss, taken by a small trampoline process: Linux
carries the forking process's high-water mark across fork and exec, so measured from here
every child would start at this process's size. Writes nothing; prints a table and
(--json) the results.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness

CAP_MIB = 3 * 1024
TIMEOUT_S = 120.0
MESSAGE_CHARS = 90  # of an outcome, in the table

# Runs the command under the cap, waits, and prints {"maxrss_kib", "status"} last.
TRAMPOLINE = (
    "import json, os, resource, subprocess, sys\n"
    "cap = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_AS, (cap, cap))\n"
    "child = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "print(json.dumps({'maxrss_kib': usage.ru_maxrss, "
    "'status': os.waitstatus_to_exitcode(status)}))\n"
)

# The child: reads one file with one reader and prints how that ended, as one JSON line.
READER = (
    "import json, sys\n"
    "kind, path = sys.argv[1:3]\n"
    "try:\n"
    "    if kind == 'idx':\n"
    "        from digits import idx\n"
    "        result = idx.read_images(path)\n"
    "    elif kind == 'image':\n"
    "        from serving import inputs\n"
    "        result = inputs.read_image_bytes(path)\n"
    "    else:\n"
    "        from serving import inputs\n"
    "        result = inputs.read_npy(path)\n"
    "    outcome = f'read {len(result):,} items'\n"
    "except BaseException as e:  # what the reader raised is the measurement\n"
    "    outcome = f'{type(e).__name__}: {e}'\n"
    "print(json.dumps({'outcome': outcome}), flush=True)\n"
)


def gzip_bomb(path: Path, header: bytes, zeros: int) -> Path:
    """`header` then `zeros` zero bytes, one gzip member: about 1 KB per MB."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    chunk = bytes(2**20)
    with path.open("wb") as f:
        f.write(z.compress(header))
        for _ in range(zeros // len(chunk)):
            f.write(z.compress(chunk))
        f.write(z.compress(bytes(zeros % len(chunk))))
        f.write(z.flush())
    return path


def npy_claiming(path: Path, shape: tuple[int, ...], descr: str = "<f8") -> Path:
    """A .npy file (format 1.0) whose header says `shape`, with no data after it."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    text += " " * (-(len(text) + 1 + 10) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode())
    return path


def sparse_png(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(size)
    return path


# name -> (reader kind, how the file is built in a folder)
CASES: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "idx .gz bomb: header 1,000,000 images, inflates to 1 GiB": (
        "idx",
        lambda d: gzip_bomb(
            d / "bomb-images-idx3-ubyte.gz", struct.pack(">IIII", 2051, 10**6, 28, 28), 2**30
        ),
    ),
    "idx .gz bomb: header 60,000 images, inflates to 1 GiB": (
        "idx",
        lambda d: gzip_bomb(
            d / "bomb60k-images-idx3-ubyte.gz", struct.pack(">IIII", 2051, 60_000, 28, 28), 2**30
        ),
    ),
    "idx .gz: header 1,000,000 images, 10 follow": (
        "idx",
        lambda d: gzip_bomb(
            d / "short-images-idx3-ubyte.gz",
            struct.pack(">IIII", 2051, 10**6, 28, 28),
            10 * 28 * 28,
        ),
    ),
    "1 GiB .png (sparse)": ("image", lambda d: sparse_png(d / "huge.png", 2**30)),
    "/dev/zero as zero.png": ("image", lambda d: _symlink(d / "zero.png", "/dev/zero")),
    "128-byte .npy claiming 10^12 float64": (
        "npy",
        lambda d: npy_claiming(d / "claims.npy", (1_275_510_204, 28, 28)),
    ),
}


def _symlink(path: Path, target: str) -> Path:
    path.symlink_to(target)
    return path


def measure_one(tree: Path, kind: str, path: Path, cap_mib: int, timeout: float) -> dict:
    """Read `path` with reader `kind` from `tree` in a capped child: its peak RSS (MiB),
    exit status and outcome (what the reader returned or raised, or that it was killed)."""
    env = {
        **harness.child_env(),
        "PYTHONPATH": str(tree),
        "OPENBLAS_NUM_THREADS": "1",  # numpy's thread pool: less address space, less noise
    }
    command = [sys.executable, "-c", TRAMPOLINE, str(cap_mib * 2**20)]
    command += [sys.executable, "-c", READER, kind, str(path)]
    start = time.perf_counter()
    proc = subprocess.Popen(
        command,
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group: the timeout kills the reader too
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {
            "peak_mib": None,
            "status": None,
            "outcome": f"killed after {timeout:g} s (still reading)",
            "seconds": round(time.perf_counter() - start, 1),
        }
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    found = {k: v for line in lines for k, v in line.items()}
    if "outcome" not in found:  # the reader died without a word (a signal, say)
        tail = stderr.strip().splitlines()[-1:] or ["no output"]
        found["outcome"] = f"died: {tail[0]}"
    if found.get("maxrss_kib") is None:
        raise harness.BenchError(f"the trampoline failed: {stderr.strip()[-500:]}", 1)
    return {
        "peak_mib": round(found["maxrss_kib"] / 1024, 1),
        "status": found["status"],
        "outcome": found["outcome"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def measure(trees: dict[str, Path], cap_mib: int, timeout: float) -> dict[str, Any]:
    """Every case in every tree, one child at a time (so peaks do not stack up)."""
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        for name, (kind, build) in CASES.items():
            folder = Path(tmp) / str(len(results))
            folder.mkdir()
            path = build(folder)
            results[name] = {}
            for label, tree in trees.items():
                r = measure_one(tree, kind, path, cap_mib, timeout)
                r["outcome"] = r["outcome"].replace(f"{folder}/", "")  # the name says enough
                results[name][label] = r
            print(f"{name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    return {
        "cap_mib": cap_mib,
        "timeout_s": timeout,
        "trees": {label: str(tree) for label, tree in trees.items()},
        "load_average": os.getloadavg(),
        "cases": results,
    }


def table(result: dict[str, Any]) -> str:
    """A Markdown table: case, then each tree's peak RSS and outcome."""
    labels = list(result["trees"])
    head = "| case | " + " | ".join(f"{label}: peak RSS, outcome" for label in labels) + " |"
    rows = [head, "|" + " --- |" * (1 + len(labels))]
    for name, by_tree in result["cases"].items():
        cells = []
        for label in labels:
            r = by_tree[label]
            peak = "killed" if r["peak_mib"] is None else f"{r['peak_mib']:,.0f} MiB"
            outcome = r["outcome"].replace("|", "/")
            if len(outcome) > MESSAGE_CHARS:
                outcome = outcome[: MESSAGE_CHARS - 1] + "…"
            cells.append(f"{peak}, {outcome} ({r['seconds']:g} s)")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = harness.Parser(
        prog="python -m benchmarks.hostile_files",
        description=__doc__.split("\n\n")[0],
        epilog="Details: the module docstring (benchmarks/hostile_files.py).",
    )
    parser.add_argument(
        "--before-tree",
        type=Path,
        default=None,
        help="another checkout to measure first (e.g. a `git worktree`) [none]",
    )
    parser.add_argument(
        "--cap-mib", type=int, default=CAP_MIB, help=f"each reader's address space [{CAP_MIB}]"
    )
    parser.add_argument(
        "--timeout", type=float, default=TIMEOUT_S, help=f"seconds per reader [{TIMEOUT_S:g}]"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    if not 256 <= args.cap_mib <= 64 * 1024:
        parser.error(f"--cap-mib must be 256 to 65,536, got {args.cap_mib}")
    if not 1 <= args.timeout <= 3600:  # also refuses NaN and inf
        parser.error(f"--timeout must be 1 to 3600 seconds, got {args.timeout}")
    if args.before_tree is not None:
        args.before_tree = args.before_tree.expanduser().resolve()
        if not (args.before_tree / "digits" / "idx.py").is_file():
            parser.error(f"--before-tree {args.before_tree} holds no digits/idx.py")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    def run(args: argparse.Namespace) -> dict[str, Any]:
        trees = {"before": args.before_tree} if args.before_tree else {}
        trees["after" if args.before_tree else "this tree"] = harness.ROOT
        return measure(trees, args.cap_mib, args.timeout)

    def finish(args: argparse.Namespace, result: dict[str, Any]) -> int:
        if args.json:
            print(json.dumps(result, indent=1))
        load = ", ".join(f"{x:.2f}" for x in result["load_average"])
        print(f"cap {result['cap_mib']:,} MiB address space per reader; load average {load}")
        print(table(result))
        return 0

    return harness.run_main("hostile_files", argv, parse_args, run, finish)


if __name__ == "__main__":
    sys.exit(main())
