# digit-serve: train the MNIST CNN, watch it in TensorBoard, serve it with TF Serving.
# `make` (or `make help`) lists the targets. Variables below pass through to the
# trainer as TRAINER_* environment variables, identically for both runtimes.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements
DEV_STAMP := $(VENV)/.installed-requirements-dev

# auto: the GPU container when the Docker engine offers NVIDIA GPUs, else the local .venv.
RUNTIME ?= auto
COMPOSE := docker compose -f docker/compose.yaml

# Training knobs; empty means "the trainer's default" (see `python -m trainer --help`).
EPOCHS ?= $(TRAINER_EPOCHS)
BATCH_SIZE ?= $(TRAINER_BATCH_SIZE)
LEARNING_RATE ?= $(TRAINER_LEARNING_RATE)
STRATEGY ?= $(TRAINER_STRATEGY)
SEED ?= $(TRAINER_SEED)
MODEL_NAME ?= $(TRAINER_MODEL_NAME)
DATA_DIR ?= $(or $(TRAINER_DATA_DIR),artifacts/data)
JOB_DIR ?= $(or $(TRAINER_JOB_DIR),artifacts/job)
EXPORT_DIR ?= $(or $(TRAINER_EXPORT_DIR),artifacts/export)
IDX_DIR ?= $(MNIST_IDX_DIR)
TENSORBOARD_PORT ?= 6006
# TensorBoard's log root: one run's logs by default; a folder of job dirs compares runs
# side by side (make tensorboard LOG_ROOT=artifacts/runs).
LOG_ROOT ?= $(JOB_DIR)/logs

# Make variables are data, never shell code: every value reaches the shell single-quoted
# (EPOCHS='1; echo x' is a bad epoch count for the trainer, JOB_DIR='runs/a b' one path).
quote = '$(subst ','\'',$(1))'

# GPUS means the same locally as in the container: empty/all = every GPU, 0 = CPU only,
# N = the first N GPUs. Checked in the shell, where the value is quoted data.
LOCAL_GPUS = gpus=$(call quote,$(GPUS)); case "$$gpus" in \
	''|all) ;; \
	0) export CUDA_VISIBLE_DEVICES=-1 ;; \
	*[!0-9]*|0*) echo "make $@: GPUS=$$gpus is not a GPU count; use GPUS=all, GPUS=N (1, 2, ...), GPUS=0 for CPU, or leave it empty" >&2; exit 2 ;; \
	*) export CUDA_VISIBLE_DEVICES="$$(seq -s, 0 $$((gpus - 1)))" ;; \
	esac

TRAINER_ENV = TRAINER_EPOCHS=$(call quote,$(EPOCHS)) TRAINER_BATCH_SIZE=$(call quote,$(BATCH_SIZE)) \
	TRAINER_LEARNING_RATE=$(call quote,$(LEARNING_RATE)) TRAINER_STRATEGY=$(call quote,$(STRATEGY)) \
	TRAINER_SEED=$(call quote,$(SEED)) TRAINER_MODEL_NAME=$(call quote,$(MODEL_NAME)) \
	TRAINER_DATA_DIR=$(call quote,$(DATA_DIR)) TRAINER_JOB_DIR=$(call quote,$(JOB_DIR)) \
	TRAINER_EXPORT_DIR=$(call quote,$(EXPORT_DIR)) MNIST_IDX_DIR=$(call quote,$(IDX_DIR)) \
	TRAINER_REQUIRE_GPU=$(if $(filter-out 0 all,$(GPUS)),1,$(call quote,$(TRAINER_REQUIRE_GPU)))

# RUNTIME=auto|local|docker -> docker or local, with one line saying which and why.
CHOOSE_RUNTIME = PREFLIGHT_FOR=$@ bash docker/preflight.sh runtime $(call quote,$(RUNTIME))

.PHONY: help venv lock train data evaluate tensorboard test clean

# Container/cluster targets (serve, stop, logs, lint, ...) and serving targets
# (predict, standin, bench-serving, integration) live beside the files they drive.
-include docker/docker.mk serving/serving.mk benchmarks/bench.mk

