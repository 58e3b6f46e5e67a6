"""Pick the tf.distribute strategy from the hardware and TF_CONFIG, and the settings
that depend on the device type, and say why.

`decide` is pure (it reads no TF state), so the choice is testable without devices;
`build` turns a decision into a strategy object. `device_settings` (at the end) picks
precision, XLA and steps per call for the device.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from trainer.config import TrainConfig
from trainer.errors import PeerLost, RuntimeFailure, UserError

log = logging.getLogger(__name__)

_ADDRESS = re.compile(r"^[^\s:]+:\d{1,5}$")
DEFAULT_PEER_TIMEOUT = 300.0


@dataclass(frozen=True)
class Cluster:
    """What TF_CONFIG says about this process (Kubeflow's TFJob sets it per pod)."""

    num_workers: int  # chief + workers: everyone who computes gradients
    task_type: str
    task_index: int

    @property
    def is_chief(self) -> bool:
        # With no explicit chief, worker 0 is the chief by convention.
        return self.task_type == "chief" or (
            self.task_type == "worker" and self.task_index == 0 and not self._has_chief
        )

    _has_chief: bool = False


def parse_tf_config(raw: str | None) -> Cluster | None:
    """Validate TF_CONFIG; None when unset. Raises UserError naming what is wrong."""
    if raw is None or not raw.strip():
        return None
    fix = (
        'expected e.g. {"cluster": {"worker": ["host0:2222", "host1:2222"]}, '
        '"task": {"type": "worker", "index": 0}}'
    )
    try:
        cfg: Any = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"TF_CONFIG is not valid JSON ({e.msg} at char {e.pos}); {fix}.") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("cluster"), dict):
        raise UserError(f'TF_CONFIG has no "cluster" object; {fix}.')
    cluster = cfg["cluster"]
    if "ps" in cluster:
        raise UserError(
            'TF_CONFIG names parameter servers ("ps"); this trainer does synchronous '
            'all-reduce training: give it only "chief"/"worker" tasks.'
        )
    for role, addresses in cluster.items():
        if role not in ("chief", "worker", "evaluator"):
            raise UserError(
                f'TF_CONFIG cluster role {role!r} is unknown; use "chief" and "worker".'
            )
        if not isinstance(addresses, list) or not addresses:
            raise UserError(f'TF_CONFIG cluster.{role} must be a non-empty list of "host:port".')
        for address in addresses:
            if not _is_address(address):
                raise UserError(
                    f'TF_CONFIG cluster.{role} entry {address!r} is not "host:port" '
                    f"with a port 1-65535; {fix}."
                )
    if len(cluster.get("chief", [])) > 1:
        raise UserError("TF_CONFIG cluster.chief must hold exactly one address.")
    task = cfg.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise UserError(f'TF_CONFIG has no "task" with "type" and "index"; {fix}.')
    task_type, task_index = task["type"], task["index"]
    if task_type not in cluster or task_type == "evaluator":
        raise UserError(
            f"TF_CONFIG task type {task_type!r} is not a training role of its cluster "
            f"({', '.join(r for r in cluster if r != 'evaluator')})."
        )
    if not isinstance(task_index, int) or not 0 <= task_index < len(cluster[task_type]):
        raise UserError(
            f"TF_CONFIG task index {task_index!r} is out of range for the "
            f"{len(cluster[task_type])} {task_type} address(es)."
        )
    return Cluster(
        num_workers=len(cluster.get("chief", [])) + len(cluster.get("worker", [])),
        task_type=task_type,
        task_index=task_index,
        _has_chief="chief" in cluster,
    )


def _is_address(address: Any) -> bool:
    return (
        isinstance(address, str)
        and bool(_ADDRESS.match(address))
        and 0 < int(address.rsplit(":", 1)[1]) < 65536
    )


