"""Retrieval quality on real data: MGHash codes against hashing baselines on the same backbone.

Two suites, one report (``benchmarks/results/quality.{json,md,png}`` + ``quality_runs.json``):

    python benchmarks/quality.py --suite fast --dataset cifar10 --layouts plain64 --fast-epochs 15
    python benchmarks/quality.py --suite mobilenet            # both datasets, MobileNetV2 cached trunk
    python benchmarks/quality.py --suite mobilenet --quick --out /tmp/q   # small subsets, minutes
    python benchmarks/quality.py --suite unsupervised --dataset cifar10 tinyimagenet200   # no labels in training

A rerun replaces the records of the same dataset, suite and layouts. The ``fast`` suite (the
training recipe for small images) is described in ``benchmarks/quality_fast.py``, the
``unsupervised`` suite (label-free codes) in ``benchmarks/quality_unsupervised.py``.

Protocol of the ``mobilenet`` suite (also written into every record):

- Backbone: MobileNetV2 with the ImageNet weights in ``../shared/weights``, 32 px images resized
  to ``--image-size`` inside the model. Its frozen part runs once (:mod:`mghash_tf.training.cached`): the
  training images are cached as themselves and horizontally flipped, and the attention pooling,
  the hash head and the backbone's last stage (``mid`` tap to ``high``, BatchNorm frozen) train on
  the cache. It runs as ``train(TrainConfig(..., stage1_cache=...))`` and
  ``evaluate(...)``, like any user's run; the saved model is the full one.
- Model selection: the epoch with the best validation mAP (fine), validation = 10 % of train
  (stratified, seeded) querying a seeded sample of the rest of train. The test split is never used to select.
- Test: query = the test split, database = the whole train split, mAP@all (every database item
  ranked; queries never lack a relevant item here). ``map`` ranks ties by database order,
  ``map_tie_aware`` is the exact expectation over tie orders.
- Baselines at the same bit count, fitted on the database features: LSH, PCA-sign and ITQ, and
  the float-cosine upper bound, on two feature sets: ``features="model"`` = what the trained
  hash head reads (concatenated attention-pooled maps); ``features="imagenet"`` = global average
  of the frozen ImageNet backbone's last map. ``mghash_float`` = cosine on the relaxed codes
  (tanh outputs) of the same model, the float embedding the codes are signs of.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
DATASETS = {
    "cifar10": {"file": "cifar10.npz", "layouts": ["plain16", "plain32", "plain64"],
                "granularities": ("fine",)},
    "tinyimagenet200": {"file": "tinyimagenet200_hier32.npz", "layouts": ["mg64"],
                        "granularities": ("fine", "coarse")},
}
VAL_DATABASE = 5000
EXTRA_STYLE = {"mghash_float": dict(color="dimgray", lw=1.5)}
logger = logging.getLogger("quality")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=("fast", "mobilenet", "unsupervised"), default="mobilenet")
    p.add_argument("--dataset", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    p.add_argument("--layouts", nargs="+", help="override the dataset's layouts")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=5e-3)
    p.add_argument("--quantization-weight", type=float, default=0.1)
    p.add_argument("--train-stages", type=int, default=1, choices=(0, 1, 2),
                   help="backbone stages trained on the cache (0 = heads only)")
    p.add_argument("--views", nargs="+", default=["identity", "hflip"])
    p.add_argument("--max-train", type=int, help="subsample train (smoke runs)")
    p.add_argument("--max-test", type=int, help="subsample test (smoke runs)")
    p.add_argument("--quick", action="store_true", help="= --max-train 2000 --max-test 500 --epochs 2")
    p.add_argument("--fast-epochs", type=int, default=10, help="fast suite: training epochs")
    p.add_argument("--fast-learning-rate", type=float, help="fast suite: override the recipe's rate")
    p.add_argument("--fast-batch-size", type=int, help="fast suite: override the recipe's batch size")
    p.add_argument("--variant", help="name kept in the records beside the layout, so a second run of a layout "
                                      "(e.g. a shorter schedule) does not replace the first")
    p.add_argument("--skip-baselines", action="store_true",
                   help="fast suite: measure the codes only (the baselines on the model's features are the main run's)")
    p.add_argument("--fast-set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="fast suite: any other TrainConfig override, VALUE read as JSON when it parses "
                        "(e.g. --fast-set val_every=5 bias_lr_scale=64)")
    p.add_argument("--temperature", type=float, default=0.5, help="unsupervised suite: NT-Xent temperature")
    p.add_argument("--unsupervised-loss", default="contrastive",
                   help="unsupervised suite: terms joined by + from contrastive, affinity")
    p.add_argument("--affinity-weight", type=float, default=1.0, help="unsupervised suite: affinity term weight")
    p.add_argument("--train-subset", type=int,
                   help="unsupervised suite: train on a seeded subset of this many train images (the cached "
                        "views of all 50,000 do not fit in memory here); the database stays the whole train split")
    p.add_argument("--unsupervised-views", type=int, default=4,
                   help="unsupervised suite: cached views per image (identity, mirror, then seeded augmentations)")
    p.add_argument("--feature-dropout", type=float, default=0.2, help="unsupervised suite: dropout on cached views")
    p.add_argument("--fit-max", type=int, default=20000,
                   help="unsupervised suite: database features the baselines are fitted on (seeded sample)")
    p.add_argument("--mixed-precision", help="auto (default: bfloat16 where the CPU has it), none, bfloat16, float16")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--models", type=Path, default=ROOT / "runs" / "quality",
                   help="where the trained models are saved (not committed)")
    args = p.parse_args(argv)
    if args.quick:
        args.max_train, args.max_test, args.epochs = args.max_train or 2000, args.max_test or 500, 2
    return args


def portable(runs: list) -> list:
    """Run records with this machine's path to the shared folder written as ``../shared`` (the
    configs name their data file by absolute path)."""
    return json.loads(json.dumps(runs).replace(json.dumps(str(SHARED))[1:-1], "../shared"))


def data_path(name) -> Path:
    path = SHARED / "data" / DATASETS[name]["file"]
    if not path.is_file():
        raise SystemExit(f"{path} is absent: this benchmark needs the real data in ../shared/data "
                         "(see its README); nothing was measured.")
    return path


def load(name, args, rng):
    """The dataset as one ImageSet (split 0 = train, 1 = test), subsampled for smoke runs."""
    from mghash_tf.data import load_source

    data = load_source(f"npz:{data_path(name)}")
    keep = []
    for split, limit in ((0, args.max_train), (1, args.max_test)):
        members = np.flatnonzero(data.split == split)
        keep.append(np.sort(rng.choice(members, limit, replace=False)) if limit and limit < len(members)
                    else members)
    return data.subset(np.concatenate(keep))


def imagenet_features(image_set, args):
    """(query, database) features of the untouched ImageNet MobileNetV2: the global average of
    its last map, computed on a freshly built model (the trained one has a fine-tuned stage)."""
    import keras

    from mghash_tf.evaluation.evaluate import predict
    from mghash_tf.model import build_model

    model = build_model(backbone="mobilenet_v2", layout="plain16", image_size=args.image_size, input_size=32,
                        weights=str(WEIGHTS))
    # The attention layers read the backbone's maps inside the model's graph (after its resize).
    features = keras.Model(model.input, keras.layers.GlobalAveragePooling2D()(model.get_layer("attention_high").input))
    return predict(features, image_set.x[image_set.split == 1]), predict(features, image_set.x[image_set.split == 0])


def imagenet_records(features, image_set, chosen, base, seed, *, fit_max=None) -> list:
    """LSH / PCA / ITQ / float cosine on the ImageNet features (``features="imagenet"``) at each
    granularity's bit count (hashers fitted on a seeded sample of ``fit_max`` database rows)."""
    from mghash_tf.evaluation.evaluate import baseline_metrics

    q_feat, db_feat = features
    labels = image_set.labels
    ql, dl = labels[image_set.split == 1], labels[image_set.split == 0]
    rows = []
    for gran, (bits, col) in chosen.items():
        for method, m in baseline_metrics(q_feat, db_feat, ql[:, col], dl[:, col], len(bits), seed=seed,
                                          fit_max=fit_max).items():
            rows.append({**base, "bits": None if method == "float_cosine" else len(bits), "granularity": gran,
                         "method": method, "features": "imagenet", "map": round(float(m["map"]), 5),
                         "map_tie_aware": round(float(m["map_tie_aware"]), 5)})
    return rows


