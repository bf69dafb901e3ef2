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

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import keras
import numpy as np

from mghash_tf import data as data_lib
from mghash_tf.data.sources import UNLABELLED_RULE
from mghash_tf.training.config import TrainConfig
from mghash_tf.evaluation.retrieval import evaluate_codes
from mghash_tf.model import build_model, get_layout_of
from mghash_tf.model import encode as encode_images
from mghash_tf.model.saving import save_model_atomic
from mghash_tf.model.fast_cnn import init_whitening
from mghash_tf.training import checkpoints, multi_worker, precision
from mghash_tf.training.cached import run_cached
from mghash_tf.training.stages import Stage, StageContext, run_full
from mghash_tf.training.unsupervised import run_unsupervised

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Splits:
    train: object
    val: object
    test: object | None
    has_coarse: bool
    labelled: bool = True


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    metrics: dict
    out_dir: Path


def load_splits(config: TrainConfig, image_set=None) -> Splits:
    """Train/validation/test ImageSets. Validation is the data's own validation split (2, e.g. a
    ``val/`` folder) when it has one, else carved from train with the config seed; a source
    without any split gets a seeded, stratified test split when ``config.test_fraction`` asks."""
    if image_set is None:
        spec = f"npz:{data_lib.demo_data_path()}" if config.data == "demo" else config.data
        image_set = data_lib.load_source(spec, image_size=config.input_size or config.image_size,
                                         download=config.download, labels=config.labels)
    if config.test_fraction is not None:
        image_set = data_lib.with_test_split(image_set, config.test_fraction, seed=config.seed)
    split = image_set.split if image_set.split is not None else np.zeros(len(image_set.y_fine), np.uint8)
    train_all = image_set.subset(np.flatnonzero(split == 0))
    test = image_set.subset(np.flatnonzero(split == 1)) if (split == 1).any() else None
    rng = np.random.default_rng(config.seed)
    if config.max_train and config.max_train < len(train_all.y_fine):
        train_all = train_all.subset(np.sort(rng.choice(len(train_all.y_fine), config.max_train, replace=False)))
    if (split == 2).any():
        return Splits(train_all, image_set.subset(np.flatnonzero(split == 2)), test, image_set.has_coarse,
                      image_set.labelled)
    train_idx, val_idx = data_lib.train_val_split(train_all, val_fraction=config.val_fraction, seed=config.seed)
    return Splits(train_all.subset(train_idx), train_all.subset(val_idx), test, image_set.has_coarse,
                  image_set.labelled)


def _strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        # Reads the cluster from the TF_CONFIG environment variable (see README).
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def runner_for(stage: Stage, config):
    """Stage 1: the label-free runner with ``config.labels="none"``, the cached-trunk runner with
    ``config.stage1_cache``; else the full model."""
    if stage.number == 1 and config.labels == "none":
        return run_unsupervised
    return run_cached if stage.number == 1 and config.stage1_cache != "none" else run_full


def without_labels(config: TrainConfig, splits: Splits) -> TrainConfig:
    """``config`` with ``labels="none"`` when ``labels="auto"`` met data without labels (the
    folder rule of :func:`mghash_tf.data.sources.read_folder`), with a warning; else ``config``."""
    if splits.labelled or config.labels == "none":
        return config
    try:
        config = config.replace(labels="none")
    except ValueError as e:
        raise ValueError(f"The data has no labels ({UNLABELLED_RULE}), so training runs "
                         f"without them (labels='none'), and: {e}") from e
    logger.warning("the data has no labels (%s): training without labels (labels='none', %s)",
                   UNLABELLED_RULE, config.unsupervised_loss)
    return config


def stages_of(config: TrainConfig) -> list:
    """Stage 1: heads with the backbone frozen; stage 2: end to end at the lower rate."""
    out = []
    if config.frozen_epochs:
        out.append(Stage(1, config.frozen_epochs, 0, config.learning_rate, train_backbone=False))
    if config.finetune_epochs:
        out.append(Stage(2, config.finetune_epochs, config.frozen_epochs, config.finetune_learning_rate,
                         train_backbone=True))
    return out


