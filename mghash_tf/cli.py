"""``python -m mghash_tf train|evaluate ...``: the command line. Only this module prints."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from mghash_tf.core.commands import add_verbose_flag, run_command
from mghash_tf.tf_logs import start_tensorflow
from mghash_tf.training.config import RECIPES, TrainConfig

def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field; flags override the JSON config."""
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, dest=field.name, default=None, action=argparse.BooleanOptionalAction)
        elif field.type in ("int", "int | None"):
            parser.add_argument(flag, dest=field.name, default=None, type=int)
        elif field.type in ("float", "float | None"):
            parser.add_argument(flag, dest=field.name, default=None, type=float)
        else:
            parser.add_argument(flag, dest=field.name, default=None)


def config_from_args(args) -> TrainConfig:
    """The JSON config (or the defaults), then ``--recipe``'s preset values, then the flags."""
    base = TrainConfig.from_json(args.config) if args.config else TrainConfig()
    if getattr(args, "recipe", None):
        base = base.replace(**RECIPES.get(args.recipe, {}), recipe=args.recipe)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.name != "recipe" and getattr(args, f.name, None) is not None}
    if isinstance(overrides.get("layout"), str) and overrides["layout"].isdigit():
        overrides["layout"] = int(overrides["layout"])
    return base.replace(**overrides)


def _print_maps(title: str, scores: dict) -> None:
    print(f"{title}: " + ", ".join(f"{k.removeprefix('map_')} mAP {v:.4f}" for k, v in scores.items()))


def cmd_train(args) -> int:
    from mghash_tf.training.train import train

    config = config_from_args(args)
    result = train(config, args.out, verbose=args.progress)
    if result.metrics["labels"] == "none":
        print("trained without labels (labels=none): the codes follow the pretrained backbone's similarities "
              "and stay stable under flips" + ("" if "val" in result.metrics else "; no labels, so no mAP"))
    if "val" in result.metrics:
        _print_maps("validation", result.metrics["val"])
    if "test" in result.metrics:
        _print_maps("test", result.metrics["test"])
    print(f"model: {result.out_dir / 'model.keras'}")
    return 0


def _print_table(result: dict) -> None:
    from mghash_tf.evaluation.evaluate import summary_rows

    print(f"protocol: {result['protocol']}")
    print(f"queries: {result['num_query']}, database: {result['num_db']}")
    header = f"{'granularity':<12} {'bits':>4} {'method':<13} {'mAP':>7} {'mAP_tie':>7} {'P@100':>7} {'P@100_t':>7} {'P@r2':>7}"
    print(header)
    print("-" * len(header))
    # Stable P@100 follows database order inside tie groups, so on a class-sorted database it
    # can be far from the tie-aware value; both are printed.
    for name, bits, method, m, mt, p100, p100t, pr2 in summary_rows(result):
        pr2_text = "-" if pr2 is None else f"{pr2:.4f}"
        print(f"{name:<12} {bits:>4} {method:<13} {m:>7.4f} {mt:>7.4f} {p100:>7.4f} {p100t:>7.4f} {pr2_text:>7}")
    for corruption, per_gran in result.get("robustness", {}).items():
        for name, maps in per_gran.items():
            print(f"robustness {corruption:<20} {name:<8} mAP by severity 0..3: "
                  + " ".join(f"{v:.4f}" for v in maps))


def _evaluation_file(path):
    """``--compare`` entry: an evaluation.json, or an evaluate output directory holding one."""
    from pathlib import Path

    path = Path(path)
    path = path / "evaluation.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"`--compare` takes evaluation.json files of earlier `evaluate` runs (or "
                                f"their --out directories). Received: {path} (no such file)")
    return path


