"""TF Serving's BatchingParameters and MonitoringConfig messages, rebuilt for the tests.

TF Serving reads serving/batching.config (--batching_parameters_file) and
serving/monitoring.config (--monitoring_config_file) as text-format protos, and refuses to
start on an unknown field or a value of the wrong type. The tensorflow-serving-api wheel
ships ModelServerConfig (models*.config; tests use tensorflow_serving.config.
model_server_config_pb2 as is) but not these two messages, so their fields are declared
below, every field at its number, type and label, and built into a private DescriptorPool
under the upstream package name (tensorflow.serving), which text_format then parses with
exactly the server's rules. The google.protobuf wrappers come from protobuf's wrappers_pb2.

The declarations are written in .proto syntax so that they can be compared with the
upstream text line by line (only the field lines; the comments here are ours). Sources,
read through the search tool's file index:

  BatchingParameters: tensorflow_serving/servables/tensorflow/session_bundle_config.proto
    - marevol/serving@98e4bc4477ab16c54fdc62fe50cbce45c86f73b8, a fork of tensorflow/serving
      and the newest text of this .proto that the index holds: 9 fields.
    - cross-checked with airenas/go-tf-serving-protogen@250dc8797a4d0521484d55e97e3505b3de848c60
      tensorflow_serving/servables/tensorflow/session_bundle_config.pb.go, protoc's output
      for TF Serving 2.14: the same 9 names, numbers, types and labels.
    - tensorflow/serving's own stored versions predate fields 8 and 9 (2020):
      03f8b6b5fceec0df896da1e85d02b101b4ff2b7a has fields 1-7 only.
  MonitoringConfig, PrometheusConfig: tensorflow_serving/config/monitoring_config.proto
    - tensorflow/serving@021efbd3281aa815cab0b35eab6d6d25249c12d4: 1 and 2 fields; the same
      text at marevol/serving@98e4bc4477ab16c54fdc62fe50cbce45c86f73b8.

Not checkable from here: session_bundle_config.proto at the 2.20 or 2.21 tag (the index
holds no such version). A field added upstream after 2.14 would make a config that uses it
fail these tests although the server accepts it; that errs on the safe side (no false
pass): declare the field here, with the commit it was read at.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

PACKAGE = "tensorflow.serving"

# message name -> (upstream .proto file, field declarations as written there).
MESSAGES: dict[str, tuple[str, str]] = {
    "BatchingParameters": (
        "tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        """
        google.protobuf.Int64Value max_batch_size = 1;
        google.protobuf.Int64Value batch_timeout_micros = 2;
        google.protobuf.Int64Value max_enqueued_batches = 3;
        google.protobuf.Int64Value num_batch_threads = 4;
        google.protobuf.StringValue thread_pool_name = 5;
        google.protobuf.BoolValue enable_large_batch_splitting = 8;
        google.protobuf.Int64Value max_execution_batch_size = 9;
        repeated int64 allowed_batch_sizes = 6;
        bool pad_variable_length_inputs = 7;
        """,
    ),
    "PrometheusConfig": (
        "tensorflow_serving/config/monitoring_config.proto",
        """
        bool enable = 1;
        string path = 2;
        """,
    ),
    "MonitoringConfig": (
        "tensorflow_serving/config/monitoring_config.proto",
        """
        PrometheusConfig prometheus_config = 1;
        """,
    ),
}

# Fields per message, counted in the upstream texts named in the module docstring; the
# tests hold the declarations above to these numbers.
FIELD_COUNTS = {"BatchingParameters": 9, "PrometheusConfig": 2, "MonitoringConfig": 1}

_FDP = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    "double": _FDP.TYPE_DOUBLE,
    "float": _FDP.TYPE_FLOAT,
    "int64": _FDP.TYPE_INT64,
    "uint64": _FDP.TYPE_UINT64,
    "int32": _FDP.TYPE_INT32,
    "fixed64": _FDP.TYPE_FIXED64,
    "fixed32": _FDP.TYPE_FIXED32,
    "bool": _FDP.TYPE_BOOL,
    "string": _FDP.TYPE_STRING,
    "bytes": _FDP.TYPE_BYTES,
    "uint32": _FDP.TYPE_UINT32,
    "sfixed32": _FDP.TYPE_SFIXED32,
    "sfixed64": _FDP.TYPE_SFIXED64,
    "sint32": _FDP.TYPE_SINT32,
    "sint64": _FDP.TYPE_SINT64,
}
# One proto3 field: optional `repeated`, a type, a name, a number. Options, maps and
# oneofs do not occur in these messages and do not match (an error, not a guess); a type
# that is not a scalar is taken as a message, which the pool must then resolve.
FIELD_LINE = re.compile(
    r"(?P<repeated>repeated )?(?P<type>[\w.]+) (?P<name>\w+) = (?P<number>\d+);"
)


def declarations(message: str) -> list[str]:
    """The field lines of `message`, stripped, in upstream order."""
    return [line.strip() for line in MESSAGES[message][1].splitlines() if line.strip()]


def _field(line: str) -> descriptor_pb2.FieldDescriptorProto:
    match = FIELD_LINE.fullmatch(line)
    if match is None:
        raise ValueError(f"not a plain proto3 field declaration: {line!r}")
    kind = match["type"]
    field = descriptor_pb2.FieldDescriptorProto(
        name=match["name"],
        number=int(match["number"]),
        label=_FDP.LABEL_REPEATED if match["repeated"] else _FDP.LABEL_OPTIONAL,
        type=SCALARS.get(kind, _FDP.TYPE_MESSAGE),
    )
    if kind not in SCALARS:  # a message: google.protobuf.* or one of this package's
        field.type_name = "." + (kind if "." in kind else f"{PACKAGE}.{kind}")
    return field


@cache
def pool() -> descriptor_pool.DescriptorPool:
    """A private pool with the messages above, in files named as upstream's."""
    result = descriptor_pool.DescriptorPool()
    result.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for name, (path, _) in MESSAGES.items():
        proto = files.setdefault(
            path, descriptor_pb2.FileDescriptorProto(name=path, package=PACKAGE, syntax="proto3")
        )
        fields = [_field(line) for line in declarations(name)]
        proto.message_type.add(name=name).field.extend(fields)
        wrappers = wrappers_pb2.DESCRIPTOR.name  # google/protobuf/wrappers.proto
        uses_wrappers = any(f.type_name.startswith(".google.protobuf.") for f in fields)
        if uses_wrappers and wrappers not in proto.dependency:
            proto.dependency.append(wrappers)
    for proto in files.values():
        result.Add(proto)
    return result


@cache
def message_class(name: str) -> Any:
    """The message class for e.g. 'BatchingParameters' (package tensorflow.serving)."""
    return message_factory.GetMessageClass(pool().FindMessageTypeByName(f"{PACKAGE}.{name}"))
