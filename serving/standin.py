"""A loopback stand-in for TF Serving's REST API that runs the real SavedModel.

    python -m serving.standin --model-base-path artifacts/export/mnist --port 8501
    make standin                     # the same for EXPORT_DIR/MODEL_NAME

For trying the client, tests (tests/test_client.py) and benchmarks
(benchmarks/bench_serving.py) where no Docker engine runs the real server. It loads each
served version with `tf.saved_model.load`, dispatches to whatever signatures the
SavedModel has, and answers as TF Serving does. Sources it follows (tensorflow/serving):

- g3doc/api_rest.md: the URLs (`/v1/models/{m}[/versions/{v}|/labels/{l}]`, `/metadata`,
  `:predict`), row (`instances`) vs columnar (`inputs`) requests and the matching
  `predictions` vs `outputs` responses, `{"b64": ...}` for binary strings, and
  `{"error": ...}` bodies.
- model_servers/http_rest_api_util.cc: the two path regexes, and "both a version and a
  label" being refused.
- util/json_tensor.cc: FillPredictRequestFromJson (exactly one of instances/inputs, no
  empty instances), AddValueToTensor (integer dtypes take only JSON integers, so 12.0
  is refused for uint8), FillTensorProto (ragged lists refused), WriteDecimal (floats
  written in their shortest round-trip form), MakeRowFormatJsonFromTensors.
- model_servers/http_server.cc ToHTTPStatusCode: InvalidArgument and FailedPrecondition
  -> 400, NotFound -> 404, Unavailable -> 503, others as listed there.
- model_servers/get_model_status_impl.cc and http_rest_api_util.cc ToJsonString: the
  status and metadata bodies, built here from the same protos (tensorflow-serving-api).

Like the real server, it does not check request shapes against the signature
(tensorflow/serving#1527): a wrong shape reaches the graph, whose `tf.ensure_shape`
refuses it (400). Differences: all served versions are AVAILABLE at once (no loading
states), no classify/regress, no batching, and one test knob, `unavailable_requests`,
that answers the first N requests (REST or gRPC) with 503 / UNAVAILABLE to exercise
client retries. A status request with a label answers for the labelled version, as
api_rest.md reads; the server's
get_model_status_impl.cc looks only at a version number, so the real server may list
every version there instead (test_integration.py does not rely on either).

With `--grpc-port` it also serves TF Serving's gRPC API from the same loaded versions:
PredictionService Predict and GetModelMetadata, ModelService GetModelStatus
(apis/prediction_service.proto, model_service.proto), following predict_util.cc (the
default signature, an unknown one FailedPrecondition, the request's inputs exactly the
signature's, else InvalidArgument; outputs in the typed fields, as Tensor::AsProtoField
writes them) and get_model_metadata_impl.cc (metadata_field "signature_def" only). Errors
carry the TF error code that TF Serving returns as the gRPC status (the same numbers):
an unknown model or version NOT_FOUND, an unknown label INVALID_ARGUMENT (server_core.cc),
a graph error its own code (ensure_shape: INVALID_ARGUMENT).

Once it listens it prints one line, `serving REST on http://127.0.0.1:PORT (...)`, or
`serving REST on http://127.0.0.1:PORT and gRPC on grpc://127.0.0.1:PORT (...)`; port 0
takes a free port, which that line names. `--label NAME=VERSION` adds version labels.
Imports TensorFlow and tensorflow-serving-api (to load SavedModels and build TF
Serving's protos), never the trainer.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
import sys
import threading
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.python.saved_model import loader_impl
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from digits import contract

READY = "serving REST on "  # starts the line printed once it listens, before the URL
GRPC_SCHEME = "grpc://"  # the ready line names the gRPC target as grpc://host:port

# http_rest_api_util.cc: kPredictionApiGegex and kModelStatusApiRegex (case-insensitive).
PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
API_RE = re.compile(r"/v1/.*", re.IGNORECASE)  # http_rest_api_handler kPathRegex

# http_server.cc ToHTTPStatusCode, by TF error code.
HTTP_STATUS = {
    tf.errors.CANCELLED: 499,
    tf.errors.UNKNOWN: 500,
    tf.errors.INVALID_ARGUMENT: 400,
    tf.errors.DEADLINE_EXCEEDED: 504,
    tf.errors.NOT_FOUND: 404,
    tf.errors.ALREADY_EXISTS: 409,
    tf.errors.PERMISSION_DENIED: 403,
    tf.errors.RESOURCE_EXHAUSTED: 429,
    tf.errors.FAILED_PRECONDITION: 400,
    tf.errors.ABORTED: 409,
    tf.errors.OUT_OF_RANGE: 400,
    tf.errors.UNIMPLEMENTED: 501,
    tf.errors.INTERNAL: 500,
    tf.errors.UNAVAILABLE: 503,
    tf.errors.DATA_LOSS: 500,
    tf.errors.UNAUTHENTICATED: 401,
}
UNAVAILABLE_MESSAGE = "stand-in: unavailable (test knob unavailable_requests)"
# What Python's eager call of a signature wraps around the graph's own error message:
# "{{function_node __inference_signature_wrapper_...}} " before, " [Op:__inference_...]"
# after. TF Serving runs the graph in a session and reports the message without them.
EAGER_WRAPPER = re.compile(r"^\{\{function_node [^}]*\}\} | \[Op:[^\]]*\]$")
INT32_RANGE = (-(2**31), 2**31 - 1)  # rapidjson IsInt(): what json_tensor.cc takes for int32/uint8
INT64_RANGE = (-(2**63), 2**63 - 1)


# The TF (= gRPC) error code behind each HTTP status this stand-in answers, for the gRPC
# side; where several codes share a status (400), the errors pass their code.
CODE_FOR_STATUS = {
    400: tf.errors.INVALID_ARGUMENT,
    404: tf.errors.NOT_FOUND,
    501: tf.errors.UNIMPLEMENTED,
    503: tf.errors.UNAVAILABLE,
    504: tf.errors.DEADLINE_EXCEEDED,
}


class ApiError(Exception):
    """An error TF Serving would return: HTTP status and the `error` message, and the
    TF error code (the same number as the gRPC status code) the gRPC API returns."""

    def __init__(self, status: int, message: str, code: int | None = None):
        super().__init__(message)
        self.status, self.message = status, message
        self.code = CODE_FOR_STATUS.get(status, tf.errors.UNKNOWN) if code is None else code


def bad(message: str) -> ApiError:
    return ApiError(400, message)  # InvalidArgument


@dataclass
class Servable:
    version: int
    loaded: Any  # the tf.saved_model.load object (keeps the signatures' variables alive)
    signatures: dict[str, Any]  # name -> ConcreteFunction
    signature_defs: get_model_metadata_pb2.SignatureDefMap


def load_servable(version_dir: Path) -> Servable:
    loaded = tf.saved_model.load(str(version_dir))
    defs = get_model_metadata_pb2.SignatureDefMap()
    for name, sig in (
        loader_impl.parse_saved_model(str(version_dir)).meta_graphs[0].signature_def.items()
    ):
        defs.signature_def[name].CopyFrom(sig)
    return Servable(int(version_dir.name), loaded, dict(loaded.signatures), defs)


# --- JSON -> tensors (json_tensor.cc FillTensorProto / AddValueToTensor).


def _json_str(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))[:200]


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _type_error(value: Any, dtype: tf.DType) -> ApiError:
    return bad(
        f"JSON Value: {_json_str(value)} Type: {_json_type(value)} is not of expected type: "
        f"{dtype.name}"
    )


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _leaf(value: Any, dtype: tf.DType) -> Any:
    if isinstance(value, dict):
        if dtype != tf.string:
            raise _type_error(value, dtype)
        if not _is_b64(value):
            raise bad(f"JSON Value: {_json_str(value)} not formatted correctly for base64 data")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise bad("Unable to base64 decode") from None
    if dtype == tf.string:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode()
    if dtype == tf.bool:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype.is_integer:
        # A JSON integer only: 12.0 is refused. Range is that of rapidjson's IsInt/IsInt64,
        # not the dtype's: uint8 values are carried as int32 and not range-checked.
        low, high = INT64_RANGE if dtype in (tf.int64, tf.uint64) else INT32_RANGE
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _type_error(value, dtype)
        return value
    if dtype.is_floating:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(value, dtype)
        return value
    raise ApiError(501, f"Conversion of JSON Value: {_json_str(value)} to type: {dtype.name}")


def _dense_shape(value: Any) -> list[int]:
    """json_tensor.cc GetDenseTensorShape: follow the first element of each list."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def to_array(value: Any, dtype: tf.DType) -> np.ndarray:
    shape = _dense_shape(value)
    flat: list[Any] = []

    def fill(v: Any, level: int) -> None:
        if not isinstance(v, list):
            if level != len(shape):
                raise bad(
                    f"JSON Value: {_json_str(v)} found at incorrect level: {level + 1} in the "
                    f"JSON DOM. Expected at level: {len(shape)}"
                )
            flat.append(_leaf(v, dtype))
            return
        if level >= len(shape):
            raise bad(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
        if len(v) != shape[level]:
            raise bad(
                f"Encountered list at unexpected size: {len(v)} at level: {level} expected size: "
                f"{shape[level]}"
            )
        for item in v:
            fill(item, level + 1)

    fill(value, 0)
    if dtype == tf.string:
        return np.array(flat, dtype=object).reshape(shape)
    # Integers go through int64 then a C-style cast, so 300 becomes 44 as uint8: like
    # the server, which carries uint8 in a TensorProto's int32 `int_val` and does not
    # range-check it. The client is what refuses out-of-range pixels.
    wide = np.array(flat, dtype=np.int64 if dtype.is_integer else np.float64).reshape(shape)
    return wide.astype(dtype.as_numpy_dtype)


def _instances_to_arrays(instances: list, specs: dict[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    """json_tensor.cc FillTensorMapFromInstancesList: one example per element, batched."""
    names = sorted(specs)
    if not isinstance(instances[0], dict) and len(specs) > 1:
        raise bad(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    as_objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i, item in enumerate(instances):
        if as_objects:
            if not isinstance(item, dict) or _is_b64(item):
                raise bad(f"Expecting object but got list at item {i} of input list")
            if sorted(item) != names:
                raise bad(
                    f"Failed to process element: {i} of 'instances' list. JSON object: "
                    f"{_json_str(item)} keys must be equal to: {','.join(names)}"
                )
            pairs = [(n, item[n]) for n in names]
        else:
            if isinstance(item, dict) and not _is_b64(item):
                raise bad(f"Expecting value/list but got object at item {i} of input list")
            pairs = [(names[0], item)]
        for name, value in pairs:
            try:
                array = to_array(value, specs[name].dtype)
            except ApiError as e:
                raise bad(
                    f"Failed to process element: {i} key: {name} of 'instances' list. Error: "
                    f"{e.message}"
                ) from None
            if rows[name] and array.shape != rows[name][0].shape:
                raise bad(
                    f"Expecting shape {list(rows[name][0].shape)} but got: {list(array.shape)}"
                )
            rows[name].append(array)
    return {n: np.stack(rows[n]) for n in names}


def _inputs_to_arrays(value: Any, specs: dict[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    """json_tensor.cc FillTensorMapFromInputsMap: whole tensors, by name or bare."""
    if not isinstance(value, dict) or _is_b64(value):
        if len(specs) > 1:
            raise bad(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        (name,) = specs
        return {name: to_array(value, specs[name].dtype)}
    arrays = {}
    for name, spec in sorted(specs.items()):
        if name not in value:
            raise bad(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = to_array(value[name], spec.dtype)
    return arrays


# --- Tensors -> JSON (json_tensor.cc MakeJsonFromTensors).


def _to_json_values(array: np.ndarray, name: str) -> Any:
    flat = array.ravel()
    if array.dtype == np.float32:
        # WriteDecimal: the shortest decimal that round-trips the float32 (0.1, not
        # 0.10000000149011612); NaN/Infinity as bare tokens, which json.dumps writes too.
        values = [float(str(x)) for x in flat]
    elif array.dtype == object and name.endswith("_bytes"):  # DT_STRING named *_bytes
        values = [{"b64": base64.b64encode(b).decode()} for b in flat]
    elif array.dtype == object:  # other DT_STRING: as text
        values = [b.decode("utf-8", "replace") for b in flat]
    else:
        return array.tolist()
    holder = np.empty(len(values), dtype=object)  # keeps dicts as elements, not arrays
    holder[:] = values
    return holder.reshape(array.shape).tolist()


def outputs_to_json(outputs: dict[str, np.ndarray], columnar: bool) -> dict[str, Any]:
    names = sorted(outputs)
    if columnar:
        if len(names) == 1:
            return {"outputs": _to_json_values(outputs[names[0]], names[0])}
        return {"outputs": {n: _to_json_values(outputs[n], n) for n in names}}
    batch = None
    for n in names:
        if outputs[n].ndim == 0:
            raise bad(f"Tensor name: {n} has no shape information ")
        if batch is not None and outputs[n].shape[0] != batch:
            raise bad(
                f"Tensor name: {n} has inconsistent batch size: {outputs[n].shape[0]} "
                f"expecting: {batch}"
            )
        batch = outputs[n].shape[0]
    columns = {n: _to_json_values(outputs[n], n) for n in names}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    return {"predictions": [{n: columns[n][i] for n in names} for i in range(batch or 0)]}


# --- The model server state: versions, labels, dispatch.


@dataclass
class ModelServer:
    """Serves one model's numeric version folders under `base_path`.

    `num_versions` mirrors `model_version_policy { latest { num_versions: N } }`: the N
    highest versions are served (TF Serving's default is 1). `labels` mirrors
    `version_labels` in models.config.
    """

    base_path: Path
    model_name: str = contract.MODEL_NAME
    num_versions: int = 1
    labels: dict[str, int] = field(default_factory=dict)
    # `model_version_policy { specific { versions: ... } }`: exactly these (None: latest).
    versions: list[int] | None = None
    # batching.config's max_batch_size: one larger request gets 400, as from TF Serving's
    # batch scheduler (None: no limit, as without --enable_batching).
    max_batch_size: int | None = None
    # monitoring.config's prometheus_config path: a request counter is served there.
    metrics_path: str | None = None
    unavailable_requests: int = 0  # test knob: answer this many requests with 503 first
    servables: dict[int, Servable] = field(default_factory=dict)
    connections: set[tuple[str, int]] = field(default_factory=set)
    grpc_peers: set[str] = field(default_factory=set)  # gRPC connections seen ("ipv4:...")
    requests_seen: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self) -> ModelServer:
        base = Path(self.base_path)
        if not contract.versions(base):
            raise FileNotFoundError(f"{base}: no numeric version folders to serve")
        self.refresh()
        for label, v in self.labels.items():
            if v not in self.servables:
                raise ValueError(f"label {label!r} points at version {v}, which is not served")
        return self

    def wanted(self, found: list[int]) -> list[int]:
        if self.versions is not None:
            return [v for v in found if v in self.versions]
        return found[-self.num_versions :]

    def refresh(self) -> list[int]:
        """Load versions that appeared (and drop those the policy no longer serves), as
        TF Serving's file-system poll does; returns the versions newly loaded."""
        wanted = self.wanted(contract.versions(Path(self.base_path)))
        new = [v for v in wanted if v not in self.servables]
        loaded = {v: load_servable(Path(self.base_path) / str(v)) for v in new}
        with self._lock:
            self.servables.update(loaded)
            for v in [v for v in self.servables if v not in wanted]:
                if v not in self.labels.values():
                    del self.servables[v]
        return new

    def resolve(self, name: str, version: str | None, label: str | None) -> Servable:
        if name != self.model_name:
            spec = f"Specific({name}, {version})" if version else f"Latest({name})"
            raise ApiError(404, f"Servable not found for request: {spec}")
        if label is not None:
            if label not in self.labels:
                raise bad(f"Unrecognized servable version label: {label}")
            return self.servables[self.labels[label]]
        if version is not None:
            if int(version) not in self.servables:
                raise ApiError(404, f"Servable not found for request: Specific({name}, {version})")
            return self.servables[int(version)]
        return self.servables[max(self.servables)]

    # --- GET status / metadata.

    def status(self, name: str, version: str | None, label: str | None) -> dict[str, Any]:
        response = self.status_response(name, version, label)
        return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)

    def status_response(
        self, name: str, version: str | None, label: str | None
    ) -> get_model_status_pb2.GetModelStatusResponse:
        if name != self.model_name:
            raise ApiError(404, f"Could not find any versions of model {name}")
        if version is not None and int(version) not in self.servables:
            raise ApiError(404, f"Could not find version {version} of model {name}")
        if label is not None or version is not None:
            chosen = [self.resolve(name, version, label).version]
        else:
            chosen = sorted(self.servables, reverse=True)
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in chosen:
            entry = response.model_version_status.add(
                version=v, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE
            )
            entry.status.SetInParent()  # error_code OK, error_message ""
        return response

    def metadata(self, name: str, version: str | None, label: str | None) -> dict[str, Any]:
        response = self.metadata_response(name, version, label)
        opts = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_defs)
        return {
            "model_spec": json_format.MessageToDict(response.model_spec, **opts),
            "metadata": {"signature_def": json_format.MessageToDict(signature_defs, **opts)},
        }

    def metadata_response(
        self, name: str, version: str | None, label: str | None
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """get_model_metadata_impl.cc: the signatures, packed in an Any."""
        servable = self.resolve(name, version, label)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(servable.signature_defs)
        return response

    def metadata_grpc(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """get_model_metadata_impl.cc: the checks before the answer."""
        if not request.HasField("model_spec"):
            raise bad("Missing model_spec")
        if not request.metadata_field:
            raise bad("GetModelMetadataRequest must specify at least one metadata_field")
        for name in request.metadata_field:
            if name != "signature_def":
                raise bad(f"Metadata field {name} is not supported")
        return self.metadata_response(*_spec_parts(request.model_spec))

    def predict_response(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        """gRPC Predict as predict_util.cc RunPredict runs it: the signature (default
        serving_default; unknown: FailedPrecondition), exactly its inputs (else
        InvalidArgument), every output unless `output_filter` names some."""
        name, version, label = _spec_parts(request.model_spec)
        servable = self.resolve(name, version, label)
        signature_name = (
            request.model_spec.signature_name or tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
        )
        if signature_name not in servable.signatures:
            raise ApiError(
                400,
                f'Serving signature key "{signature_name}" not found.',
                tf.errors.FAILED_PRECONDITION,
            )
        fn = servable.signatures[signature_name]
        specs: dict[str, tf.TensorSpec] = fn.structured_input_signature[1]
        sent, expected = set(request.inputs), set(specs)
        if sent != expected:
            raise bad(
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sorted(expected))}}}). Missing: "
                f"{{{','.join(sorted(expected - sent))}}}. Extra: "
                f"{{{','.join(sorted(sent - expected))}}}."
            )
        feed = {
            n: tf.constant(_tensor_to_array(n, request.inputs[n], specs[n], i))
            for i, n in enumerate(sorted(specs))
        }
        outputs = _run(fn, feed)
        for alias in request.output_filter:
            if alias not in outputs:
                raise bad(
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(outputs))}}}."
                )
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for alias in request.output_filter or sorted(outputs):
            response.outputs[alias].CopyFrom(typed_tensor_proto(outputs[alias]))
        return response

    # --- POST :predict.

    def predict(self, name: str, version: str | None, label: str | None, body: bytes) -> dict:
        request = _parse_json(body)
        signature_name = request.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise bad(
                f"JSON Value: {_json_str(request)} not formatted correctly. 'signature_name' key "
                "must be a string value."
            )
        servable = self.resolve(name, version, label)
        signature_name = signature_name or tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
        if signature_name not in servable.signatures:
            raise bad(f'Serving signature name: "{signature_name}" not found in signature def')
        fn = servable.signatures[signature_name]
        specs: dict[str, tf.TensorSpec] = fn.structured_input_signature[1]
        if not specs:
            raise bad(f"Failed to get input map for signature: {signature_name}")

        has_instances, has_inputs = "instances" in request, "inputs" in request
        if has_instances and has_inputs:
            raise bad(
                f"JSON Value: {_json_str(request)} Not formatted correctly expecting only one of "
                "'inputs' or 'instances' keys to exist "
            )
        if has_instances:
            instances = request["instances"]
            if not isinstance(instances, list):
                raise bad(
                    f"JSON Value: {_json_str(request)} Excepting 'instances' to be an list/array"
                )
            if not instances:
                raise bad(f"JSON Value: {_json_str(request)} No values in 'instances' array")
            arrays = _instances_to_arrays(instances, specs)
        elif has_inputs:
            arrays = _inputs_to_arrays(request["inputs"], specs)
        else:
            raise bad("Missing 'inputs' or 'instances' key")
        size = max(len(a) if a.ndim else 1 for a in arrays.values())
        if self.max_batch_size is not None and size > self.max_batch_size:
            # shared_batch_scheduler.h ValidateBatchTaskQueueCapacity's message.
            raise bad(
                f"Task size {size} is larger than maximum input batch size {self.max_batch_size}"
            )

        feed = {n: tf.constant(a, dtype=specs[n].dtype) for n, a in arrays.items()}
        return outputs_to_json(_run(fn, feed), columnar=has_inputs)

    def prometheus(self) -> str:
        """A Prometheus text page with the request counter TF Serving exports (by status
        its page has more; the stand-in counts every request as one)."""
        name = ":tensorflow:serving:request_count"
        return (
            f"# TYPE {name} counter\n"
            f'{name}{{model_name="{self.model_name}",status="OK"}} {self.requests_seen}\n'
        )

    def admit(self) -> bool:
        """Count a request; False while the `unavailable_requests` knob says to refuse."""
        with self._lock:
            self.requests_seen += 1
            if self.unavailable_requests > 0:
                self.unavailable_requests -= 1
                return False
        return True

    # --- Routing (http_rest_api_handler.cc ProcessRequest).

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any] | None]:
        """(HTTP status, JSON body); a None body means a non-API path (plain 404)."""
        if not self.admit():
            return 503, {"error": UNAVAILABLE_MESSAGE}
        if not API_RE.fullmatch(path):
            return 404, None
        try:
            if method == "POST" and (m := PREDICT_RE.fullmatch(path)):
                name, version, label, verb = m.groups()
                name, label = unquote(name), label and unquote(label)
                if version and label:
                    raise bad(
                        f"Both model version ({version}) and model version label ({label}) "
                        "cannot be supplied."
                    )
                if verb.lower() != "predict":
                    raise ApiError(501, f"{verb} is not served by this stand-in (predict only)")
                return 200, self.predict(name, version, label, body)
            if method == "GET" and (m := STATUS_RE.fullmatch(path)):
                name, version, label, sub = m.groups()
                if not name:
                    raise bad("Missing model name in request.")
                name, label = unquote(name), label and unquote(label)
                if sub:
                    return 200, self.metadata(name, version, label)
                return 200, self.status(name, version, label)
            raise bad(f"Malformed request: {method} {path}")
        except ApiError as e:
            return e.status, {"error": e.message}
        except Exception as e:  # a stand-in bug, not the request's fault: answer anyway
            return 500, {"error": f"stand-in: {type(e).__name__}: {e}"}


