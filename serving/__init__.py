"""Client side of the TF Serving deployment: the REST client/CLI and its input checks.

`serving.client` talks to TF Serving's REST API (`python -m serving.client --help`);
`serving.inputs` reads and checks what it sends. Neither imports TensorFlow or the
trainer, so the client installs anywhere `requests` and `numpy` do.
"""