def run_dataset(name, args, records, runs, prov):
    """MobileNetV2 through :func:`~mghash_tf.training.train.train` (stage 1 on the cached trunk)
    and :func:`~mghash_tf.evaluation.evaluate.evaluate`, one model per layout."""
    from mghash_tf.evaluation.evaluate import evaluate, select_granularities
    from mghash_tf.model import get_layout_of
    from mghash_tf.training.config import STAGE1_CACHE, TrainConfig
    from mghash_tf.training.train import train

    from quality_fast import records_of, run_record

    wall = time.perf_counter()
    image_set = load(name, args, np.random.default_rng(args.seed))
    n_query, n_db = int((image_set.split == 1).sum()), int((image_set.split == 0).sum())
    imagenet = imagenet_features(image_set, args)
    for layout in args.layouts or DATASETS[name]["layouts"]:
        config = TrainConfig(
            backbone="mobilenet_v2", weights=str(WEIGHTS), image_size=args.image_size, input_size=32, layout=layout,
            stage1_cache=STAGE1_CACHE[args.train_stages + 1], augment="hflip" in args.views,
            frozen_epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
            quantization_weight=args.quantization_weight, seed=args.seed, val_fraction=0.1,
            val_database_size=VAL_DATABASE, mixed_precision=args.mixed_precision or "auto")
        result = train(config, args.models / f"{name}_{layout}", image_set=image_set, verbose=2)
        protocol = (f"query = {n_query} test images, database = {n_db} train images, mAP@all; "
                    f"MobileNetV2 ImageNet @{args.image_size}px from 32 px, cached trunk + {args.train_stages} "
                    f"trained backbone stage(s), views {'+'.join(args.views)}, {args.epochs} epochs, selection "
                    f"on a {config.val_fraction:.0%} validation split of train")
        base = {"dataset": name, "suite": "mobilenet", "protocol": protocol, "backbone": "mobilenet_v2",
                "image_size": args.image_size, "layout": layout, "n_query": n_query, "n_database": n_db}
        start = time.perf_counter()
        evaluation = evaluate(result.model, image_set, granularities=DATASETS[name]["granularities"],
                              baselines=True, seed=args.seed)
        rows = records_of(evaluation, {**base, "train_seconds": result.metrics["train_seconds"]})
        chosen = select_granularities(get_layout_of(result.model), image_set.has_coarse,
                                      list(evaluation["granularities"]))
        rows += imagenet_records(imagenet, image_set, chosen, base, args.seed)
        records.extend(rows)
        runs.append(run_record(base, prov, config, result, start))
        logger.info("%s %s: %s", name, layout, {(r["granularity"], r["method"]): r["map"] for r in rows
                                                  if r["method"] == "mghash"})
    runs.append({"dataset": name, "suite": "mobilenet", **prov, "wall_seconds": round(time.perf_counter() - wall, 1)})


