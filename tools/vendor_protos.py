"""Refresh third_party/'s .proto files: what the client's generated modules are made from.

    python -m tools.vendor_protos --serving-checkout ../serving --serving-ref 2.20.0
    make protos                      # then regenerate serving/protos/ from them

Starting from ROOTS, it follows every `import` and writes the closure under third_party/:

- `tensorflow_serving/...`: copied byte for byte from a git checkout of
  github.com/tensorflow/serving at `--serving-ref` (`git show REF:PATH`).
- `tensorflow/...` and `xla/...` (TensorFlow's own protos, XLA's as TensorFlow carries it):
  TensorFlow's wheel ships no .proto files, so these are printed back from the
  FileDescriptorProtos that the installed wheel's `*_pb2.py` modules register. They
  compile to the same descriptors (checked here, and by tests/test_protos.py), but carry
  none of TensorFlow's comments: where tensorflow/tensorflow can be reached, copying
  the same paths from its tag `v<version>` (XLA's from `third_party/xla/`) gives the
  commented originals.

Needs TensorFlow (the version in requirements.txt) and grpcio-tools (requirements-dev.txt);
third_party/README.md records what was vendored from where.
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[1]
THIRD_PARTY = ROOT / "third_party"
# What the client calls: PredictionService (Predict, GetModelMetadata) and ModelService
# (GetModelStatus; it also brings ModelServerConfig, which serving/rollout.py parses).
ROOTS = (
    "tensorflow_serving/apis/prediction_service.proto",
    "tensorflow_serving/apis/model_service.proto",
)
IMPORT_RE = re.compile(r'^import\s+(?:public\s+|weak\s+)?"([^"]+)";', re.M)


def tensorflow_descriptor(path: str) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto that the installed TensorFlow registers for `path`; XLA's
    files live in its wheel under tensorflow.compiler (xla/tsl/... ->
    tensorflow.compiler.xla.tsl...)."""
    module = ("tensorflow/compiler/" + path if path.startswith("xla/") else path)[: -len(".proto")]
    loaded = importlib.import_module(module.replace("/", ".") + "_pb2")
    return descriptor_pb2.FileDescriptorProto.FromString(loaded.DESCRIPTOR.serialized_pb)


# --- FileDescriptorProto -> .proto text (the features TensorFlow's files use).

_T = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    _T.TYPE_DOUBLE: "double",
    _T.TYPE_FLOAT: "float",
    _T.TYPE_INT64: "int64",
    _T.TYPE_UINT64: "uint64",
    _T.TYPE_INT32: "int32",
    _T.TYPE_FIXED64: "fixed64",
    _T.TYPE_FIXED32: "fixed32",
    _T.TYPE_BOOL: "bool",
    _T.TYPE_STRING: "string",
    _T.TYPE_BYTES: "bytes",
    _T.TYPE_UINT32: "uint32",
    _T.TYPE_SFIXED32: "sfixed32",
    _T.TYPE_SFIXED64: "sfixed64",
    _T.TYPE_SINT32: "sint32",
    _T.TYPE_SINT64: "sint64",
}
_MAX_FIELD = 536870911  # 2^29 - 1: a message's `reserved N to max`


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _options(options) -> list[str]:
    out = []
    for field, value in options.ListFields():
        if field.type == field.TYPE_ENUM:
            value = field.enum_type.values_by_number[value].name
        elif field.type == field.TYPE_BOOL:
            value = "true" if value else "false"
        elif field.type == field.TYPE_STRING:
            value = _quote(value)
        out.append(f"{field.name} = {value}")
    return out


