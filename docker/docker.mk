# Container targets, included by the Makefile. docker/compose.yaml defines the services,
# docker/preflight.sh turns a bad environment (no engine, no NVIDIA runtime, a busy port,
# no export) into one line saying what to do. README.md ("Run it in containers") explains it all.
#
# Uses from the Makefile: PY, VENV, STAMP, DEV_STAMP, COMPOSE, DATA_DIR, JOB_DIR, EXPORT_DIR,
# IDX_DIR, MODEL_NAME, TENSORBOARD_PORT, quote. docker/k8s/ holds the Kubernetes side
# (kustomization.yaml; make manifests renders it).

# `make engine` starts a Docker-API engine (podman) where none answers; while it answers,
# every container target uses its socket without exporting anything (docker/engine.sh).
# A socket file left behind (the engine stopped, the machine rebooted) is passed over,
# so that a real Docker is not hidden behind it.
ENGINE_DIR ?= /var/lib/digit-serve-engine
ENGINE_SOCKET = $(ENGINE_DIR)/docker.sock
ifeq ($(origin DOCKER_HOST),undefined)
ifneq ($(wildcard $(ENGINE_SOCKET)),)
ifneq ($(shell DOCKER_HOST=unix://$(ENGINE_SOCKET) timeout 10 docker version --format '{{.Server.Version}}' 2>/dev/null),)
DOCKER_HOST := unix://$(ENGINE_SOCKET)
export DOCKER_HOST
endif
endif
endif

# GPUs for the training container: empty picks all GPUs if Docker has the NVIDIA
# runtime, else CPU; GPUS=0 forces CPU; GPUS=N reserves N (an error without the runtime).
GPUS ?=
# `make train WORKERS=N` (RUNTIME=docker): N CPU worker containers train together, each
# with its own host name and index on the compose network (docker/preflight.sh).
WORKERS ?=
TF_VERSION := $(shell sed -n 's/^tensorflow==//p' requirements.txt)
# The tensorflow/serving tag, for compose and Kubernetes alike (make serve, make
# manifests; docker/k8s/kustomization.yaml and compose.yaml default to the same, which
# tests/test_deploy.py checks). 2.21.0 matches the trainer's TensorFlow, but is inferred
# from tensorflow-serving-api 2.21.0: the newest tag seen is 2.20.0, the way out when
# 2.21.0 cannot be pulled (make serve says so). SERVING_GPU=1 for the -gpu image.
SERVING_VERSION ?= 2.21.0
SERVING_FALLBACK_VERSION = 2.20.0
SERVING_GPU ?= 0
SERVING_IMAGE = tensorflow/serving:$(SERVING_VERSION)$(if $(filter 1,$(SERVING_GPU)),-gpu)
# The trainer image the Kubernetes manifests run (make manifests): pushed to a registry
# the cluster pulls from, e.g. TRAINER_IMAGE=registry.example.com/digit-serve-trainer:2.21.0.
TRAINER_IMAGE ?= digit-serve-trainer:$(TF_VERSION)
SERVING_REST_PORT ?= 8501
SERVING_GRPC_PORT ?= 8500
SERVING_MODEL = $(or $(MODEL_NAME),mnist)
# The server config under serving/: models.labels.config for the stable/canary labels.
SERVING_MODEL_CONFIG ?= models.config
SERVING_SERVICE = $(if $(filter 1,$(SERVING_GPU)),serving-gpu,serving)
SERVE_TIMEOUT ?= 180
# `make logs SERVICE=serving` follows one service; empty follows them all.
SERVICE ?=

# The container user: you, so files in ./artifacts stay yours (uid 1000 if you are root).
DOCKER_UID := $(shell u=$$(id -u); [ "$$u" = 0 ] && echo 1000 || echo $$u)
DOCKER_GID := $(shell g=$$(id -g); [ "$$(id -u)" = 0 ] && echo 1000 || echo $$g)

# compose.yaml resolves relative paths from docker/, so hand it absolute host paths.
HOST_DATA_DIR = $(abspath $(DATA_DIR))
HOST_JOB_DIR = $(abspath $(JOB_DIR))
HOST_EXPORT_DIR = $(abspath $(EXPORT_DIR))
HOST_IDX_DIR = $(if $(IDX_DIR),$(abspath $(IDX_DIR)))

# Exported to every recipe, so `make train`'s `docker compose run` sees them too.
export GPUS WORKERS TF_VERSION SERVING_VERSION SERVING_REST_PORT SERVING_GRPC_PORT SERVING_MODEL \
	SERVING_MODEL_CONFIG \
	TENSORBOARD_PORT DOCKER_UID DOCKER_GID HOST_DATA_DIR HOST_JOB_DIR HOST_EXPORT_DIR HOST_IDX_DIR

PREFLIGHT = PREFLIGHT_FOR=$@ bash docker/preflight.sh
# Every profile, so stop/logs reach trainer-cpu and serving-gpu too.
ALL_PROFILES = --profile train --profile cpu --profile gpu

# For `make train` (RUNTIME=docker): checks the engine, creates the artifact dirs,
# picks `trainer` or `trainer-cpu` from GPUS, then `docker compose run --rm` it.
DOCKER_TRAIN = PREFLIGHT_FOR=train bash docker/preflight.sh run-trainer

.PHONY: serve tensorboard-docker stop logs lint docker-build engine engine-stop engine-purge manifests

engine: $(DEV_STAMP) ## Start a local Docker-API engine (podman) with stand-in images, if no engine answers
	@ENGINE_DIR="$(ENGINE_DIR)" COMPOSE_BINARY="$(abspath $(VENV))/bin/docker-compose" bash docker/engine.sh start

engine-stop: ## Stop what make engine started (its containers too); a real Docker is left alone
	@ENGINE_DIR="$(ENGINE_DIR)" bash docker/engine.sh stop

engine-purge: ## Stop the engine and remove what make engine installed (packages, Compose plugin, ENGINE_DIR)
	@ENGINE_DIR="$(ENGINE_DIR)" bash docker/engine.sh purge

serve: ## Start TF Serving (127.0.0.1:8501 REST, :8500 gRPC) and wait until the model is AVAILABLE
	@$(PREFLIGHT) export "$(EXPORT_DIR)" "$(SERVING_MODEL)"
	@$(PREFLIGHT) model-config "$(SERVING_MODEL_CONFIG)" "$(SERVING_MODEL)"
	@$(PREFLIGHT) engine
	@$(if $(filter 1,$(SERVING_GPU)),$(PREFLIGHT) gpu SERVING_GPU=1)
	@$(PREFLIGHT) port $(SERVING_REST_PORT) SERVING_REST_PORT $(SERVING_SERVICE)
	@$(PREFLIGHT) port $(SERVING_GRPC_PORT) SERVING_GRPC_PORT $(SERVING_SERVICE)
	@$(PREFLIGHT) image $(call quote,$(SERVING_IMAGE)) SERVING_VERSION $(SERVING_FALLBACK_VERSION)
	@echo "starting $(SERVING_SERVICE) ($(SERVING_IMAGE)); waiting up to $(SERVE_TIMEOUT) s for $(SERVING_MODEL) to be AVAILABLE"
	@$(COMPOSE) up --detach --wait --wait-timeout $(SERVE_TIMEOUT) $(SERVING_SERVICE) || { \
		$(COMPOSE) logs --tail 20 $(SERVING_SERVICE) >&2; \
		echo "make serve: TF Serving did not report $(SERVING_MODEL) AVAILABLE within $(SERVE_TIMEOUT) s; read the log above (make logs SERVICE=$(SERVING_SERVICE))" >&2; \
		exit 1; }
	@echo "serving $(SERVING_MODEL): http://127.0.0.1:$(SERVING_REST_PORT)/v1/models/$(SERVING_MODEL) (REST), 127.0.0.1:$(SERVING_GRPC_PORT) (gRPC); make stop to stop"

tensorboard-docker: ## TensorBoard in a container on http://127.0.0.1:6006 for JOB_DIR's logs
	@$(PREFLIGHT) engine
	@$(PREFLIGHT) port $(TENSORBOARD_PORT) TENSORBOARD_PORT tensorboard
	@$(PREFLIGHT) dirs "$(HOST_JOB_DIR)"
	@$(COMPOSE) up --detach --wait --wait-timeout $(SERVE_TIMEOUT) tensorboard
	@echo "TensorBoard: http://127.0.0.1:$(TENSORBOARD_PORT) (logs of $(JOB_DIR)); make stop to stop"

stop: ## Stop and remove every digit-serve container (artifacts stay)
	@$(PREFLIGHT) engine
	$(COMPOSE) $(ALL_PROFILES) down --remove-orphans

logs: ## Follow the containers' logs (SERVICE=serving|tensorboard|trainer for one)
	@$(PREFLIGHT) engine
	$(COMPOSE) $(ALL_PROFILES) logs --follow --tail 100 $(SERVICE)

docker-build: ## Build the training image (digit-serve-trainer:<TensorFlow version>)
	@$(PREFLIGHT) engine
	$(COMPOSE) build trainer

manifests: $(DEV_STAMP) ## Print docker/k8s rendered by kustomize with TRAINER_IMAGE and SERVING_VERSION (pipe to kubectl apply -f -)
	@TRAINER_IMAGE=$(call quote,$(TRAINER_IMAGE)) SERVING_VERSION=$(call quote,$(SERVING_VERSION)) \
		KUBECTL="$(firstword $(wildcard $(VENV)/bin/kubectl) kubectl)" bash docker/k8s/render.sh

# Offline: every tool comes from .venv (requirements.txt); no engine, no network.
DOCKERFILES = $(shell find . \( -path './.*' -o -path ./artifacts \) -prune -o -name 'Dockerfile*' -print)
PYTHON_DIRS = $(wildcard digits trainer serving tools tests docker benchmarks)

lint: $(DEV_STAMP) ## Lint Dockerfiles, compose file, Kubernetes manifests and Python code (offline)
	$(VENV)/bin/hadolint $(DOCKERFILES)
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml
	$(PY) docker/check_k8s.py docker/k8s/*.yaml
	for f in docker/preflight.sh docker/engine.sh docker/k8s/render.sh; do bash -n $$f; done
	$(VENV)/bin/ruff check $(PYTHON_DIRS)
	$(VENV)/bin/ruff format --check $(PYTHON_DIRS)
