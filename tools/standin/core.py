"""One model's versions, labels and config, kept as TF Serving's ServerCore keeps them.

Sources (tensorflow/serving, tag 2.20.0 and the newest tree):
- Versions pass through LOADING -> AVAILABLE and, once the version policy drops them,
  UNLOADING -> END; a failed load ends in END with its error (core/loader_harness.cc,
  servable_state_monitor.cc, which keeps every version it has seen, END ones included).
  New versions load before old ones unload, and a version that fails to load leaves the
  loaded ones serving (AvailabilityPreservingPolicy, core/aspired_versions_manager.cc).
- A request reaches only an AVAILABLE version: anything else, a version still loading
  included, is NOT_FOUND "Servable not found for request: Specific(mnist, 3)" or
  "Latest(mnist)" (core/basic_manager.cc ServingMap::GetUntypedServableHandle). A label
  is looked up first, an unknown one INVALID_ARGUMENT "Unrecognized servable version
  label" (server_core.cc GetModelVersionForLabel). A label never keeps a version loaded:
  when the policy drops its version, requests by the label get NOT_FOUND.
- GetModelStatus ignores the label: with a version, that version's state (NOT_FOUND
  "Could not find version 9 of model mnist" when never seen); without, every version seen,
  newest first (model_servers/get_model_status_impl.cc).
- A config (models.config) is applied by server_core.cc ReloadConfig: the labels are
  checked against the versions' states first (UpdateModelVersionLabelMap): a label must
  point at an AVAILABLE version, except, with
  --allow_version_labels_for_unavailable_models, a label that is new or keeps its
  version. A failed check is FAILED_PRECONDITION "Request to assign label to version 3 of
  model mnist, which is not currently available for inference": the old labels and the
  old version policy stay in force (the models are not updated), and every later poll of
  the same file fails the same way until the version is AVAILABLE; the server logs
  "PollFilesystemAndReloadConfig failed to ReloadConfig: ..." (model_servers/server.cc).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import json_format, text_format
from tensorflow.python.saved_model import loader_impl
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from digits import contract
from tools.standin import json_tensor
from tools.standin.batching import BatchingParameters, BatchScheduler
from tools.standin.errors import CODE_NAMES, ApiError, failed_precondition, invalid, not_found
from tools.standin.metrics import Metrics

log = logging.getLogger("tools.standin")

# What Python's eager call of a signature wraps around the graph's own error message:
# "{{function_node __inference_signature_wrapper_...}} " before, " [Op:__inference_...]"
# after. TF Serving runs the graph in a session and reports the message without them.
EAGER_WRAPPER = re.compile(r"^\{\{function_node [^}]*\}\} | \[Op:[^\]]*\]$")
UNAVAILABLE_MESSAGE = "stand-in: unavailable (test knob unavailable_requests)"
EXHAUSTED_MESSAGE = "stand-in: resource exhausted (test knob exhausted_requests)"
State = get_model_status_pb2.ModelVersionStatus.State


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


@dataclass(frozen=True)
class VersionPolicy:
    """model_version_policy: `latest { num_versions }` (the default, 1), `specific {
    versions }` or `all {}` (file_system_storage_path_source.proto)."""

    latest: int = 1
    specific: tuple[int, ...] | None = None
    all: bool = False

    def wanted(self, found: list[int]) -> list[int]:
        if self.all:
            return list(found)
        if self.specific is not None:
            return [v for v in found if v in self.specific]
        return found[-self.latest :] if self.latest > 0 else []

    @classmethod
    def from_proto(cls, policy: Any) -> VersionPolicy:
        which = policy.WhichOneof("policy_choice")
        if which == "specific":
            return cls(specific=tuple(policy.specific.versions))
        if which == "all":
            return cls(all=True)
        return cls(latest=policy.latest.num_versions or 1)


@dataclass
class VersionState:
    """One version as the servable state monitor sees it."""

    state: str  # a ModelVersionStatus.State name: LOADING, AVAILABLE, END, ...
    error_code: str = "OK"
    error_message: str = ""
    servable: Servable | None = None


def read_model_config(path: Path, model_name: str) -> tuple[VersionPolicy, dict[str, int]]:
    """The version policy and labels of `model_name` in a text ModelServerConfig file;
    raises ApiError (as ParseProtoTextFile and ReloadConfig fail) when it cannot."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except (OSError, UnicodeDecodeError, text_format.ParseError) as e:
        raise invalid(f"Failed to read ModelServerConfig file {path}: {e}") from None
    found = [c for c in config.model_config_list.config if c.name == model_name]
    if not found:
        raise invalid(f"{path}: no model {model_name!r} (the stand-in serves one model)")
    return VersionPolicy.from_proto(found[0].model_version_policy), dict(found[0].version_labels)


