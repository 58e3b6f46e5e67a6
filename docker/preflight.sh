#!/usr/bin/env bash
# Checks that the container targets (docker/docker.mk) run before touching Docker, so a
# bad environment gives one line saying what to do instead of a page from the engine.
#
#   preflight.sh runtime RUNTIME              print docker or local for RUNTIME=auto|local|docker, and why
#   preflight.sh engine                       docker client, engine and Compose v2 answer
#   preflight.sh gpu REQUEST                  the engine has the NVIDIA runtime (REQUEST: e.g. GPUS=2)
#   preflight.sh trainer-service              print trainer or trainer-cpu for $GPUS (empty: auto)
#   preflight.sh run-trainer [ARGS]           all of the above, then `docker compose run --rm` it;
#                                             with WORKERS=N (2 or more), N worker containers instead
#   preflight.sh export EXPORT_DIR MODEL      a SavedModel version exists for TF Serving
#   preflight.sh model-config CONFIG MODEL    serving/CONFIG serves MODEL from /models/MODEL
#   preflight.sh port PORT VARIABLE SERVICE   127.0.0.1:PORT is free (or SERVICE already holds it)
#   preflight.sh image IMAGE VARIABLE FALLBACK the engine has IMAGE or can pull it (else: use VARIABLE=FALLBACK)
#   preflight.sh dirs DIR...                  create bind-mount sources, writable by the container user
#
# Environment: PREFLIGHT_FOR names the make target in messages; DOCKER the client
# (tests put a stub there); DOCKER_UID/DOCKER_GID the container user; HOST_*_DIR, GPUS,
# WORKERS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKER="${DOCKER:-docker}"
FOR="${PREFLIGHT_FOR:-docker}"
COMPOSE=("$DOCKER" compose -f "$ROOT/docker/compose.yaml")

die() {
	echo "make $FOR: $*" >&2
	exit 2
}
note() { echo "make $FOR: $*" >&2; }

check_engine() {
	command -v "$DOCKER" >/dev/null 2>&1 ||
		die "the docker command is not installed; install Docker Engine (https://docs.docker.com/engine/install/) or use the local targets (make train RUNTIME=local, make tensorboard)"
	local err
	if ! err="$("$DOCKER" info 2>&1 >/dev/null)"; then
		case "$err" in
		*"permission denied"*)
			die "your user may not use the Docker engine (permission denied on its socket); add it to the docker group (sudo usermod -aG docker \$USER, then log in again) or use rootless Docker" ;;
		esac
		die "no Docker engine answers (docker info failed); start it (sudo systemctl start docker, or Docker Desktop), check DOCKER_HOST, or use the local targets (make train RUNTIME=local, make tensorboard)"
	fi
	"$DOCKER" compose version >/dev/null 2>&1 ||
		die "Docker Compose v2 is missing (docker compose version failed); install the docker-compose-plugin package (v2.20 or newer)"
}

has_nvidia_runtime() {
	# `nvidia-ctk runtime configure --runtime=docker` registers it (NVIDIA Container Toolkit).
	local runtimes
	runtimes="$("$DOCKER" info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}' 2>/dev/null)" || return 1
	[[ " $runtimes " == *" nvidia "* ]]
}

check_gpu() {
	has_nvidia_runtime ||
		die "$1 asks for a GPU, but the Docker engine has no NVIDIA runtime (docker info); install the NVIDIA Container Toolkit and run: sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker; or run on CPU with ${1%%=*}=0"
}

choose_runtime() {
	# auto takes the container only when the engine offers NVIDIA GPUs: the training image is
	# several GB, and on a machine without a GPU it would be built only to run on the CPU.
	# WORKERS=N (make train) is worker containers, whatever the GPUs.
	if [[ "$FOR" == train && "${WORKERS:-1}" =~ ^[0-9]+$ ]] && ((${WORKERS:-1} > 1)); then
		[[ "$1" != local ]] ||
			die "WORKERS=$WORKERS runs worker containers, which RUNTIME=local does not; use RUNTIME=docker (make engine starts an engine where none answers)"
		check_engine
		note "running $WORKERS worker containers (WORKERS=$WORKERS, RUNTIME=$1)"
		echo docker
		return 0
	fi
	case "$1" in
	local)
		note "running in .venv (RUNTIME=local)"
		echo local ;;
	docker)
		check_engine
		note "running in the container (RUNTIME=docker)"
		echo docker ;;
	auto)
		if ! "$DOCKER" info >/dev/null 2>&1; then
			note "running in .venv: no Docker engine answers (docker info); RUNTIME=docker after starting one uses the container"
			echo local
		elif has_nvidia_runtime; then
			note "running in the GPU container: the Docker engine offers NVIDIA GPUs (nvidia runtime); RUNTIME=local uses .venv"
			echo docker
		else
			note "running in .venv: the Docker engine offers no NVIDIA GPU (no nvidia runtime in docker info); RUNTIME=docker uses the container anyway"
			echo local
		fi ;;
	*) die "RUNTIME=$1 is not a runtime; use RUNTIME=auto (the GPU container when the engine offers NVIDIA GPUs, else .venv), RUNTIME=local or RUNTIME=docker" ;;
	esac
}

