"""Configuration: flags beat env vars beat defaults; bad values exit 2 with one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from support import run_cli
from trainer import cli, config
from trainer.errors import ExitCode, UserError


def parse(argv: list[str], env: dict[str, str]) -> config.TrainConfig:
    return config.from_sources(cli.train_parser().parse_args(argv), env)


def test_defaults() -> None:
    cfg = parse([], {})
    assert (cfg.epochs, cfg.batch_size, cfg.strategy, cfg.model_name) == (4, 16, "auto", "mnist")
    assert cfg.augment is True


def test_flag_beats_env_beats_default() -> None:
    env = {
        "TRAINER_EPOCHS": "5",
        "TRAINER_BATCH_SIZE": "64",
        "TRAINER_AUGMENT": "false",
        "TRAINER_STRATEGY": "mirrored",
        "MNIST_IDX_DIR": "/idx",
    }
    cfg = parse(["--epochs", "3"], env)
    assert cfg.epochs == 3  # flag
    assert cfg.batch_size == 64  # env
    assert cfg.augment is False
    assert cfg.strategy == "mirrored"
    assert cfg.idx_dir == "/idx"
    assert cfg.learning_rate == config.TrainConfig().learning_rate  # default
    assert parse(["--augment"], env).augment is True


def test_fault_options() -> None:
    cfg = parse([], {})
    assert (cfg.restart, cfg.checkpoint_seconds, cfg.peer_timeout_seconds) == (False, 0.0, 300.0)
    cfg = parse(["--checkpoint-seconds", "30"], {"TRAINER_RESTART": "1"})
    assert (cfg.restart, cfg.checkpoint_seconds) == (True, 30.0)
    assert parse(["--no-restart"], {"TRAINER_RESTART": "yes"}).restart is False


def test_early_evaluations_default_and_the_first_epoch_flag() -> None:
    """Twice in the first epoch and at 1.25 epochs by default; --first-epoch-evals N (and
    its variable), the old name, is the same setting as --early-evals."""
    cfg = parse([], {})
    assert (cfg.early_evals, cfg.early_eval_epochs, cfg.eval_points) == (2, 1, (1.25,))
    assert parse(["--eval-at", " 1.5, 0.25 "], {}).eval_points == (0.25, 1.5)
    assert parse([], {"TRAINER_EVAL_AT": "2.5"}).eval_points == (2.5,)
    assert (
        parse(["--eval-at", ""], {}).eval_points
        == parse(["--eval-at", "None"], {}).eval_points
        == ()
    )
    cfg = parse(["--early-evals", "4", "--early-eval-epochs", "2"], {})
    assert (cfg.early_evals, cfg.early_eval_epochs) == (4, 2)
    assert parse(["--first-epoch-evals", "3"], {}).early_evals == 3
    assert parse([], {"TRAINER_FIRST_EPOCH_EVALS": "5"}).early_evals == 5
    both = {"TRAINER_EARLY_EVALS": "6", "TRAINER_FIRST_EPOCH_EVALS": "5"}
    assert parse([], both).early_evals == 6  # the current name wins
    help_text = " ".join(cli.train_parser().format_help().split())
    assert "--first-epoch-evals (TRAINER_FIRST_EPOCH_EVALS) sets it too" in help_text


@pytest.mark.parametrize(
    "env, message",
    [
        ({"TRAINER_EPOCHS": "ten"}, "TRAINER_EPOCHS='ten' is not a valid int"),
        ({"TRAINER_STRATEGY": "tpu"}, "TRAINER_STRATEGY='tpu' is not a known strategy"),
        ({"TRAINER_AUGMENT": "maybe"}, "TRAINER_AUGMENT='maybe' is not a valid bool"),
    ],
)
def test_bad_env_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse([], env)


def test_help_documents_every_option_with_default_and_env() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for f in dataclasses.fields(config.TrainConfig):
        assert config.flag_name(f) in text
        assert f"env: {config.env_name(f)}" in text
    assert "[default: 4; env: TRAINER_EPOCHS]" in text
    assert "data import" in text
    # Every exit status, from the one table (trainer/errors.py), with what it means.
    exits = result.stdout[result.stdout.index("exit status:") :]
    for code in ExitCode:
        assert f"{code.value:>3}  {code.meaning}" in exits


def test_exit_statuses_keep_the_values_orchestrators_act_on() -> None:
    """docker/k8s and Kubeflow retry on 138 and 143 and give up on 1, 2, 3 and 4 (Kubeflow
    retries only 130, 137, 138 and 143: a diverged run must not be retried forever)."""
    assert {c.name: c.value for c in ExitCode} == {
        "DONE": 0,
        "FAILED": 1,
        "USER_ERROR": 2,
        "HELD_BACK": 3,
        "DIVERGED": 4,
        "INTERRUPTED": 130,
        "PEER_LOST": 138,
        "PREEMPTED": 143,
    }
    assert {c.value for c in ExitCode if c.retry} == {138, 143}


def test_the_first_version_floor_is_documented_and_can_be_lowered() -> None:
    cfg = parse([], {})
    assert cfg.min_accuracy == 90.0  # far above chance (10), below any run that learned
    assert parse(["--min-accuracy", "0"], {}).min_accuracy == 0.0
    assert "[default: 90.0; env: TRAINER_MIN_ACCURACY]" in " ".join(
        cli.train_parser().format_help().split()
    )


FLOAT_FLAGS = [
    config.flag_name(f)
    for f in dataclasses.fields(config.TrainConfig)
    if config._field_type(f) is float
]


@pytest.mark.parametrize("flag", FLOAT_FLAGS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_every_float_flag_refuses_inf_and_nan(tmp_path: Path, flag: str, value: str) -> None:
    args = cli.train_parser().parse_args([f"{flag}={value}"])
    with pytest.raises(UserError) as e:
        config.validate(config.from_sources(args, {}))
    shown = {"1e400": "inf"}.get(value, value)
    assert str(e.value) == f"{flag} must be a finite number, got {shown}."


def test_every_count_has_an_upper_bound() -> None:
    """A new int field needs a MAXIMUM: an absurd count must fail at start, not later."""
    counts = [
        f.name for f in dataclasses.fields(config.TrainConfig) if config._field_type(f) is int
    ]
    assert sorted(counts) == sorted(k for k in config.MAXIMUM if k in counts)


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--epochs", "-1"], {}, "--epochs must be a positive integer, got -1"),
        (["--epochs", "0"], {}, "--epochs must be a positive integer, got 0"),
        (["--batch-size", "0"], {}, "--batch-size must be a positive integer, got 0"),
        (["--learning-rate", "-0.1"], {}, "--learning-rate must be a positive number"),
        (["--strategy", "tpu"], {}, "invalid choice: 'tpu'"),
        (["--epochs", "x"], {}, "invalid int value: 'x'"),
        (["--bogus"], {}, "unrecognized arguments: --bogus"),
        (["--model-name", "7"], {}, "not only digits"),
        ([], {"TRAINER_BATCH_SIZE": "-4"}, "--batch-size must be a positive integer, got -4"),
        ([], {"TF_CONFIG": "{not json"}, "TF_CONFIG is not valid JSON"),
        (
            [],
            {"TF_CONFIG": json.dumps({"cluster": {"ps": ["a:1"]}, "task": {}})},
            "parameter servers",
        ),
        (
            [],
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}
                )
            },
            "task index 2 is out of range",
        ),
        (["--idx-dir", "/nonexistent/idx"], {}, "is not a directory"),
        (["--profile-steps", "40,20"], {}, "is not START,STOP with 0 < START < STOP"),
        (["--profile-steps", "20"], {}, "is not START,STOP"),
        (["--histogram-every", "-1"], {}, "--histogram-every must be 0 (never) or a positive"),
        (["--max-regression", "-1"], {}, "--max-regression must be 0-100 percentage points"),
        (["--min-accuracy", "101"], {}, "--min-accuracy must be a percentage 0-100"),
        ([], {"TRAINER_HEARTBEAT_SECONDS": "0"}, "--heartbeat-seconds must be above 0"),
        (["--checkpoint-seconds", "-1"], {}, "--checkpoint-seconds must be 0 (off) or more"),
        ([], {"TRAINER_PEER_TIMEOUT_SECONDS": "0"}, "--peer-timeout-seconds must be above 0"),
        # Non-finite and absurd numbers: accepted before, then a traceback or a huge list.
        (["--learning-rate", "inf"], {}, "--learning-rate must be a finite number, got inf."),
        (
            ["--peer-timeout-seconds", "inf"],
            {},
            "--peer-timeout-seconds must be a finite number, got inf.",
        ),
        (
            ["--early-evals", "1000000000"],
            {},
            "--early-evals must be at most 1,000, got 1,000,000,000.",
        ),
        (["--early-evals", "0"], {}, "--early-evals must be a positive integer, got 0."),
        (["--early-eval-epochs", "-1"], {}, "--early-eval-epochs must be 0 (none) or a posi"),
        (["--eval-at", "1.25;1.5"], {}, "--eval-at '1.25;1.5' is not a comma-separated list"),
        (["--eval-at", "0,1"], {}, "--eval-at '0,1' is not a comma-separated list of at most"),
        (["--eval-at", "nan"], {}, "--eval-at 'nan' is not a comma-separated list of at most"),
        (["--eval-at", "1,1e308"], {}, "--eval-at '1,1e308' is not a comma-separated list of"),
        (["--eval-at", "inf"], {}, "--eval-at 'inf' is not a comma-separated list of at most"),
        ([], {"TRAINER_EVAL_AT": "1,"}, "--eval-at '1,' is not a comma-separated list of at m"),
        (["--clean-epochs", "-1"], {}, "--clean-epochs must be 0 (distort to the end) or a p"),
        ([], {"TRAINER_FIRST_EPOCH_EVALS": "x"}, "TRAINER_FIRST_EPOCH_EVALS='x' is not a valid"),
        ([], {"TRAINER_EPOCHS": "100000"}, "--epochs must be at most 10,000, got 100,000."),
        (["--seed", "-1"], {}, "--seed must be 0 or more, got -1."),
    ],
)
def test_bad_values_exit_2_with_one_line_and_write_nothing(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = run_cli(*args, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no artifacts/ folder, nothing half-made


def test_unwritable_dirs_are_refused_before_anything_runs(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for flag in ("--job-dir", "--export-dir", "--data-dir"):
        result = run_cli(flag, str(blocker / "sub"), cwd=tmp_path)
        assert result.returncode == 2
        assert f"error: {flag} " in result.stderr and "is a file, not a directory" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_data_import_needs_an_idx_dir(tmp_path: Path) -> None:
    result = run_cli("data", "import", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: data import needs --idx-dir DIR (or MNIST_IDX_DIR) with the four idx files."
    )
