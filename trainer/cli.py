"""Command line: `python -m trainer [train] ...` and `python -m trainer data import ...`.

Flags are parsed and validated before TensorFlow is imported, so `--help` and bad
input answer in a moment and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from trainer import config, errors
from trainer.errors import ExitCode, TrainerExit, UserError
from trainer.outputs import REPORT_FILE

log = logging.getLogger("trainer")

COMMANDS = """commands:
  train           train, checkpoint and export the model (the default command)
  data import     prepare the TFDS `mnist` dataset from the four original idx .gz files
  evaluate        score an exported version on the test split through its serving signature

Every option can also come from an environment variable (shown as env:); a flag wins
over the variable. Rerunning the same command resumes from the job dir's checkpoint.
`python -m trainer data import --help` and `python -m trainer evaluate --help` document
the other commands."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (a UserError), not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `{self.prog} --help`)")


def train_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m trainer [train]",
        description="Train the MNIST CNN under tf.distribute and export a versioned SavedModel.",
        epilog=f"{COMMANDS}\n\n{errors.exit_status_help()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config.add_arguments(parser)
    return parser


def data_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m trainer data",
        description="Manage the training data.",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="import")
    imp = sub.add_parser(
        "import",
        help="prepare the TFDS mnist dataset from idx files",
        description=(
            "Validate the four original MNIST idx files (magic numbers, sizes, counts, labels) "
            "and write them as the TFDS `mnist` dataset, which `tfds.load('mnist', data_dir=...)` "
            "then reads with no network. For air-gapped machines where TFDS cannot download."
        ),
    )
    config.add_field_argument(
        imp,
        "idx_dir",
        "folder with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (required)",
    )
    config.add_field_argument(imp, "data_dir", "TFDS data dir to write into")
    return parser


def evaluate_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m trainer evaluate",
        description="Score an exported SavedModel version on the MNIST test split through its "
        "`serving_default` signature (what TF Serving runs), print the result as JSON, and "
        "write the evaluation report (metrics.json, report.md and pictures) to the "
        "version's eval/ folder.",
    )
    config.add_field_argument(parser, "export_dir", "SavedModel base dir")
    config.add_field_argument(parser, "model_name", "model folder under --export-dir")
    parser.add_argument(
        "--version", type=int, default=None, help="version to score [default: the highest]"
    )
    config.add_field_argument(parser, "data_dir", "TFDS data dir with the prepared mnist")
    return parser


def _quiet_tensorflow() -> None:
    # TF's C++ INFO lines and TFDS progress bars drown the run's own log.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import absl.logging

    absl.logging.set_verbosity(absl.logging.WARNING)
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()


def _cmd_train(argv: Sequence[str]) -> int:
    args = train_parser().parse_args(argv)
    cfg = config.from_sources(args)
    config.validate(cfg)
    from trainer import strategy

    # The one place the cluster is read: TF_CONFIG (Kubeflow's TFJob sets it per pod), or
    # one built from an Indexed Job's JOB_COMPLETION_INDEX, --workers and --worker-hosts.
    # Checked before TensorFlow is imported, so a malformed one fails in a moment.
    tf_config = strategy.cluster_tf_config(
        os.environ.get("TF_CONFIG"), cfg.workers, cfg.worker_hosts, cfg.worker_index
    )
    if tf_config:
        os.environ["TF_CONFIG"] = tf_config  # where TensorFlow's cluster resolver reads it
    cluster = strategy.parse_tf_config(tf_config)
    _quiet_tensorflow()
    from trainer import train

    # TensorFlow's run-time errors are one line, not a traceback: a multi-worker job's
    # lost peer (PeerLost: retry), anything else (RuntimeFailure: exit 1, with the cause).
    with strategy.runtime_errors(cluster, cfg.peer_timeout_seconds):
        summary = train.run(cfg, cluster=cluster)
    if not summary.get("already_finished"):
        _print_final_summary(cfg, summary)
    return ExitCode.DONE


def _print_final_summary(cfg: config.TrainConfig, summary: dict) -> None:
    """What a person wants at the end: the result, the time, and where everything is."""
    lines = [
        f"done: test accuracy {100 * summary['test_accuracy']:.2f}% after {cfg.epochs} "
        f"epoch{'s' if cfg.epochs != 1 else ''}, {summary['wall_seconds']:.0f} s wall time",
    ]
    if "export_path" in summary:
        lines += [
            f"  model:       {summary['export_path']}  (TF Serving: make serve)",
            f"  report:      {Path(summary['report']) / REPORT_FILE}",
        ]
    lines += [
        f"  logs:        {cfg.log_dir}",
        f"  checkpoints: {cfg.checkpoint_dir}",
        f"  TensorBoard: make tensorboard JOB_DIR={cfg.job_dir}  "
        f"(or tensorboard --logdir {cfg.log_dir})",
    ]
    log.info("\n".join(lines))


def _cmd_data(argv: Sequence[str]) -> int:
    args = data_parser().parse_args(argv)
    if not args.idx_dir:
        raise UserError(
            "data import needs --idx-dir DIR (or MNIST_IDX_DIR) with the four idx files."
        )
    config.check_writable_dir(args.data_dir, "--data-dir")
    _quiet_tensorflow()
    from trainer import data

    counts = data.import_idx(args.idx_dir, args.data_dir)
    if counts is not None:
        log.info(
            "imported %s into %s",
            ", ".join(f"{k} {v:,}" for k, v in counts.items()),
            args.data_dir,
        )
    return ExitCode.DONE


def _cmd_evaluate(argv: Sequence[str]) -> int:
    args = evaluate_parser().parse_args(argv)
    _quiet_tensorflow()
    from trainer import data
    from trainer.report import evaluate

    version_dir = evaluate.resolve_version(Path(args.export_dir) / args.model_name, args.version)
    result = evaluate.evaluate(version_dir, data.load(args.data_dir).test)
    print(json.dumps(result, indent=2))
    log.info(
        "%s: test accuracy %.2f%% on %d images; report in %s",
        version_dir,
        100 * result["accuracy"],
        result["examples"],
        Path(result["report"]) / REPORT_FILE,
    )
    return ExitCode.DONE


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    try:
        if argv[:1] == ["data"]:
            return _cmd_data(argv[1:])
        if argv[:1] == ["evaluate"]:
            return _cmd_evaluate(argv[1:])
        if argv[:1] == ["train"]:
            argv = argv[1:]
        return _cmd_train(argv)
    except TrainerExit as e:  # every way to end besides success and a bug: errors.py
        if not e.quiet:
            print(f"error: {e}", file=sys.stderr)
        return e.exit_code
