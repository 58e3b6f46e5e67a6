# Serving targets, included by the top Makefile (-include serving/serving.mk).
# They use its PY, STAMP, EXPORT_DIR, JOB_DIR, MODEL_NAME and IDX_DIR.
SERVING_PORT = $(or $(SERVING_REST_PORT),8501)
SERVING_URL ?= http://127.0.0.1:$(SERVING_PORT)
SERVING_MODEL = $(or $(MODEL_NAME),mnist)
SERVING_SAMPLES = $(sort $(wildcard serving/samples/*.png))

.PHONY: predict standin bench-serving integration samples

predict: $(STAMP) ## Ask TF Serving at SERVING_URL for status, then predict serving/samples/*.png
	$(PY) -m serving status --url "$(SERVING_URL)" --model "$(SERVING_MODEL)" --wait 30
	$(PY) -m serving predict --url "$(SERVING_URL)" --model "$(SERVING_MODEL)" $(SERVING_SAMPLES)

standin: $(STAMP) ## Serve EXPORT_DIR/MODEL_NAME's REST API without Docker (loopback stand-in) on SERVING_REST_PORT
	$(PY) -m serving.standin --model-base-path "$(EXPORT_DIR)/$(SERVING_MODEL)" --port "$(SERVING_PORT)" --num-versions 2

bench-serving: $(STAMP) ## Time the export in-process vs Keras, and the client over loopback HTTP
	$(PY) benchmarks/bench_serving.py --export-dir "$(EXPORT_DIR)/$(SERVING_MODEL)" --job-dir "$(JOB_DIR)"

integration: $(DEV_STAMP) ## Run the client checks against the real tensorflow/serving container
	$(PY) -m pytest -m integration tests/test_integration.py

samples: $(STAMP) ## Rewrite serving/samples/*.png from the MNIST test set: make samples IDX_DIR=DIR
	@test -n "$(IDX_DIR)" || { echo "make samples: set IDX_DIR=DIR (the folder with t10k-images-idx3-ubyte.gz)" >&2; exit 2; }
	$(PY) -m serving.make_samples --idx-dir "$(IDX_DIR)"
