"""gRPC client library for the digit model served by TF Serving (default 127.0.0.1:8500).

    from serving.grpc_client import GrpcServingClient

    with GrpcServingClient("127.0.0.1:8500", "mnist") as client:  # version=, label=
        print(client.status()["model_version_status"])   # the same dict as over REST
        result = client.predict_image_bytes([png])       # DT_STRING -> predict_image
        result = client.predict_pixels(pixels)           # DT_UINT8 -> serving_default

The same methods, return values and errors as `serving.client.ServingClient` (both are
`BaseClient`s), so the CLI has one path for both protocols (`--protocol grpc`). Calls
(tensorflow_serving/apis/prediction_service.proto, model_service.proto):

- `PredictionService/Predict`: `model_spec` (name, version or version_label,
  signature_name) and one input tensor; the response's `outputs` map holds
  `probabilities` (DT_FLOAT) and `classes` (DT_INT64), and for predict_image
  `image_status` (DT_STRING, one per image). A PredictRequest always carries whole
  tensors, so REST's row/columnar choice does not apply (`columnar` is ignored).
- `PredictionService/GetModelMetadata` with `metadata_field: "signature_def"`: the
  signatures come back as an `Any` holding a `SignatureDefMap`; `metadata()` returns
  them as the REST metadata body has them.
- `ModelService/GetModelStatus`: `status()` returns it as the REST status body. The
  server ignores a version_label there, so a label is resolved through GetModelMetadata
  first (`BaseClient.status`).

Errors are `GrpcError`s (a `ServingError`): the server's message, its gRPC status code
and, as `status`, the HTTP status TF Serving's REST API gives the same error
(http_server.cc ToHTTPStatusCode), so callers can treat both protocols alike.
UNAVAILABLE (nothing listens, or the batching queue is full) and RESOURCE_EXHAUSTED (a
request timed out in the batching queue) are retried `retries` times with the REST
client's backoff; DEADLINE_EXCEEDED (no answer within `timeout`) at most once. NOT_FOUND,
which a version still loading answers (core/basic_manager.cc), is not retried: only
`wait_until_available` (`status --wait`) waits for a version.

Imports grpcio, protobuf, numpy, the standard library and `digits` only: never
TensorFlow or tensorflow-serving-api. The messages and stubs are `serving.protos`,
generated from TF Serving's own .proto files (third_party/); that package says how they
live beside TensorFlow's in one process.
"""

from __future__ import annotations

import re
import time
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from digits import contract
from serving.base import (
    DEFAULT_BACKOFF,
    DEFAULT_BATCH_SIZE,
    DEFAULT_GRPC_TARGET,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MODEL,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    BaseClient,
    Prediction,
    ServingError,
    one_line,
)
from serving.inputs import InputError
from serving.protos.tensorflow.core.framework import tensor_pb2, types_pb2
from serving.protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

DEFAULT_TARGET = DEFAULT_GRPC_TARGET
SCHEME = "grpc://"
TARGET_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[^:/\s\[\]]+):\d{1,5}$")  # host:port, [v6]:port
MAX_MESSAGE_BYTES = (
    256 * 2**20
)  # far above a request of DEFAULT_MAX_REQUEST_BYTES; gRPC's default is 4 MiB
RETRIED = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")  # the batching queue: full, timed out
BACKOFF_MAX = 120.0  # seconds, as urllib3's Retry caps its backoff

# http_server.cc ToHTTPStatusCode: the HTTP status the REST API gives each code.
HTTP_STATUS = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
# What a channel that never connected says (grpc core's messages; they vary by version).
CONNECT_FAILED = ("failed to connect", "connections to all backends failing", "connection refused")


class GrpcError(ServingError):
    """TF Serving answered a gRPC call with an error status."""

    def __init__(self, message: str, code: grpc.StatusCode, url: str):
        super().__init__(message, HTTP_STATUS.get(code.name, 500), url)
        self.code = code

    def __str__(self) -> str:
        return f"gRPC {self.code.name} from {self.url}: {self.message}"


def parse_target(target: str) -> str:
    """'host:port' from 'host:port' or 'grpc://host:port', or InputError saying why."""
    bare = target[len(SCHEME) :] if target.startswith(SCHEME) else target
    if not TARGET_RE.match(bare):
        raise InputError(
            f"gRPC target {target!r}: expected host:port (e.g. {DEFAULT_TARGET}) or "
            f"{SCHEME}host:port"
        )
    return bare


