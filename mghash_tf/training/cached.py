"""Train on cached backbone features: the frozen layers run once, not once per epoch.

With a pretrained backbone on a CPU, nearly all of a stage-1 epoch is spent in frozen layers
whose outputs never change. This module runs them once (the *trunk*), keeps their outputs as
float16 arrays, and trains the rest (the *head*) on those arrays:

- ``train_stages=0``: the head is the attention pooling + hash head, on cached
  ``low``/``mid``/``high`` maps. Same gradients as stage 1 of :func:`mghash_tf.training.train.train`
  without augmentation.
- ``train_stages=1``: the cut moves to the ``mid`` tap, so the backbone layers between ``mid``
  and ``high`` (MobileNetV2: blocks 13-16 and ``Conv_1``) train too, with BatchNorm frozen.
  On a 2-core CPU this is partial fine-tuning for about the price of a linear probe.
- ``train_stages=2``: the cut moves to the ``low`` tap; everything after it trains (MobileNetV2:
  blocks 6-16), about twice the cost of ``train_stages=1``.

Augmentation survives as *views*: each training image is cached as itself and horizontally
flipped (and, for label-free training, as seeded random augmentations ``augment_1``, ...:
:func:`augment_view`), and every epoch draws one view per image.

The head is built from the full model's own layers (shared weights): once it is trained, the
full model is trained and saves, evaluates and exports as usual.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import keras
import numpy as np

from mghash_tf.core.layout import STAGES
from mghash_tf.model import BACKBONE_LAYER, get_layout_of
from mghash_tf.training.callbacks import RetrievalValidation
from mghash_tf.training.checkpoints import LOG, BestWeights
from mghash_tf.training.config import STAGE1_CACHE
from mghash_tf.training.optimizers import make_optimizer
from mghash_tf.training.stages import Stage, StageOutcome, hashing_loss, quantization_ramp

logger = logging.getLogger(__name__)
VIEWS = {"identity": lambda x: x, "hflip": lambda x: x[:, :, ::-1]}
AUGMENT_PREFIX = "augment_"
LUMA = np.array([0.299, 0.587, 0.114], "float32")  # ITU-R BT.601 luma weights


def view_names(count: int) -> tuple:
    """``count`` cached views: ``identity``, ``hflip``, then ``augment_1``, ``augment_2``, ..."""
    return tuple(list(VIEWS)[:count]) + tuple(f"{AUGMENT_PREFIX}{i}" for i in range(1, count - len(VIEWS) + 1))


def view_transform(name: str):
    """``(batch, start) -> images`` of a view name (``start``: the batch's first index in the
    whole set, which seeds the augmented views), or None for an unknown name."""
    if name in VIEWS:
        return lambda batch, start: VIEWS[name](batch)
    digits = name[len(AUGMENT_PREFIX):]
    if name.startswith(AUGMENT_PREFIX) and digits.isdigit() and int(digits) >= 1:
        return lambda batch, start: augment_view(batch, int(digits), start)
    return None


def augment_view(images, number: int, start: int = 0) -> np.ndarray:
    """Seeded random augmentation ``augment_<number>`` of a batch whose first image has index
    ``start`` in the whole set, float32 in the input's range. Per image (its own generator, keyed
    on ``number`` and its index, so the view does not depend on the batch size): a random resized
    crop (area 30-100 %, aspect 3:4-4:3, resized back bilinearly), a mirror with probability 1/2,
    brightness, contrast and saturation each scaled by a factor in [0.6, 1.4], and grey with
    probability 0.2 -- the SimCLR family of views that contrastive hashing (CIBHash) trains on,
    at the strength a 32-px image takes."""
    import tensorflow as tf

    images = np.asarray(images)
    x = images.astype("float32")
    n, h, w = x.shape[:3]
    if np.issubdtype(images.dtype, np.integer):
        top = float(np.iinfo(images.dtype).max)
    else:
        top = 1.0 if x.size == 0 or float(x.max()) <= 1.0 else 255.0
    boxes = np.empty((n, 4), "float32")
    params = np.empty((n, 5), "float32")
    for i in range(n):
        rng = np.random.default_rng((number, start + i))
        area, log_ratio = rng.uniform(0.3, 1.0), rng.uniform(np.log(3 / 4), np.log(4 / 3))
        bw = min(1.0, np.sqrt(area * np.exp(log_ratio)))
        bh = min(1.0, np.sqrt(area / np.exp(log_ratio)))
        y0, x0 = rng.uniform(0.0, 1.0 - bh), rng.uniform(0.0, 1.0 - bw)
        boxes[i] = (y0, x0, y0 + bh, x0 + bw)
        params[i] = (rng.random() < 0.5, *rng.uniform(0.6, 1.4, 3), rng.random() < 0.2)
    out = tf.image.crop_and_resize(x, boxes, np.arange(n, dtype="int32"), (h, w)).numpy()
    mirror, brightness, contrast, saturation, grey = (params[:, j] for j in range(5))
    out[mirror > 0] = out[mirror > 0, :, ::-1]
    if out.shape[-1] == 3:
        scale = lambda v: v[:, None, None, None]  # noqa: E731 (per image factor over h, w, c)
        out *= scale(brightness)
        mean = out.mean(axis=(1, 2, 3), keepdims=True)
        out = mean + (out - mean) * scale(contrast)
        luma = (out @ LUMA)[..., None]
        out = luma + (out - luma) * scale(np.where(grey > 0, 0.0, saturation))
    return np.clip(out, 0.0, top)


@dataclasses.dataclass
class SplitModel:
    """``trunk``: pixels -> cached arrays (+ ImageNet-style GAP of the frozen ``high`` map).
    ``head``: cached arrays -> relaxed codes. ``features``: cached arrays -> the
    concatenated pooled features the hash head reads (what the baselines hash)."""

    trunk: keras.Model
    head: keras.Model
    features: keras.Model
    tail: keras.Model | None

    @property
    def num_cached(self) -> int:
        return len(self.head.inputs)


def split_model(model: keras.Model, *, train_stages: int = 0) -> SplitModel:
    if train_stages not in (0, 1, 2):
        raise ValueError(f"`train_stages` must be 0, 1 or 2. Received: train_stages={train_stages!r}")
    backbone = model.get_layer(BACKBONE_LAYER)
    low, mid, high = backbone.outputs
    cut = [low, mid, high][:3 - train_stages]
    pixels = keras.Input(model.input_shape[1:], name="pixels")
    frozen = keras.Model(backbone.inputs, cut + [high], name="frozen_part")
    outs = frozen(model.get_layer("preprocessing")(pixels))
    gap = keras.layers.GlobalAveragePooling2D(name="frozen_high_gap")(outs[-1])
    trunk = keras.Model(pixels, list(outs[:-1]) + [gap], name="trunk")

    inputs = [keras.Input(t.shape[1:], name=f"cached_{s}") for s, t in zip(STAGES, cut)]
    tail = None
    maps = list(inputs)
    if train_stages:
        tail = keras.Model(cut[-1], [mid, high][-train_stages:], name="trained_stages")
        out = tail(inputs[-1])
        maps += list(out) if isinstance(out, (list, tuple)) else [out]
    pooled = [model.get_layer(f"attention_{s}")(m) for s, m in zip(STAGES, maps)]
    head = keras.Model(inputs, model.get_layer("hash_head")(pooled), name="head")
    features = keras.Model(inputs, keras.layers.Concatenate(axis=-1)(pooled), name="head_features")
    return SplitModel(trunk, head, features, tail)


def unfreeze_tail(split: SplitModel) -> None:
    """The backbone stages behind the cut train, their BatchNorm statistics stay frozen."""
    if split.tail is not None:
        split.tail.trainable = True
        for layer in split.tail.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def extract(trunk: keras.Model, images, *, views=("identity",), batch_size: int = 256,
            dtype="float16") -> tuple:
    """Run the trunk once per view. Returns ``(cached, gap)``: ``cached`` is a list of arrays
    ``(V, N, h, w, c)`` in ``dtype``; ``gap`` is ``(V, N, C)`` float32."""
    images = np.asarray(images)
    transforms = [view_transform(v) for v in views]
    unknown = [v for v, t in zip(views, transforms) if t is None]
    if unknown or not views:
        raise ValueError(f"`views` must be names from {sorted(VIEWS)} or {AUGMENT_PREFIX}N (N >= 1). "
                         f"Received: views={views!r}")
    n = len(images)
    shapes = [tuple(t.shape[1:]) for t in trunk.outputs]
    cached = [np.empty((len(views), n) + s, dtype=dtype) for s in shapes[:-1]]
    gap = np.empty((len(views), n) + shapes[-1], dtype="float32")
    start = time.perf_counter()
    for v, transform in enumerate(transforms):
        for lo in range(0, n, batch_size):
            batch = transform(images[lo:lo + batch_size], lo).astype("float32")
            for dst, out in zip(cached + [gap], trunk.predict_on_batch(batch)):
                dst[v, lo:lo + len(batch)] = out
    seconds = time.perf_counter() - start
    logger.info("cached %d images x %d views in %.0f s (%.0f images/s), %.2f GB", n, len(views), seconds,
                n * len(views) / seconds, sum(a.nbytes for a in cached) / 1e9)
    return cached, gap


class CachedBatches(keras.utils.PyDataset):
    """Shuffled batches of cached arrays (one random view per item per epoch) with (B, 2) labels
    (or, in a subclass, other per-item targets of ``label_dtype``)."""

    label_dtype = "int32"

    def __init__(self, cached, labels, *, batch_size: int, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.cached = cached
        self.labels = np.asarray(labels, dtype=self.label_dtype)
        if len(self.labels) != cached[0].shape[1]:
            raise ValueError(f"`labels` must have one row per cached item. Received: {len(self.labels)} rows "
                             f"for {cached[0].shape[1]} items")
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.num_views, self.n = cached[0].shape[:2]
        self.on_epoch_end()

    def __len__(self):
        return self.n // self.batch_size

    def on_epoch_end(self):
        self.order = self.rng.permutation(self.n)
        self.view = self.rng.integers(0, self.num_views, self.n)

    def __getitem__(self, i):
        idx = np.sort(self.order[i * self.batch_size:(i + 1) * self.batch_size])
        view = self.view[idx]
        xs = tuple(a[view, idx].astype("float32") for a in self.cached)
        return xs, self.labels[idx]


def predict_cached(head: keras.Model, cached, *, view: int = 0, batch_size: int = 512) -> np.ndarray:
    """Outputs of ``head`` (codes or features) for one view of cached arrays."""
    n = cached[0].shape[1]
    out = []
    for lo in range(0, n, batch_size):
        out.append(keras.ops.convert_to_numpy(
            head([a[view, lo:lo + batch_size].astype("float32") for a in cached], training=False)))
    return np.concatenate(out).astype("float32")


def train_head(split: SplitModel, train_cached, train_labels, val_cached, val_labels, db_cached, db_labels,
               config, *, has_coarse: bool = True, num_classes=None, callbacks=(), verbose="auto",
               out: Path | None = None, model: keras.Model | None = None) -> dict:
    """Fit ``split.head`` (and so the full model) on cached arrays; ``config`` is a
    :class:`~mghash_tf.training.config.TrainConfig` (``frozen_epochs``, ``learning_rate``,
    ``batch_size``, loss, regularisers, schedule, weight decay, seed). ``num_classes`` defaults to
    the largest label + 1 per level. The best epoch's weights are restored at the end (kept in
    ``out/best.weights.h5`` as ``model``'s weights when ``out`` is given, else in memory).
    Returns the history and the best epoch."""
    unfreeze_tail(split)
    head = split.head
    layout = get_layout_of(head)
    labels = np.asarray(train_labels)
    num_classes = num_classes or {"fine": int(labels[:, 0].max()) + 1, "coarse": int(labels[:, 1].max()) + 1}
    batches = CachedBatches(train_cached, labels, batch_size=config.batch_size, seed=config.seed)
    loss = hashing_loss(head, config, num_classes)
    head.compile(optimizer=make_optimizer(config, learning_rate=config.learning_rate,
                                          steps=len(batches) * config.frozen_epochs),
                 loss=loss)
    ramp = quantization_ramp(loss, config, len(batches), Stage(1, config.frozen_epochs, 0, config.learning_rate,
                                                               train_backbone=False))
    validation = RetrievalValidation(val_cached, val_labels, db_cached, db_labels, layout,
                                     has_coarse=has_coarse, predict=predict_cached)
    best = BestWeights(out, model or head, restore=True)
    start = time.perf_counter()
    history = head.fit(batches, epochs=config.frozen_epochs, callbacks=[*ramp, validation, best, *callbacks],
                       verbose=verbose)
    seconds = time.perf_counter() - start
    return {"history": history.history, "best_epoch": best.best_epoch,
            "best_val_map_fine": best.best, "seconds": seconds,
            "items_per_second": len(batches) * config.batch_size * config.frozen_epochs / seconds}


def run_cached(model: keras.Model, stage, ctx) -> StageOutcome:
    """Stage 1 on a cached trunk (``config.stage1_cache``), behind the stage interface of
    :mod:`mghash_tf.training.stages`: the same validation protocol, log.csv and best.weights.h5."""
    config, splits = ctx.config, ctx.splits
    split = split_model(model, train_stages=STAGE1_CACHE.index(config.stage1_cache) - 1)
    views = ("identity", "hflip") if config.augment else ("identity",)
    train_arrays, _ = extract(split.trunk, splits.train.x, views=views)
    val_arrays, _ = extract(split.trunk, splits.val.x)
    db_idx = ctx.database_indices()
    result = train_head(
        split, train_arrays, splits.train.labels, val_arrays, splits.val.labels,
        [a[:1, db_idx] for a in train_arrays], splits.train.labels[db_idx], config,
        has_coarse=splits.has_coarse, num_classes=ctx.num_classes, verbose=ctx.verbose, out=ctx.out, model=model,
        callbacks=[keras.callbacks.CSVLogger(str(ctx.out / LOG), append=True)],
    )
    return StageOutcome(result["history"], [result["items_per_second"]])