trainer_service() {
	local gpus="${GPUS:-}"
	if [[ "$gpus" == 0 ]]; then
		echo trainer-cpu
	elif [[ -z "$gpus" ]]; then
		if has_nvidia_runtime; then
			echo trainer
		else
			note "no NVIDIA runtime in the Docker engine: training on CPU (GPUS=0); see "Run it in containers" in README.md to use GPUs"
			echo trainer-cpu
		fi
	elif [[ "$gpus" == all || "$gpus" =~ ^[1-9][0-9]*$ ]]; then
		check_gpu "GPUS=$gpus"
		echo trainer
	else
		die "GPUS=$gpus is not a GPU count; use GPUS=all, GPUS=N (1, 2, ...), GPUS=0 for CPU, or leave it empty to pick automatically"
	fi
}

abs_dir() {
	# Absolute form of $1 (relative to the current directory, where make runs).
	case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac
}

make_dirs() {
	local uid="${DOCKER_UID:-1000}" gid="${DOCKER_GID:-1000}" dir
	for dir in "$@"; do
		[[ -n "$dir" ]] || continue
		# Docker would create a missing bind source as root, unwritable for the trainer.
		mkdir -p "$dir" || die "cannot create $dir; choose another directory or fix its permissions"
		# Run as root, the container still runs as $uid: hand it the folder.
		if [[ "$(id -u)" == 0 && "$(stat -c %u "$dir")" != "$uid" ]]; then
			chown -R "$uid:$gid" "$dir"
		fi
	done
}

run_trainer() {
	check_engine
	export HOST_DATA_DIR="${HOST_DATA_DIR:-$(abs_dir "${TRAINER_DATA_DIR:-artifacts/data}")}"
	export HOST_JOB_DIR="${HOST_JOB_DIR:-$(abs_dir "${TRAINER_JOB_DIR:-artifacts/job}")}"
	export HOST_EXPORT_DIR="${HOST_EXPORT_DIR:-$(abs_dir "${TRAINER_EXPORT_DIR:-artifacts/export}")}"
	if [[ -z "${HOST_IDX_DIR:-}" && -n "${MNIST_IDX_DIR:-}" ]]; then
		export HOST_IDX_DIR="$(abs_dir "$MNIST_IDX_DIR")"
	fi
	if [[ -n "${HOST_IDX_DIR:-}" && ! -d "$HOST_IDX_DIR" ]]; then
		die "IDX_DIR $HOST_IDX_DIR is not a directory; point IDX_DIR (or MNIST_IDX_DIR) at the folder with the four MNIST idx .gz files"
	fi
	local workers="${WORKERS:-1}"
	[[ "$workers" =~ ^[1-9][0-9]*$ ]] ||
		die "WORKERS=$workers is not a worker count; use WORKERS=2 (or more) for that many worker containers, or leave it empty for one"
	make_dirs "$HOST_DATA_DIR" "$HOST_JOB_DIR" "$HOST_EXPORT_DIR"
	local service
	service="$(trainer_service)"
	# The trainer prints container paths; say once where they are on this host.
	note "in the container, /artifacts/data is $HOST_DATA_DIR, /artifacts/job is $HOST_JOB_DIR, /artifacts/export is $HOST_EXPORT_DIR"
	if ((workers == 1)); then
		exec "${COMPOSE[@]}" run --rm "$service" "$@"
	fi
	[[ "$service" == trainer-cpu ]] ||
		die "WORKERS=$workers runs CPU workers side by side on this machine (each would claim every GPU); use GPUS=0, or STRATEGY=mirrored to train on this machine's GPUs"
	run_workers "$workers" "$@"
}

workers_compose() {
	# Compose services worker-0 .. worker-N-1 for `-f -`: each one the trainer-cpu service
	# plus its own host name on the project network and its index, as pods of an Indexed
	# Job get (docker/k8s/train-workers.yaml); the trainer builds TF_CONFIG from these.
	# A worker that dies (crash, OOM kill) is restarted by the engine and resumes.
	local workers="$1" i
	echo "services:"
	for ((i = 0; i < workers; i++)); do
		cat <<-EOF
			  worker-$i:
			    extends: {file: "$ROOT/docker/compose.yaml", service: trainer-cpu}
			    hostname: worker-$i
			    restart: on-failure:3
			    environment:
			      JOB_COMPLETION_INDEX: "$i"
			      TRAINER_WORKERS: "$workers"
			      TRAINER_WORKER_HOSTS: "worker-{index}:2222"
		EOF
	done
}

