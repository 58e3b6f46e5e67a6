# Benchmark targets, included by the top Makefile (-include benchmarks/bench.mk).
# They use its PY, STAMP, DATA_DIR and IDX_DIR; an empty IDX_DIR lets the benchmark use
# $MNIST_IDX_DIR or ../shared/data/mnist. BENCH_ARGS passes more flags (--repeats 3, ...).
BENCH_OUT ?= artifacts/bench
BENCH_ARGS ?=
BENCH = $(PY) -m benchmarks.time_to_accuracy --data-dir "$(DATA_DIR)" \
	$(if $(IDX_DIR),--idx-dir "$(IDX_DIR)") --out "$(BENCH_OUT)" $(BENCH_ARGS)

.PHONY: bench bench-quick bench-gpu soak

bench: $(STAMP) ## Time to 98.15%/99% test accuracy: seed recipe vs trainer (10 epochs, default), + ceiling, input pipeline (BENCH_OUT)
	$(BENCH)

bench-quick: $(STAMP) ## The same benchmark for 1 epoch each, without the ceiling and input pipeline checks
	$(BENCH) --quick

# Not in CI: needs an NVIDIA GPU and TensorFlow that sees it (no network). BENCH_GPU_ARGS
# passes more flags (--epochs 3, --dry-run, ...).
BENCH_GPU_OUT ?= artifacts/bench-gpu
BENCH_GPU_ARGS ?=

bench-gpu: $(STAMP) ## GPU settings measured on one GPU (< 8 min): JSON + README table (BENCH_GPU_OUT)
	$(PY) -m benchmarks.gpu --data-dir $(call quote,$(DATA_DIR)) \
		$(if $(IDX_DIR),--idx-dir $(call quote,$(IDX_DIR))) --out $(call quote,$(BENCH_GPU_OUT)) \
		$(BENCH_GPU_ARGS)

# Not in CI: minutes on real MNIST. SOAK_ARGS passes more flags (--kills 3, --epochs 1, ...).
SOAK_OUT ?= artifacts/soak
SOAK_ARGS ?=

soak: $(STAMP) ## Kill soak: SIGKILL the trainer 10 times on real MNIST, rerun, check the result (SOAK_OUT)
	$(PY) -m benchmarks.soak --data-dir "$(DATA_DIR)" $(if $(IDX_DIR),--idx-dir "$(IDX_DIR)") \
		--out "$(SOAK_OUT)" $(SOAK_ARGS)
