"""Train one cheap model per backbone x code length for the model-size bench (``python -m export
bench --trained``), so that its bit agreement and mAP columns describe trained models.

    python benchmarks/train_bench_models.py --out cache/bench_models \\
        --json benchmarks/results/bench_models.json

Every model trains through :func:`mghash_tf.training.train.train` on the same seeded subset of
the training split (``--max-train``, validation carved from it with the config seed). Recipes
(``recipe_for``): ``mobilenet_v2`` starts from the ImageNet weights (``--weights``) and trains
its heads on the cached frozen trunk; ``mobilenet_v3_small`` and ``efficientnet_v2_b0`` have no
weights offline and train end to end from scratch; ``small_cnn`` takes the default recipe and
``fast_cnn`` the ``fast`` preset. The test mAP is the training run's own (query = a seeded
``--max-test`` sample of the test split, database = the training subset minus validation,
mAP@all, fine and coarse labels). A model whose folder already holds the same config and its
metrics is reused, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from export.bench import LAYOUT_FOR_BITS  # noqa: E402
from export.report import provenance, write_json  # noqa: E402

logger = logging.getLogger("train_bench_models")

BACKBONES = ("small_cnn", "fast_cnn", "mobilenet_v3_small", "mobilenet_v2", "efficientnet_v2_b0")
# Epochs sized so all 15 models train in well under an hour on the shared 2-core CPU
# (speeds measured on 512 images before the full run; see the Markdown report).
EPOCHS = {"small_cnn": 4, "fast_cnn": 6, "mobilenet_v3_small": 2, "mobilenet_v2": 5,
          "efficientnet_v2_b0": 1}
MOBILENET_V2_WEIGHTS = "../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
# The 96-px networks read 32-px images upsampled inside the model (as in the bench's rows).
UPSAMPLED = {"image_size": 96, "input_size": 32}
# Fields per backbone on top of the common ones (data, layout, seed, subset, epochs).
RECIPE_FIELDS = {
    "small_cnn": {"backbone": "small_cnn", "image_size": 32},
    "mobilenet_v2": {"backbone": "mobilenet_v2", "stage1_cache": "heads", **UPSAMPLED},
    "mobilenet_v3_small": {"backbone": "mobilenet_v3_small", **UPSAMPLED},
    # ~7 training images/s end to end on this CPU: a quarter of the images, half the batch for more steps.
    "efficientnet_v2_b0": {"backbone": "efficientnet_v2_b0", "batch_size": 32, **UPSAMPLED},
}
MAX_TRAIN = {"efficientnet_v2_b0": 2500}
# Backbones whose BatchNorm statistics are re-estimated after training (reestimate_batchnorm).
REESTIMATE_BN = ("mobilenet_v3_small",)
BN_RECORD = "batchnorm_reestimated.json"


def recipe_for(backbone: str, bits: int, args):
    """The TrainConfig of one bench model; ``--set`` fields win over every other value."""
    from mghash_tf.training.config import TrainConfig

    if backbone not in BACKBONES:
        raise ValueError(f"`backbone` must be one of {BACKBONES}. Received: backbone={backbone!r}")
    fields = {"data": args.data, "layout": LAYOUT_FOR_BITS[bits], "seed": args.seed,
              "max_train": min(args.max_train, MAX_TRAIN.get(backbone, args.max_train)),
              "frozen_epochs": args.epochs.get(backbone, EPOCHS[backbone]),
              "val_database_size": args.val_database_size, **RECIPE_FIELDS.get(backbone, {})}
    if backbone == "mobilenet_v2":
        fields["weights"] = args.weights
    if backbone == "fast_cnn":
        return TrainConfig.preset("fast", **fields, **args.set)
    return TrainConfig(**{**fields, **args.set})


def describe_recipe(config) -> str:
    """One line per model for the reports."""
    if config.weights:
        start = f"ImageNet weights ({Path(config.weights).name}), stage-1 cache {config.stage1_cache!r}"
    else:
        start = "from scratch, end to end"
    size = (f"{config.image_size} px" if not config.input_size
            else f"{config.input_size} px upsampled to {config.image_size} px")
    epochs = config.frozen_epochs + config.finetune_epochs
    return (f"{config.backbone}: recipe {config.recipe!r}, {start}, {size}, {config.max_train} training images "
            f"(validation {config.val_fraction:.0%} of them), {epochs} epoch{'s' * (epochs != 1)}, "
            f"loss {config.loss}, {config.optimizer} lr {config.learning_rate:g}, batch {config.batch_size}, "
            f"augmentation {_augmentation(config)}, "
            f"quantization_weight {config.quantization_weight:g}{', flip TTA for its codes' * config.tta}")


def _augmentation(config) -> str:
    if not config.augment:
        return "none"
    # The cached trunk stores each image and its mirror; no other augmentation reaches it.
    return "flip (cached views)" if config.stage1_cache != "none" else config.augmentation


def _sample_test(image_set, max_test: int | None, seed: int):
    """``image_set`` with its test split cut to a seeded sample of ``max_test`` images."""
    test = np.flatnonzero(image_set.split == 1)
    if not max_test or max_test >= len(test):
        return image_set
    drop = np.random.default_rng(seed).permutation(test)[max_test:]
    return image_set.subset(np.setdiff1d(np.arange(len(image_set)), drop))


def _batchnorm_layers(layer) -> list:
    found = [layer] if isinstance(layer, keras.layers.BatchNormalization) else []
    for child in getattr(layer, "layers", []):
        found += _batchnorm_layers(child)
    return found


def reestimate_batchnorm(model, images, *, batch_size: int = 256) -> int:
    """Replace every BatchNorm layer's moving statistics by their mean over the batches of
    ``images`` ("precise BN"); returns the number of layers. Why: Keras' MobileNetV3 keeps
    momentum 0.999, so a few hundred steps from scratch leave its moving statistics close to
    their initial (0, 1) and inference-mode codes near chance."""
    layers = _batchnorm_layers(model)
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    try:
        for i, start in enumerate(range(0, len(images), batch_size)):
            for layer in layers:
                # moving <- moving * i/(i+1) + batch/(i+1): the running mean of the batch statistics.
                layer.momentum, layer.trainable = i / (i + 1), True
            model(images[start:start + batch_size].astype("float32"), training=True)
    finally:
        for layer, (momentum, trainable) in zip(layers, saved):
            layer.momentum, layer.trainable = momentum, trainable
    return len(layers)


def _done(out: Path, config) -> bool:
    config_file, metrics = out / "config.json", out / "metrics.json"
    return (metrics.is_file() and (out / "model.keras").is_file() and config_file.is_file()
            and json.loads(config_file.read_text()) == json.loads(json.dumps(config.to_dict())))


def split_metrics(model, config, splits) -> dict:
    """Validation and test mAP as ``train()`` measures them (database = train minus validation)."""
    from mghash_tf.evaluation.retrieval import evaluate_codes
    from mghash_tf.model import encode, get_layout_of

    layout = get_layout_of(model)
    db = encode(model, splits.train.x, tta=config.tta)
    return {name: evaluate_codes(encode(model, part.x, tta=config.tta), db, part.labels, splits.train.labels,
                                 layout, has_coarse=splits.has_coarse)
            for name, part in (("val", splits.val), ("test", splits.test))}


def reestimate_saved(config, out: Path, image_set, count: int) -> dict:
    """BatchNorm re-estimation of a trained model in ``out`` on ``count`` of its training
    images (seeded); the model is saved back only when that raises its validation mAP (fine)."""
    from mghash_tf.model.saving import load_model, save_model_atomic
    from mghash_tf.training.train import load_splits

    record_file = out / BN_RECORD
    if record_file.is_file():
        return json.loads(record_file.read_text())
    model, splits = load_model(out), load_splits(config, image_set)
    before = split_metrics(model, config, splits)
    pick = np.random.default_rng(config.seed).permutation(len(splits.train.x))[:count]
    layers = reestimate_batchnorm(model, splits.train.x[np.sort(pick)])
    after = split_metrics(model, config, splits)
    # Chosen on the validation split, never on test.
    kept = after["val"]["map_fine"] > before["val"]["map_fine"]
    if kept:
        save_model_atomic(model, out / "model.keras")
    record = {"images": int(len(pick)), "layers": layers, "kept": kept, "before": before, "after": after,
              **(after if kept else before)}
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    return record


def train_one(config, out: Path, image_set, *, bn_images: int = 0) -> dict:
    """Train (or reuse) one model, then re-estimate its BatchNorm statistics when ``bn_images``;
    its record for the JSON report."""
    from mghash_tf.training.train import train

    start, cpu = time.perf_counter(), time.process_time()
    if _done(out, config):
        logger.info("%s: already trained, reused", out)
        metrics = json.loads((out / "metrics.json").read_text())
    else:
        metrics = train(config, out, image_set=image_set, verbose=2).metrics
    extra = {}
    if bn_images:
        bn = reestimate_saved(config, out, image_set, bn_images)
        extra = {"batchnorm_reestimated": {k: bn[k] for k in ("images", "layers", "kept", "before", "after")}}
        metrics = {**metrics, "val": bn["val"], "test": bn["test"]}
    return {**extra, "backbone": config.backbone, "bits": config.code_layout.bits, "layout": config.layout,
            "model_dir": str(out), "recipe": describe_recipe(config), "config": config.to_dict(),
            "train_seconds": metrics["train_seconds"], "wall_seconds": round(time.perf_counter() - start, 1),
            "process_cpu_seconds": round(time.process_time() - cpu, 1),
            "train_images_per_second": metrics["train_images_per_second"],
            "mixed_precision": metrics.get("mixed_precision"),
            "val": metrics["val"], "test": metrics.get("test"), "protocol_test": metrics.get("protocol_test")}


def markdown(meta: dict, records: list, args) -> str:
    lines = ["# Trained models of the model-size bench", "",
             f"- Command: `{meta['command']}`", f"- Date: {meta['date']}", f"- Machine: {meta['machine']}",
             f"- Load average at the end: {meta['load_end']:.2f}",
             f"- Data: {args.data}; training subset: a seeded sample of the train split (seed "
             f"{args.seed}; size per recipe below, the same images for models of one size), validation "
             f"carved from it; test: query = a seeded {args.max_test} of the test "
             "split, database = the training subset minus validation, mAP@all (fine labels; coarse "
             "from the coarse segment or the whole code).",
             "- Models are written under the --out folder (git-ignored, not committed).",
             f"- Compute: {', '.join(sorted({str(r['mixed_precision']) for r in records}))} (`mixed_precision` "
             "'auto'); `img/s`: `train()`'s median epoch rate, wall clock on the shared cores.", "",
             "## Recipes", ""]
    lines += sorted({f"- {r['recipe']}" for r in records})
    lines += ["", "| backbone | bits | layout | train s | wall s | CPU s | img/s | val mAP fine | test mAP fine | "
              "test mAP coarse |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        test = r["test"] or {}
        lines.append(f"| {r['backbone']} | {r['bits']} | {r['layout']} | {r['train_seconds']:.0f} | "
                     f"{r['wall_seconds']:.0f} | {r['process_cpu_seconds']:.0f} | "
                     f"{r['train_images_per_second'] or 0:.0f} | {r['val'].get('map_fine', float('nan')):.4f} | "
                     f"{test.get('map_fine', float('nan')):.4f} | {test.get('map_coarse', float('nan')):.4f} |")
    for r in records:
        bn = r.get("batchnorm_reestimated")
        if bn:
            before, after = bn["before"], bn["after"]
            lines.append(f"\n{r['backbone']} {r['bits']} bits: BatchNorm statistics re-estimated on {bn['images']} "
                         f"training images ({bn['layers']} layers) after training: val mAP fine "
                         f"{before['val']['map_fine']:.4f} -> {after['val']['map_fine']:.4f}, test "
                         f"{before['test']['map_fine']:.4f} -> {after['test']['map_fine']:.4f}; "
                         f"{'kept' if bn['kept'] else 'not kept'} (chosen on validation).")
    total, wall, cpu = (sum(r[k] for r in records) for k in ("train_seconds", "wall_seconds", "process_cpu_seconds"))
    lines += ["", f"All models: training {total / 60:.1f} min (`train()`'s stage timings: data loading and the "
              f"final encoding excluded), {wall / 60:.1f} min wall per model summed (with the final test encoding and "
              f"the BatchNorm re-estimation), {cpu / 60:.1f} min of process CPU time (both cores counted). "
              "The cores were shared with other jobs (load average above): times are upper bounds."]
    return "\n".join(lines) + "\n"


def parse_set(items) -> dict:
    """``["quantization_weight=1.0", "augment=false"]`` -> a dict (JSON values, else text)."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes FIELD=VALUE items. Received: {item!r}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="npz:../shared/data/cifar10.npz")
    p.add_argument("--weights", default=MOBILENET_V2_WEIGHTS, help="MobileNetV2 ImageNet weights (.h5)")
    p.add_argument("--out", type=Path, default=Path("cache/bench_models"))
    p.add_argument("--json", help="records of every model (the .md beside it is written too)")
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    p.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64], choices=sorted(LAYOUT_FOR_BITS))
    p.add_argument("--max-train", type=int, default=10000)
    p.add_argument("--max-test", type=int, default=2000, help="test queries (0: the whole test split)")
    p.add_argument("--val-database-size", type=int, default=2000)
    p.add_argument("--epochs", nargs="+", default=[], metavar="BACKBONE=N", help="override EPOCHS")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bn-images", type=int, default=1024,
                   help=f"training images for the BatchNorm re-estimation of {', '.join(REESTIMATE_BN)}")
    p.add_argument("--markdown-only", action="store_true",
                   help="rewrite the Markdown of the run in --json (same --data/--max-test/--seed), train nothing")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="TrainConfig field for every model (JSON value, else text)")
    args = p.parse_args(argv)
    args.set = parse_set(args.set)
    if args.markdown_only and not args.json:
        p.error("--markdown-only needs --json")
    try:
        args.epochs = {k: int(v) for k, _, v in (item.partition("=") for item in args.epochs)}
    except ValueError:
        p.error(f"--epochs takes BACKBONE=N items. Received: {args.epochs}")
    return args


