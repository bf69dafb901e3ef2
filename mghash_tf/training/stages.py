"""The stage interface: what one training stage is, and the two ways of running it.

A :class:`Stage` says which epochs run at which rate and whether the backbone trains. A stage
runs either on the full model (:func:`run_full`: ``tf.data`` images with augmentation) or on a
cached frozen trunk (:func:`mghash_tf.training.cached.run_cached`: stage 1 only, pretrained
backbones). Both take ``(model, stage, context)``, share the validation callback, the optimiser
factory and the checkpoint scheme, and return a :class:`StageOutcome`.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import keras
import numpy as np

from mghash_tf.data import make_dataset
from mghash_tf.data.pipeline import epoch_counter
from mghash_tf.model import get_layout_of, set_backbone_trainable
from mghash_tf.model.hashing_loss import HashingLoss
from mghash_tf.training import checkpoints, multi_worker
from mghash_tf.training.callbacks import (Lookahead, QuantizationRamp, RetrievalValidation, SetEpoch, Throughput,
                                         predict_images, validation_database)
from mghash_tf.training.optimizers import make_optimizer


@dataclasses.dataclass(frozen=True)
class Stage:
    number: int
    epochs: int
    initial_epoch: int
    learning_rate: float
    train_backbone: bool


@dataclasses.dataclass
class StageContext:
    """What every stage runner needs besides the model: ``splits`` is ``train.Splits``."""

    config: object
    splits: object
    out: Path
    strategy: object
    verbose: object = "auto"

    @property
    def pretrained(self) -> bool:
        return self.config.weights is not None

    @property
    def num_classes(self) -> dict:
        s = self.splits.train
        return {"fine": len(s.class_names_fine), "coarse": len(s.class_names_coarse)}

    def database_indices(self) -> np.ndarray:
        n = len(self.splits.train.y_fine)
        return validation_database(n, self.config.val_database_size, np.random.default_rng(self.config.seed))


@dataclasses.dataclass
class StageOutcome:
    history: dict
    rates: list


def hashing_loss(model, config, num_classes: dict) -> HashingLoss:
    return HashingLoss(get_layout_of(model).to_dict(), num_classes, loss=config.loss,
                       quantization_weight=config.quantization_weight,
                       balance_weight=config.balance_weight, seed=config.seed,
                       ortho_scale=config.ortho_scale, ortho_margin=config.ortho_margin,
                       label_smoothing=config.label_smoothing)


def quantization_ramp(loss: HashingLoss, config, steps_per_epoch: int, stage: Stage) -> list:
    """``[QuantizationRamp]`` when ``config.quantization_weight_final`` is set, else ``[]``."""
    if config.quantization_weight_final is None:
        return []
    return [QuantizationRamp(loss.quantization_weight_now, config.quantization_weight,
                             config.quantization_weight_final, steps_per_epoch, stage.epochs,
                             first_epoch=stage.initial_epoch)]


def stage_callbacks(ctx: StageContext, target, validation, *, restore_best=False) -> list:
    """The shared tail of every stage's callbacks: checkpoint on val_map_fine, log.csv."""
    return [validation, checkpoints.BestWeights(ctx.out, target, restore=restore_best),
            keras.callbacks.CSVLogger(str(ctx.out / checkpoints.LOG), append=True)]


def run_full(model, stage: Stage, ctx: StageContext) -> StageOutcome:
    """The stage on the full model, images through ``tf.data``; resumable mid-stage."""
    config, splits = ctx.config, ctx.splits
    epoch = epoch_counter(stage.initial_epoch)
    train_ds = make_dataset(splits.train.x, splits.train.labels, batch_size=config.batch_size,
                            shuffle=True, seed=config.seed, augment=config.augment,
                            augmentation=config.augmentation, drop_remainder=True, epoch=epoch)
    steps = max(len(splits.train.y_fine) // config.batch_size, 1)
    # A backbone trained from scratch has no statistics to protect: its BatchNorm trains too.
    set_backbone_trainable(model, trainable=stage.train_backbone or not ctx.pretrained,
                           train_batchnorm=not ctx.pretrained)
    with ctx.strategy.scope():
        optimizer = make_optimizer(config, learning_rate=stage.learning_rate, steps=steps * stage.epochs, model=model)
        loss = hashing_loss(model, config, ctx.num_classes)
        model.compile(optimizer=optimizer, loss=loss, jit_compile=config.jit_compile)
    if multi_worker.in_multi_worker_mode(ctx.strategy):
        multi_worker.prepare_fit(model, train_ds, ctx.strategy)
    database = splits.train.subset(ctx.database_indices())
    validation = RetrievalValidation(splits.val.x, splits.val.labels, database.x, database.labels,
                                     get_layout_of(model), has_coarse=splits.has_coarse,
                                     predict=functools.partial(predict_images, tta=config.tta),
                                     every=config.val_every, final_epoch=stage.initial_epoch + stage.epochs - 1)
    throughput = Throughput(steps * config.batch_size)
    # Throughput first, so its epoch end is taken before the validation pass runs; weight
    # averaging next, so validation and checkpoints see the averaged weights.
    averaging = [Lookahead(steps, stage.epochs, first_epoch=stage.initial_epoch)] \
        if config.weight_averaging == "lookahead" else []
    # Multi-worker: the workers' BatchNorm statistics are averaged before anything reads them.
    sync = [multi_worker.sync_callback(ctx.strategy)] if multi_worker.in_multi_worker_mode(ctx.strategy) else []
    callbacks = [SetEpoch(epoch), throughput, *quantization_ramp(loss, config, steps, stage), *averaging, *sync,
                 *stage_callbacks(ctx, model, validation),
                 keras.callbacks.BackupAndRestore(str(ctx.out / "backup" / f"stage{stage.number}"))]
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(ctx.out / "tensorboard")))
    history = model.fit(train_ds, epochs=stage.initial_epoch + stage.epochs, initial_epoch=stage.initial_epoch,
                        verbose=ctx.verbose, shuffle=False, callbacks=callbacks)
    return StageOutcome(history.history, throughput.rates)