def _run(fn: Any, feed: dict[str, tf.Tensor]) -> dict[str, np.ndarray]:
    """Call a signature; its errors as TF Serving reports them."""
    try:
        result = fn(**feed)
    except tf.errors.OpError as e:
        message = EAGER_WRAPPER.sub("", e.message)
        raise ApiError(HTTP_STATUS.get(e.error_code, 500), message, e.error_code) from None
    except (TypeError, ValueError) as e:  # Python-side signature checks: InvalidArgument
        raise bad(str(e)) from None
    return {k: v.numpy() for k, v in result.items()}


def _parse_json(body: bytes) -> dict[str, Any]:
    if not body:
        raise bad("JSON Parse error: The document is empty")
    try:
        request = json.loads(body)  # accepts NaN/Infinity, like kParseNanAndInfFlag
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"JSON Parse error: {e}") from None
    if not isinstance(request, dict):
        raise bad(f"JSON Value: {_json_str(request)} Is not object")
    return request


# --- HTTP server on loopback.


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients can reuse connections
    timeout = 30  # close idle kept-alive connections
    # TCP_NODELAY: headers and body go out in two writes; with Nagle on, the second waits
    # for the client's delayed ACK, adding ~40 ms to every kept-alive round trip.
    disable_nagle_algorithm = True
    server: _Server

    def _serve(self, method: str) -> None:
        model = self.server.model
        with model._lock:
            model.connections.add(self.client_address)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        if method == "GET" and model.metrics_path and path == model.metrics_path:
            self._reply(200, model.prometheus().encode(), "text/plain; version=0.0.4")
            return
        status, answer = model.handle(method, path, body)
        if answer is None:
            self._reply(status, b"Not Found", "text/plain")
        else:
            self._reply(status, json.dumps(answer).encode(), "application/json")

    def _reply(self, status: int, payload: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:  # the client sent "Connection: close": say we will
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read stderr
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    model: ModelServer


# --- gRPC (prediction_service.proto, model_service.proto) on loopback.

GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}  # TF code number -> gRPC
TYPED_FIELDS = {  # tensor.proto: where each dtype's values go outside tensor_content
    np.float32: "float_val",
    np.float64: "double_val",
    np.int64: "int64_val",
    np.int32: "int_val",
    np.uint8: "int_val",
    np.bool_: "bool_val",
}