def rewrite_markdown(json_path: Path, args) -> None:
    """The Markdown of an earlier run again (recipe lines re-described from each stored config)."""
    from mghash_tf.training.config import TrainConfig

    run = json.loads(json_path.read_text())
    records = [{**r, "recipe": describe_recipe(TrainConfig.from_dict(r["config"]))} for r in run.pop("records")]
    write_json(json_path, {**run, "records": records})
    json_path.with_suffix(".md").write_text(markdown(run, records, args))


def main(argv=None):
    from mghash_tf.data import load_source

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.markdown_only:
        return rewrite_markdown(Path(args.json), args)
    meta = provenance("python benchmarks/train_bench_models.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    image_set = _sample_test(load_source(args.data), args.max_test, args.seed)
    records = []
    for backbone in args.backbones:
        for bits in args.bits:
            config = recipe_for(backbone, bits, args)
            bn_images = args.bn_images if backbone in REESTIMATE_BN else 0
            records.append(train_one(config, args.out / f"{backbone}_{bits}", image_set, bn_images=bn_images))
            logger.info("%s %d bits: %.0f s, test %s", backbone, bits, records[-1]["train_seconds"],
                        records[-1]["test"])
            if args.json:
                meta["load_end"] = os.getloadavg()[0]
                write_json(args.json, {**meta, "records": records})
                Path(args.json).with_suffix(".md").write_text(markdown(meta, records, args))
    for r in records:
        print(f"--trained {r['model_dir']}")


if __name__ == "__main__":
    main()