@dataclass
class ModelServer:
    """Serves one model's numeric version folders under `base_path`.

    `num_versions`, `versions` and `all_versions` are the version policy (latest N, the
    default 1; specific; all); `labels` the config's `version_labels`, applied as the
    first config is (new labels need `allow_version_labels_for_unavailable_models`, which
    compose and the Kubernetes manifest pass). `config_file`: a models.config that
    `poll_config()` re-reads. `batching`: BatchingParameters (--enable_batching).
    """

    base_path: Path
    model_name: str = contract.MODEL_NAME
    num_versions: int = 1
    labels: dict[str, int] = field(default_factory=dict)
    versions: list[int] | None = None
    all_versions: bool = False
    allow_version_labels_for_unavailable_models: bool = True
    config_file: Path | None = None
    batching: BatchingParameters | None = None
    rest_timeout_ms: int = 30_000  # --rest_api_timeout_in_ms: a REST request's RunOptions
    # monitoring.config's prometheus_config path: the metrics page is served there.
    metrics_path: str | None = None
    unavailable_requests: int = 0  # test knob: answer this many requests with 503 first
    exhausted_requests: int = 0  # test knob: then this many with 429 (RESOURCE_EXHAUSTED)
    # Test knob: called with a version number in the loading thread, before it loads.
    loading_gate: Callable[[int], None] | None = None
    states: dict[int, VersionState] = field(default_factory=dict)
    connections: set[tuple[str, int]] = field(default_factory=set)
    grpc_peers: set[str] = field(default_factory=set)  # gRPC connections seen ("ipv4:...")
    requests_seen: int = 0
    config_error: str | None = None  # why the last config reload failed (None: it applied)
    metrics: Metrics = field(default_factory=Metrics)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _loaders: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.policy = VersionPolicy(
            latest=self.num_versions,
            specific=None if self.versions is None else tuple(self.versions),
            all=self.all_versions,
        )
        self._initial_labels, self.labels = dict(self.labels), {}
        self.batcher = BatchScheduler(self.batching) if self.batching else None

    @property
    def servables(self) -> dict[int, Servable]:
        """The AVAILABLE versions."""
        with self._lock:
            return {
                v: s.servable
                for v, s in self.states.items()
                if s.state == "AVAILABLE" and s.servable is not None
            }

    # --- Loading (the file-system poll) and config reloads.

    def load(self) -> ModelServer:
        """The first config, then the versions it asks for, loaded before this returns
        (the real server opens its ports once they are)."""
        if not contract.versions(Path(self.base_path)):
            raise FileNotFoundError(f"{self.base_path}: no numeric version folders to serve")
        if self.config_file is not None:
            self.policy, self._initial_labels = read_model_config(self.config_file, self.model_name)
        try:
            self._apply_config(self.policy, self._initial_labels)
        except ApiError as e:  # the real server refuses to start
            raise ValueError(f"FAILED_PRECONDITION: {e.message}") from None
        self.refresh(wait=True)
        return self

    def refresh(self, wait: bool = False) -> list[int]:
        """The file-system poll: start loading the versions the policy wants that are not
        loaded (each in its own thread), and unload those it no longer wants once a
        wanted one is AVAILABLE. Returns the versions it started; `wait` joins them."""
        wanted = self.policy.wanted(contract.versions(Path(self.base_path)))
        with self._lock:
            new = []
            for v in wanted:
                state = self.states.get(v)
                # A version that failed to load is not retried; one unloaded earlier is.
                if state is None or (state.state == "END" and state.error_code == "OK"):
                    self.states[v] = VersionState("LOADING")
                    new.append(v)
            threads = [
                threading.Thread(target=self._load, args=(v,), name=f"standin-load-{v}")
                for v in new
            ]
            self._loaders = [t for t in self._loaders if t.is_alive()] + threads
        for thread in threads:
            thread.daemon = True
            thread.start()
        if wait:
            for thread in threads:
                thread.join()
        self._unload_unwanted()
        return new

    def wait_loaded(self, timeout: float = 60) -> None:
        """Wait for every load started so far (for tests and the start-up line)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._loaders):
            thread.join(max(0.0, deadline - time.monotonic()))

    def _load(self, version: int) -> None:
        if self.loading_gate is not None:
            self.loading_gate(version)
        try:
            servable = load_servable(Path(self.base_path) / str(version))
        except Exception as e:  # noqa: BLE001 - any load failure ends the version, as there
            code = CODE_NAMES.get(getattr(e, "error_code", None), "UNKNOWN")
            message = " ".join(str(getattr(e, "message", e)).split())
            with self._lock:
                self.states[version] = VersionState("END", code, message)
            log.error("%s version %d failed to load: %s", self.model_name, version, message)
            return
        with self._lock:
            self.states[version] = VersionState("AVAILABLE", servable=servable)
        log.info("loaded %s version %d", self.model_name, version)
        self._unload_unwanted()

    def _unload_unwanted(self) -> None:
        """availability_preserving_policy.cc GetNextAction, applied until it has nothing to
        unload: the lowest AVAILABLE version the policy no longer wants goes when nothing is
        wanted, or a wanted version is AVAILABLE, or more than one unwanted one is."""
        wanted = set(self.policy.wanted(contract.versions(Path(self.base_path))))
        with self._lock:
            while True:
                available = {v for v, s in self.states.items() if s.state == "AVAILABLE"}
                unwanted = sorted(available - wanted)
                if not unwanted or (wanted and not wanted & available and len(unwanted) < 2):
                    return
                v = unwanted[0]
                self.states[v] = VersionState("END")  # UNLOADING -> END
                if self.batcher is not None:
                    self.batcher.forget(lambda key, v=v: key[0] == v)
                log.info("unloaded %s version %d", self.model_name, v)

    def reload_config(self, policy: VersionPolicy, labels: dict[str, int]) -> None:
        """server_core.cc ReloadConfig: raises FAILED_PRECONDITION, keeping the labels and
        the version policy in force, when a label may not move; else applies both and
        starts the loads the new policy asks for."""
        self._apply_config(policy, labels)
        self.refresh()

    def _apply_config(self, policy: VersionPolicy, labels: dict[str, int]) -> None:
        with self._lock:
            for label, version in sorted(labels.items()):
                moved = label in self.labels and self.labels[label] != version
                exempt = self.allow_version_labels_for_unavailable_models and not moved
                state = self.states.get(version)
                if not exempt and (state is None or state.state != "AVAILABLE"):
                    raise failed_precondition(
                        f"Request to assign label to version {version} of model "
                        f"{self.model_name}, which is not currently available for inference"
                    )
            self.labels, self.policy = dict(labels), policy

    def poll_config(self) -> bool:
        """Re-read `config_file` and apply it (server.cc PollFilesystemAndReloadConfig):
        True when it applied; a failure is logged and kept in `config_error`."""
        assert self.config_file is not None
        try:
            self.reload_config(*read_model_config(self.config_file, self.model_name))
        except ApiError as e:
            if self.config_error != e.message:  # the real server logs it every poll
                log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", e.message)
            self.config_error = e.message
            return False
        self.config_error = None
        return True

    # --- Which version a request reaches.

    def resolve(self, name: str, version: str | None, label: str | None) -> Servable:
        with self._lock:
            if label is not None:
                number = self.labels.get(label) if name == self.model_name else None
                if number is None:
                    raise invalid(f"Unrecognized servable version label: {label}")
                version = str(number)
            if version is not None:
                state = self.states.get(int(version)) if name == self.model_name else None
                if state is None or state.state != "AVAILABLE" or state.servable is None:
                    raise not_found(f"Servable not found for request: Specific({name}, {version})")
                return state.servable
            available = self.servables if name == self.model_name else {}
            if not available:
                raise not_found(f"Servable not found for request: Latest({name})")
            return available[max(available)]

    # --- Status and metadata.

    def status(self, name: str, version: str | None, label: str | None) -> dict[str, Any]:
        response = self.status_response(name, version, label)
        return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)

    def status_response(
        self, name: str, version: str | None, label: str | None
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """get_model_status_impl.cc: the label plays no part."""
        with self._lock:
            seen = dict(self.states) if name == self.model_name else {}
        if version is not None:
            if int(version) not in seen:
                raise not_found(f"Could not find version {version} of model {name}")
            chosen = [int(version)]
        else:
            if not seen:
                raise not_found(f"Could not find any versions of model {name}")
            chosen = sorted(seen, reverse=True)
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in chosen:
            entry = response.model_version_status.add(version=v, state=State.Value(seen[v].state))
            entry.status.SetInParent()  # error_code OK, error_message "" when healthy
            if seen[v].error_code != "OK":
                entry.status.error_code = _code_number(seen[v].error_code)
                entry.status.error_message = seen[v].error_message
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
        """get_model_metadata_impl.cc: the signatures, packed in an Any; model_spec says
        which version answered (a label's version)."""
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
            raise invalid("Missing model_spec")
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for name in request.metadata_field:
            if name != "signature_def":
                raise invalid(f"Metadata field {name} is not supported")
        return self.metadata_response(*spec_parts(request.model_spec))

    # --- Predict.

    def run(
        self,
        servable: Servable,
        signature_name: str,
        arrays: dict[str, np.ndarray],
        timeout: float | None,
    ) -> dict[str, np.ndarray]:
        """Run a signature on batch-major arrays: at once, or through the batching queue
        (`timeout`: how long the request may wait there, its RunOptions timeout)."""
        fn = servable.signatures[signature_name]
        specs: dict[str, tf.TensorSpec] = fn.structured_input_signature[1]

        def call(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return _run(fn, {n: tf.constant(a, dtype=specs[n].dtype) for n, a in feed.items()})

        if self.batcher is None:
            return call(arrays)
        return self.batcher.run((servable.version, signature_name), call, arrays, timeout)

    def predict(self, name: str, version: str | None, label: str | None, body: bytes) -> dict:
        """POST :predict (http_rest_api_handler.cc ProcessPredictRequest)."""
        request = json_tensor.parse_json(body)
        signature_name = request.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid(
                f"JSON Value: {json_tensor.json_str(request)} not formatted correctly. "
                "'signature_name' key must be a string value."
            )
        servable = self.resolve(name, version, label)
        signature_name = signature_name or tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
        if signature_name not in servable.signatures:
            raise invalid(f'Serving signature name: "{signature_name}" not found in signature def')
        specs = servable.signatures[signature_name].structured_input_signature[1]
        if not specs:
            raise invalid(f"Failed to get input map for signature: {signature_name}")
        arrays, columnar = json_tensor.request_to_arrays(request, specs)
        outputs = self.run(servable, signature_name, arrays, self.rest_timeout_ms / 1000)
        return json_tensor.outputs_to_json(outputs, columnar=columnar)

    def predict_response(
        self, request: predict_pb2.PredictRequest, timeout: float | None = None
    ) -> predict_pb2.PredictResponse:
        """gRPC Predict as predict_util.cc RunPredict runs it: the signature (default
        serving_default; unknown: FailedPrecondition), exactly its inputs (else
        InvalidArgument), every output unless `output_filter` names some."""
        name, version, label = spec_parts(request.model_spec)
        servable = self.resolve(name, version, label)
        signature_name = (
            request.model_spec.signature_name or tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
        )
        if signature_name not in servable.signatures:
            raise failed_precondition(f'Serving signature key "{signature_name}" not found.')
        specs: dict[str, tf.TensorSpec] = servable.signatures[
            signature_name
        ].structured_input_signature[1]
        sent, expected = set(request.inputs), set(specs)
        if sent != expected:
            raise invalid(
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sorted(expected))}}}). Missing: "
                f"{{{','.join(sorted(expected - sent))}}}. Extra: "
                f"{{{','.join(sorted(sent - expected))}}}."
            )
        arrays = {
            n: _tensor_to_array(n, request.inputs[n], specs[n], i)
            for i, n in enumerate(sorted(specs))
        }
        outputs = self.run(servable, signature_name, arrays, timeout)
        for alias in request.output_filter:
            if alias not in outputs:
                raise invalid(
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

    def admit(self) -> ApiError | None:
        """Count a request; the error to answer while a test knob says to refuse it."""
        with self._lock:
            self.requests_seen += 1
            if self.unavailable_requests > 0:
                self.unavailable_requests -= 1
                return ApiError("UNAVAILABLE", UNAVAILABLE_MESSAGE)
            if self.exhausted_requests > 0:
                self.exhausted_requests -= 1
                return ApiError("RESOURCE_EXHAUSTED", EXHAUSTED_MESSAGE)
        return None

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


def spec_parts(spec: Any) -> tuple[str, str | None, str | None]:
    """A ModelSpec as the (name, version, label) the REST routes pass."""
    version = str(spec.version.value) if spec.HasField("version") else None
    label = spec.version_label if spec.HasField("version_label") else None  # a oneof
    return spec.name, version, label


def _code_number(name: str) -> int:
    return next(number for number, n in CODE_NAMES.items() if n == name)


def _run(fn: Any, feed: dict[str, tf.Tensor]) -> dict[str, np.ndarray]:
    """Call a signature; its errors as TF Serving reports them."""
    try:
        result = fn(**feed)
    except tf.errors.OpError as e:
        message = EAGER_WRAPPER.sub("", e.message)
        raise ApiError(CODE_NAMES.get(e.error_code, "UNKNOWN"), message) from None
    except (TypeError, ValueError) as e:  # Python-side signature checks: InvalidArgument
        raise invalid(str(e)) from None
    return {k: v.numpy() for k, v in result.items()}


# --- gRPC tensors (tensor.proto).

TYPED_FIELDS = {  # where each dtype's values go outside tensor_content
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
        raise invalid(f"tensor parsing error: {name} ({e})") from None
    dtype = tf.as_dtype(tensor.dtype)
    if dtype != spec.dtype:  # what the session's Run says for a mismatched feed
        raise invalid(f"Expects arg[{index}] to be {spec.dtype.name} but {dtype.name} is provided")
    return array


def typed_tensor_proto(array: np.ndarray) -> Any:
    """predict_util.cc PostProcessPredictionResult: Tensor::AsProtoField, i.e. the values
    in the typed field (float_val, int64_val, string_val, ...), not tensor_content."""
    proto = tf.make_tensor_proto(array)
    field_name = TYPED_FIELDS.get(array.dtype.type)
    if proto.tensor_content and field_name:
        proto.ClearField("tensor_content")
        getattr(proto, field_name).extend(array.ravel().tolist())
    return proto


def default_threads() -> int:
    """TF Serving's default REST and gRPC thread counts: 4 per core (server.h)."""
    return 4 * (os.cpu_count() or 1)
