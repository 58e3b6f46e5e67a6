# Serving targets, included by the top Makefile (-include serving/serving.mk).
# They use its PY, STAMP, EXPORT_DIR, JOB_DIR, MODEL_NAME and IDX_DIR.
SERVING_URL ?= http://127.0.0.1:$(or $(SERVING_REST_PORT),8501)
SERVING_MODEL = $(or $(MODEL_NAME),mnist)
SERVING_SAMPLES = $(sort $(wildcard serving/samples/*.png))

.PHONY: predict bench-serving integration samples

predict: $(STAMP) ## Ask TF Serving at SERVING_URL for status, then predict serving/samples/*.png
	$(PY) -m serving.client status --url "$(SERVING_URL)" --model "$(SERVING_MODEL)" --wait 30
	$(PY) -m serving.client predict --url "$(SERVING_URL)" --model "$(SERVING_MODEL)" $(SERVING_SAMPLES)

bench-serving: $(STAMP) ## Time the export in-process vs Keras, and the client over loopback HTTP
	$(PY) benchmarks/bench_serving.py --export-dir "$(EXPORT_DIR)/$(SERVING_MODEL)" --job-dir "$(JOB_DIR)"

integration: $(STAMP) ## Run the client checks against the real tensorflow/serving container
	$(PY) -m pytest -m integration tests/test_integration.py

samples: $(STAMP) ## Rewrite serving/samples/*.png from the MNIST test set: make samples IDX_DIR=DIR
	@test -n "$(IDX_DIR)" || { echo "make samples: set IDX_DIR=DIR (the folder with t10k-images-idx3-ubyte.gz)" >&2; exit 2; }
	$(PY) -m serving.make_samples --idx-dir "$(IDX_DIR)"
