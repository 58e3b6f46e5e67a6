"""TF Serving's request and response protos for the gRPC client, without TensorFlow.

Why not `from tensorflow_serving.apis import predict_pb2`: those generated modules start
with `from tensorflow.core.framework import tensor_pb2`, and importing any module under
`tensorflow.` first runs the package's `tensorflow/__init__.py`, which loads the whole
TensorFlow runtime (checked with `python -X importtime -c "import
tensorflow_serving.apis.predict_pb2"`: 2.4-3 s and ~450 `tensorflow.*` modules,
`tensorflow.python` included; `prediction_service_pb2_grpc` the same). The client must
stay TensorFlow-free (tests/test_client.py checks it).

So this module reads the serialized `FileDescriptorProto` that each generated `*_pb2.py`
file passes to `AddSerializedFile(b"...")` straight from the file's source text (with
`ast`, never executing it), follows each file's dependencies the same way, and adds them
to a private `DescriptorPool`. The message classes built from it are wire-compatible with
TF Serving's (same package, names and field numbers), and, being in their own pool, do
not clash with TensorFlow's classes where a process imports both (the stand-in, tests).
The files are located with `importlib.util.find_spec` on the top-level packages, which
finds a package's folder without importing it. google/protobuf/* dependencies come from
the protobuf runtime itself.

The gRPC method paths (`/tensorflow.serving.PredictionService/Predict`, ...) are those of
prediction_service.proto and model_service.proto; `serving.grpc_client` calls them with
`channel.unary_unary` instead of the generated `*_pb2_grpc` stubs, for the same reason.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PREDICTION_SERVICE = "/tensorflow.serving.PredictionService/"
MODEL_SERVICE = "/tensorflow.serving.ModelService/"

# The generated modules whose messages the client needs; their imports are followed.
ROOT_MODULES = (
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
)


def _package_dir(top: str) -> Path:
    spec = importlib.util.find_spec(top)  # a top-level name: located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{top!r} is not installed (pip install tensorflow-serving-api)")
    return Path(next(iter(spec.submodule_search_locations)))


def _module_alias(proto_file: str) -> str:
    """The name protoc's generated code imports `proto_file`'s module as."""
    module = proto_file[: -len(".proto")].replace("/", ".") + "_pb2"
    return module.replace("_", "__").replace(".", "_dot_")


def _read_generated(module: str) -> tuple[bytes, dict[str, str]]:
    """From the source of the generated `module` (e.g. tensorflow_serving.apis.predict_pb2):
    the FileDescriptorProto bytes it registers, and the module of each file it imports
    (by protoc's import alias, since a .proto's path and its Python module can differ:
    xla/tsl/protobuf/status.proto lives in tensorflow.compiler.xla.tsl.protobuf)."""
    top, *rest = module.split(".")
    source = _package_dir(top).joinpath(*rest[:-1], rest[-1] + ".py")
    tree = ast.parse(source.read_text(encoding="utf-8"), str(source))
    imports = {
        alias.asname: f"{node.module}.{alias.name}"
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
        if alias.asname
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, bytes)
        ):
            return node.args[0].value, imports
    raise ImportError(f"{source}: no AddSerializedFile(b'...') call to read the descriptor from")


@cache
def pool() -> descriptor_pool.DescriptorPool:
    """A private pool holding ROOT_MODULES' files and everything they import."""
    result = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(proto_file: str, module: str) -> None:
        if proto_file in added:
            return
        added.add(proto_file)
        if proto_file.startswith("google/protobuf/"):  # the protobuf runtime's own
            result.AddSerializedFile(importlib.import_module(module).DESCRIPTOR.serialized_pb)
            return
        serialized, imports = _read_generated(module)
        proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
        for dependency in proto.dependency:
            add(dependency, imports[_module_alias(dependency)])
        result.AddSerializedFile(serialized)

    for module in ROOT_MODULES:
        add(module[: -len("_pb2")].replace(".", "/") + ".proto", module)
    return result


@cache
def message(full_name: str) -> Any:
    """The message class for e.g. 'tensorflow.serving.PredictRequest'."""
    return message_factory.GetMessageClass(pool().FindMessageTypeByName(full_name))