SUITES = {"fast": "fast_cnn from scratch, fast recipe", "mobilenet": "MobileNetV2 ImageNet, cached trunk",
          "unsupervised": "Label-free codes (labels hidden from training): MobileNetV2 ImageNet, cached trunk"}
ORDER = {"mghash_tta": 0, "mghash_tta_db": 1, "mghash": 2, "mghash_unsupervised": 2, "mghash_tta_float": 3, "mghash_tta_db_float": 4,
         "mghash_float": 5, "itq": 6, "pca": 7, "lsh": 8, "classifier_sigmoid": 9, "float_cosine": 10,
         "float_l2": 11}


# The fast suite's methods drawn in the plot (the table has them all).
FAST_PLOTTED = ("mghash_tta", "mghash", "itq", "classifier_sigmoid", "float_cosine")


def suite_of(row) -> str:
    return row.get("suite", "mobilenet")


def _fast_run_lines(runs) -> list:
    return [f"- **{r['dataset']} {layout_name(r)}**: `{r['command']}`, {r['date']}, {r['machine']}; "
            f"{r['epochs']} epochs, best epoch {r['best_epoch']} (val mAP {r['best_val_map_fine']:.3f}), "
            f"training {r['train_seconds'] / 60:.1f} min at {r['train_images_per_second']:.0f} images/s "
            f"({r['mixed_precision']}), evaluation {r['eval_seconds'] / 60:.1f} min"
            for r in runs if suite_of(r) == "fast" and "layout" in r]


def layout_name(row) -> str:
    return f"{row['layout']} [{row['variant']}]" if row.get("variant") else row["layout"]


def _run_lines(runs, suite) -> list:
    if suite == "fast":
        return _fast_run_lines(runs)
    lines = []
    for head in (r for r in runs if "wall_seconds" in r and suite_of(r) == suite):
        lines += [f"- **{head['dataset']}**: `{head['command']}`, {head['date']}, {head['machine']}; "
                  f"wall time {head['wall_seconds'] / 60:.1f} min (data, training, evaluation)"]
        for r in (r for r in runs if r["dataset"] == head["dataset"] and "layout" in r and suite_of(r) == suite
                  and r.get("command", head["command"]) == head["command"]):
            chosen = ("last epoch kept (no labels)" if r["best_epoch"] is None else
                      f"best epoch {r['best_epoch']} (val mAP {r['best_val_map_fine']:.3f})")
            line = (f"  - {layout_name(r)}: {r['epochs']} epochs, {chosen}, training {r['train_seconds'] / 60:.1f} min "
                    f"at {r.get('train_items_per_second') or r['train_images_per_second']:.0f} items/s")
            if "cache_seconds" in r:  # runs of the earlier, hand-written loop
                line += (f", trunk cache {r['cache_seconds'] / 60:.1f} min, full model vs cached path sign "
                         f"agreement {100 * r['full_model_agreement']:.2f} %")
            lines.append(line)
    return lines


