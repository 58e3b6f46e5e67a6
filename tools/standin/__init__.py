"""A loopback stand-in for TF Serving's REST and gRPC APIs that runs the real SavedModel.

    python -m tools.standin --model-base-path artifacts/export/mnist --port 8501
    make standin                     # the same for EXPORT_DIR/MODEL_NAME

For trying the client, tests and benchmarks where no container engine runs the real
server, and inside the stand-in serving image (docker/standin/). It loads each version
with `tf.saved_model.load`, dispatches to whatever signatures the SavedModel has, and
behaves as TF Serving does, rule for rule, where the tests depend on it; every behaviour
names the TF Serving source it copies:

- `core`: versions (LOADING -> AVAILABLE -> END, NOT_FOUND while loading), version
  policies, labels, config reloads with server_core.cc's label checks, status that
  ignores labels, metadata, predict;
- `batching`: --enable_batching: a bounded queue per version and signature, merged
  batches, the real errors for a full queue (503) and a queue timeout (429);
- `json_tensor`: REST JSON <-> tensors (util/json_tensor.cc);
- `rest_api` and `grpc_api`: the two APIs, request_count and request_latency
  (`metrics`), libevent's answers to a bad Content-Length, bounded threads;
- `server`: `StandInServer`, both APIs plus the file-system and config polls.

Like the real server, it does not check request shapes against the signature
(tensorflow/serving#1527): a wrong shape reaches the graph, whose `tf.ensure_shape`
refuses it. Not copied: classify/regress, warmup replay, model_config_list with more than
one model, allowed_batch_sizes. Test knobs: `unavailable_requests` and
`exhausted_requests` answer the next N requests with UNAVAILABLE (503) or
RESOURCE_EXHAUSTED (429); `loading_gate` holds a version in LOADING, and the batch
scheduler's `hold` holds a batch as a slow graph would.

Once it listens it prints one line, `serving REST on http://127.0.0.1:PORT (...)`, or
`serving REST on http://127.0.0.1:PORT and gRPC on grpc://127.0.0.1:PORT (...)`; port 0
takes a free port, which that line names. Imports TensorFlow and tensorflow-serving-api
(to load SavedModels and build TF Serving's protos), never the trainer.
"""

from tools.standin.batching import BatchingParameters
from tools.standin.core import ModelServer, VersionPolicy, typed_tensor_proto
from tools.standin.server import StandInServer

READY = "serving REST on "  # starts the line printed once it listens, before the URL
GRPC_SCHEME = "grpc://"  # the ready line names the gRPC target as grpc://host:port

__all__ = [
    "GRPC_SCHEME",
    "READY",
    "BatchingParameters",
    "ModelServer",
    "StandInServer",
    "VersionPolicy",
    "typed_tensor_proto",
]