def backoff_seconds(retry: int, backoff: float) -> float:
    """The wait before retry number `retry` (1, 2, ...): none before the first, then
    backoff * 2^(retry-1), as urllib3's Retry waits in the REST client."""
    return 0.0 if retry <= 1 else min(BACKOFF_MAX, backoff * 2 ** (retry - 1))


# --- Tensors: TensorProto fields set and read directly (tensor.proto), no TensorFlow.


def _dtype(name: str) -> int:
    """DataType enum number for a contract dtype name: 'uint8' -> DT_UINT8 (4)."""
    return types_pb2.DataType.Value(
        "DT_" + {"float32": "FLOAT", "float64": "DOUBLE"}.get(name, name.upper())
    )


# DataType name -> (numpy dtype, the TensorProto field holding its values when not
# in tensor_content). TF Serving writes outputs into these typed fields (predict_util.cc,
# AsProtoField); uint8 and int32 share int_val.
_VALUE_FIELDS = {
    "DT_FLOAT": (np.float32, "float_val"),
    "DT_DOUBLE": (np.float64, "double_val"),
    "DT_INT32": (np.int32, "int_val"),
    "DT_UINT8": (np.uint8, "int_val"),
    "DT_INT64": (np.int64, "int64_val"),
}


def to_tensor_proto(batch: np.ndarray | list[bytes], dtype: str) -> tensor_pb2.TensorProto:
    """A TensorProto for a numeric array (raw bytes in tensor_content, little-endian as
    TensorFlow reads it) or a list of byte strings (string_val)."""
    tensor = tensor_pb2.TensorProto(dtype=_dtype(dtype))
    if dtype == "string":
        tensor.tensor_shape.dim.add(size=len(batch))
        tensor.string_val.extend(batch)
        return tensor
    array = np.asarray(batch, dtype=np.dtype(dtype).newbyteorder("<"))
    for size in array.shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_content = array.tobytes()
    return tensor


def to_array(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    """A TensorProto as a numpy array: numbers from tensor_content or their typed field,
    DT_STRING as text (str objects) from string_val."""
    name = types_pb2.DataType.Name(tensor.dtype)
    if name == "DT_STRING":
        shape = [d.size for d in tensor.tensor_shape.dim]
        texts = [b.decode("utf-8", "replace") for b in tensor.string_val]
        if len(texts) != int(np.prod(shape)):
            raise ServingError(f"predict response tensor holds {len(texts)} strings for {shape}")
        return np.asarray(texts, dtype=object).reshape(shape)
    if name not in _VALUE_FIELDS:
        raise ServingError(f"unexpected tensor dtype {name} in the predict response")
    numpy_dtype, field = _VALUE_FIELDS[name]
    shape = [d.size for d in tensor.tensor_shape.dim]
    size = int(np.prod(shape)) if shape else 1
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, np.dtype(numpy_dtype).newbyteorder("<"))
    else:
        values = np.asarray(getattr(tensor, field), dtype=numpy_dtype)
        if len(values) == 1 and size > 1:  # TensorFlow repeats a lone value to fill
            values = np.full(size, values[0], dtype=numpy_dtype)
    if values.size != size:
        raise ServingError(f"predict response tensor holds {values.size} values for shape {shape}")
    return values.astype(numpy_dtype).reshape(shape)


