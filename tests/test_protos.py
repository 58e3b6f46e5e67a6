"""serving/protos/: generated from third_party/'s .proto files, current, and usable with or
without TensorFlow in the process, in either import order.

The client's gRPC messages and stubs are protoc's output (tools/make_protos.py, `make
protos`) for TF Serving's and TensorFlow's .proto files, registered in a descriptor pool
of their own (serving/protos/__init__.py), so TensorFlow's and tensorflow-serving-api's
files of the same names never clash with them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import CHILD_ENV, ROOT
from tools import make_protos, vendor_protos

# A client that builds a PredictRequest (uint8 pixels, a label) and a metadata answer
# holding a SignatureDefMap in an Any, and checks them, without any of TensorFlow; then
# prints the wire bytes of the request for the caller to compare.
CLIENT_CODE = """
import sys
from serving.protos.tensorflow.core.framework import types_pb2
from serving.protos.tensorflow_serving.apis import (
    get_model_metadata_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc,
)
from serving.protos.tensorflow_serving.config import model_server_config_pb2
request = predict_pb2.PredictRequest()
request.model_spec.name, request.model_spec.version_label = "mnist", "stable"
tensor = request.inputs["images"]
tensor.dtype = types_pb2.DT_UINT8
tensor.tensor_shape.dim.add(size=3)
tensor.tensor_content = bytes([0, 7, 255])
signatures = get_model_metadata_pb2.SignatureDefMap()
signatures.signature_def["serving_default"].method_name = "tensorflow/serving/predict"
answer = get_model_metadata_pb2.GetModelMetadataResponse()
answer.metadata["signature_def"].Pack(signatures)
unpacked = get_model_metadata_pb2.SignatureDefMap()
assert answer.metadata["signature_def"].Unpack(unpacked) and unpacked == signatures
assert prediction_service_pb2_grpc.PredictionServiceStub and model_service_pb2_grpc.ModelServiceStub
assert model_server_config_pb2.ModelServerConfig().model_config_list.config is not None
print(request.SerializeToString().hex())
"""

# Makes `import tensorflow` (and tensorflow_serving) fail as where neither is installed.
NO_TENSORFLOW = """
import importlib.abc, sys
class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_serving"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoTensorFlow())
"""

TENSORFLOW = """
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2 as theirs
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_generated_modules_are_current() -> None:
    """serving/protos/ is what `make protos` generates from third_party/ today."""
    assert make_protos.stale() == [], "run make protos"


def test_the_currency_check_finds_changed_missing_and_extra_modules(tmp_path: Path) -> None:
    out = tmp_path / "protos"
    shutil.copytree(make_protos.OUT, out, ignore=shutil.ignore_patterns("__pycache__"))
    assert make_protos.stale(out) == []
    changed = Path("tensorflow_serving/apis/predict_pb2.py")
    (out / changed).write_text((out / changed).read_text() + "# edited by hand\n")
    missing = Path("tensorflow/core/framework/tensor_pb2.py")
    (out / missing).unlink()
    extra = Path("tensorflow_serving/apis/old_pb2.py")
    (out / extra).write_text("")
    assert make_protos.stale(out) == sorted(map(str, (changed, missing, extra)))


def test_generated_modules_import_neither_tensorflow_nor_the_default_pool() -> None:
    """Each module's imports stay under serving.protos, and its file is registered in
    serving.protos.POOL, not protobuf's default pool."""
    for relative in make_protos.checked_in():
        text = (make_protos.OUT / relative).read_text()
        assert "_descriptor_pool.Default()" not in text, relative
        for line in text.splitlines():
            if line.startswith(("from tensorflow", "import tensorflow", "from xla")):
                pytest.fail(f"{relative}: {line}")


def test_vendored_tensorflow_protos_are_the_installed_tensorflows() -> None:
    """third_party/tensorflow/ and xla/ compile to the descriptors that TensorFlow (the
    version in requirements.txt) registers: the same schema. After a TensorFlow upgrade,
    refresh them (third_party/README.md)."""
    assert vendor_protos.tensorflow_mismatches() == []


def test_without_tensorflow_in_the_process() -> None:
    """Where TensorFlow is not installed (imports of it fail), the client's messages and
    stubs import and work; and nothing under tensorflow is imported on the way."""
    code = (
        NO_TENSORFLOW
        + CLIENT_CODE
        + (
            "assert not [m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'tensorflow_serving')]\n"
        )
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert len(bytes.fromhex(result.stdout.split()[-1])) > 0


def test_after_tensorflow_in_the_same_process(capsys: pytest.CaptureFixture) -> None:
    """This process imported TensorFlow first (conftest.py), then tensorflow-serving-api's
    modules: the client's messages work beside them, as classes of their own, and the
    bytes of one parse into the other both ways."""
    import tensorflow as tf  # already loaded by conftest.py: the order under test
    from tensorflow_serving.apis import predict_pb2 as theirs

    from serving.protos.tensorflow_serving.apis import predict_pb2

    exec(CLIENT_CODE, {})
    wire = bytes.fromhex(capsys.readouterr().out.split()[-1])
    request = theirs.PredictRequest.FromString(wire)
    assert (request.model_spec.name, request.model_spec.version_label) == ("mnist", "stable")
    np.testing.assert_array_equal(tf.make_ndarray(request.inputs["images"]), [0, 7, 255])
    assert predict_pb2.PredictRequest is not theirs.PredictRequest
    ours = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    assert ours.SerializeToString() == wire


def test_before_tensorflow_in_the_same_process() -> None:
    """The client first, then TensorFlow and tensorflow-serving-api: both import, and
    TensorFlow reads what the client wrote."""
    code = (
        CLIENT_CODE
        + TENSORFLOW
        + (
            "request = theirs.PredictRequest.FromString(request.SerializeToString())\n"
            "print(tf.make_ndarray(request.inputs['images']).tolist(), "
            "request.model_spec.version_label)\n"
        )
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[0, 7, 255] stable"
