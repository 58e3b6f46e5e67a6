"""`make help` (the default target) lists every target, and the docs name only real ones."""

from __future__ import annotations

import re
import subprocess

from support import ROOT

MAKEFILES = [
    ROOT / "Makefile",
    ROOT / "docker" / "docker.mk",
    ROOT / "serving" / "serving.mk",
    ROOT / "benchmarks" / "bench.mk",
]


def defined_targets() -> set[str]:
    targets = set()
    for path in MAKEFILES:
        targets |= set(re.findall(r"^([a-z][a-z-]*):", path.read_text(), re.M))
    return targets


def test_make_help_is_the_default_and_lists_every_target() -> None:
    out = subprocess.run(["make", "-s"], cwd=ROOT, capture_output=True, text=True, check=True)
    listed = set(re.findall(r"^  ([a-z][a-z-]*) ", out.stdout, re.M))
    assert listed == defined_targets()
    assert {
        "train",
        "test",
        "data",
        "evaluate",
        "tensorboard",
        "serve",
        "predict",
        "stop",
        "logs",
        "lint",
        "clean",
        "bench-serving",
        "integration",
    } <= listed


def test_readme_names_only_real_targets() -> None:
    """README.md and the guides under docs/ it links to."""
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        named = set(re.findall(r"`make ([a-z][a-z-]*)", doc.read_text()))
        assert named <= defined_targets(), (doc.name, named - defined_targets())