class GrpcServingClient(BaseClient):
    """One gRPC channel (one HTTP/2 connection) for every call to one model."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        model: str = DEFAULT_MODEL,
        *,
        version: int | None = None,
        label: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ):
        super().__init__(
            model,
            version=version,
            label=label,
            retries=retries,
            batch_size=batch_size,
            max_request_bytes=max_request_bytes,
        )
        self.target = parse_target(target)
        self.url = SCHEME + self.target
        self.timeout, self.backoff = timeout, backoff
        self.channel = grpc.insecure_channel(
            self.target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self._calls = {
            "Predict": predictions.Predict,
            "GetModelMetadata": predictions.GetModelMetadata,
            "GetModelStatus": models.GetModelStatus,
        }

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GrpcServingClient:
        return self

    # --- Requests.

    def _model_spec(self, request: Any, signature: str | None = None) -> None:
        spec = request.model_spec
        spec.name = self.model
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label
        if signature is not None:
            spec.signature_name = signature

    def _status(self, version: int | None) -> dict[str, Any]:
        """GetModelStatusResponse as the REST status body: {"model_version_status": [...]}."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model
        if version is not None:
            request.model_spec.version.value = version
        response = self._call("GetModelStatus", request)
        # The same conversion as TF Serving's REST handler (and the stand-in's).
        return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)

    def metadata(self) -> dict[str, Any]:
        """GetModelMetadataResponse as the REST metadata body:
        {"model_spec": ..., "metadata": {"signature_def": {"signature_def": ...}}}."""
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._model_spec(request)
        request.metadata_field.append("signature_def")
        response = self._call("GetModelMetadata", request)
        opts = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" in response.metadata and not response.metadata["signature_def"].Unpack(
            signature_map
        ):
            raise ServingError(
                "unexpected metadata response: signature_def holds "
                f"{response.metadata['signature_def'].type_url}"
            )
        return {
            "model_spec": json_format.MessageToDict(response.model_spec, **opts),
            "metadata": {"signature_def": json_format.MessageToDict(signature_map, **opts)},
        }

    def predict(
        self, batch: np.ndarray | list[bytes], *, signature: str, input_name: str, dtype: str
    ) -> Prediction:
        """One Predict call: `batch` (a whole tensor, not checked here) as `input_name`."""
        if len(batch) == 0:
            raise InputError("empty batch: nothing to send (TF Serving refuses empty instances)")
        request = predict_pb2.PredictRequest()
        self._model_spec(request, signature)
        request.inputs[input_name].CopyFrom(to_tensor_proto(batch, dtype))
        response = self._call("Predict", request)
        try:
            p = to_array(response.outputs[contract.PROBABILITIES]).astype(np.float32)
            c = to_array(response.outputs[contract.CLASSES]).astype(np.int64)
        except KeyError as e:
            raise ServingError(
                f"unexpected predict response: no output {e}; it has {sorted(response.outputs)}"
            ) from None
        s = None  # predict_image's per-image answer; absent for pixels
        if contract.IMAGE_STATUS in response.outputs:
            s = to_array(response.outputs[contract.IMAGE_STATUS])
        n = len(batch)
        if (
            p.shape != (n, contract.NUM_CLASSES)
            or c.shape != (n,)
            or (s is not None and s.shape != (n,))
        ):
            raise ServingError(
                f"unexpected predict response: shapes {p.shape} and {c.shape}, expected "
                f"({n}, {contract.NUM_CLASSES}) and ({n},)"
            )
        return Prediction(p, c, s)

    def _send(
        self, signature: contract.Signature, batch: np.ndarray | list[bytes], columnar: bool
    ) -> Prediction:
        return self.predict(
            batch, signature=signature.name, input_name=signature.input, dtype=signature.dtype
        )

    # --- gRPC.

    def _call(self, method: str, request: Any) -> Any:
        retry = deadline_retries = 0
        while True:
            try:
                return self._calls[method](request, timeout=self.timeout)
            except grpc.RpcError as e:
                code, details = e.code(), e.details() or ""
                if code.name in RETRIED and retry < self.retries:
                    pass
                elif (
                    code == grpc.StatusCode.DEADLINE_EXCEEDED
                    and retry < self.retries
                    and deadline_retries < 1
                ):
                    deadline_retries += 1
                else:
                    raise self._error(method, code, details) from None
            retry += 1
            time.sleep(backoff_seconds(retry, self.backoff))

    def _error(self, method: str, code: grpc.StatusCode, details: str) -> ServingError:
        if code == grpc.StatusCode.UNAVAILABLE and any(
            marker in details.lower() for marker in CONNECT_FAILED
        ):
            return ServingError(
                f"cannot connect to {self.url} ({_reason(details)}) after {self.retries} "
                "retries; is TF Serving running there? (make serve)"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ServingError(
                f"{method} {self.url}: no response within {self.timeout:g} s "
                "(raise --timeout, or send smaller batches)"
            )
        return GrpcError(
            one_line(details) or code.name, code, f"{self.url} {method} {self.describe()}"
        )


def _reason(details: str) -> str:
    """'Connection refused' rather than grpc core's whole address list."""
    for marker in ("Connection refused", "Connection timed out", "No route to host"):
        if marker.lower() in details.lower():
            return marker
    if "DNS resolution failed" in details or "name resolution" in details.lower():
        return "Failed to resolve"
    return one_line(details, 200)