run_workers() {
	# All workers in the foreground, their logs interleaved; Ctrl-C stops them all (each
	# saves and exits 143). Then the containers go, as with `run --rm`, and the exit
	# status is the chief's, or else the first worker's that failed.
	local workers="$1" i services=() code=0 failed=()
	shift
	(($# == 0)) || die "WORKERS=$workers takes no trainer arguments ($*); set TRAINER_* variables instead"
	for ((i = 0; i < workers; i++)); do services+=("worker-$i"); done
	note "WORKERS=$workers: ${services[*]} (containers of their own, on the compose project's network) train together; worker-0 is the chief"
	# One image for all of them, built once (each service would build it again).
	"${COMPOSE[@]}" build trainer-cpu
	trap 'true' INT # compose stops the workers on Ctrl-C; this script then cleans up
	workers_compose "$workers" | "${COMPOSE[@]}" -f - up --no-build "${services[@]}" || code=$?
	local service exit_code
	while read -r service exit_code; do
		[[ "$exit_code" == 0 ]] || failed+=("$service exited $exit_code")
		if [[ "$service" == worker-0 ]]; then code="$exit_code"; fi
	done < <(workers_compose "$workers" | "${COMPOSE[@]}" -f - ps --all --format '{{.Service}} {{.ExitCode}}' "${services[@]}")
	workers_compose "$workers" | "${COMPOSE[@]}" -f - rm --force --stop "${services[@]}" >/dev/null 2>&1 || true
	if ((${#failed[@]})); then
		note "${failed[*]}"
		[[ "$code" != 0 ]] || code="${failed[0]##* }"
	fi
	exit "$code"
}

check_export() {
	local dir="$1" model="$2" version
	for version in "$dir/$model"/*/; do
		version="$(basename "$version")"
		if [[ "$version" =~ ^[0-9]+$ && -f "$dir/$model/$version/saved_model.pb" ]]; then
			return 0
		fi
	done
	die "no exported model in $dir/$model/<version>/ for TF Serving to load; train one first (make train), or point EXPORT_DIR at an export"
}

check_model_config() {
	local name="$1" model="$2" config="$ROOT/serving/$1"
	[[ -f "$config" ]] || die "serving/$name does not exist; use SERVING_MODEL_CONFIG=models.config or create it"
	grep -Eq "base_path:[[:space:]]*\"/models/$model\"" "$config" ||
		die "serving/$name does not serve /models/$model; use the MODEL_NAME it names or add a config entry for $model"
}

check_port() {
	local port="$1" variable="$2" service="$3"
	# Our own running service holds the port: `up` is then a no-op, not a conflict.
	if [[ -n "$("${COMPOSE[@]}" ps --quiet --status running "$service" 2>/dev/null)" ]]; then
		return 0
	fi
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		die "port $port on 127.0.0.1 is already in use; stop what listens there (make stop, if it is another digit-serve service) or pick a free one: make $FOR $variable=<port>"
	fi
}

check_image() {
	# An image the engine has, or can pull, or one line naming the way out (compose would
	# fail the same way, but after a page of pull errors).
	local image="$1" variable="$2" fallback="$3" err
	"$DOCKER" image inspect "$image" >/dev/null 2>&1 && return 0
	echo "make $FOR: pulling $image"
	err="$("$DOCKER" pull --quiet "$image" 2>&1 >/dev/null)" && return 0
	die "$image cannot be pulled ($(tail -1 <<<"$err")); use $variable=$fallback (the newest tag seen), or pull or build $image yourself"
}

cmd="${1:-}"
shift || true
case "$cmd" in
runtime) choose_runtime "${1-}" ;;
engine) check_engine ;;
gpu) check_gpu "${1:?usage: preflight.sh gpu REQUEST}" ;;
trainer-service) trainer_service ;;
run-trainer) run_trainer "$@" ;;
export) check_export "${1:?usage: preflight.sh export EXPORT_DIR MODEL}" "${2:?model name}" ;;
model-config) check_model_config "${1:?usage: preflight.sh model-config CONFIG MODEL}" "${2:?model name}" ;;
port) check_port "${1:?usage: preflight.sh port PORT VARIABLE SERVICE}" "${2:?variable}" "${3:?service}" ;;
dirs) make_dirs "$@" ;;
image) check_image "${1:?usage: preflight.sh image IMAGE VARIABLE FALLBACK}" "${2:?variable}" "${3:?fallback}" ;;
*)
	sed -n '2,20p' "$0" >&2
	exit 2
	;;
esac