def indexed_job_tf_config(workers: int, worker_hosts: str, worker_index: int | None) -> str | None:
    """TF_CONFIG for one worker of a job without an operator: a Kubernetes Indexed Job
    (which sets JOB_COMPLETION_INDEX in each pod; with a headless Service and `subdomain`,
    pod <job>-<index> resolves as <job>-<index>.<service>) or `make train WORKERS=N`.
    None when none of the three is set. Raises UserError naming what is wrong."""
    given = {
        "JOB_COMPLETION_INDEX (--worker-index)": worker_index is not None,
        "TRAINER_WORKERS (--workers)": workers != 0,
        "TRAINER_WORKER_HOSTS (--worker-hosts)": bool(worker_hosts.strip()),
    }
    if not any(given.values()):
        return None
    example = "e.g. digit-serve-train-{index}.digit-serve-workers:2222"
    missing = [name for name, present in given.items() if not present]
    if missing:
        raise UserError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: without "
            "TF_CONFIG, a worker needs its index, the worker count and the workers' address "
            f"pattern together ({example}); set them all, or none for a single process."
        )
    if workers < 1:
        raise UserError(
            f"TRAINER_WORKERS (--workers) must be a worker count of 1 or more, got {workers}."
        )
    if not 0 <= worker_index < workers:
        raise UserError(
            f"JOB_COMPLETION_INDEX (--worker-index) {worker_index} is out of range for "
            f"TRAINER_WORKERS={workers} (0 to {workers - 1}); give the Indexed Job "
            "completions = parallelism = TRAINER_WORKERS."
        )
    try:
        addresses = [worker_hosts.strip().format(index=i) for i in range(workers)]
    except (KeyError, IndexError, ValueError):
        raise UserError(
            f"TRAINER_WORKER_HOSTS (--worker-hosts) {worker_hosts!r} may hold only the "
            f"placeholder {{index}}; {example}."
        ) from None
    if len(set(addresses)) < workers:
        raise UserError(
            f"TRAINER_WORKER_HOSTS (--worker-hosts) {worker_hosts!r} gives every worker the "
            f"same address: put {{index}} in it; {example}."
        )
    for i, address in enumerate(addresses):
        if not _is_address(address):
            raise UserError(
                f"TRAINER_WORKER_HOSTS (--worker-hosts) gives worker {i} the address "
                f'{address!r}, which is not "host:port" with a port 1-65535; {example}.'
            )
    log.info(
        "cluster from JOB_COMPLETION_INDEX, TRAINER_WORKERS and TRAINER_WORKER_HOSTS: "
        "worker %d of %d workers (%s)",
        worker_index,
        workers,
        ", ".join(addresses),
    )
    return json.dumps(
        {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": worker_index}}
    )


def cluster_tf_config(
    tf_config: str | None, workers: int, worker_hosts: str, worker_index: int | None
) -> str | None:
    """The TF_CONFIG this process runs under: the one given (Kubeflow's TFJob sets it per
    pod), else one built by indexed_job_tf_config, else None (a single process). The
    index alone does not count against TF_CONFIG: Kubernetes sets it in any Indexed Job."""
    if tf_config is not None and tf_config.strip():
        if workers != 0 or worker_hosts.strip():
            raise UserError(
                "TF_CONFIG and TRAINER_WORKERS/TRAINER_WORKER_HOSTS both describe the cluster; "
                "keep TF_CONFIG (a TFJob sets it) or the other two (an Indexed Job), not both."
            )
        return tf_config
    return indexed_job_tf_config(workers, worker_hosts, worker_index)


@dataclass(frozen=True)
class Decision:
    kind: str  # default | one_device | mirrored | multi_worker
    reason: str


def decide(requested: str, cluster: Cluster | None, num_gpus: int) -> Decision:
    """Map --strategy and the hardware to a strategy kind, with the reason for the log."""
    multi = cluster is not None and cluster.num_workers > 1
    if requested == "auto":
        if multi:
            return Decision("multi_worker", f"TF_CONFIG names {cluster.num_workers} workers")
        if num_gpus > 1:
            return Decision("mirrored", f"{num_gpus} GPUs on this machine")
        if num_gpus == 1:
            return Decision("one_device", "one GPU on this machine")
        return Decision("default", "no GPU found; training on the CPU")
    if requested == "multi_worker" and not multi:
        raise UserError(
            "--strategy multi_worker needs TF_CONFIG naming at least two workers "
            "(Kubeflow's TFJob sets it); unset --strategy to pick automatically."
        )
    if multi and requested != "multi_worker":
        raise UserError(
            f"TF_CONFIG names {cluster.num_workers} workers but --strategy is {requested}; "
            "use --strategy multi_worker (or auto), or unset TF_CONFIG."
        )
    return Decision(requested, "requested with --strategy")


def gpu_request(requested: str, cpu_devices: int, require_gpu: bool) -> str | None:
    """Why this job needs a GPU, or None: --require-gpu (make train GPUS=N sets it), or a
    one-device/mirrored strategy that is not the CPU test setup (--cpu-devices N)."""
    if require_gpu:
        return "--require-gpu (TRAINER_REQUIRE_GPU; make train GPUS=N sets it)"
    if requested in ("one_device", "mirrored") and cpu_devices == 1:
        return f"--strategy {requested}"
    return None


def check_gpus(reason: str | None, gpus: list[str]) -> None:
    """Fail fast, in one line, when a GPU was asked for and TensorFlow sees none, instead
    of training on the CPU while holding (and paying for) a GPU."""
    if reason is None or gpus:
        return
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    built_for = (
        f"this TensorFlow {tf.__version__} is built for CUDA {build.get('cuda_version')} "
        f"and cuDNN {build.get('cudnn_version')}"
        if build.get("is_cuda_build")
        else f"this TensorFlow {tf.__version__} is built without CUDA (pip install "
        "'tensorflow[and-cuda]', or the -gpu image)"
    )
    seen = ", ".join(d.name for d in tf.config.list_physical_devices()) or "nothing"
    raise UserError(
        f"a GPU was asked for ({reason}) but TensorFlow sees none (it sees: {seen}); "
        f"{built_for}: check `nvidia-smi` and that its driver supports that CUDA version, "
        "or train on the CPU (GPUS=0, --strategy default)."
    )


def choose(
    requested: str,
    cluster: Cluster | None,
    cpu_devices: int = 1,
    require_gpu: bool = False,
    peer_timeout: float = DEFAULT_PEER_TIMEOUT,
) -> Any:
    """Decide from --strategy, TF_CONFIG's cluster and the GPUs present, build the
    strategy, and log which one and why. Stops when a GPU was asked for but none is seen."""
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    check_gpus(gpu_request(requested, cpu_devices, require_gpu), gpus)
    decision = decide(requested, cluster, len(gpus))
    strategy = build(decision, cpu_devices, peer_timeout)
    log.info("strategy: %s (%s)", type(strategy).__name__, decision.reason)
    return strategy


def check_global_batch(replicas: int, batch_size: int) -> None:
    """Every replica must get the same share of each global batch; log the split."""
    if batch_size % replicas:
        raise UserError(
            f"--batch-size {batch_size} does not split evenly over {replicas} replicas; "
            f"use a multiple of {replicas}."
        )
    log.info(
        "replicas: %d, global batch %d (%d per replica)",
        replicas,
        batch_size,
        batch_size // replicas,
    )


def build(
    decision: Decision, cpu_devices: int = 1, peer_timeout: float = DEFAULT_PEER_TIMEOUT
) -> Any:
    """Create the strategy. Must run before TensorFlow touches any device."""
    import tensorflow as tf

    if cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices
        )
    if decision.kind == "multi_worker":
        # Before anything lists logical devices: that starts the eager context, and
        # collective ops must be configured before it starts.
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        _bound_peer_waits(resolver.cluster_spec(), peer_timeout)
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if decision.kind == "mirrored":
        # Without GPUs, mirror over the logical CPUs (what --cpu-devices makes).
        devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if decision.kind == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")
    return tf.distribute.get_strategy()  # the default strategy: no distribution