def _default_json_name(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


class _Printer:
    def __init__(self, proto: descriptor_pb2.FileDescriptorProto):
        self.proto, self.lines = proto, []

    def line(self, depth: int, text: str = "") -> None:
        self.lines.append("  " * depth + text if text else "")

    def file(self) -> str:
        p = self.proto
        if p.extension or p.service:
            raise ValueError(f"{p.name}: extensions and services are not printed")
        self.line(0, f'syntax = "{p.syntax or "proto2"}";')
        self.line(0)
        self.line(0, f"package {p.package};")
        self.line(0)
        for i, dependency in enumerate(p.dependency):
            public = "public " if i in p.public_dependency else ""
            self.line(0, f"import {public}{_quote(dependency)};")
        if p.dependency:
            self.line(0)
        for option in _options(p.options):
            self.line(0, f"option {option};")
        for message in p.message_type:
            self.line(0)
            self.message(message, 0)
        for enum in p.enum_type:
            self.line(0)
            self.enum(enum, 0)
        return "\n".join(self.lines) + "\n"

    def type_name(self, field) -> str:
        if field.type not in (_T.TYPE_MESSAGE, _T.TYPE_ENUM):
            return _SCALARS[field.type]
        return field.type_name.removeprefix("." + self.proto.package + ".")

    def message(self, message, depth: int) -> None:
        if message.extension or message.extension_range:
            raise ValueError(f"{message.name}: extensions are not printed")
        self.line(depth, f"message {message.name} {{")
        inner = depth + 1
        for option in _options(message.options):
            self.line(inner, f"option {option};")
        maps = {n.name: n for n in message.nested_type if n.options.map_entry}
        fields, printed_oneofs = list(message.field), set()

        def emit(field) -> None:
            if not field.HasField("oneof_index") or field.proto3_optional:
                self.field(field, inner, maps)
                return
            if field.oneof_index in printed_oneofs:
                return
            printed_oneofs.add(field.oneof_index)
            self.line(inner, f"oneof {message.oneof_decl[field.oneof_index].name} {{")
            for member in message.field:
                if member.HasField("oneof_index") and member.oneof_index == field.oneof_index:
                    self.field(member, inner + 1, maps, in_oneof=True)
            self.line(inner, "}")

        # protoc adds a map field's entry type to nested_type where the field is declared,
        # so walking nested_type in order restores the declaration order of both lists.
        for nested in message.nested_type:
            if nested.options.map_entry:
                while fields:
                    field = fields.pop(0)
                    emit(field)
                    if field.type_name.endswith("." + nested.name):
                        break
            else:
                self.message(nested, inner)
        for field in fields:
            emit(field)
        for enum in message.enum_type:
            self.enum(enum, inner)
        self.reserved(message, inner, last=_MAX_FIELD, end_exclusive=True)
        self.line(depth, "}")

    def field(self, field, depth: int, maps: dict, in_oneof: bool = False) -> None:
        entry = maps.get(field.type_name.rsplit(".", 1)[-1])
        if field.label == _T.LABEL_REPEATED and entry is not None:
            key, value = entry.field
            text = f"map<{self.type_name(key)}, {self.type_name(value)}> {field.name}"
        else:
            label = ""
            if field.label == _T.LABEL_REPEATED:
                label = "repeated "
            elif field.proto3_optional:
                label = "optional "
            elif self.proto.syntax != "proto3" and not in_oneof:
                label = "required " if field.label == _T.LABEL_REQUIRED else "optional "
            text = f"{label}{self.type_name(field)} {field.name}"
        options = []
        if field.HasField("default_value"):
            default = field.default_value
            if field.type in (_T.TYPE_STRING, _T.TYPE_BYTES):
                default = _quote(default)
            options.append(f"default = {default}")
        if field.HasField("json_name") and field.json_name != _default_json_name(field.name):
            options.append(f"json_name = {_quote(field.json_name)}")
        options += _options(field.options)
        suffix = f" [{', '.join(options)}]" if options else ""
        self.line(depth, f"{text} = {field.number}{suffix};")

    def enum(self, enum, depth: int) -> None:
        self.line(depth, f"enum {enum.name} {{")
        for option in _options(enum.options):
            self.line(depth + 1, f"option {option};")
        for value in enum.value:
            options = _options(value.options)
            suffix = f" [{', '.join(options)}]" if options else ""
            self.line(depth + 1, f"{value.name} = {value.number}{suffix};")
        self.reserved(enum, depth + 1, last=2**31 - 1, end_exclusive=False)
        self.line(depth, "}")

    def reserved(self, node, depth: int, last: int, end_exclusive: bool) -> None:
        for r in node.reserved_range:
            end = r.end - 1 if end_exclusive else r.end
            if end == r.start:
                self.line(depth, f"reserved {r.start};")
            else:
                self.line(depth, f"reserved {r.start} to {'max' if end >= last else end};")
        if node.reserved_name:
            self.line(depth, f"reserved {', '.join(_quote(n) for n in node.reserved_name)};")


def to_proto_source(proto: descriptor_pb2.FileDescriptorProto) -> str:
    return _Printer(proto).file()


# --- Vendoring.


def serving_source(checkout: Path, ref: str, path: str) -> str:
    return subprocess.run(
        ["git", "-C", str(checkout), "show", f"{ref}:{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def closure(checkout: Path, ref: str) -> dict[str, str]:
    """Every file ROOTS import, directly or not (google/protobuf/* excepted: protobuf
    ships those), mapped to its .proto source."""
    sources: dict[str, str] = {}
    pending = list(ROOTS)
    while pending:
        path = pending.pop()
        if path in sources or path.startswith("google/protobuf/"):
            continue
        if path.startswith("tensorflow_serving/"):
            sources[path] = serving_source(checkout, ref, path)
            pending += IMPORT_RE.findall(sources[path])
        else:
            proto = tensorflow_descriptor(path)
            sources[path] = to_proto_source(proto)
            pending += list(proto.dependency)
    return dict(sorted(sources.items()))


def compiled(source_root: Path, paths: list[str]) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """What protoc makes of `paths` under `source_root`, as the Python generator embeds it
    (no source info; json_name only where it differs from protoc's default)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{source_root}", "--include_imports"]
            + [f"--descriptor_set_out={out}", *paths],
            check=True,
        )
        found = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    result = {}
    for proto in found:
        proto.ClearField("source_code_info")
        _clear_default_json_names(proto.message_type)
        result[proto.name] = proto
    return result


def _clear_default_json_names(messages) -> None:
    for message in messages:
        for field in message.field:
            if field.json_name == _default_json_name(field.name):
                field.ClearField("json_name")
        _clear_default_json_names(message.nested_type)


def tensorflow_mismatches(source_root: Path = THIRD_PARTY) -> list[str]:
    """The vendored tensorflow/ and xla/ files whose compiled descriptors differ from the
    installed TensorFlow's (empty: they are the same schema)."""
    paths = sorted(
        str(p.relative_to(source_root))
        for top in ("tensorflow", "xla")
        for p in (source_root / top).rglob("*.proto")
    )
    ours = compiled(source_root, paths)
    return [path for path in paths if ours[path] != tensorflow_descriptor(path)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.vendor_protos", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--serving-checkout",
        type=Path,
        required=True,
        help="a git clone of github.com/tensorflow/serving [required]",
    )
    parser.add_argument(
        "--serving-ref", required=True, help="the tag or commit to copy from, e.g. 2.20.0"
    )
    parser.add_argument("--out", type=Path, default=THIRD_PARTY, help=f"[default: {THIRD_PARTY}]")
    args = parser.parse_args(argv)
    import tensorflow as tf  # its version, and the licence its wheel ships

    sources = closure(args.serving_checkout, args.serving_ref)
    licence = (Path(tf.__file__).parent / "include" / "LICENSE").read_text(encoding="utf-8")
    sources |= {
        "tensorflow_serving/LICENSE": serving_source(
            args.serving_checkout, args.serving_ref, "LICENSE"
        ),
        "tensorflow/LICENSE": licence,
        "xla/LICENSE": licence,
    }
    for top in ("tensorflow_serving", "tensorflow", "xla"):
        for old in (args.out / top).rglob("*.proto"):
            old.unlink()
    for path, text in sources.items():
        (args.out / path).parent.mkdir(parents=True, exist_ok=True)
        (args.out / path).write_text(text, encoding="utf-8")
    commit = subprocess.run(
        ["git", "-C", str(args.serving_checkout), "rev-parse", f"{args.serving_ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    mismatches = tensorflow_mismatches(args.out)
    print(
        f"wrote {len(sources) - 3} .proto files and 3 licences to {args.out}: "
        f"tensorflow_serving/ from {args.serving_ref} ({commit}), "
        f"tensorflow/ and xla/ from TensorFlow {tf.__version__}"
    )
    if mismatches:
        print(f"error: printed back differently: {mismatches}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
