"""Two-stage training: heads with the backbone frozen, then end to end at a lower rate.

Output directory::

    config.json        the TrainConfig
    model.keras        best weights by validation mAP (fine granularity)
    metrics.json       validation and test mAP per granularity, throughput, timings
    log.csv            one row per epoch (losses, val mAP)
    backup/            interrupted-run state (removed when a stage completes)
    stage1.weights.h5  written when stage 1 completes, so a resume skips it
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import keras
import numpy as np

from mghash_tf import data as data_lib
from mghash_tf.training.config import TrainConfig
from mghash_tf.model.hashing_loss import HashingLoss
from mghash_tf.model import build_model, set_backbone_trainable
from mghash_tf.evaluation.retrieval import RetrievalValidation, evaluate_codes

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Splits:
    train: object
    val: object
    test: object | None
    has_coarse: bool


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    metrics: dict
    out_dir: Path


def load_splits(config: TrainConfig, image_set=None) -> Splits:
    """Train/validation/test ImageSets; validation is carved from train with the config seed."""
    if image_set is None:
        spec = f"npz:{data_lib.demo_data_path()}" if config.data == "demo" else config.data
        image_set = data_lib.load_source(spec, image_size=config.input_size or config.image_size,
                                         download=config.download)
    split = image_set.split if image_set.split is not None else np.zeros(len(image_set.y_fine), np.uint8)
    train_all = image_set.subset(np.flatnonzero(split == 0))
    test = image_set.subset(np.flatnonzero(split == 1)) if (split == 1).any() else None
    rng = np.random.default_rng(config.seed)
    if config.max_train and config.max_train < len(train_all.y_fine):
        train_all = train_all.subset(np.sort(rng.choice(len(train_all.y_fine), config.max_train, replace=False)))
    train_idx, val_idx = data_lib.train_val_split(train_all, val_fraction=config.val_fraction, seed=config.seed)
    return Splits(train_all.subset(train_idx), train_all.subset(val_idx), test, image_set.has_coarse)


def _strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        # Reads the cluster from the TF_CONFIG environment variable (see README).
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _optimizer(lr: float, steps: int, config: TrainConfig):
    if config.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(steps, 1), alpha=0.05)
    return keras.optimizers.AdamW(learning_rate=lr, weight_decay=config.weight_decay)


class _Throughput(keras.callbacks.Callback):
    def __init__(self, images_per_epoch):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.rates = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.rates.append(self.images_per_epoch / (time.perf_counter() - self._start))


def _num_classes(splits: Splits) -> dict:
    s = splits.train
    return {"fine": len(s.class_names_fine), "coarse": len(s.class_names_coarse)}


def _compile(model, config, splits, lr, steps):
    loss = HashingLoss(
        model.get_layer("hash_head").layout, _num_classes(splits), loss=config.loss,
        quantization_weight=config.quantization_weight, balance_weight=config.balance_weight,
        seed=config.seed,
    )
    model.compile(optimizer=_optimizer(lr, steps, config), loss=loss, jit_compile=config.jit_compile)


def _callbacks(out: Path, stage: int, splits: Splits, model, config, throughput):
    rng = np.random.default_rng(config.seed)
    n_db = min(config.val_database_size, len(splits.train.y_fine))
    database = splits.train.subset(np.sort(rng.choice(len(splits.train.y_fine), n_db, replace=False)))
    from mghash_tf.model import get_layout_of

    # Throughput first, so its epoch end is taken before the validation pass runs.
    callbacks = [
        throughput,
        RetrievalValidation(splits.val, database, get_layout_of(model), has_coarse=splits.has_coarse),
        keras.callbacks.ModelCheckpoint(
            str(out / "best.weights.h5"), monitor="val_map_fine", mode="max",
            save_best_only=True, save_weights_only=True, initial_value_threshold=_best_logged(out),
        ),
        keras.callbacks.CSVLogger(str(out / "log.csv"), append=True),
        keras.callbacks.BackupAndRestore(str(out / "backup" / f"stage{stage}")),
    ]
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(out / "tensorboard")))
    return callbacks


def _best_logged(out: Path):
    """Best ``val_map_fine`` in log.csv, so a later stage or a resumed run only overwrites
    best.weights.h5 with a better model."""
    log = out / "log.csv"
    if not log.exists() or not (out / "best.weights.h5").exists():
        return None
    with open(log, newline="") as f:
        values = [float(r["val_map_fine"]) for r in csv.DictReader(f) if r.get("val_map_fine")]
    return max(values) if values else None


def _run_stage(model, strategy, stage, epochs, initial_epoch, lr, out, splits, config, verbose, pretrained):
    train_ds = data_lib.make_dataset(
        splits.train.x, splits.train.labels, batch_size=config.batch_size, shuffle=True,
        seed=config.seed, augment=config.augment, drop_remainder=True,
    )
    steps = max(len(splits.train.y_fine) // config.batch_size, 1)
    # A backbone trained from scratch has no statistics to protect: its BatchNorm trains too.
    set_backbone_trainable(model, trainable=(stage == 2 or not pretrained), train_batchnorm=not pretrained)
    with strategy.scope():
        _compile(model, config, splits, lr, steps * epochs)
    throughput = _Throughput(steps * config.batch_size)
    history = model.fit(
        train_ds, epochs=initial_epoch + epochs, initial_epoch=initial_epoch, verbose=verbose, shuffle=False,
        callbacks=_callbacks(out, stage, splits, model, config, throughput),
    )
    return history.history, throughput.rates


def train(config: TrainConfig, out_dir, *, image_set=None, verbose="auto") -> TrainResult:
    """Train per ``config`` into ``out_dir``; re-running on the same directory resumes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.to_json(out / "config.json")
    keras.utils.set_random_seed(config.seed)
    splits = load_splits(config, image_set)
    logger.info("train %d, val %d, test %d", len(splits.train.y_fine), len(splits.val.y_fine),
                0 if splits.test is None else len(splits.test.y_fine))
    pretrained = config.weights is not None
    strategy = _strategy(config.strategy)
    model = _build(config, strategy)
    start = time.perf_counter()
    history, rates = {}, []
    stage1_done = out / "stage1.weights.h5"
    if config.frozen_epochs:
        if stage1_done.exists():
            model.load_weights(str(stage1_done))
            logger.info("resume: stage 1 already complete")
        else:
            if config.stage1_cache != "none":
                from mghash_tf.training.cached import run_stage1

                h, r = run_stage1(model, splits, config, out, num_classes=_num_classes(splits), verbose=verbose)
            else:
                h, r = _run_stage(model, strategy, 1, config.frozen_epochs, 0, config.learning_rate, out, splits,
                                  config, verbose, pretrained)
            history.update(h)
            rates += r
            model.save_weights(str(stage1_done))
    if config.finetune_epochs:
        h, r = _run_stage(model, strategy, 2, config.finetune_epochs, config.frozen_epochs,
                          config.finetune_learning_rate, out, splits, config, verbose, pretrained)
        for key, values in h.items():
            history.setdefault(key, []).extend(values)
        rates += r
    train_seconds = time.perf_counter() - start
    if (out / "best.weights.h5").exists():
        model.load_weights(str(out / "best.weights.h5"))
    _atomic_save_model(model, out / "model.keras")
    metrics = _final_metrics(model, splits, history, rates, train_seconds)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return TrainResult(model, metrics, out)


