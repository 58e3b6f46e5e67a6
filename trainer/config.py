"""The typed configuration of a training run, filled from flags and TRAINER_* env vars.

Precedence: command-line flag > environment variable > default. Every field's help
text is the documentation that `python -m trainer --help` prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import ExitCode, UserError
from trainer.outputs import CHECKPOINTS_DIR, LOGS_DIR

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker")


def _opt(default: Any, help: str, env: str | None = None, **kw: Any) -> Any:
    """A dataclass field carrying its CLI help text and environment variable."""
    return field(default=default, metadata={"help": help, "env": env, **kw})


@dataclass(frozen=True)
class TrainConfig:
    # 4 at a peak of 3e-3: the test accuracy 10 epochs at 2e-3 reach (99.3 %), in under
    # half the wall time (docs/benchmarks.md); the cosine ends with the run.
    epochs: int = _opt(4, "Passes over the 60,000 training images.")
    # 16: twice the steps of 32 for about the same training images/s in the trainer on a
    # CPU (909 against 896 in make bench, although the bare loop is slower at 16), and
    # 99.30-99.35 % on every seed tried, where 32 gave 99.26-99.31 (docs/benchmarks.md).
    batch_size: int = _opt(
        16,
        "Global batch size: images per optimizer step over all replicas "
        "(each replica gets batch_size / replicas).",
    )
    learning_rate: float = _opt(
        3e-3,
        "Adam's peak learning rate: reached after --warmup-epochs of linear warmup, then "
        "a cosine decay to 0 at the end of the run.",
    )
    warmup_epochs: float = _opt(
        0.1, "Linear learning-rate warmup from 0 to the peak, in epochs (0: none)."
    )
    weight_decay: float = _opt(
        0.05,
        "Decoupled weight decay (AdamW): each step shrinks the weights by "
        "learning_rate * weight_decay (0: plain Adam).",
    )
    label_smoothing: float = _opt(
        0.1, "Label smoothing of the training loss (0: none); the reported test loss is plain."
    )
    ema: float = _opt(
        0.999,
        "Decay of the exponential moving average of the weights that evaluation and the "
        "export use (0: no averaging, use the last step's weights).",
    )
    augment: bool = _opt(
        True,
        "Randomly rotate (±10°), scale (±10%) and shift (±2 px) each training image "
        "(training only; the model is unchanged). Use --no-augment to turn off.",
    )
    clean_epochs: int = _opt(
        1,
        "The last N epochs train on the images as they are, without --augment's "
        "distortions, so the model ends on the kind of digits it is tested and served on "
        "(0: distort to the end). With --epochs raised on resume, the last N of each "
        "learning-rate cycle.",
    )
    seed: int = _opt(42, "Seed for weight init and the per-epoch shuffle order.")
    data_dir: str = _opt(
        "artifacts/data", "TFDS data dir that holds (or will hold) the prepared `mnist` dataset."
    )
    idx_dir: str | None = _opt(
        None,
        "Folder with the four original MNIST idx .gz files; when the dataset is missing "
        "from --data-dir it is imported from here first.",
        env="MNIST_IDX_DIR",
    )
    job_dir: str = _opt(
        "artifacts/job",
        "Checkpoints and TensorBoard logs of this run; rerunning with the same job dir resumes "
        "it, with the same settings (it says which differ; --epochs may be raised).",
    )
    restart: bool = _opt(
        False,
        "Start over: move everything in --job-dir into JOB_DIR/old-<time>/ (kept, not "
        "deleted; the folder itself stays, so a mounted volume works) and train from "
        "scratch, e.g. when its checkpoint is damaged or to change settings. A one-off: do "
        "not leave it set in a retried job's environment, or every retry starts over.",
    )
    export_dir: str = _opt(
        "artifacts/export",
        "SavedModel base dir: the model lands in EXPORT_DIR/MODEL_NAME/<version>/ "
        "(TF Serving's layout).",
    )
    model_name: str = _opt("mnist", "Model name: the folder under --export-dir TF Serving serves.")
    strategy: str = _opt(
        "auto",
        "tf.distribute strategy: auto picks multi_worker when TF_CONFIG names several "
        "workers, mirrored for several GPUs, one_device for one GPU, default on CPU.",
        choices=STRATEGIES,
    )
    checkpoint_every: int = _opt(
        # A save took 0.02-0.1 s here (median 0.04 s, with the weight check): every 200
        # steps of batch 16 that was 18 saves an epoch. 1,000 steps is 16,000 images,
        # about 17 s of work on 2 CPU cores, under 1 s on a GPU: what a kill can lose.
        1_000,
        "Also checkpoint every N optimizer steps (always at the end of each epoch): a kill "
        "loses at most this many steps (or --checkpoint-seconds' worth, if that is less).",
    )
    checkpoint_seconds: float = _opt(
        0.0,
        "Also checkpoint when this many seconds have passed since the last checkpoint, "
        "whichever of this and --checkpoint-every comes first: bounds the work a kill "
        "loses on slow hardware (0: off). Workers of a multi-worker job agree on it.",
    )
    peer_timeout_seconds: float = _opt(
        300.0,
        f"Multi-worker jobs: stop (exit {ExitCode.PEER_LOST:d}, which Kubeflow retries) when "
        "a peer has not answered for this long: at start-up, while waiting for every worker "
        "of TF_CONFIG to join, and during training, when a peer's heartbeats stop (it died "
        "without saving).",
    )
    workers: int = _opt(
        0,
        "Multi-worker jobs without TF_CONFIG (a Kubernetes Indexed Job; make train "
        "WORKERS=N): how many workers. With --worker-hosts and --worker-index the trainer "
        "builds TF_CONFIG itself. 0: off (TF_CONFIG, or a single process).",
    )
    worker_hosts: str = _opt(
        "",
        "Multi-worker jobs without TF_CONFIG: every worker's host:port, {index} standing for "
        "its index, e.g. digit-serve-train-{index}.digit-serve-workers:2222 (an Indexed "
        "Job's pod <job>-<index> behind a headless Service named in the pod's subdomain).",
    )
    worker_index: int | None = _opt(
        None,
        "Multi-worker jobs without TF_CONFIG: this worker's index, 0 to --workers - 1 "
        "(Kubernetes sets JOB_COMPLETION_INDEX in every pod of an Indexed Job); "
        "worker 0 is the chief.",
        env="JOB_COMPLETION_INDEX",
    )
    steps_per_call: int = _opt(
        0,
        "Optimizer steps per compiled call (like Keras' steps_per_execution): fewer Python "
        "round trips, which matters on GPUs. Checkpoints and SIGTERM act between calls. "
        "0: chosen for the device (20 on CPU, 100 on GPU).",
    )
    mixed_precision: str = _opt(
        "auto",
        "Keras dtype policy for compute: auto picks mixed_bfloat16 on GPUs and float32 "
        "(off) on CPUs; the output layer and the export stay float32.",
        choices=("auto", "off", "mixed_bfloat16", "mixed_float16"),
    )
    jit_compile: str = _opt(
        "auto",
        "XLA-compile the training step: auto turns it on for GPUs, off for CPUs (measured "
        "several times slower there).",
        choices=("auto", "on", "off"),
    )
    early_evals: int = _opt(
        2,
        "Evaluate on the test split this many times per epoch during the first "
        "--early-eval-epochs epochs (evenly spaced, the epoch's end included), to see early "
        "how good the model is; later epochs evaluate at their end only. Every evaluation "
        "goes to the log, TensorBoard and training_summary.json. --first-epoch-evals "
        "(TRAINER_FIRST_EPOCH_EVALS) sets it too.",
        formerly="first_epoch_evals",
    )
    early_eval_epochs: int = _opt(
        1, "How many epochs, from the first, evaluate --early-evals times (0: none)."
    )
    # 1.25: where the weight average first held 99.0 % on every seed tried (1, 2, 3, 42:
    # 99.01-99.07 %; 98.90-99.17 % after 1 epoch and 1.125); docs/benchmarks.md.
    eval_at: str = _opt(
        "1.25",
        "Also evaluate on the test split at these points, in epochs from the start of the "
        "run, comma-separated (e.g. 1.25,1.5; fractions fall between steps); they go where "
        "--early-evals' do. Empty or 'none': no extra points.",
    )
    require_gpu: bool = _opt(
        False,
        f"Stop at once (exit {ExitCode.USER_ERROR:d}) when TensorFlow sees no GPU, instead of "
        "training on the CPU (make train GPUS=N turns it on). --strategy one_device/mirrored "
        "imply it, unless --cpu-devices splits the CPU for them.",
    )
    cpu_devices: int = _opt(
        1,
        "Split the CPU into N logical devices, so that --strategy mirrored runs "
        "N replicas without GPUs (for testing multi-replica code).",
    )
    max_regression: float = _opt(
        0.2,
        f"Quality gate: hold the new model back (not published, exit {ExitCode.HELD_BACK:d}) "
        "when its test accuracy is more than this many percentage points below the newest "
        "version's.",
    )
    min_accuracy: float = _opt(
        90.0,
        "Quality gate: hold the new model back when its test accuracy (in percent) is below "
        "this; the first version too, which has nothing to compare with. The default is far "
        "above chance (10) and below any run that learned (about 98 after one epoch); lower "
        "it for a run meant to score less (0: no minimum).",
    )
    force_publish: bool = _opt(
        False,
        "Publish the new version even when the quality gate would hold it back.",
    )
    histogram_every: int = _opt(
        1,
        "Write weight and gradient histograms to TensorBoard every N epochs (0: never), "
        "as the Keras TensorBoard callback's histogram_freq does.",
    )
    profile_steps: str = _opt(
        "",
        "Profile optimizer steps START,STOP (e.g. 20,40) with the TensorFlow profiler; "
        "the trace opens in TensorBoard's Profile tab. Empty: no profiling.",
    )
    heartbeat_seconds: float = _opt(
        30.0,
        "When output is not a terminal (container logs, CI), log a progress line every "
        "N seconds during an epoch; on a terminal a live progress bar shows instead.",
    )

    @property
    def log_dir(self) -> Path:
        return Path(self.job_dir) / LOGS_DIR

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.job_dir) / CHECKPOINTS_DIR

    @property
    def profile_range(self) -> tuple[int, int] | None:
        """--profile-steps as (start, stop), or None; validate() has checked the form."""
        if not self.profile_steps.strip():
            return None
        start, stop = (int(x) for x in self.profile_steps.split(","))
        return start, stop

    @property
    def eval_points(self) -> tuple[float, ...]:
        """--eval-at as epochs, in order; validate() has checked the form."""
        text = self.eval_at.strip()
        if text.lower() in ("", "none"):
            return ()
        return tuple(sorted(float(x) for x in text.split(",")))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def env_name(f: dataclasses.Field) -> str:
    return f.metadata.get("env") or "TRAINER_" + f.name.upper()


def flag_name(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _field_type(f: dataclasses.Field) -> type:
    t = str(f.type).removesuffix(" | None")  # optional: None means unset
    return {"int": int, "float": float, "bool": bool}.get(t, str)


def add_arguments(parser: argparse.ArgumentParser, cls: type = TrainConfig) -> None:
    """One flag per config field; defaults stay None so env vars can fill the gaps."""
    for f in dataclasses.fields(cls):
        typ = _field_type(f)
        default = f.default
        if typ is bool:
            shown = "on" if default else "off"
        else:
            shown = "none" if default is None else default
        help_text = f"{f.metadata['help']} [default: {shown}; env: {env_name(f)}]"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if typ is bool:
            parser.add_argument(
                flag_name(f),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
            continue
        parser.add_argument(
            flag_name(f),
            dest=f.name,
            type=typ,
            default=None,
            choices=f.metadata.get("choices"),
            metavar="{" + ",".join(f.metadata["choices"]) + "}"
            if f.metadata.get("choices")
            else f.name.upper(),
            help=help_text,
        )
        if f.metadata.get("formerly"):  # the setting's earlier name still works (unlisted)
            parser.add_argument(
                "--" + f.metadata["formerly"].replace("_", "-"),
                dest=f.name,
                type=typ,
                default=None,
                help=argparse.SUPPRESS,
            )


def add_field_argument(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    """A TrainConfig option reused by another command (`data import`, `evaluate`): the
    same flag, environment variable and default, so the commands cannot disagree."""
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    shown = "none" if f.default is None else f.default
    parser.add_argument(
        flag_name(f),
        dest=name,
        default=os.environ.get(env_name(f)) or f.default,  # empty = unset, as for train
        help=f"{help} [default: {shown}; env: {env_name(f)}]",
    )


def from_sources(
    args: argparse.Namespace, env: Mapping[str, str] | None = None, cls: type = TrainConfig
) -> Any:
    """Build the config: flag if given, else env var, else default. Raises UserError."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        flag_value = getattr(args, f.name, None)
        if flag_value is not None:
            values[f.name] = flag_value
            continue
        name = env_name(f)
        raw = env.get(name)
        if not raw and f.metadata.get("formerly"):  # the setting's earlier name
            name = "TRAINER_" + f.metadata["formerly"].upper()
            raw = env.get(name)
        if raw is None or raw == "":
            continue
        typ = _field_type(f)
        try:
            values[f.name] = _parse_bool(raw) if typ is bool else typ(raw)
        except ValueError:
            raise UserError(
                f"{name}={raw!r} is not a valid {typ.__name__}; "
                f"set it to a {typ.__name__} or unset it (default: {f.default})."
            ) from None
        choices = f.metadata.get("choices")
        if choices and values[f.name] not in choices:
            raise UserError(
                f"{name}={raw!r} is not a known {f.name}; choose one of: " + ", ".join(choices)
            )
    return cls(**values)