def train(config: TrainConfig, out_dir, *, image_set=None, verbose="auto") -> TrainResult:
    """Train per ``config`` into ``out_dir``; re-running on the same directory resumes.

    ``verbose``: Keras ``fit``'s 0, 1 (progress bar) or 2 (a line per epoch); "auto" is
    :func:`fit_verbosity`'s choice. Under ``strategy="multi_worker"`` every worker runs this
    with its own ``TF_CONFIG``; only the chief writes ``out_dir``
    (:mod:`mghash_tf.training.multi_worker`)."""
    strategy = _strategy(config.strategy)
    with multi_worker.output_dir(Path(out_dir), strategy) as out:
        result = _train(config, out, strategy, image_set=image_set, verbose=fit_verbosity(verbose))
    return TrainResult(result.model, result.metrics, Path(out_dir))


def fit_verbosity(verbose="auto"):
    """``verbose`` itself, or for "auto" 1 (a progress bar) on a terminal or in a notebook and
    2 (a line per epoch) elsewhere: Keras' bar redraws itself with escape codes, which in a
    pipe or a log file pile up into one line of hundreds of kilobytes."""
    if verbose != "auto":
        return verbose
    interactive = getattr(sys.stdout, "isatty", lambda: False)() or "ipykernel" in sys.modules
    return 1 if interactive else 2


def _train(config: TrainConfig, out: Path, strategy, *, image_set, verbose) -> TrainResult:
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    splits = load_splits(config, image_set)
    config = without_labels(config, splits)
    config.to_json(out / "config.json")
    logger.info("train %d, val %d, test %d", len(splits.train.y_fine), len(splits.val.y_fine),
                0 if splits.test is None else len(splits.test.y_fine))
    model = _build(config, strategy)
    # Data-set initialisation (fast_cnn's patch whitening); a resumed run restores it with the rest.
    init_whitening(model, splits.train.x, seed=config.seed)
    ctx = StageContext(config, splits, out, strategy, verbose)
    start = time.perf_counter()
    history, rates = {}, []
    for stage in stages_of(config):
        done = out / checkpoints.STAGE1_WEIGHTS
        if stage.number == 1 and done.exists():
            model.load_weights(str(done))
            logger.info("resume: stage 1 already complete")
            continue
        outcome = runner_for(stage, config)(model, stage, ctx)
        for key, values in outcome.history.items():
            history.setdefault(key, []).extend(values)
        rates += outcome.rates
        if stage.number == 1:
            model.save_weights(str(done))
    train_seconds = time.perf_counter() - start
    if (out / checkpoints.BEST_WEIGHTS).exists():
        model.load_weights(str(out / checkpoints.BEST_WEIGHTS))
    model = precision.float32_twin(model, lambda: build_model(**_model_args(config)))
    save_model_atomic(model, out / "model.keras")
    metrics = _final_metrics(model, splits, history, rates, train_seconds, tta=config.tta)
    metrics["labels"] = config.labels
    metrics["mixed_precision"] = precision.resolve(config.mixed_precision) or "float32"
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return TrainResult(model, metrics, out)


def _build(config: TrainConfig, strategy):
    """Layers take the dtype policy in force when they are built; the global policy is restored
    afterwards so a mixed-precision run does not leak into later models in the process."""
    with precision.policy(config.mixed_precision), strategy.scope():
        return build_model(**_model_args(config), weights=config.weights)


def _model_args(config: TrainConfig) -> dict:
    return {"backbone": config.backbone, "layout": config.layout, "image_size": config.image_size,
            "input_size": config.input_size}


def _final_metrics(model, splits: Splits, history, rates, seconds, *, tta: bool = False) -> dict:
    layout = get_layout_of(model)

    def encode(images):
        return encode_images(model, images, tta=tta)

    metrics = {
        "tta": tta,
        "train_seconds": round(seconds, 1),
        "train_images_per_second": round(float(np.median(rates)), 1) if rates else None,
        "history": {k: [float(v) for v in vals] for k, vals in history.items()},
    }
    if not splits.labelled:  # nothing to measure against
        return metrics
    db = encode(splits.train.x)
    metrics.update({
        "protocol_val": "query = validation split carved from train, database = train minus validation",
        "val": evaluate_codes(encode(splits.val.x), db, splits.val.labels, splits.train.labels,
                              layout, has_coarse=splits.has_coarse),
    })
    if splits.test is not None:
        metrics["protocol_test"] = "query = test split, database = train minus validation, mAP@all"
        metrics["test"] = evaluate_codes(encode(splits.test.x), db, splits.test.labels,
                                         splits.train.labels, layout, has_coarse=splits.has_coarse)
    return metrics