def _build(config: TrainConfig, strategy):
    """Layers take the dtype policy in force when they are built; the global policy is restored
    afterwards so a mixed-precision run does not leak into later models in the process."""
    previous = keras.mixed_precision.global_policy()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():
            return build_model(backbone=config.backbone, layout=config.layout, image_size=config.image_size,
                               input_size=config.input_size, weights=config.weights)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _atomic_save_model(model, path: Path):
    tmp = path.with_name(path.stem + ".tmp.keras")
    model.save(str(tmp))
    os.replace(tmp, path)


def _final_metrics(model, splits: Splits, history, rates, seconds) -> dict:
    from mghash_tf.model import encode, get_layout_of

    layout = get_layout_of(model)
    db = encode(model, splits.train.x)
    metrics = {
        "protocol_val": "query = validation split carved from train, database = train minus validation",
        "val": evaluate_codes(encode(model, splits.val.x), db, splits.val.labels, splits.train.labels,
                              layout, has_coarse=splits.has_coarse),
        "train_seconds": round(seconds, 1),
        "train_images_per_second": round(float(np.median(rates)), 1) if rates else None,
        "history": {k: [float(v) for v in vals] for k, vals in history.items()},
    }
    if splits.test is not None:
        metrics["protocol_test"] = "query = test split, database = train minus validation, mAP@all"
        metrics["test"] = evaluate_codes(encode(model, splits.test.x), db, splits.test.labels,
                                         splits.train.labels, layout, has_coarse=splits.has_coarse)
    return metrics