def _tensor_to_array(name: str, tensor: Any, spec: tf.TensorSpec, index: int) -> np.ndarray:
    """predict_util.cc PreProcessPrediction: `tensor.FromProto`, else InvalidArgument."""
    try:
        array = tf.make_ndarray(tensor)
    except (TypeError, ValueError) as e:
        raise bad(f"tensor parsing error: {name} ({e})") from None
    dtype = tf.as_dtype(tensor.dtype)
    if dtype != spec.dtype:  # what the session's Run says for a mismatched feed
        raise bad(f"Expects arg[{index}] to be {spec.dtype.name} but {dtype.name} is provided")
    return array


def typed_tensor_proto(array: np.ndarray) -> Any:
    """predict_util.cc PostProcessPredictionResult: Tensor::AsProtoField, i.e. the values
    in the typed field (float_val, int64_val, ...), not tensor_content."""
    proto = tf.make_tensor_proto(array)
    field_name = TYPED_FIELDS.get(array.dtype.type)
    if proto.tensor_content and field_name:
        proto.ClearField("tensor_content")
        getattr(proto, field_name).extend(array.ravel().tolist())
    return proto


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify, Regress and MultiInference stay
    UNIMPLEMENTED (the generated servicer's default)."""

    def __init__(self, model: ModelServer):
        self.model = model

    def Predict(self, request, context):  # noqa: N802 - gRPC's method names
        return _answer(self.model, context, lambda: self.model.predict_response(request))

    def GetModelMetadata(self, request, context):  # noqa: N802
        return _answer(self.model, context, lambda: self.model.metadata_grpc(request))


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, model: ModelServer):
        self.model = model

    def GetModelStatus(self, request, context):  # noqa: N802
        def status():
            if not request.HasField("model_spec"):
                raise bad("Missing ModelSpec")
            name, version, label = _spec_parts(request.model_spec)
            return self.model.status_response(name, version, label)

        return _answer(self.model, context, status)