_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_writable_dir(path: str, what: str) -> None:
    """Fail now, before any work, if `path` cannot become a writable directory.

    Creates nothing: walks up to the nearest existing ancestor and checks that one.
    """
    p = Path(path).expanduser().absolute()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(
            f"{what} {path!r} cannot be created: {str(probe)!r} is a file, not a directory; "
            f"choose another {what}."
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(
            f"{what} {path!r} is not writable ({str(probe)!r} denies write access); "
            f"choose another {what} or fix its permissions."
        )


# The most each count and duration may be: far above any real use, low enough that a typo
# (an extra zero, 1e9) fails here instead of as a billion-item list or an overflow later.
MAXIMUM: dict[str, int] = {
    "epochs": 10_000,
    "batch_size": 65_536,
    "seed": 2**31 - 1,  # numpy's and TensorFlow's seeds are 32-bit
    "checkpoint_every": 10**9,  # "never by steps", in practice
    "checkpoint_seconds": 7 * 86_400,
    "peer_timeout_seconds": 7 * 86_400,
    "workers": 10_000,
    "worker_index": 10_000,
    "steps_per_call": 10_000,
    "early_evals": 1_000,
    "early_eval_epochs": 10_000,
    "clean_epochs": 10_000,
    "cpu_devices": 256,
    "histogram_every": 10_000,
    "heartbeat_seconds": 86_400,
}


def _check_numbers(cfg: TrainConfig) -> None:
    """Every float flag is a finite number and every count below its MAXIMUM."""
    for f in dataclasses.fields(cfg):
        value, typ = getattr(cfg, f.name), _field_type(f)
        if typ is float and not math.isfinite(value):
            raise UserError(f"{flag_name(f)} must be a finite number, got {value}.")
        most = MAXIMUM.get(f.name)
        if most is not None and value is not None and value > most:
            raise UserError(f"{flag_name(f)} must be at most {most:,}, got {value:,}.")


def validate(cfg: TrainConfig) -> None:
    """Reject bad values with one clear line. Touches nothing on disk."""
    _check_numbers(cfg)
    if cfg.seed < 0:
        raise UserError(f"--seed must be 0 or more, got {cfg.seed}.")
    positive = {
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "checkpoint_every": cfg.checkpoint_every,
        "cpu_devices": cfg.cpu_devices,
        "early_evals": cfg.early_evals,
    }
    for name, value in positive.items():
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value}.")
    if not cfg.checkpoint_seconds >= 0:
        raise UserError(
            f"--checkpoint-seconds must be 0 (off) or more, got {cfg.checkpoint_seconds}."
        )
    if not cfg.peer_timeout_seconds > 0:
        raise UserError(f"--peer-timeout-seconds must be above 0, got {cfg.peer_timeout_seconds}.")
    if cfg.steps_per_call < 0:
        raise UserError(
            f"--steps-per-call must be 0 (auto) or a positive integer, got {cfg.steps_per_call}."
        )
    if not 0 <= cfg.warmup_epochs < cfg.epochs:
        raise UserError(
            f"--warmup-epochs must be at least 0 and below --epochs ({cfg.epochs}), "
            f"got {cfg.warmup_epochs}."
        )
    if not 0 <= cfg.weight_decay < 1:
        raise UserError(f"--weight-decay must be in [0, 1) (0: off), got {cfg.weight_decay}.")
    if not 0 <= cfg.label_smoothing < 1:
        raise UserError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}.")
    if not 0 <= cfg.ema < 1:
        raise UserError(f"--ema must be in [0, 1) (0: off), got {cfg.ema}.")
    if not 0 <= cfg.max_regression <= 100:
        raise UserError(
            f"--max-regression must be 0-100 percentage points, got {cfg.max_regression}."
        )
    if not 0 <= cfg.min_accuracy <= 100:
        raise UserError(
            f"--min-accuracy must be a percentage 0-100 (0: off), got {cfg.min_accuracy}."
        )
    if cfg.clean_epochs < 0:
        raise UserError(
            f"--clean-epochs must be 0 (distort to the end) or a positive integer, got "
            f"{cfg.clean_epochs}."
        )
    if cfg.early_eval_epochs < 0:
        raise UserError(
            f"--early-eval-epochs must be 0 (none) or a positive integer, got "
            f"{cfg.early_eval_epochs}."
        )
    try:
        points = cfg.eval_points
    except ValueError:
        points = (math.nan,)
    most = MAXIMUM["epochs"]  # beyond it a point's step overflows, and no run gets there
    if not all(0 < x <= most for x in points) or len(points) > 1_000:  # NaN fails too
        raise UserError(
            f"--eval-at {cfg.eval_at!r} is not a comma-separated list of at most 1,000 epochs "
            f"above 0 and up to {most:,} (e.g. 1.25,1.5); leave it empty (or 'none') for no "
            "extra evaluations."
        )
    if cfg.histogram_every < 0:
        raise UserError(
            f"--histogram-every must be 0 (never) or a positive integer, got {cfg.histogram_every}."
        )
    if not cfg.heartbeat_seconds > 0:
        raise UserError(f"--heartbeat-seconds must be above 0, got {cfg.heartbeat_seconds}.")
    if cfg.profile_steps.strip():
        parts = cfg.profile_steps.split(",")
        if (
            len(parts) != 2
            or not all(p.strip().isdigit() for p in parts)
            or not 0 < int(parts[0]) < int(parts[1])
        ):
            raise UserError(
                f"--profile-steps {cfg.profile_steps!r} is not START,STOP with 0 < START < STOP "
                "(e.g. 20,40); leave it empty for no profiling."
            )
    if not cfg.learning_rate > 0:
        raise UserError(f"--learning-rate must be a positive number, got {cfg.learning_rate}.")
    if cfg.strategy not in STRATEGIES:
        raise UserError(
            f"--strategy {cfg.strategy!r} is unknown; choose one of: {', '.join(STRATEGIES)}."
        )
    if not _MODEL_NAME.match(cfg.model_name) or cfg.model_name.isdigit():
        raise UserError(
            f"--model-name {cfg.model_name!r} is not a usable folder name; use letters, digits, "
            "'_', '-', '.', and not only digits (TF Serving reads numeric folders as versions)."
        )
    for what, path in (
        ("--data-dir", cfg.data_dir),
        ("--job-dir", cfg.job_dir),
        ("--export-dir", cfg.export_dir),
    ):
        check_writable_dir(path, what)
    if cfg.idx_dir is not None and not Path(cfg.idx_dir).is_dir():
        raise UserError(
            f"--idx-dir {cfg.idx_dir!r} is not a directory; point it (or MNIST_IDX_DIR) at the "
            "folder holding the four MNIST idx .gz files."
        )
