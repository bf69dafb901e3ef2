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


@keras.saving.register_keras_serializable(package="mghash_tf")
class ScaledSGD(keras.optimizers.SGD):
    """SGD whose learning rate is multiplied by ``scales[variable.path]`` for the variables
    named there (1 for the rest); decoupled weight decay keeps the unscaled rate.

    Plain and Nesterov momentum SGD are linear in ``rate * gradient``, so scaling the gradient
    of a variable is scaling its rate. airbench (Jordan 2024) trains the BatchNorm offsets of a
    network whose BatchNorm scales are fixed at a 64x higher rate than the scale-invariant
    convolution weights: an offset moves the GELU threshold in absolute units, while a
    convolution's effective step grows as its weights shrink.
    """

    def __init__(self, *args, scales=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.scales = {str(k): float(v) for k, v in (scales or {}).items()}
        bad = {k: v for k, v in self.scales.items() if not v > 0}
        if bad:
            raise ValueError(f"ScaledSGD `scales` must be > 0. Received: {bad}")

    def build(self, variables):
        super().build(variables)
        # update_step receives backend variables (no Keras path under TensorFlow): index by position.
        self._variable_scales = [self.scales.get(v.path, 1.0) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        scale = self._variable_scales[self._get_variable_index(variable)]
        if scale != 1.0:
            gradient = ops.multiply(gradient, ops.cast(scale, gradient.dtype))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "scales": dict(self.scales)}


def batchnorm_offsets(model) -> list:
    """The ``beta`` variables of every BatchNormalization layer in ``model`` (nested included)."""
    from mghash_tf.model.layers import walk

    return [layer.beta for layer in walk(model)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.center]


def make_optimizer(config, *, learning_rate: float, steps: int, model=None) -> keras.optimizers.Optimizer:
    """``config.optimizer`` (``adamw``, or ``sgd`` with ``config.momentum`` and
    ``config.nesterov``) with decoupled ``config.weight_decay`` and :func:`make_schedule`.
    ``config`` is a ``TrainConfig``. With ``config.bias_lr_scale != 1`` (SGD only), the
    BatchNorm offsets of ``model`` train at that multiple of the rate (:class:`ScaledSGD`)."""
    lr = make_schedule(config, learning_rate=learning_rate, steps=steps)
    if config.optimizer == "sgd":
        args = dict(learning_rate=lr, momentum=config.momentum, nesterov=config.nesterov,
                    weight_decay=config.weight_decay)
        if config.bias_lr_scale == 1.0 or model is None:
            return keras.optimizers.SGD(**args)
        return ScaledSGD(**args, scales={v.path: config.bias_lr_scale for v in batchnorm_offsets(model)})
    return keras.optimizers.AdamW(learning_rate=lr, weight_decay=config.weight_decay)