def _spec_parts(spec: Any) -> tuple[str, str | None, str | None]:
    """A ModelSpec as the (name, version, label) the REST routes pass."""
    version = str(spec.version.value) if spec.HasField("version") else None
    label = spec.version_label if spec.HasField("version_label") else None  # a oneof
    return spec.name, version, label


def _answer(model: ModelServer, context: grpc.ServicerContext, call: Any) -> Any:
    with model._lock:
        model.grpc_peers.add(context.peer())
    if not model.admit():
        context.abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE)
    try:
        return call()
    except ApiError as e:
        context.abort(GRPC_CODES.get(e.code, grpc.StatusCode.UNKNOWN), e.message)


def _grpc_server(model: ModelServer, port: int, host: str) -> tuple[grpc.Server, int]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="standin-grpc"),
        # TF Serving allows messages up to INT32_MAX (server_core / main.cc).
        options=[("grpc.max_receive_message_length", 2**31 - 1)],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _PredictionService(model), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(model), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    return server, bound


class StandInServer:
    """`ModelServer` behind a ThreadingHTTPServer on 127.0.0.1, in a background thread,
    and, given a `grpc_port` (0: a free one), behind a gRPC server too. `host` 0.0.0.0
    is for inside a container (docker/standin), where the engine maps the ports."""

    def __init__(
        self,
        model: ModelServer,
        port: int = 0,
        grpc_port: int | None = None,
        host: str = "127.0.0.1",
    ):
        self.model = model.load() if not model.servables else model
        self.httpd = _Server((host, port), _Handler)
        self.httpd.model = self.model
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.grpc: grpc.Server | None = None
        self.grpc_target: str | None = None  # host:port, as the gRPC client takes it
        if grpc_port is not None:
            try:
                self.grpc, bound = _grpc_server(self.model, grpc_port, host)
            except Exception:
                self.httpd.server_close()
                raise
            self.grpc_target = f"127.0.0.1:{bound}"

    def start(self) -> StandInServer:
        if self.grpc is not None:
            self.grpc.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.grpc is not None:
            self.grpc.stop(grace=None).wait(5)
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> StandInServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.standin", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--model-base-path",
        type=Path,
        required=True,
        help="folder of numeric version folders, e.g. artifacts/export/mnist [required]",
    )
    parser.add_argument(
        "--model-name",
        default=contract.MODEL_NAME,
        help=f"model name [default: {contract.MODEL_NAME}]",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8501,
        help="port on 127.0.0.1; 0 takes a free one (the ready line names it) [default: 8501]",
    )
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve TF Serving's gRPC API on this port of 127.0.0.1 (TF Serving's is "
        "8500); 0 takes a free one (the ready line names it) [default: no gRPC]",
    )
    parser.add_argument(
        "--num-versions", type=int, default=1, help="serve the N latest versions [default: 1]"
    )
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NAME=VERSION",
        help="a version label, as version_labels in models.labels.config; repeatable",
    )
    args = parser.parse_args(argv)
    labels = {}
    for item in args.label:
        name, _, number = item.partition("=")
        if not (name and number.isdigit()):
            parser.error(f"--label {item!r}: expected NAME=VERSION, e.g. stable=1")
        labels[name] = int(number)
    model = ModelServer(
        args.model_base_path, args.model_name, num_versions=args.num_versions, labels=labels
    )
    try:
        server = StandInServer(model, args.port, args.grpc_port)
    except (OSError, ValueError, RuntimeError) as e:  # no versions, a bad label, port taken
        print(f"error: {e}", file=sys.stderr)
        return 1
    grpc_part = f" and gRPC on {GRPC_SCHEME}{server.grpc_target}" if server.grpc else ""
    print(
        f"{READY}{server.url}{grpc_part} (model {args.model_name}, versions "
        f"{sorted(model.servables)}, labels {labels or 'none'})",
        flush=True,
    )
    if server.grpc is not None:
        server.grpc.start()
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if server.grpc is not None:
            server.grpc.stop(grace=None)
        server.httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
