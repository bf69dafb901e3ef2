"""``python -m mghash_tf train|demo ...``: the command line. Only this module prints."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from mghash_tf.config import TrainConfig

def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field; flags override the JSON config."""
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, dest=field.name, default=None, action=argparse.BooleanOptionalAction)
        elif field.type in ("int", "int | None"):
            parser.add_argument(flag, dest=field.name, default=None, type=int)
        elif field.type == "float":
            parser.add_argument(flag, dest=field.name, default=None, type=float)
        else:
            parser.add_argument(flag, dest=field.name, default=None)


def config_from_args(args) -> TrainConfig:
    base = TrainConfig.from_json(args.config) if args.config else TrainConfig()
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    if isinstance(overrides.get("layout"), str) and overrides["layout"].isdigit():
        overrides["layout"] = int(overrides["layout"])
    return base.replace(**overrides)


def _print_maps(title: str, scores: dict) -> None:
    print(f"{title}: " + ", ".join(f"{k.removeprefix('map_')} mAP {v:.4f}" for k, v in scores.items()))


def cmd_train(args) -> int:
    from mghash_tf.train import train

    config = config_from_args(args)
    result = train(config, args.out, verbose=args.verbose)
    _print_maps("validation", result.metrics["val"])
    if "test" in result.metrics:
        _print_maps("test", result.metrics["test"])
    print(f"model: {result.out_dir / 'model.keras'}")
    return 0


def cmd_demo(args) -> int:
    from mghash_tf.demo import run_demo

    run_demo(args.out, epochs=args.epochs, verbose=args.verbose)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mghash_tf", description=__doc__)
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="two-stage training from a JSON config and/or flags")
    p.add_argument("--config", help="TrainConfig JSON file; flags override it")
    p.add_argument("--out", required=True, help="output directory (re-run to resume)")
    p.add_argument("--verbose", type=int, default=1, help="Keras progress: 0 silent, 1 bar, 2 line")
    _add_config_flags(p)
    p.set_defaults(func=cmd_train)
    d = sub.add_parser("demo", help="train -> export -> index -> query on the embedded sample")
    d.add_argument("--out", default="demo_out")
    d.add_argument("--epochs", type=int, default=None, help="override the demo's epoch count")
    d.add_argument("--verbose", type=int, default=2)
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
