"""``python -m export convert|parity|bench`` (see ``--help`` of each)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from mghash_tf.core.commands import add_verbose_flag, run_command
from mghash_tf.tf_logs import start_tensorflow

DEFAULT_DATA = "npz:../shared/data/cifar10.npz"


def cmd_convert(args):
    from export import convert, quantize
    from mghash_tf.model import describe
    from mghash_tf.model.saving import load_model

    variants = convert.parse_variants(args.variant)
    model = load_model(args.model)
    rep = None
    if any(v in convert.NEEDS_DATA for v in variants):
        if not args.rep_data:
            raise ValueError(f"variants {variants} include integer ones: pass --rep-data SPEC "
                             "(training images for calibration)")
        rep = quantize.representative_images(args.rep_data, args.rep_count, describe(model)["input_size"],
                                             seed=args.seed)
    paths = convert.convert_model(model, args.out, variants=variants, representative=rep,
                                  conversion={"representative_data": args.rep_data} if rep is not None else None)
    for variant, path in paths.items():
        print(f"{variant:10s} {path.stat().st_size:>12,d} bytes  {path}")


def _tflite_files(dirs) -> list:
    files = [p for d in dirs for p in sorted(Path(d).glob("model_*.tflite"))]
    if not files:
        raise ValueError(f"no model_*.tflite files in {list(dirs)}")
    return files


def cmd_parity(args):
    from export import report
    from export.parity import parity_report
    from mghash_tf.data import load_source
    from mghash_tf.model.saving import load_model

    model = load_model(args.model)
    image_set = load_source(args.data, image_size=int(model.input_shape[1]))
    result = parity_report(model, _tflite_files(args.tflite_dir), image_set, n_query=args.n_query,
                           n_db=args.n_db, seed=args.seed, num_threads=args.threads)
    result = {**report.provenance(_command()), "model_path": str(args.model), "data": args.data,
              "note": args.note, **result}
    runs = json.loads(Path(args.json).read_text()) if args.append and Path(args.json).is_file() else []
    report.write_json(args.json, runs + [result])
    if args.md:
        report.write_parity_markdown(args.md, runs + [result])
    for row in result["variants"]:
        print(f"{row['file']:28s} agreement {row['bit_agreement']['all']:.4f}  mAP {row['map']:.4f} "
              f"(Keras {result['keras']['map']:.4f})")


def _trained(paths, data_spec) -> list:
    """Models given with --trained; a training folder's config.json must name the bench data."""
    from mghash_tf.model.saving import load_model

    models = []
    for path in paths:
        config = Path(path) / "config.json"
        if config.is_file():
            trained_on = json.loads(config.read_text()).get("data", "")
            if Path(trained_on.partition(":")[2] or trained_on).resolve() != \
                    Path(data_spec.partition(":")[2] or data_spec).resolve():
                raise ValueError(f"{path} was trained on {trained_on!r}, the bench evaluates on "
                                 f"{data_spec!r}; its records could not be marked trained")
        models.append(load_model(path))
    return models


def cmd_bench(args):
    from export import bench, report
    from mghash_tf.data import load_source

    rows = tuple(r for r in bench.DEFAULT_ROWS if r.backbone in args.backbones)
    settings = bench.BenchSettings(rows=rows, bits=tuple(args.bits), n_query=args.n_query, n_db=args.n_db,
                                   rep_count=args.rep_count, repeats=args.repeats,
                                   variants=tuple(args.variants.split(",")))
    meta = report.provenance(_command())
    image_set = load_source(args.data, image_size=32)
    records = bench.run_bench(image_set, settings, trained_models=_trained(args.trained, args.data))
    report.write_json(args.json, records)
    notes = [f"Data: {args.data}; query = {settings.n_query} test-split images, database = "
             f"{settings.n_db} train-split images (seeded samples); mAP@all with fine labels.",
             f"Latency: LiteRT `invoke()` at batch 1, p50/p90 of {settings.repeats} runs (1 thread) and "
             f"{max(settings.repeats // 2, 5)} runs (2 threads) after 3 warm-up runs; the files of one backbone are "
             f"timed in turn, in blocks of 10 runs after one untimed run; int8 calibration "
             f"with {settings.rep_count} training images. Reduced sizes keep the run short."]
    if any(r["model"] == "full" and not r["trained"] for r in records):
        notes.append("Untrained rows (trained = no) are random-init models: their sizes and latencies are "
                     "real, their bit agreement and mAP are not what a trained model gives.")
    notes += [f"Load average at the end: {os.getloadavg()[0]:.2f}."] + args.note
    report.write_bench_markdown(Path(args.json).with_suffix(".md"), records, meta, notes)
    report.plot_bench(Path(args.json).with_suffix(".png"), records)
    print(report.bench_table(records))


def _command() -> str:
    return "python -m export " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def build_parser() -> argparse.ArgumentParser:
    from export import bench
    from export.convert import DEFAULT_VARIANTS, VARIANTS

    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="Keras model -> .tflite variants with the description embedded")
    c.add_argument("--model", required=True, help=".keras file or a training folder")
    c.add_argument("--variant", default="all", help=f"'all' ({','.join(DEFAULT_VARIANTS)}) or a comma "
                   f"list of {VARIANTS}")
    c.add_argument("--out", required=True, help="output folder (model_<variant>.tflite)")
    c.add_argument("--rep-data", help="data spec for int8 calibration, e.g. npz:PATH (train split used)")
    c.add_argument("--rep-count", type=int, default=200)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_convert)
    p = sub.add_parser("parity", help="Keras vs TFLite: bit agreement, mAP, flipped bits")
    p.add_argument("--model", required=True)
    p.add_argument("--tflite-dir", required=True, action="append", help="repeatable")
    p.add_argument("--data", required=True, help="data spec with train (0) and test (1) splits")
    p.add_argument("--n-query", type=int, default=1000)
    p.add_argument("--n-db", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", required=True, help="a list of runs (see --append)")
    p.add_argument("--append", action="store_true", help="add this run to the runs already in --json")
    p.add_argument("--md", help="also write a Markdown summary of all runs here")
    p.add_argument("--note", default="", help="what this run tests (shown in the Markdown)")
    p.set_defaults(func=cmd_parity)
    b = sub.add_parser("bench", help="model-size benchmark (size, latency, agreement, mAP)")
    b.add_argument("--json", default="benchmarks/results/model_size.json")
    b.add_argument("--data", default=DEFAULT_DATA)
    b.add_argument("--trained", action="append", default=[], help="trained .keras file or training "
                   "folder (repeatable); replaces the random-init model of its backbone and bits")
    b.add_argument("--backbones", nargs="+", default=[r.backbone for r in bench.DEFAULT_ROWS])
    b.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    b.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    b.add_argument("--n-query", type=int, default=200)
    b.add_argument("--n-db", type=int, default=1000)
    b.add_argument("--rep-count", type=int, default=100)
    b.add_argument("--repeats", type=int, default=100, help="timed runs per file, 1 thread (half with 2)")
    b.add_argument("--note", action="append", default=[], help="extra line for the Markdown report")
    b.set_defaults(func=cmd_bench)
    add_verbose_flag(parser, (c, p, b))
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    start_tensorflow(args.verbose)
    return run_command(args.func, args, raise_exit=True)


if __name__ == "__main__":
    sys.exit(main())
