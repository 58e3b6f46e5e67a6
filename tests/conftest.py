"""Fixtures shared by the test modules; the helpers behind them are in support.py."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
import tensorflow as tf

from support import run_cli, two_version_export, write_idx_dir

# Two logical CPUs for the whole session, so tests can inject a MirroredStrategy with two
# replicas in-process (as Keras' own tests do). Only possible before TensorFlow starts its
# runtime, hence here, at import; the default strategy still uses /cpu:0 alone.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)


@pytest.fixture(autouse=True)
def _fresh_collective_keys() -> None:
    """Every MirroredStrategy in a process starts its collective group and instance keys at
    the same numbers, and the runtime remembers which op each key was used for: a second
    strategy's gather can then hit a key an earlier test's all-reduce used ("Collective
    instance 100 expected type 0 ... got type 2"). TensorFlow's own tests move the key base
    on for each strategy (tensorflow/python/distribute/strategy_combinations.py,
    _mirrored_strategy_with_collective_key_base); so do we, for every test."""
    tf.distribute.MirroredStrategy._collective_key_base += 100000
    tf.distribute.MultiWorkerMirroredStrategy._collective_key_base += 100000


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small learnable digits as the four idx .gz files."""
    return write_idx_dir(tmp_path_factory.mktemp("idx"))


@pytest.fixture(scope="session")
def data_dir(idx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TFDS data dir prepared by the project's own import command."""
    out = tmp_path_factory.mktemp("tfds")
    result = run_cli("data", "import", "--idx-dir", str(idx_dir), "--data-dir", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def export_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained export served as versions 1 and 2 (EXPORT_DIR/mnist); tests only
    read it, so pytest-xdist's workers share one (the first to ask trains it)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return two_version_export(tmp_path_factory.mktemp("export"))
    shared = tmp_path_factory.getbasetemp().parent  # the run's folder, above each worker's
    done = shared / "export.done"  # holds the path two_version_export returned
    with (shared / "export.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait here while the first trains
        if not done.exists():
            done.write_text(str(two_version_export(shared / "export")))
    return Path(done.read_text())
