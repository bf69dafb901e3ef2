"""The optimiser factory every training stage uses (full model or cached trunk)."""

from __future__ import annotations

import keras

# The cosine schedule ends at this fraction of the peak rate instead of zero.
COSINE_FLOOR = 0.05


def make_optimizer(config, *, learning_rate: float, steps: int) -> keras.optimizers.Optimizer:
    """AdamW at ``learning_rate`` with ``config.weight_decay``; ``config.schedule == "cosine"``
    decays it over ``steps`` optimiser steps. ``config`` is a ``TrainConfig``."""
    lr = learning_rate
    if config.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1),
                                                    alpha=COSINE_FLOOR)
    return keras.optimizers.AdamW(learning_rate=lr, weight_decay=config.weight_decay)
