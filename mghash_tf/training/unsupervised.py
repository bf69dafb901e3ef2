"""Label-free stage 1 on the cached trunk (``TrainConfig.labels="none"``).

The frozen trunk runs once over the training images, cached as ``unsupervised_views`` views:
themselves, mirrored, then seeded random augmentations (resized crop, mirror, colour jitter,
grey: :func:`mghash_tf.training.cached.augment_view`); that pass also gives the frozen backbone's
global-average features. Each step takes two different views of every item of a batch, each with
its own random feature dropout (a cheap feature-level augmentation on top of the cached ones),
and fits the head (and with ``last_stage`` the backbone's last stage) to
:class:`~mghash_tf.model.unsupervised_loss.UnsupervisedHashingLoss`: NT-Xent between the two
views' codes, plus code inner products following the cosines of the frozen features, centred
on the training mean.

No label is read. Without labels there is no validation mAP to select a checkpoint by, so the
last epoch is the model; log.csv has the loss per epoch.
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np

from mghash_tf.core.layout import STAGES, get_layout
from mghash_tf.model import BACKBONE_LAYER, get_layout_of
from mghash_tf.model.unsupervised_loss import UnsupervisedHashingLoss
from mghash_tf.training.cached import (CachedBatches, extract, predict_cached, split_model, unfreeze_tail,
                                       view_names)
from mghash_tf.training.checkpoints import LOG
from mghash_tf.training.config import STAGE1_CACHE
from mghash_tf.training.optimizers import make_optimizer
from mghash_tf.training.stages import StageOutcome

logger = logging.getLogger(__name__)


class PairBatches(CachedBatches):
    """Shuffled batches ``(view-1 arrays + view-2 arrays, targets)`` of cached arrays
    ``(V, N, ...)``: per item, two different cached versions drawn at random (the same one twice
    when V = 1), each times its own inverted-dropout mask."""

    label_dtype = "float32"

    def __init__(self, cached, targets, *, batch_size: int, dropout: float = 0.0, seed: int = 0, **kwargs):
        super().__init__(cached, targets, batch_size=batch_size, seed=seed, **kwargs)
        self.dropout = float(dropout)

    def _view(self, view, idx):
        out = []
        for a in self.cached:
            x = a[view, idx].astype("float32")
            if self.dropout:
                x *= (self.rng.random(x.shape, dtype="float32") >= self.dropout) / (1.0 - self.dropout)
            out.append(x)
        return out

    def __getitem__(self, i):
        idx = np.sort(self.order[i * self.batch_size:(i + 1) * self.batch_size])
        first = self.view[idx]
        second = (first + self.rng.integers(1, max(self.num_views, 2), len(idx))) % self.num_views
        return tuple(self._view(first, idx) + self._view(second, idx)), self.labels[idx]


def pair_model(head: keras.Model) -> keras.Model:
    """Two views' cached arrays -> (B, 2K): the head's codes of view 1, then view 2 (shared weights)."""
    views = [[keras.Input(t.shape[1:], name=f"view{v}_{i}") for i, t in enumerate(head.inputs)] for v in (1, 2)]
    codes = [head(list(inputs)) for inputs in views]
    return keras.Model(views[0] + views[1], keras.layers.Concatenate(axis=-1)(codes), name="pair")


def affinity_targets(gap: np.ndarray) -> np.ndarray:
    """Frozen global-average features (N, C) centred on their mean, float32 (the loss makes rows unit)."""
    gap = np.asarray(gap, dtype="float32")
    return gap - gap.mean(axis=0, keepdims=True)


def centre_hash_projections(model: keras.Model, split, cached, *, sample: int = 2048, seed: int = 0) -> None:
    """Data-dependent start for label-free training: rescale each hash projection so that its
    pre-activations over a sample of the training items have mean 0 and standard deviation 1 per bit.

    Pretrained pooled features are non-negative with a large shared mean, so a freshly
    initialised projection maps every image to nearly the same saturated tanh code (measured: 98 %
    of |h| > 0.99, mean cosine between different images' codes 0.91); tanh's gradient is then ~0
    and no label-free loss can move the codes apart. With labels the class loss pulls them apart
    anyway; without, this start is what lets training begin."""
    rng = np.random.default_rng(seed)
    n = cached[0].shape[1]
    idx = np.sort(rng.choice(n, min(sample, n), replace=False))
    feats = predict_cached(split.features, [a[:, idx] for a in cached])
    widths = [int(t.shape[-1]) for t in model.get_layer(BACKBONE_LAYER).outputs]
    bounds = np.cumsum([0] + widths)
    hash_head = model.get_layer("hash_head")
    for seg, dense in zip(get_layout(hash_head.layout).segments, hash_head.projections):
        x = np.concatenate([feats[:, bounds[STAGES.index(st)]:bounds[STAGES.index(st) + 1]] for st in seg.stages],
                           axis=1)
        kernel, _ = [np.asarray(w, dtype="float64") for w in dense.get_weights()]
        pre = x @ kernel
        kernel = kernel / np.maximum(pre.std(axis=0), 1e-6)
        dense.set_weights([kernel.astype("float32"), (-(x.mean(axis=0) @ kernel)).astype("float32")])


def unsupervised_loss(head: keras.Model, config) -> UnsupervisedHashingLoss:
    return UnsupervisedHashingLoss(get_layout_of(head).to_dict(), loss=config.unsupervised_loss,
                                   temperature=config.contrastive_temperature,
                                   affinity_weight=config.affinity_weight,
                                   quantization_weight=config.quantization_weight,
                                   balance_weight=config.balance_weight)


def train_unsupervised_head(split, cached, targets, config, *, callbacks=(), verbose="auto") -> dict:
    """Fit ``split.head`` (so the full model) without labels for ``config.frozen_epochs``."""
    unfreeze_tail(split)
    pair = pair_model(split.head)
    batches = PairBatches(cached, targets, batch_size=config.batch_size, dropout=config.feature_dropout,
                          seed=config.seed)
    if len(batches) < 1:
        raise ValueError(f"label-free training needs at least `batch_size` training images. "
                         f"Received: {batches.n} images, batch_size={config.batch_size}")
    pair.compile(optimizer=make_optimizer(config, learning_rate=config.learning_rate,
                                          steps=len(batches) * config.frozen_epochs),
                 loss=unsupervised_loss(split.head, config))
    start = time.perf_counter()
    history = pair.fit(batches, epochs=config.frozen_epochs, callbacks=list(callbacks), verbose=verbose)
    seconds = time.perf_counter() - start
    return {"history": history.history, "seconds": seconds,
            "items_per_second": len(batches) * config.batch_size * config.frozen_epochs / seconds}


def run_unsupervised(model: keras.Model, stage, ctx) -> StageOutcome:
    """Stage 1 without labels, behind the stage interface of :mod:`mghash_tf.training.stages`."""
    config = ctx.config
    split = split_model(model, train_stages=STAGE1_CACHE.index(config.stage1_cache) - 1)
    views = view_names(config.unsupervised_views if config.augment else 1)
    cached, gap = extract(split.trunk, ctx.splits.train.x, views=views)
    targets = affinity_targets(gap[0])
    del gap
    centre_hash_projections(model, split, cached, seed=config.seed)
    result = train_unsupervised_head(split, cached, targets, config, verbose=ctx.verbose,
                                     callbacks=[keras.callbacks.CSVLogger(str(ctx.out / LOG), append=True)])
    logger.info("label-free stage 1: %d epochs in %.0f s (%.0f items/s)", config.frozen_epochs, result["seconds"],
                result["items_per_second"])
    return StageOutcome(result["history"], [result["items_per_second"]])
