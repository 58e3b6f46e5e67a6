"""TF Serving's gRPC messages and stubs for the client, generated from .proto files.

    from serving.protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

The modules below this package are protoc's output for the .proto files vendored in
third_party/ (TF Serving's request, response and config messages and what they import
from TensorFlow; third_party/README.md names their versions). `make protos`
(tools/make_protos.py) regenerates them and tests/test_protos.py fails when they are not
current. They are laid out as the .proto files are (`tensorflow_serving/apis/predict.proto`
-> `serving.protos.tensorflow_serving.apis.predict_pb2`) and need only `protobuf` and,
for the `*_pb2_grpc` stubs, `grpcio`: never TensorFlow or tensorflow-serving-api.

They register their files in POOL, a descriptor pool of their own, not in protobuf's
default pool, where TensorFlow and tensorflow-serving-api register other versions of
files with the same names (a pool refuses a second, different file of one name). So a
process may import TensorFlow, tensorflow-serving-api and these in any order; their
classes are distinct (a TensorFlow `TensorProto` goes into one of these through
`FromString(proto.SerializeToString())`), and the bytes on the wire are the same.
"""

from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2

POOL = descriptor_pool.DescriptorPool()
# The well-known types the vendored files import, as the protobuf runtime defines them.
for _module in (any_pb2, wrappers_pb2):
    POOL.AddSerializedFile(_module.DESCRIPTOR.serialized_pb)
del _module
