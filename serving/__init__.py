"""The client side of the TF Serving deployment: REST and gRPC client libraries, their
command line, a load test and a rollout tool.

`serving.client` is the REST library (`ServingClient`), `serving.grpc_client` the gRPC one
(`GrpcServingClient`, the same methods); both are `serving.base.BaseClient`s. `serving.cli`
is the command line over both (`python -m serving --help`), `serving.load` its load test,
`serving.rollout` moves version labels in the served config, and `serving.inputs` reads
and checks what is sent. The gRPC messages and stubs are `serving.protos`, generated from
TF Serving's .proto files. None of these imports TensorFlow, tensorflow-serving-api or the
trainer: the client installs from requirements-client.txt alone. The stand-in server
that runs an export for trying them is `tools.standin` (with TensorFlow).
"""
