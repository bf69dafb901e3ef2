"""The ``fast`` suite of ``benchmarks/quality.py``: ``fast_cnn`` trained from scratch with the
``fast`` recipe (``TrainConfig.preset("fast")``) through :func:`mghash_tf.training.train.train`,
then measured by :func:`mghash_tf.evaluation.evaluate.evaluate`.

Protocol (written into every record): query = the test split, database = the whole train
split (the validation part included), relevant = same label at the granularity's level,
mAP@all stable and tie-aware. Model selection: the best validation epoch (validation = a
seeded, stratified ``val_fraction`` of train querying a seeded sample of the rest), never the
test split. Codes with flip TTA on neither side (``mghash``), the database only
(``mghash_tta_db``) or both (``mghash_tta``); ``*_float`` = cosine on the same relaxed codes.
Baselines on the same model's features (what the hash head reads): LSH, PCA-sign, ITQ, float
cosine, and the seed's toy methods (sigmoid classifier-head bits, float L2).
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np

logger = logging.getLogger("quality.fast")

LAYOUTS = {"cifar10": ["plain64", "plain32", "plain16", "mg64", "scales"], "tinyimagenet200": ["mg64"]}
TTA_MODES = ("none", "database", "both")
# The scales layout is about what fusion adds: its segments are compared with each other only.
NO_BASELINES = ("scales",)
# Granularities measured (each costs ~15 mAP@all passes over 10k x 50k): the full code and the
# coarse labels (for mg64 that is the 16-bit coarse segment); for scales the code and each scale.
GRANULARITIES = {"scales": ("fine", "seg_low", "seg_mid", "seg_high", "seg_fused")}
DEFAULT_GRANULARITIES = ("fine", "coarse")


def config_for(args, data_spec: str, layout: str):
    from mghash_tf.training.config import TrainConfig

    overrides = {k: v for k, v in {"learning_rate": args.fast_learning_rate, "batch_size": args.fast_batch_size,
                                   "mixed_precision": args.mixed_precision}.items() if v is not None}
    return TrainConfig.preset("fast", data=data_spec, layout=layout, frozen_epochs=args.fast_epochs,
                              seed=args.seed, max_train=args.max_train, **overrides, **parse_set(args.fast_set))


def parse_set(items) -> dict:
    """``["val_every=5", "tta=false"]`` -> ``{"val_every": 5, "tta": False}`` (JSON values, else text)."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--fast-set takes FIELD=VALUE items. Received: {item!r}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def best_epoch(history: dict):
    """(1-based epoch, value) of the highest validation mAP; epochs not validated (``val_every``)
    log NaN and are skipped."""
    values = np.asarray(history.get("val_map_fine") or [], dtype="float64")
    if not np.isfinite(values).any():
        return None, None
    i = int(np.nanargmax(values))
    return i + 1, round(float(values[i]), 5)


def run_record(base: dict, prov: dict, config, result, eval_start: float) -> dict:
    """The quality_runs.json entry of one trained and evaluated layout."""
    epoch, val = best_epoch(result.metrics["history"])
    return {**{k: v for k, v in base.items() if k != "protocol"}, **prov, "epochs": config.frozen_epochs,
            "best_epoch": epoch, "best_val_map_fine": val, "train_seconds": result.metrics["train_seconds"],
            "train_images_per_second": result.metrics["train_images_per_second"],
            "mixed_precision": result.metrics["mixed_precision"],
            "eval_seconds": round(time.perf_counter() - eval_start, 1), "config": config.to_dict()}


def records_of(evaluation: dict, base: dict) -> list:
    """One record per granularity and method, in the quality.json shape."""
    rows = []
    for gran, g in evaluation["granularities"].items():
        for method, m in g["methods"].items():
            if "skipped" in m:
                continue
            bits = m.get("bits", None if method.endswith("_float") or method.startswith("float_") else g["bits"])
            rows.append({**base, "bits": bits, "granularity": gran, "method": method, "features": "model",
                         "map": round(float(m["map"]), 5), "map_tie_aware": round(float(m["map_tie_aware"]), 5),
                         "precision@100_tie_aware": round(float(m["precision@100_tie_aware"]), 5)})
    return rows


def run_dataset(name, path, args, records, runs, prov):
    from mghash_tf.data import load_source
    from mghash_tf.evaluation.evaluate import evaluate
    from mghash_tf.training.train import train

    wall = time.perf_counter()  # data loading counts toward the first layout's wall time
    image_set = load_source(f"npz:{path}")
    if args.max_test:
        test = np.flatnonzero(image_set.split == 1)
        drop = np.random.default_rng(args.seed).permutation(test)[args.max_test:]
        image_set = image_set.subset(np.setdiff1d(np.arange(len(image_set)), drop))
    for layout in args.layouts or LAYOUTS[name]:
        config = config_for(args, f"npz:{path}", layout)
        suffix = f"_{args.variant}" if args.variant else ""
        result = train(config, args.models / f"fast_{name}_{layout}{suffix}", image_set=image_set, verbose=2)
        protocol = (f"query = {int((image_set.split == 1).sum())} test images, database = "
                    f"{int((image_set.split == 0).sum())} train images, mAP@all; fast_cnn from scratch, "
                    f"fast recipe, {config.frozen_epochs} epochs, selection on a "
                    f"{config.val_fraction:.0%} validation split of train")
        base = {"dataset": name, "suite": "fast", "protocol": protocol, "backbone": "fast_cnn",
                "image_size": config.image_size, "layout": layout, **({"variant": args.variant} if args.variant else {})}
        start = time.perf_counter()
        # Each layout's run record carries its own command, date, machine and wall time.
        granularities = [g for g in GRANULARITIES.get(layout, DEFAULT_GRANULARITIES)
                         if g != "coarse" or image_set.has_coarse]
        baselines = layout not in NO_BASELINES and not args.skip_baselines
        evaluation = evaluate(result.model, image_set, granularities=granularities,
                              baselines=baselines, toy_baselines=baselines,
                              tta=TTA_MODES, seed=args.seed)
        run = {**run_record(base, prov, config, result, start), "wall_seconds": round(time.perf_counter() - wall, 1)}
        runs.append(run)
        rows = records_of(evaluation, {**base, "train_seconds": run["train_seconds"]})
        records.extend(rows)
        logger.info("%s %s: %s", name, layout, {(r["granularity"], r["method"]): r["map"] for r in rows
                                                  if r["method"].startswith("mghash")})
        wall = time.perf_counter()
        yield