def _bound_peer_waits(cluster_spec: Any, seconds: float) -> None:
    """Bound how long a worker waits for its peers: to join at start-up, and, during
    training, for a heartbeat of a peer that died (without a save: SIGKILL, a lost node).

    MultiWorkerMirroredStrategy configures TensorFlow's coordination service itself,
    with its defaults (an hour to register), unless one is configured already
    (tensorflow/python/distribute/collective_all_reduce_strategy.py,
    `if context.context().coordination_service is None`): so configure the same service
    first, with the same leader and jobs, and our timeouts. There is no public API for
    it; `context.configure_coordination_service` is what the strategy itself calls.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    jobs = [
        coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster_spec.num_tasks(job))
        for job in ("chief", "worker")
        if job in cluster_spec.jobs
    ]
    millis = max(int(seconds * 1000), 1)
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(cluster_spec),
        coordinated_jobs=jobs,
        cluster_register_timeout_in_ms=millis,
        heartbeat_timeout_in_ms=millis,
    )
    # Registration through a barrier is what makes the register timeout hold for the
    # leader too: without it, worker 0 alone waited past 40 s with a 5 s timeout (seen
    # with TF 2.21); with it, it fails after 5 s with DeadlineExceededError. Not an
    # argument of configure_coordination_service: set on the config it keeps.
    context.context().coordination_service.cluster_register_with_barrier = True


# What TensorFlow says when a peer is gone, as seen with TF 2.21 (tests/test_strategy.py):
# a SIGKILLed worker stops sending heartbeats, and the coordination service aborts the
# others' collectives with UnavailableError "Collective ops is aborted by: ... The
# following tasks are unhealthy (stopped sending heartbeats): /job:worker/replica:0/
# task:1"; a peer that never joins fails registration with DeadlineExceededError
# ("... register ..."). An XLA, cuDNN or out-of-memory failure names no other task.
_PEER_SIGNS = re.compile(
    r"heartbeat|Collective ops is aborted|coordination service|register|barrier", re.I
)
_PEER_ERRORS = ("UnavailableError", "DeadlineExceededError", "AbortedError", "CancelledError")


@contextmanager
def runtime_errors(cluster: Cluster | None, seconds: float) -> Iterator[None]:
    """Turn TensorFlow's run-time errors into one line: PeerLost (exit 138, retried)
    when a peer of a multi-worker job did not answer (never joined, or stopped sending
    heartbeats), RuntimeFailure (exit 1) for anything else TensorFlow raises (an XLA or
    cuDNN failure, out of memory), which a retry would only repeat."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.OpError as e:
        if is_peer_loss(cluster, e):
            raise PeerLost(_peer_lost_message(cluster, seconds, e)) from None
        raise RuntimeFailure(
            f"TensorFlow failed: {type(e).__name__}: {_cause(e)}; this is not a lost peer, "
            "so rerunning the same command fails the same way"
        ) from None


