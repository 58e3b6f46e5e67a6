"""Settings that depend on the device type, chosen once per run and logged with why.

| setting          | CPU            | GPU            | flag                 |
| ---------------- | -------------- | -------------- | -------------------- |
| mixed precision  | off (float32)  | mixed_bfloat16 | --mixed-precision    |
| XLA jit_compile  | off            | on             | --jit-compile        |
| steps per call   | 20             | 100            | --steps-per-call     |

On the 2-core development CPU, XLA made an epoch several times slower and bfloat16 has
no fast path, so CPUs stay float32 without XLA. On GPUs this model is so small that a
step costs less than the Python round trip around it: many steps per compiled call and
XLA's fused kernels are what keep the device busy, and bfloat16 (Ampere and later)
halves memory traffic with no loss scaling. The GPU column is the documented practice,
not yet measured here (README, "Performance").
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config import TrainConfig

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


def choose(cfg: TrainConfig, num_gpus: int) -> DeviceSettings:
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
