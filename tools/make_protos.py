"""Generate serving/protos/ from the .proto files in third_party/: `make protos`.

    python -m tools.make_protos            # rewrite serving/protos/**/*_pb2.py, *_pb2_grpc.py
    python -m tools.make_protos --check    # exit 1, naming them, if those are not current

protoc (the one inside grpcio-tools, pinned in requirements-dev.txt) writes a `*_pb2.py`
for every vendored .proto file and a `*_pb2_grpc.py` (the stubs) for each file that
declares a service. Two rewrites then let the client import them without TensorFlow, and
beside TensorFlow in one process:

- Imports. protoc names a file's module after its path (`from tensorflow.core.framework
  import tensor_pb2`), and importing anything under `tensorflow.` first runs TensorFlow's
  `__init__`: the whole runtime, seconds. Every import of a vendored file becomes one
  under `serving.protos.` (`serving.protos.tensorflow.core.framework.tensor_pb2`).
- The descriptor pool. protoc registers each file in protobuf's default pool, where
  TensorFlow and tensorflow-serving-api register their own files of the same names; a
  pool refuses a second, different file under a name it holds (tensorflow-serving-api
  2.21.0's predict.proto has a field that 2.20.0's lacks). The files go to
  `serving.protos.POOL`, a pool of their own, instead.

Each rewrite checks that protoc's output has the shape it expects, so a protoc whose
output differs fails here, not in a user's import. tests/test_protos.py runs `--check`'s
comparison.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "third_party"
PACKAGE = "serving.protos"
OUT = ROOT.joinpath(*PACKAGE.split("."))
GENERATED = ("*_pb2.py", "*_pb2_grpc.py")
SERVICE_RE = re.compile(r"^service\s+\w+\s*\{", re.M)
HEADER = "# Then rewritten by tools/make_protos.py (make protos): see serving/protos/__init__.py.\n"


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(SOURCES)) for p in SOURCES.rglob("*.proto"))


def top_packages() -> list[str]:
    """The vendored top-level folders (tensorflow_serving, tensorflow, xla), longest
    first so that a regex alternation tries tensorflow_serving before tensorflow."""
    return sorted({path.split("/")[0] for path in proto_files()}, key=len, reverse=True)


def _replace_once(text: str, old: str, new: str, where: str) -> str:
    if text.count(old) != 1:
        raise SystemExit(f"error: {where}: expected {old!r} once in protoc's output")
    return text.replace(old, new)


def rewrite(text: str, module: str) -> str:
    """protoc's output for `module` (e.g. tensorflow_serving.apis.predict_pb2), importable
    as serving.protos.<module> and registered in serving.protos.POOL."""
    tops = "|".join(top_packages())
    text = re.sub(
        rf"^from ((?:{tops})(?:\.\w+)*) import ",  # `... import x_pb2 as y`, and `import *`
        rf"from {PACKAGE}.\1 import ",  # for an `import public`
        text,
        flags=re.M,
    )
    left = re.findall(rf"^(?:from|import) (?:{tops})\b.*$", text, re.M)
    if left:
        raise SystemExit(f"error: {module}: imports not rewritten: {left}")
    text = _replace_once(text, "DO NOT EDIT!\n", "DO NOT EDIT!\n" + HEADER, module)
    if module.endswith("_pb2_grpc"):
        return text
    text = _replace_once(
        text,
        "# @@protoc_insertion_point(imports)\n",
        f"# @@protoc_insertion_point(imports)\nfrom {PACKAGE} import POOL as _POOL\n",
        module,
    )
    text = _replace_once(
        text,
        "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(",
        "DESCRIPTOR = _POOL.AddSerializedFile(",
        module,
    )
    # The name protoc gives the classes' __module__: where they really live.
    return _replace_once(text, f"'{module}'", f"'{PACKAGE}.{module}'", module)


def _protoc(*args: str) -> None:
    # `python -m grpc_tools.protoc` adds the well-known types' folder (google/protobuf/*)
    # to the include path and carries the gRPC plugin.
    result = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{SOURCES}", *args],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"error: protoc failed: {result.stderr.strip()}")


def generate(out: Path) -> list[Path]:
    """Write the rewritten modules under `out` (as under serving/protos/); returns their
    paths relative to `out`."""
    sources = proto_files()
    services = [s for s in sources if SERVICE_RE.search((SOURCES / s).read_text("utf-8"))]
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        _protoc(f"--python_out={raw}", *sources)
        _protoc(f"--grpc_python_out={raw}", *services)
        for path in sorted(raw.rglob("*.py")):
            relative = path.relative_to(raw)
            module = ".".join(relative.with_suffix("").parts)
            target = out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(rewrite(path.read_text("utf-8"), module), encoding="utf-8")
            written.append(relative)
    return written


def checked_in(out: Path = OUT) -> list[Path]:
    """The generated modules under `out`, relative to it."""
    return sorted(
        path.relative_to(out)
        for top in top_packages()
        for pattern in GENERATED
        for path in (out / top).rglob(pattern)
    )


def stale(out: Path = OUT) -> list[str]:
    """The generated modules under `out` that differ from a fresh generation, are missing,
    or are left over: empty when `out` (serving/protos/) is current."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_dir = Path(tmp)
        fresh = set(generate(fresh_dir))
        ours = set(checked_in(out))
        differ = [p for p in fresh & ours if (fresh_dir / p).read_bytes() != (out / p).read_bytes()]
    return sorted(str(p) for p in (fresh ^ ours) | set(differ))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.make_protos", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a file is not current"
    )
    args = parser.parse_args(argv)
    if args.check:
        differ = stale()
        if differ:
            print(
                f"error: {len(differ)} generated files in {OUT.relative_to(ROOT)} are not "
                f"current ({', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''}); "
                "run make protos",
                file=sys.stderr,
            )
            return 1
        print(f"{OUT.relative_to(ROOT)}: current")
        return 0
    for old in checked_in():
        (OUT / old).unlink()
    written = generate(OUT)
    for folder in sorted((p for p in OUT.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    print(
        f"wrote {len(written)} modules to {OUT.relative_to(ROOT)} from {len(proto_files())} "
        f"files in {SOURCES.relative_to(ROOT)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
