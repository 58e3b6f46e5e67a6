"""What a user installs is declared: the project's metadata, its licence, every package the
code imports, and the training image's hash-locked requirements."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from support import ROOT

# Import names of the project's own code: its packages and the tests' helper modules.
FIRST_PARTY = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} | {
    p.stem for p in (ROOT / "tests").glob("*.py")
}
PRODUCT = ["digits", "trainer", "serving", "benchmarks", "tools"]


def requirement_pins(path) -> dict[str, str]:
    """name -> version of every `name==version` line of a requirements file (and its -r)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            pins |= requirement_pins(path.parent / line[3:].strip())
        elif m := re.match(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", line):
            pins[canonical(m[1])] = m[2]
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_levels(folder: str) -> set[str]:
    names = set()
    for path in (ROOT / folder).rglob("*.py"):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue  # generated: they import google.protobuf and grpc, checked via serving/
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - FIRST_PARTY


def test_every_imported_package_is_declared() -> None:
    declared = requirement_pins(ROOT / "requirements-dev.txt")
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for folder in [*PRODUCT, "tests", "docker"]:
        for name in imported_top_levels(folder):
            dists = {canonical(d) for d in distributions.get(name, [name])}
            if not dists & declared.keys():
                missing[name] = folder
    assert not missing, f"imported but not in a requirements file: {missing}"


def test_the_client_requirements_cover_what_the_client_imports() -> None:
    client = requirement_pins(ROOT / "requirements-client.txt")
    distributions = importlib.metadata.packages_distributions()
    for name in imported_top_levels("serving") | {"google", "grpc"}:
        dists = {canonical(d) for d in distributions.get(name, [name])}
        assert dists & client.keys(), f"serving/ imports {name}, not in requirements-client.txt"
    assert "tensorflow" not in client and "tensorflow-serving-api" not in client


def test_the_image_lock_pins_requirements_txt_with_hashes() -> None:
    lock_text = (ROOT / "docker" / "requirements.lock").read_text()
    lock = requirement_pins(ROOT / "docker" / "requirements.lock")
    for name, version in requirement_pins(ROOT / "requirements.txt").items():
        assert lock.get(name) == version, f"{name}=={version}: run make lock"
    # Every pinned package carries at least one hash, or pip --require-hashes refuses it.
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock_text.split("\n", 2)[2])
    assert blocks and all("--hash=sha256:" in b for b in blocks if "==" in b)
    assert "--require-hashes" in (ROOT / "docker" / "Dockerfile").read_text()


def test_project_metadata_and_licence() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "digit-serve"
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"] and project["requires-python"] == ">=3.11"
    assert project["license"] == "Apache-2.0"
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
