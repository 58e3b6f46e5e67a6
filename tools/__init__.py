"""Development tools, run from the repository root; none is part of the client.

- `python -m tools.standin`: a loopback stand-in for TF Serving's REST and gRPC APIs that
  runs an export with TensorFlow (`make standin`; tests, benchmarks, docker/standin/).
- `python -m tools.make_samples`: writes serving/samples/*.png from the MNIST test set
  (`make samples`).
- `python -m tools.make_protos`: generates serving/protos/ from the .proto files in
  third_party/ (`make protos`; tests/test_protos.py checks they are current).
- `python -m tools.vendor_protos`: refreshes third_party/'s .proto files from a TF Serving
  checkout and the installed TensorFlow (third_party/README.md).
"""
