"""`make train` end to end on the local runtime, with paths that hold spaces and quotes:
the real trainer trains on the small digits and exports where the variables say."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from support import ROOT


def test_make_train_takes_paths_with_spaces_end_to_end(data_dir: Path, tmp_path: Path) -> None:
    base = tmp_path / "runs of 'today'"
    job, export = base / "a job", base / "the export"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINER_", "MAKE"))}
    # The gate's floor is not what this is about: the small digits after 1 epoch (EPOCHS=1,
    # not the trainer's default of 4: the variable reaches the trainer too).
    env.update(TRAINER_MIN_ACCURACY="0", TRAINER_HISTOGRAM_EVERY="0")
    result = subprocess.run(
        [
            *("make", "--no-print-directory", "train", "RUNTIME=local", "EPOCHS=1"),
            f"DATA_DIR={data_dir}",
            f"JOB_DIR={job}",
            f"EXPORT_DIR={export}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((export / "mnist" / "1" / "training_summary.json").read_text())
    assert summary["config"]["job_dir"] == str(job)
    assert summary["epochs_this_run"] == 1
    assert (job / "checkpoints").is_dir() and (job / "logs").is_dir()
    assert sorted(p.name for p in base.iterdir()) == ["a job", "the export"]
