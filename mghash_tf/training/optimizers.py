"""The optimiser factory every training stage uses (full model or cached trunk), and the
learning-rate schedules it offers."""

from __future__ import annotations

import keras
from keras import ops

# The cosine schedule ends at this fraction of the peak rate instead of zero.
COSINE_FLOOR = 0.05


@keras.saving.register_keras_serializable(package="mghash_tf")
class WarmupLinear(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over the first ``warmup`` fraction of ``total_steps``,
    then linear decay to 0 at ``total_steps`` (the triangle of the fast-CIFAR recipes).

    Example: ``peak=1, total_steps=100, warmup=0.2``: step 0 -> 0, step 10 -> 0.5,
    step 20 -> 1, step 60 -> 0.5, step 100 (and after) -> 0.
    """

    def __init__(self, peak, total_steps, warmup=0.23):
        if not peak > 0 or int(total_steps) < 1 or not 0 <= warmup < 1:
            raise ValueError("WarmupLinear needs peak > 0, total_steps >= 1 and 0 <= warmup < 1. "
                             f"Received: peak={peak}, total_steps={total_steps}, warmup={warmup}")
        self.peak, self.total_steps, self.warmup = float(peak), int(total_steps), float(warmup)

    def __call__(self, step):
        t = ops.cast(step, "float32") / float(self.total_steps)
        up = t / self.warmup if self.warmup > 0 else ops.ones_like(t)
        down = (1.0 - t) / (1.0 - self.warmup)
        return self.peak * ops.clip(ops.minimum(up, down), 0.0, 1.0)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup": self.warmup}


def make_schedule(config, *, learning_rate: float, steps: int):
    """``config.schedule`` over ``steps`` optimiser steps: ``cosine`` (to ``COSINE_FLOOR`` of the
    peak), ``warmup_linear`` (:class:`WarmupLinear` with ``config.warmup_fraction``) or
    ``constant``."""
    if config.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1),
                                                      alpha=COSINE_FLOOR)
    if config.schedule == "warmup_linear":
        return WarmupLinear(learning_rate, max(steps, 1), warmup=config.warmup_fraction)
    return learning_rate


def make_optimizer(config, *, learning_rate: float, steps: int) -> keras.optimizers.Optimizer:
    """``config.optimizer`` (``adamw``, or ``sgd`` with ``config.momentum`` and
    ``config.nesterov``) with decoupled ``config.weight_decay`` and :func:`make_schedule`.
    ``config`` is a ``TrainConfig``."""
    lr = make_schedule(config, learning_rate=learning_rate, steps=steps)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=config.momentum, nesterov=config.nesterov,
                                    weight_decay=config.weight_decay)
    return keras.optimizers.AdamW(learning_rate=lr, weight_decay=config.weight_decay)