def is_peer_loss(cluster: Cluster | None, e: Exception) -> bool:
    """Whether `e` says that a peer of this multi-worker job is gone: an error of the
    kinds a lost peer raises that names another task or the coordination service."""
    if cluster is None or cluster.num_workers < 2 or type(e).__name__ not in _PEER_ERRORS:
        return False
    return bool(_other_tasks(cluster, str(e)) or _PEER_SIGNS.search(str(e)))


def _other_tasks(cluster: Cluster, text: str) -> list[str]:
    """The tasks besides this one that `text` names (as /job:worker/replica:0/task:1)."""
    me = f"{cluster.task_type}:{cluster.task_index}"
    named = dict.fromkeys(
        f"{job}:{task}" for job, task in re.findall(r"/job:(\w+)(?:/replica:\d+)?/task:(\d+)", text)
    )
    return [p for p in named if p != me]


def _cause(e: Exception) -> str:
    """The line of a TensorFlow error that says what went wrong: not "Graph execution
    error:", not the Python stack of the op, not the node decorations; at most 200
    characters."""
    for line in str(e).splitlines():
        line = re.sub(r"\[\[\{\{[^}]*\}\}\]\]|\[Op:\w+\]", "", line).strip()
        skip = ("Graph execution error", "Detected at node", "File ", "The error could be")
        if line and not line.startswith(skip) and not line.endswith("(most recent call last):"):
            return line if len(line) <= 200 else line[:197] + "..."
    return type(e).__name__


