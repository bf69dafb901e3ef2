"""Retrieval quality on real data: MGHash codes against hashing baselines on the same backbone.

Two suites, one report (``benchmarks/results/quality.{json,md,png}`` + ``quality_runs.json``):

    python benchmarks/quality.py --suite fast --dataset cifar10 --layouts plain64 --fast-epochs 15
    python benchmarks/quality.py --suite mobilenet            # both datasets, MobileNetV2 cached trunk
    python benchmarks/quality.py --suite mobilenet --quick --out /tmp/q   # small subsets, minutes

A rerun replaces the records of the same dataset, suite and layouts. The ``fast`` suite (the
training recipe for small images) is described in ``benchmarks/quality_fast.py``.

Protocol of the ``mobilenet`` suite (also written into every record):

- Backbone: MobileNetV2 with the ImageNet weights in ``../shared/weights``, 32 px images resized
  to ``--image-size`` inside the model. Its frozen part runs once (:mod:`mghash_tf.training.cached`): the
  training images are cached as themselves and horizontally flipped, and the attention pooling,
  the hash head and the backbone's last stage (``mid`` tap to ``high``, BatchNorm frozen) train on
  the cache. The trained layers are the full model's, which is saved and checked against the
  cached path (``full_model_agreement``).
- Model selection: the epoch with the best validation mAP (fine), validation = 10 % of train
  (stratified, seeded) querying the rest of train. The test split is never used to select.
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
    p.add_argument("--suite", choices=("fast", "mobilenet"), default="mobilenet")
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
    p.add_argument("--mixed-precision", help="fast suite: override the recipe's setting (auto)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--models", type=Path, default=ROOT / "runs" / "quality",
                   help="where the trained models are saved (not committed)")
    args = p.parse_args(argv)
    if args.quick:
        args.max_train, args.max_test, args.epochs = args.max_train or 2000, args.max_test or 500, 2
    return args


def data_path(name) -> Path:
    path = SHARED / "data" / DATASETS[name]["file"]
    if not path.is_file():
        raise SystemExit(f"{path} is absent: this benchmark needs the real data in ../shared/data "
                         "(see its README); nothing was measured.")
    return path


def load(name, args, rng):
    from mghash_tf.data import load_source, train_val_split

    data = load_source(f"npz:{data_path(name)}")
    train, test = data.subset(data.split == 0), data.subset(data.split == 1)
    for part, limit in (("train", args.max_train), ("test", args.max_test)):
        n = len(train if part == "train" else test)
        if limit and limit < n:
            idx = np.sort(rng.choice(n, limit, replace=False))
            train, test = (train.subset(idx), test) if part == "train" else (train, test.subset(idx))
    fit_idx, val_idx = train_val_split(train, val_fraction=0.1, seed=args.seed)
    return train, test, fit_idx, val_idx


def score(q, db, ql, dl, metric):
    from mghash_tf.core.metrics import mean_average_precision

    start = time.perf_counter()
    stable = mean_average_precision(q, db, ql, dl, metric=metric)
    tied = mean_average_precision(q, db, ql, dl, metric=metric, tie_aware=True)
    return {"map": round(float(stable), 5), "map_tie_aware": round(float(tied), 5),
            "seconds": round(time.perf_counter() - start, 1)}


def baselines(q_feat, db_feat, ql, dl, bits, seed):
    from mghash_tf.evaluation import baselines as bl

    for method, hasher in (("itq", bl.ITQ(bits, seed=seed)), ("lsh", bl.LSH(bits, seed=seed)),
                           ("pca", bl.PCASign(bits))):
        start = time.perf_counter()
        hasher.fit(db_feat)
        fit = time.perf_counter() - start
        yield method, {**score(hasher.encode(q_feat), hasher.encode(db_feat), ql, dl, "hamming"),
                       "fit_seconds": round(fit, 1)}


def run_dataset(name, args, records, runs, prov):
    import keras

    from mghash_tf.training import cached
    from mghash_tf.training.callbacks import validation_database
    from mghash_tf.training.config import TrainConfig
    from mghash_tf.model import build_model, encode, get_layout_of
    from mghash_tf.core.granularity import evaluation_granularities
    from mghash_tf.model.saving import save_model_atomic

    rng = np.random.default_rng(args.seed)
    wall = time.perf_counter()
    train, test, fit_idx, val_idx = load(name, args, rng)
    kw = dict(backbone="mobilenet_v2", image_size=args.image_size, input_size=32, weights=str(WEIGHTS))
    trunk = cached.split_model(build_model(layout="plain16", **kw), train_stages=args.train_stages).trunk
    start = time.perf_counter()
    c_fit, g_fit = cached.extract(trunk, train.x[fit_idx], views=tuple(args.views))
    c_val, g_val = cached.extract(trunk, train.x[val_idx])
    c_test, g_test = cached.extract(trunk, test.x)
    cache_seconds = time.perf_counter() - start
    labels = train.labels
    # Validation queries search a fixed sample of the fitting images (first view only).
    val_db_idx = validation_database(len(fit_idx), VAL_DATABASE, rng)
    val_db = [a[:1, val_db_idx] for a in c_fit]
    db_labels, q_labels = labels, test.labels

    def database(fit_part, val_part):
        out = np.empty((len(labels),) + fit_part.shape[1:], fit_part.dtype)
        out[fit_idx], out[val_idx] = fit_part, val_part
        return out

    imagenet_q, imagenet_db = g_test[0], database(g_fit[0], g_val[0])
    protocol = (f"query = {len(test)} test images, database = {len(train)} train images, mAP@all; "
                f"MobileNetV2 ImageNet @{args.image_size}px from 32 px, cached trunk"
                f" + {args.train_stages} trained backbone stage(s), views {'+'.join(args.views)}, "
                f"{args.epochs} epochs, selection on a {len(val_idx)}-image validation split of train")
    base = {"dataset": name, "protocol": protocol, "backbone": "mobilenet_v2", "image_size": args.image_size,
            "n_query": len(test), "n_database": len(train)}
    done_imagenet_float = set()
    for layout in args.layouts or DATASETS[name]["layouts"]:
        keras.utils.set_random_seed(args.seed)
        model = build_model(layout=layout, **kw)
        split = cached.split_model(model, train_stages=args.train_stages)
        config = TrainConfig(frozen_epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                             quantization_weight=args.quantization_weight, seed=args.seed, layout=layout)
        fit = cached.train_head(split, c_fit, labels[fit_idx], c_val, labels[val_idx], val_db,
                                labels[fit_idx][val_db_idx], config, verbose=2)
        codes_q = cached.predict_cached(split.head, c_test)
        codes_db = database(cached.predict_cached(split.head, c_fit), cached.predict_cached(split.head, c_val))
        feat_q = cached.predict_cached(split.features, c_test)
        feat_db = database(cached.predict_cached(split.features, c_fit),
                           cached.predict_cached(split.features, c_val))
        n_check = min(256, len(test))
        agreement = float(np.mean(np.sign(encode(model, test.x[:n_check])) == np.sign(codes_q[:n_check])))
        out_dir = args.models / f"{name}_{layout}"
        out_dir.mkdir(parents=True, exist_ok=True)
        save_model_atomic(model, out_dir / "model.keras")
        run = {**base, "layout": layout, "bits": int(codes_q.shape[1]), "epochs": args.epochs,
               "best_epoch": fit["best_epoch"], "best_val_map_fine": round(fit["best_val_map_fine"], 5),
               "train_seconds": round(fit["seconds"], 1), "cache_seconds": round(cache_seconds, 1),
               "train_items_per_second": round(fit["items_per_second"], 1),
               "full_model_agreement": agreement}
        runs.append(run)
        logger.info("trained %s", run)
        for gran, g in evaluation_granularities(get_layout_of(model)).items():
            if gran not in DATASETS[name]["granularities"]:
                continue
            bits, col = g.bit_indices(), g.label_column
            ql, dl = q_labels[:, col], db_labels[:, col]
            rec = {**base, "layout": layout, "bits": len(bits), "granularity": gran}
            records.append({**rec, "method": "mghash", "features": "model",
                            **score(codes_q[:, bits], codes_db[:, bits], ql, dl, "hamming"),
                            "train_seconds": run["train_seconds"]})
            records.append({**rec, "method": "mghash_float", "features": "model",
                            **score(codes_q[:, bits], codes_db[:, bits], ql, dl, "cosine")})
            for features, (fq, fdb) in (("model", (feat_q, feat_db)), ("imagenet", (imagenet_q, imagenet_db))):
                for method, result in baselines(fq, fdb, ql, dl, len(bits), args.seed):
                    records.append({**rec, "method": method, "features": features, **result})
                key = (features, gran)
                if features == "imagenet" and key in done_imagenet_float:
                    continue
                done_imagenet_float.add(key)
                records.append({**rec, "bits": None, "method": "float_cosine", "features": features,
                                **score(fq, fdb, ql, dl, "cosine")})
            logger.info("%s %s %s done", name, layout, gran)
    runs.append({"dataset": name, **prov, "wall_seconds": round(time.perf_counter() - wall, 1)})


SUITES = {"fast": "fast_cnn from scratch, fast recipe", "mobilenet": "MobileNetV2 ImageNet, cached trunk"}
ORDER = {"mghash_tta": 0, "mghash_tta_db": 1, "mghash": 2, "mghash_tta_float": 3, "mghash_tta_db_float": 4,
         "mghash_float": 5, "itq": 6, "pca": 7, "lsh": 8, "classifier_sigmoid": 9, "float_cosine": 10,
         "float_l2": 11}


# The fast suite's methods drawn in the plot (the table has them all).
FAST_PLOTTED = ("mghash_tta", "mghash", "itq", "classifier_sigmoid", "float_cosine")


def suite_of(row) -> str:
    return row.get("suite", "mobilenet")


def _fast_run_lines(runs) -> list:
    return [f"- **{r['dataset']} {r['layout']}**: `{r['command']}`, {r['date']}, {r['machine']}; "
            f"{r['epochs']} epochs, best epoch {r['best_epoch']} (val mAP {r['best_val_map_fine']:.3f}), "
            f"training {r['train_seconds'] / 60:.1f} min at {r['train_images_per_second']:.0f} images/s "
            f"({r['mixed_precision']}), evaluation {r['eval_seconds'] / 60:.1f} min"
            for r in runs if suite_of(r) == "fast" and "layout" in r]


def _run_lines(runs, suite) -> list:
    if suite == "fast":
        return _fast_run_lines(runs)
    lines = []
    for head in (r for r in runs if "wall_seconds" in r and suite_of(r) == suite):
        lines += [f"- **{head['dataset']}**: `{head['command']}`, {head['date']}, {head['machine']}; "
                  f"wall time {head['wall_seconds'] / 60:.1f} min (data, training, evaluation)"]
        for r in (r for r in runs if r["dataset"] == head["dataset"] and "layout" in r and suite_of(r) == suite):
            lines.append(f"  - {r['layout']}: {r['epochs']} epochs, best epoch {r['best_epoch']} "
                         f"(val mAP {r['best_val_map_fine']:.3f}), training {r['train_seconds'] / 60:.1f} min "
                         f"at {r['train_items_per_second']:.0f} items/s, trunk cache {r['cache_seconds'] / 60:.1f} "
                         f"min, full model vs cached path sign agreement {100 * r['full_model_agreement']:.2f} %")
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
        for r in sorted(rows, key=lambda r: (r["dataset"], r["granularity"], r["layout"], r["bits"] or 10**6,
                                             r["features"] != "model", ORDER.get(r["method"], 99))):
            lines.append(f"| {r['dataset']} | {r['granularity']} | {r['layout']} | {r['bits'] or '–'} | "
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
            label = r["method"] if r["features"] == "model" else f"{r['method']} ({r['features']})"
            if suite_of(r) == "fast":
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
        return (r["dataset"] in args.dataset and suite_of(r) == args.suite
                and (not args.layouts or r.get("layout") in args.layouts))
    return [r for r in rows if not redone(r)]


def main(argv=None):
    import json

    from export.report import provenance, write_json
    from mghash_tf.core.files import write_bytes_atomic

    import quality_fast

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    if args.suite == "mobilenet" and not WEIGHTS.is_file():
        raise SystemExit(f"{WEIGHTS} is absent: this benchmark needs the ImageNet MobileNetV2 weights in "
                         "../shared/weights (see its README); nothing was measured.")
    json_path, runs_path = args.out / "quality.json", args.out / "quality_runs.json"
    records = _replaced(json.loads(json_path.read_text()) if json_path.exists() else [], args)
    runs = _replaced(json.loads(runs_path.read_text()) if runs_path.exists() else [], args)
    command = ("python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()

    def save():
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(json_path, records)
        write_json(runs_path, runs)
        write_bytes_atomic(args.out / "quality.md", markdown(records, runs).encode())
        plot(records, args.out / "quality.png")

    for name in args.dataset:
        if args.suite == "fast":
            for _ in quality_fast.run_dataset(name, data_path(name), args, records, runs, provenance(command)):
                save()
        else:
            run_dataset(name, args, records, runs, provenance(command))
        save()
    print(markdown(records, runs))


if __name__ == "__main__":
    main()