help: ## List the targets (this is the default)
	@echo "usage: make TARGET [VAR=value ...]"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-19s %s\n", $$1, $$2}'
	@echo "variables: RUNTIME=auto|local|docker EPOCHS BATCH_SIZE LEARNING_RATE STRATEGY SEED GPUS"
	@echo "           MODEL_NAME DATA_DIR JOB_DIR EXPORT_DIR IDX_DIR (or MNIST_IDX_DIR) FORCE=1"
	@echo "           SERVING_GPU SERVING_REST_PORT SERVING_GRPC_PORT SERVING_VERSION SERVICE LOG_ROOT"
	@echo "           SERVING_GRPC_TARGET PROTOCOL CONCURRENCY SECONDS BATCH VERSION LABELS_CONFIG"
	@echo "           WORKERS (make train RUNTIME=docker WORKERS=2) TRAINER_IMAGE (make manifests)"

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

# Test and lint tools on top of the runtime packages.
$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

venv: $(STAMP) ## Create or refresh .venv from requirements.txt (runtime only)

# The training image installs this lock, every package pinned with its hashes
# (pip --require-hashes): the same files on every build. Linux x86_64, Python 3.11, the
# training base image's platform. Regenerate after editing requirements.txt.
LOCK := docker/requirements.lock
lock: $(DEV_STAMP) ## Recompile docker/requirements.lock (hashes) from requirements.txt for the training image
	$(VENV)/bin/uv pip compile requirements.txt --generate-hashes --native-tls --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" \
		--quiet --output-file $(LOCK)

train: ## Train and export the model (GPU container when the engine offers NVIDIA GPUs, else .venv)
	@runtime="$$($(CHOOSE_RUNTIME))" || exit 2; \
	if [ "$$runtime" = docker ]; then \
		$(TRAINER_ENV) $(DOCKER_TRAIN); \
	else \
		$(MAKE) --no-print-directory $(STAMP) && { $(LOCAL_GPUS); } && \
		$(TRAINER_ENV) $(PY) -m trainer train; \
	fi

data: $(STAMP) ## Prepare TFDS mnist in DATA_DIR from idx files: make data IDX_DIR=DIR
	@test -n $(call quote,$(IDX_DIR)) || { echo "make data: set IDX_DIR=DIR (the folder with the four MNIST idx .gz files)" >&2; exit 2; }
	$(PY) -m trainer data import --idx-dir $(call quote,$(IDX_DIR)) --data-dir $(call quote,$(DATA_DIR))

evaluate: $(STAMP) ## Score the latest export on the test split through its serving signature
	$(PY) -m trainer evaluate --export-dir $(call quote,$(EXPORT_DIR)) --data-dir $(call quote,$(DATA_DIR)) \
		$(if $(MODEL_NAME),--model-name $(call quote,$(MODEL_NAME)))

tensorboard: ## TensorBoard on http://127.0.0.1:6006 for JOB_DIR's logs, or LOG_ROOT's runs (where make train runs)
	@runtime="$$($(CHOOSE_RUNTIME))" || exit 2; \
	if [ "$$runtime" = docker ]; then \
		$(MAKE) --no-print-directory tensorboard-docker; \
	else \
		$(MAKE) --no-print-directory $(STAMP) && \
		$(PY) -m tensorboard.main --logdir $(call quote,$(LOG_ROOT)) --host 127.0.0.1 --port $(call quote,$(TENSORBOARD_PORT)); \
	fi

# Two worker processes (pytest-xdist); loadgroup: tests marked xdist_group("name") share a
# worker, every other test goes to whichever is free. PYTEST_ARGS adds flags (-n 0: serial).
PYTEST_ARGS ?=
test: $(DEV_STAMP) ## Run the test suite (two processes; about 15 minutes on 2 cores)
	$(PY) -m pytest -m "not integration" -n 2 --dist loadgroup $(PYTEST_ARGS)

clean: ## Remove caches; with FORCE=1 (or a yes at the prompt) also artifacts/
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
	@if [ -d artifacts ]; then \
		if [ "$(FORCE)" = 1 ]; then ans=y; else read -r -p "delete artifacts/ (data, checkpoints, exports)? [y/N] " ans || ans=n; fi; \
		if [ "$$ans" = y ]; then rm -rf artifacts && echo "deleted artifacts/"; else echo "kept artifacts/"; fi; \
	fi
