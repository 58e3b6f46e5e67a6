"""TF Serving's gRPC API on loopback, for a `ModelServer`.

PredictionService Predict and GetModelMetadata, ModelService GetModelStatus
(apis/prediction_service.proto, model_service.proto); Classify, Regress and
MultiInference stay UNIMPLEMENTED. Errors carry the TF error code as the gRPC status
(the same numbers). Predict counts in request_count and, when it succeeds, samples
request_latency (model_servers/prediction_service_impl.cc); its RunOptions timeout, how
long it may wait in a batching queue, is the call's deadline (enforce_session_run_timeout,
on by default). The server takes messages up to INT32_MAX (server.cc) and runs
--grpc_max_threads threads (default 4 per core, server.h).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from tools.standin.core import ModelServer, default_threads, spec_parts
from tools.standin.errors import ApiError, invalid


def _answer(model: ModelServer, context: grpc.ServicerContext, call: Callable[[], Any]) -> Any:
    with model._lock:
        model.grpc_peers.add(context.peer())
    try:
        if refusal := model.admit():
            raise refusal
        return call()
    except ApiError as e:
        context.abort(e.grpc_code, e.message)


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, model: ModelServer):
        self.model = model

    def Predict(self, request, context):  # noqa: N802 - gRPC's method names
        started, name = time.monotonic(), request.model_spec.name

        def predict():
            try:
                response = self.model.predict_response(request, context.time_remaining())
            except ApiError as e:
                self.model.metrics.count(name, e.code)
                raise
            self.model.metrics.count(name, "OK")
            self.model.metrics.latency(name, "Predict", "GRPC", (time.monotonic() - started) * 1e6)
            return response

        return _answer(self.model, context, predict)

    def GetModelMetadata(self, request, context):  # noqa: N802
        return _answer(self.model, context, lambda: self.model.metadata_grpc(request))


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, model: ModelServer):
        self.model = model

    def GetModelStatus(self, request, context):  # noqa: N802
        def status():
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            return self.model.status_response(*spec_parts(request.model_spec))

        return _answer(self.model, context, status)


def grpc_server(model: ModelServer, port: int, host: str) -> tuple[grpc.Server, int]:
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=default_threads(), thread_name_prefix="standin-grpc"
        ),
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
