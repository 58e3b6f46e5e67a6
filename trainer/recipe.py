"""The training recipe: the seed network, and how it is optimized.

Adam with decoupled weight decay (AdamW), a linear warmup to the peak learning rate and
a cosine decay to 0; label
smoothing on the training loss (trainer/loop.py); an exponential moving average of the
weights for evaluation and export (trainer/ema.py); random shifts of the training images
(trainer/data.py). README "Performance" lists what each of these bought.
"""

from __future__ import annotations

import keras

from trainer.config import TrainConfig
from trainer.devices import DeviceSettings
from trainer.ema import WeightAverage
from trainer.model import build_model


def build(
    cfg: TrainConfig, settings: DeviceSettings, steps_per_epoch: int
) -> tuple[keras.Model, keras.optimizers.Optimizer, WeightAverage | None]:
    """Model, optimizer (built: its slots exist before a restore) and weight average.
    Call under the strategy's scope, so that every variable is mirrored."""
    total_steps = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(seed=cfg.seed, dtype=settings.dtype_policy)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, total_steps - warmup, warmup_target=cfg.learning_rate, warmup_steps=warmup
    )
    if cfg.weight_decay:
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
    if settings.dtype_policy == "mixed_float16":  # float16 needs loss scaling; bfloat16 not
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    average = WeightAverage(model.trainable_variables, cfg.ema) if cfg.ema else None
    return model, optimizer, average