def cmd_evaluate(args) -> int:
    import json
    from pathlib import Path

    from mghash_tf.evaluation import evaluate as ev
    from mghash_tf.model.saving import load_model
    from mghash_tf.evaluation import plots

    compared = [json.loads(_evaluation_file(p).read_text()) for p in args.compare]
    model = load_model(args.model)
    image_set = ev.load_data(args.data, model)
    if image_set.split is None:  # the model's own training split, unless the flags give one
        trained = Path(args.model) if Path(args.model).is_dir() else Path(args.model).parent
        config = TrainConfig.from_json(trained / "config.json") if (trained / "config.json").exists() else None
        fraction = args.test_fraction if args.test_fraction is not None else getattr(config, "test_fraction", None)
        seed = args.split_seed if args.split_seed is not None else getattr(config, "seed", 1)
        if fraction is not None:
            from mghash_tf.data import with_test_split

            image_set = with_test_split(image_set, fraction, seed=seed)
    granularities = args.granularity.split(",") if args.granularity else None
    result = ev.evaluate(model, image_set, granularities=granularities, baselines=args.baselines,
                         robustness=args.robustness, max_query=args.max_query, max_db=args.max_db,
                         seed=args.seed)
    result["data"] = args.data
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(result, indent=1))
    written = [plots.pr_curves(result, out / "pr_curves.png")]
    main_gran = "fine" if "fine" in result["granularities"] else next(iter(result["granularities"]))
    written.append(plots.map_vs_bits([result, *compared], out / "map_vs_bits.png", granularity=main_gran))
    grid = result["granularities"][main_gran]
    written.append(plots.retrieval_grid(image_set.x, grid["examples"], out / "retrieval_grid.png",
                                        title=f"{main_gran}: query, then top {len(grid['examples'][0]['db_indices'])} "
                                              "(green = relevant, red = not)"))
    if args.robustness:
        written.append(plots.robustness(result, out / "robustness.png", granularity=main_gran))
    _print_table(result)
    print(f"wrote {out / 'evaluation.json'} and " + ", ".join(p.name for p in written))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mghash_tf", description=__doc__)
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="two-stage training from a JSON config and/or flags")
    p.add_argument("--config", help="TrainConfig JSON file; flags override it")
    p.add_argument("--out", required=True, help="output directory (re-run to resume)")
    p.add_argument("--progress", type=progress_mode, default="auto",
                   help="Keras progress: 0 silent, 1 bar, 2 a line per epoch, auto (default): "
                        "a bar on a terminal, else a line per epoch")
    _add_config_flags(p)
    p.set_defaults(func=cmd_train)
    e = sub.add_parser("evaluate", help="mAP per granularity, baselines, robustness and plots")
    e.add_argument("--model", required=True, help="training output directory (or its model.keras)")
    e.add_argument("--data", required=True, help="data spec: demo, npz:PATH, folder:PATH or tfds:NAME")
    e.add_argument("--granularity", default=None,
                   help="comma-separated granularities (fine, coarse, seg_<name>); default: all")
    e.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="LSH, PCA-sign, ITQ and float cosine on the same backbone features")
    e.add_argument("--robustness", action="store_true", help="mAP of corrupted queries")
    e.add_argument("--max-query", type=int, default=None, help="seeded random subset of the queries")
    e.add_argument("--max-db", type=int, default=None, help="seeded random subset of the database")
    e.add_argument("--compare", nargs="*", default=[],
                   help="earlier evaluation.json files or evaluate --out directories (other bit counts) "
                        "for the mAP-vs-bits plot")
    e.add_argument("--test-fraction", type=float, default=None,
                   help="data without a split: seeded stratified test fraction (default: the model's config.json)")
    e.add_argument("--split-seed", type=int, default=None, help="its seed (default: the model's training seed)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", required=True, help="directory for evaluation.json and the PNGs")
    e.set_defaults(func=cmd_evaluate)
    add_verbose_flag(parser, (p, e), help="show TensorFlow's own log lines (C++, absl, tensorflow loggers)")
    return parser


def progress_mode(text: str):
    """``--progress`` value: 'auto' or a Keras ``verbose`` level 0, 1 or 2."""
    if text == "auto":
        return text
    if text not in ("0", "1", "2"):
        raise argparse.ArgumentTypeError(f"must be auto, 0, 1 or 2. Received: {text!r}")
    return int(text)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    start_tensorflow(args.verbose)
    return run_command(args.func, args)
