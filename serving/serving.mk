# Serving targets, included by the top Makefile (-include serving/serving.mk).
# They use its PYTHON, PY, STAMP, DEV_STAMP, EXPORT_DIR, JOB_DIR, MODEL_NAME and IDX_DIR.
# The client's targets (predict, load) run in .venv-client: requirements-client.txt
# alone, no TensorFlow. The stand-in, the benchmarks and the tools run in .venv.
CLIENT_VENV := .venv-client
CLIENT_PY := $(CLIENT_VENV)/bin/python
CLIENT_STAMP := $(CLIENT_VENV)/.installed-requirements-client
SERVING_PORT = $(or $(SERVING_REST_PORT),8501)
SERVING_URL ?= http://127.0.0.1:$(SERVING_PORT)
SERVING_MODEL = $(or $(MODEL_NAME),mnist)
SERVING_SAMPLES = $(sort $(wildcard serving/samples/*.png))
SERVING_GRPC_TARGET ?= 127.0.0.1:$(or $(SERVING_GRPC_PORT),8500)
# make load: concurrent clients against SERVING_URL (rest) or SERVING_GRPC_TARGET (grpc).
CONCURRENCY ?= 8
SECONDS ?= 20
PROTOCOL ?= rest
BATCH ?= 1
# make promote/canary/rollback: the labels config they edit; the server they ask whether
# the version is AVAILABLE before moving an existing label (PROTOCOL, SERVING_URL,
# SERVING_GRPC_TARGET), and how long to wait for it (WAIT=SECONDS; OFFLINE=1: no server).
LABELS_CONFIG ?= serving/models.labels.config
WAIT ?= 0
ROLLOUT_SERVER = --protocol "$(PROTOCOL)" --url "$(SERVING_URL)" --grpc-target "$(SERVING_GRPC_TARGET)" --wait "$(WAIT)" $(if $(filter 1,$(OFFLINE)),--offline)

.PHONY: predict standin bench-serving integration samples load promote canary rollback labels \
	venv-client protos

$(CLIENT_STAMP): requirements-client.txt
	@test -x $(CLIENT_PY) || $(PYTHON) -m venv $(CLIENT_VENV)
	$(CLIENT_PY) -m pip install --quiet --disable-pip-version-check -r requirements-client.txt
	@touch $@

venv-client: $(CLIENT_STAMP) ## Create or refresh .venv-client: the REST and gRPC client alone, without TensorFlow

predict: $(CLIENT_STAMP) ## Ask TF Serving at SERVING_URL for status, then predict serving/samples/*.png
	$(CLIENT_PY) -m serving status --url "$(SERVING_URL)" --model "$(SERVING_MODEL)" --wait 30
	$(CLIENT_PY) -m serving predict --url "$(SERVING_URL)" --model "$(SERVING_MODEL)" $(SERVING_SAMPLES)

standin: $(STAMP) ## Serve EXPORT_DIR/MODEL_NAME over REST and gRPC without Docker (loopback stand-in) on SERVING_REST_PORT/SERVING_GRPC_PORT
	$(PY) -m tools.standin --model-base-path "$(EXPORT_DIR)/$(SERVING_MODEL)" --port "$(SERVING_PORT)" --grpc-port "$(or $(SERVING_GRPC_PORT),8500)" --num-versions 2

bench-serving: $(STAMP) ## Time the export in-process vs Keras, and the client over loopback HTTP
	$(PY) -m benchmarks.bench_serving --export-dir "$(EXPORT_DIR)/$(SERVING_MODEL)" --job-dir "$(JOB_DIR)"

integration: $(DEV_STAMP) ## The container path for real: train, serve, predict, TensorBoard, stop (needs an engine: make engine)
	INTEGRATION_REQUIRED=1 $(PY) -m pytest -m integration tests/test_integration.py

samples: $(STAMP) ## Rewrite serving/samples/*.png from the MNIST test set: make samples IDX_DIR=DIR
	@test -n "$(IDX_DIR)" || { echo "make samples: set IDX_DIR=DIR (the folder with t10k-images-idx3-ubyte.gz)" >&2; exit 2; }
	$(PY) -m tools.make_samples --idx-dir "$(IDX_DIR)"

protos: $(DEV_STAMP) ## Regenerate serving/protos/ (the client's gRPC messages) from third_party/'s .proto files
	$(PY) -m tools.make_protos

load: $(CLIENT_STAMP) ## Load-test the server: make load [PROTOCOL=rest|grpc CONCURRENCY=8 SECONDS=20 BATCH=1]
	$(CLIENT_PY) -m serving load --protocol "$(PROTOCOL)" --url "$(SERVING_URL)" --grpc-target "$(SERVING_GRPC_TARGET)" --model "$(SERVING_MODEL)" --concurrency "$(CONCURRENCY)" --seconds "$(SECONDS)" --batch "$(BATCH)"

promote: $(STAMP) ## Point the stable label at VERSION (AVAILABLE on the server) in LABELS_CONFIG: make promote VERSION=N [WAIT=S]
	@test -n "$(VERSION)" || { echo "make promote: set VERSION=N (an exported version)" >&2; exit 2; }
	$(PY) -m serving.rollout promote --version "$(VERSION)" --config "$(LABELS_CONFIG)" --model "$(SERVING_MODEL)" --export-dir "$(EXPORT_DIR)/$(SERVING_MODEL)" $(ROLLOUT_SERVER)

canary: $(STAMP) ## Point the canary label at VERSION (AVAILABLE on the server) in LABELS_CONFIG: make canary VERSION=N [WAIT=S]
	@test -n "$(VERSION)" || { echo "make canary: set VERSION=N (an exported version)" >&2; exit 2; }
	$(PY) -m serving.rollout canary --version "$(VERSION)" --config "$(LABELS_CONFIG)" --model "$(SERVING_MODEL)" --export-dir "$(EXPORT_DIR)/$(SERVING_MODEL)" $(ROLLOUT_SERVER)

rollback: $(STAMP) ## Point the stable label back at the version it had before (AVAILABLE on the server)
	$(PY) -m serving.rollout rollback --config "$(LABELS_CONFIG)" --model "$(SERVING_MODEL)" $(ROLLOUT_SERVER)

labels: $(STAMP) ## Show LABELS_CONFIG's labels and what rollback would do
	$(PY) -m serving.rollout show --config "$(LABELS_CONFIG)" --model "$(SERVING_MODEL)"