def markdown(records, runs) -> str:
    lines = ["# Retrieval quality on real data", "",
             "Written by `benchmarks/quality.py` (protocols in its docstring, in `benchmarks/quality_fast.py` "
             "and in every record of `quality.json`). mAP@all; `map` ranks Hamming ties by database order, "
             "`tie-aware` is the exact expectation over tie orders. Plot: `quality.png`."]
    for suite, title in SUITES.items():
        rows = [r for r in records if suite_of(r) == suite]
        if not rows:
            continue
        lines += ["", f"## {title}", "", "### Runs", "", *_run_lines(runs, suite), "", "### Results", "",
                  "| dataset | granularity | model layout | bits | method | features | mAP | tie-aware mAP | eval s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r["dataset"], r["granularity"], layout_name(r), r["bits"] or 10**6,
                                             r["features"] != "model", ORDER.get(r["method"], 99))):
            lines.append(f"| {r['dataset']} | {r['granularity']} | {layout_name(r)} | {r['bits'] or '–'} | "
                         f"{r['method']} | {r['features']} | {r['map']:.4f} | {r['map_tie_aware']:.4f} | "
                         f"{r.get('seconds', '–')} |")
    return "\n".join(lines) + "\n"


def plot(records, path):
    """One panel per dataset and granularity: mAP@all (tie-aware) against bits per method;
    float references as horizontal lines."""
    from mghash_tf.evaluation import plots

    panels = sorted({(r["dataset"], r["granularity"]) for r in records})
    fig, axes = plots.panels(len(panels))
    for ax, (dataset, gran) in zip(axes, panels):
        rows = [r for r in records if (r["dataset"], r["granularity"]) == (dataset, gran)]
        series = {}
        for r in rows:
            if suite_of(r) == "fast" and r["method"] not in FAST_PLOTTED:
                continue
            if suite_of(r) == "unsupervised" and (r["method"] != "mghash_unsupervised" or r.get("variant")):
                continue  # its baselines are the mobilenet suite's ImageNet-feature ones
            label = r["method"] if r["features"] == "model" else f"{r['method']} ({r['features']})"
            if suite_of(r) == "fast":
                if r.get("variant"):
                    continue  # the plot shows the main runs; the table has the variants
                label += " [fast]" if r["layout"].startswith("plain") else f" [fast {r['layout']}]"
            series.setdefault(label, []).append((r["bits"], r["map_tie_aware"]))
        for label, points in sorted(series.items()):
            method = label.split(" ")[0]
            style = dict(EXTRA_STYLE.get(method) or plots.METHOD_STYLE.get(method, {}))
            if "[fast" in label:
                style.update(marker="s", color=style.get("color", "tab:red"))
            if "(" in label:
                style.update(ls=":", lw=1)
            if points[0][0] is None:
                ax.axhline(points[0][1], label=label, **{**style, "ls": "--" if "(" not in label else ":"})
                continue
            bits, maps = zip(*sorted(points))
            ax.plot(bits, maps, label=label, **{"marker": "o", **style})
        ax.set(title=f"{dataset}, {gran} labels", xlabel="bits", ylabel="mAP@all (tie-aware)")
        ax.legend(fontsize=7)
    return plots.save_figure(fig, path)


def _replaced(rows, args) -> list:
    """Rows that this run does not redo (same dataset, suite and, when given, layouts)."""
    def redone(r):
        return (r["dataset"] in args.dataset and suite_of(r) == args.suite and r.get("variant") == args.variant
                and (not args.layouts or r.get("layout") in args.layouts))
    return [r for r in rows if not redone(r)]


def main(argv=None):
    from export.report import provenance, write_json
    from mghash_tf.core.files import write_bytes_atomic

    import quality_fast
    import quality_unsupervised

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    if args.suite != "fast" and not WEIGHTS.is_file():
        raise SystemExit(f"{WEIGHTS} is absent: this benchmark needs the ImageNet MobileNetV2 weights in "
                         "../shared/weights (see its README); nothing was measured.")
    json_path, runs_path = args.out / "quality.json", args.out / "quality_runs.json"
    records = _replaced(json.loads(json_path.read_text()) if json_path.exists() else [], args)
    runs = _replaced(json.loads(runs_path.read_text()) if runs_path.exists() else [], args)
    command = ("python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()

    def save():
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(json_path, records)
        write_json(runs_path, portable(runs))
        write_bytes_atomic(args.out / "quality.md", markdown(records, runs).encode())
        plot(records, args.out / "quality.png")

    for name in args.dataset:
        if args.suite == "fast":
            for _ in quality_fast.run_dataset(name, data_path(name), args, records, runs, provenance(command)):
                save()
        elif args.suite == "unsupervised":
            quality_unsupervised.run_dataset(name, args, records, runs, provenance(command))
        else:
            run_dataset(name, args, records, runs, provenance(command))
        save()
    print(markdown(records, runs))


if __name__ == "__main__":
    main()
