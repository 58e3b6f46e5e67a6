"""Client side of the TF Serving deployment: the REST client library, its CLI, its input
checks, and a stand-in server for trying them without Docker.

`serving.client` is the REST library (`ServingClient`), `serving.grpc_client` the gRPC one
(`GrpcServingClient`, same methods; its protos from `serving.protos`, without TensorFlow);
`serving.cli` the command line over both
(`python -m serving --help`; `python -m serving.client` runs the same); `serving.inputs`
reads and checks what they send. None of these imports TensorFlow or the trainer, so the
client installs anywhere `requests` and `numpy` do. `serving.standin`
(`python -m serving.standin`) serves an export over TF Serving's REST API from
TensorFlow, for tests, benchmarks and trying the client.
"""
