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

# auto: the GPU container when a Docker engine answers, else the local .venv.
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

# GPUS means the same locally as in the container: empty/all = every GPU, 0 = CPU only,
# N = the first N GPUs.
LOCAL_GPUS = $(if $(filter-out all,$(GPUS)),CUDA_VISIBLE_DEVICES=$(if $(filter 0,$(GPUS)),-1,$(shell seq -s, 0 $$(($(GPUS)-1)))))

TRAINER_ENV = TRAINER_EPOCHS=$(EPOCHS) TRAINER_BATCH_SIZE=$(BATCH_SIZE) \
	TRAINER_LEARNING_RATE=$(LEARNING_RATE) TRAINER_STRATEGY=$(STRATEGY) TRAINER_SEED=$(SEED) \
	TRAINER_MODEL_NAME=$(MODEL_NAME) TRAINER_DATA_DIR=$(DATA_DIR) TRAINER_JOB_DIR=$(JOB_DIR) \
	TRAINER_EXPORT_DIR=$(EXPORT_DIR) MNIST_IDX_DIR=$(IDX_DIR) \
	TRAINER_REQUIRE_GPU=$(if $(filter-out 0 all,$(GPUS)),1,$(TRAINER_REQUIRE_GPU))

.PHONY: help venv train data evaluate tensorboard test clean

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

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

# Test and lint tools on top of the runtime packages.
$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

venv: $(STAMP) ## Create or refresh .venv from requirements.txt (runtime only)

train: ## Train and export the model (GPU container if Docker answers, else .venv)
	@if [ "$(RUNTIME)" = docker ] || { [ "$(RUNTIME)" = auto ] && docker info >/dev/null 2>&1; }; then \
		if ! docker info >/dev/null 2>&1; then \
			echo "make train: RUNTIME=docker but no Docker engine answers (docker info); start Docker or use RUNTIME=local" >&2; exit 2; \
		fi; \
		$(TRAINER_ENV) $(DOCKER_TRAIN); \
	else \
		if [ "$(RUNTIME)" = local ]; then echo "make train: RUNTIME=local: training in .venv"; \
		else echo "make train: no Docker engine answers (docker info); training locally in .venv"; fi; \
		$(MAKE) --no-print-directory $(STAMP) && $(TRAINER_ENV) $(LOCAL_GPUS) $(PY) -m trainer train; \
	fi

data: $(STAMP) ## Prepare TFDS mnist in DATA_DIR from idx files: make data IDX_DIR=DIR
	@test -n "$(IDX_DIR)" || { echo "make data: set IDX_DIR=DIR (the folder with the four MNIST idx .gz files)" >&2; exit 2; }
	$(PY) -m trainer data import --idx-dir "$(IDX_DIR)" --data-dir "$(DATA_DIR)"

evaluate: $(STAMP) ## Score the latest export on the test split through its serving signature
	$(PY) -m trainer evaluate --export-dir "$(EXPORT_DIR)" --data-dir "$(DATA_DIR)" \
		$(if $(MODEL_NAME),--model-name "$(MODEL_NAME)")

tensorboard: ## TensorBoard on http://127.0.0.1:6006 for JOB_DIR's logs, or LOG_ROOT's runs (container if Docker answers)
	@if [ "$(RUNTIME)" = docker ] || { [ "$(RUNTIME)" = auto ] && docker info >/dev/null 2>&1; }; then \
		$(MAKE) --no-print-directory tensorboard-docker; \
	else \
		[ "$(RUNTIME)" = local ] || echo "make tensorboard: no Docker engine answers (docker info); serving TensorBoard from .venv"; \
		$(MAKE) --no-print-directory $(STAMP) && \
		$(PY) -m tensorboard.main --logdir "$(LOG_ROOT)" --host 127.0.0.1 --port $(TENSORBOARD_PORT); \
	fi

test: $(DEV_STAMP) ## Run the test suite (a few minutes on 2 cores)
	$(PY) -m pytest -m "not integration"

clean: ## Remove caches; with FORCE=1 (or a yes at the prompt) also artifacts/
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
	@if [ -d artifacts ]; then \
		if [ "$(FORCE)" = 1 ]; then ans=y; else read -r -p "delete artifacts/ (data, checkpoints, exports)? [y/N] " ans || ans=n; fi; \
		if [ "$$ans" = y ]; then rm -rf artifacts && echo "deleted artifacts/"; else echo "kept artifacts/"; fi; \
	fi
