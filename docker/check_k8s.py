"""Validate the Kubernetes manifests offline: `python docker/check_k8s.py docker/k8s/*.yaml`.

Built-in kinds go through kubernetes-validate (the Kubernetes JSON schemas ship in its
wheel), strictly, so a misspelt field fails. TFJob is a Kubeflow custom resource with
no schema there: its shape is checked against the small schema below, written from the
Training Operator's kubeflow.org/v1 types (TFJobSpec, ReplicaSpec, RunPolicy), and each
replica's pod template is validated as a real PodTemplateSpec. Exit 1 on any error.
"""

from __future__ import annotations

import sys
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = kubernetes_validate.latest_version()

TFJOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "kubeflow.org/v1"},
        "kind": {"const": "TFJob"},
        "metadata": {
            "type": "object",
            "anyOf": [{"required": ["name"]}, {"required": ["generateName"]}],
        },
        "spec": {
            "type": "object",
            "required": ["tfReplicaSpecs"],
            "additionalProperties": False,
            "properties": {
                "runPolicy": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "cleanPodPolicy": {"enum": ["All", "Running", "None"]},
                        "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                        "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                        "backoffLimit": {"type": "integer", "minimum": 0},
                        "schedulingPolicy": {"type": "object"},
                        "suspend": {"type": "boolean"},
                        "managedBy": {"type": "string"},
                    },
                },
                "successPolicy": {"enum": ["", "AllWorkers"]},
                "enableDynamicWorker": {"type": "boolean"},
                "tfReplicaSpecs": {
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": {"enum": ["Chief", "Master", "Worker", "PS", "Evaluator"]},
                    "additionalProperties": {
                        "type": "object",
                        "required": ["template"],
                        "additionalProperties": False,
                        "properties": {
                            "replicas": {"type": "integer", "minimum": 0},
                            "restartPolicy": {"enum": ["Always", "OnFailure", "Never", "ExitCode"]},
                            "template": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
}


def _check_tfjob(doc: dict[str, Any]) -> list[str]:
    errors = [
        f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}"
        for e in jsonschema.Draft202012Validator(TFJOB_SCHEMA).iter_errors(doc)
    ]
    if errors:
        return errors
    for role, replica in doc["spec"]["tfReplicaSpecs"].items():
        names = [c.get("name") for c in replica["template"].get("spec", {}).get("containers", [])]
        if "tensorflow" not in names:
            # The operator injects TF_CONFIG into, and reads exit codes of, this container.
            errors.append(f"spec.tfReplicaSpecs.{role}: no container named 'tensorflow'")
        # Validate the pod template with the real Kubernetes schema.
        wrapper = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{doc['metadata'].get('name', 'tfjob')}-{role.lower()}"},
            "template": replica["template"],
        }
        try:
            kubernetes_validate.validate(wrapper, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(map(str, e.path))
            errors.append(f"spec.tfReplicaSpecs.{role}.{path}: {e.message}")
    return errors


def _pod_specs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(path, pod spec) of every pod a manifest runs."""
    if doc.get("kind") == "TFJob":
        return [
            (f"spec.tfReplicaSpecs.{role}.template.spec", r["template"].get("spec", {}))
            for role, r in doc.get("spec", {}).get("tfReplicaSpecs", {}).items()
        ]
    if doc.get("kind") == "Pod":
        return [("spec", doc.get("spec", {}))]
    template = doc.get("spec", {}).get("template")
    if doc.get("kind") == "CronJob":
        template = doc.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template")
    return [("spec.template.spec", template.get("spec", {}))] if template else []


def _check_restricted(doc: dict[str, Any]) -> list[str]:
    """Pod Security "restricted" requires a seccomp profile on every pod (or container);
    this project sets RuntimeDefault on the pod."""
    errors = []
    for path, spec in _pod_specs(doc):
        profile = spec.get("securityContext", {}).get("seccompProfile", {}).get("type")
        if profile not in ("RuntimeDefault", "Localhost"):
            errors.append(
                f"{path}.securityContext.seccompProfile.type must be RuntimeDefault "
                '(Pod Security "restricted")'
            )
    return errors


def check_document(doc: dict[str, Any]) -> list[str]:
    """Error messages for one manifest document (empty when it is valid)."""
    restricted = _check_restricted(doc)
    if doc.get("kind") == "TFJob":
        return _check_tfjob(doc) + restricted
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [e.message]
    return restricted


def main(paths: list[str]) -> int:
    failed = False
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            errors = check_document(doc)
            for error in errors:
                print(f"{path}: {name}: {error}", file=sys.stderr)
            failed |= bool(errors)
            if not errors:
                print(f"{path}: {name}: valid (Kubernetes {KUBERNETES_VERSION})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