def _peer_lost_message(cluster: Cluster, seconds: float, e: Exception) -> str:
    me = f"{cluster.task_type}:{cluster.task_index}"
    text = str(e)
    # TensorFlow names the tasks involved as /job:worker/replica:0/task:1 (or without
    # the replica); the first named besides this one is the peer that went quiet.
    who = ", ".join(_other_tasks(cluster, text)) or "a peer"
    if "register" in text.lower():
        return (
            f"worker {me} could not reach every worker of TF_CONFIG: {who} did not join within "
            f"--peer-timeout-seconds {seconds:g} ({type(e).__name__}); check that every worker "
            "is started and can reach the others' host:port, then rerun them."
        )
    return (
        f"worker {me} lost contact with {who}: no answer within --peer-timeout-seconds "
        f"{seconds:g} ({type(e).__name__}; it was killed, or its machine or network was lost); "
        "rerun every worker: they resume from the last checkpoint."
    )


# --- Settings that depend on the device type, chosen once per run and logged with why.
#
# | setting          | CPU            | GPU            | flag                 |
# | ---------------- | -------------- | -------------- | -------------------- |
# | mixed precision  | off (float32)  | mixed_bfloat16 | --mixed-precision    |
# | XLA jit_compile  | off            | on             | --jit-compile        |
# | steps per call   | 20             | 100            | --steps-per-call     |
#
# On the 2-core development CPU, XLA made an epoch several times slower and bfloat16 has
# no fast path, so CPUs stay float32 without XLA. On GPUs this model is so small that a
# step costs less than the Python round trip around it: many steps per compiled call and
# XLA's fused kernels are what keep the device busy, and bfloat16 (Ampere and later)
# halves memory traffic with no loss scaling. The GPU column is the documented practice,
# not yet measured here (README, "Performance").

STEPS_PER_CALL = {"cpu": 20, "gpu": 100}


@dataclass(frozen=True)
class DeviceSettings:
    device: str  # "cpu" or "gpu"
    dtype_policy: str | None  # a Keras mixed-precision policy, or None for float32
    jit_compile: bool
    steps_per_call: int

    def describe(self) -> str:
        return (
            f"{self.device}: compute {self.dtype_policy or 'float32'}, "
            f"XLA {'on' if self.jit_compile else 'off'}, {self.steps_per_call} steps per call"
        )


def device_settings(cfg: TrainConfig, num_gpus: int) -> DeviceSettings:
    """The table above, for this machine's GPU count, with the flags' overrides."""
    device = "gpu" if num_gpus else "cpu"
    if cfg.mixed_precision == "auto":
        policy = "mixed_bfloat16" if device == "gpu" else None
    else:
        policy = None if cfg.mixed_precision == "off" else cfg.mixed_precision
    jit = device == "gpu" if cfg.jit_compile == "auto" else cfg.jit_compile == "on"
    return DeviceSettings(
        device=device,
        dtype_policy=policy,
        jit_compile=jit,
        steps_per_call=cfg.steps_per_call or STEPS_PER_CALL[device],
    )
