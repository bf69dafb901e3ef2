"""The ``unsupervised`` suite of ``benchmarks/quality.py``: label-free codes, measured where
labels exist but are hidden from training.

    python benchmarks/quality.py --suite unsupervised --dataset cifar10 tinyimagenet200

Protocol (written into every record):

- Backbone: MobileNetV2 with the ImageNet weights in ``../shared/weights``, 32 px images seen at
  ``--image-size`` inside the model; its frozen part runs once (cached as itself and mirrored).
- Training: ``train(TrainConfig(labels="none", stage1_cache=...))``, like a user's
  ``train --labels none``: the objective of :mod:`mghash_tf.model.unsupervised_loss`; no label
  is read, and the last epoch is the model (no label-based selection). ``--train-subset N``
  trains on a seeded N-image subset of train (its cached views must fit in memory); the
  database is still the whole train split.
- Test: query = the test split, database = the whole train split, mAP@all; relevant = same
  label at the granularity's level (the labels only measure). Method ``mghash_unsupervised``.
- Baselines (the classic label-free ones) at the same bit count on the same backbone and image
  size: LSH, PCA-sign and ITQ on the global average of the frozen ImageNet MobileNetV2's last
  map (``features="imagenet"``), and float cosine on those features. To keep memory low the
  hashers are fitted on a seeded sample of ``--fit-max`` database features, then encode all.
"""

from __future__ import annotations

import logging
import time

import numpy as np

logger = logging.getLogger("quality.unsupervised")

LAYOUTS = {"cifar10": ["plain64"], "tinyimagenet200": ["mg64"]}
METHOD = "mghash_unsupervised"


def config_for(args, layout: str):
    from quality import WEIGHTS

    from mghash_tf.training.config import STAGE1_CACHE, TrainConfig

    return TrainConfig(
        backbone="mobilenet_v2", weights=str(WEIGHTS), image_size=args.image_size, input_size=32, layout=layout,
        labels="none", stage1_cache=STAGE1_CACHE[args.train_stages + 1], augment=True,
        frozen_epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        quantization_weight=args.quantization_weight, contrastive_temperature=args.temperature, unsupervised_loss=args.unsupervised_loss,
        affinity_weight=args.affinity_weight, feature_dropout=args.feature_dropout,
        unsupervised_views=args.unsupervised_views, max_train=args.train_subset, seed=args.seed,
        val_fraction=0.05, mixed_precision=args.mixed_precision or "auto")


def run_dataset(name, args, records, runs, prov):
    """One label-free model per layout, then its codes and the baselines on the test protocol."""
    from quality import imagenet_features, imagenet_records, load
    from quality_fast import records_of, run_record

    from mghash_tf.evaluation.evaluate import evaluate, select_granularities
    from mghash_tf.model import get_layout_of
    from mghash_tf.training.cached import view_names
    from mghash_tf.training.train import train

    wall = time.perf_counter()
    image_set = load(name, args, np.random.default_rng(args.seed))
    n_query, n_db = int((image_set.split == 1).sum()), int((image_set.split == 0).sum())
    imagenet = imagenet_features(image_set, args)
    for layout in args.layouts or LAYOUTS[name]:
        config = config_for(args, layout)
        result = train(config, args.models / f"unsupervised_{name}_{layout}", image_set=image_set, verbose=2)
        protocol = (f"query = {n_query} test images, database = {n_db} train images, mAP@all; labels hidden from "
                    f"training (labels=none: {config.unsupervised_loss}, temperature {config.contrastive_temperature}, "
                    f"affinity weight {config.affinity_weight}, feature dropout {config.feature_dropout}); MobileNetV2 "
                    f"ImageNet @{args.image_size}px from 32 px, cached trunk ({config.stage1_cache}), views "
                    f"{'+'.join(view_names(config.unsupervised_views))}, {args.epochs} epochs, last epoch kept"
                    + (f", trained on a seeded {args.train_subset}-image subset of train" if args.train_subset else "")
                    + "; baselines fitted on "
                    f"{min(args.fit_max, n_db)} database features")
        base = {"dataset": name, "suite": "unsupervised", "protocol": protocol, "backbone": "mobilenet_v2",
                "image_size": args.image_size, "layout": layout, "n_query": n_query, "n_database": n_db,
                **({"variant": args.variant} if args.variant else {})}
        start = time.perf_counter()
        evaluation = evaluate(result.model, image_set, baselines=False, seed=args.seed)
        rows = [{**r, "method": METHOD} for r in records_of(evaluation, {**base, "train_seconds":
                                                                          result.metrics["train_seconds"]})]
        chosen = select_granularities(get_layout_of(result.model), image_set.has_coarse,
                                      list(evaluation["granularities"]))
        rows += imagenet_records(imagenet, image_set, chosen, base, args.seed, fit_max=args.fit_max)
        records.extend(rows)
        runs.append(run_record(base, prov, config, result, start))
        logger.info("%s %s: %s", name, layout, {(r["granularity"], r["method"], r["features"]): r["map"]
                                                  for r in rows})
    runs.append({"dataset": name, "suite": "unsupervised", **prov,
                 "wall_seconds": round(time.perf_counter() - wall, 1)})
