"""The hashing objectives compared on the fast recipe: the demo's training run (fast_cnn, mg64,
the embedded 15,000-image CIFAR-10 sample, 7 epochs) with only ``loss`` changed.

    python benchmarks/objectives.py [--losses ortho csq margin dpsh] [--epochs 7]

Test mAP@all (query = the sample's 1,000 test images, database = its training split minus the
validation part, no TTA), fine and coarse, and the training seconds, per objective. Results:
``benchmarks/results/objectives.{json,md}``; a rerun replaces the rows of the losses it ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(loss: str, epochs: int) -> dict:
    from demo.run import demo_config
    from mghash_tf.training.train import train

    config = dataclasses.replace(demo_config(epochs), loss=loss)
    with tempfile.TemporaryDirectory() as out:
        result = train(config, out, verbose=0)
    test = result.metrics["test"]
    return {"loss": loss, "epochs": epochs, "map_fine": round(test["map_fine"], 4),
            "map_coarse": round(test["map_coarse"], 4), "train_seconds": result.metrics["train_seconds"],
            "mixed_precision": result.metrics["mixed_precision"]}


def markdown(report: dict) -> str:
    lines = ["# Hashing objectives on the fast recipe", "",
             "The demo's training run (`fast_cnn`, `mg64`, embedded CIFAR-10 sample, batch 256, rate 0.4) "
             "with only `loss` changed. Test mAP@all, query = 1,000 test images, database = the training "
             "split minus validation, no TTA.", "",
             "| loss | epochs | fine mAP | coarse mAP | training s | command, date |", "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['loss']} | {r['epochs']} | {r['map_fine']:.4f} | {r['map_coarse']:.4f} | "
                     f"{r['train_seconds']:.0f} | `{r['command']}`, {r['date']} |")
    lines += ["", f"Machine: {report['machine']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from export.report import provenance, write_json
    from mghash_tf.core.files import write_bytes_atomic

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--losses", nargs="+", default=["ortho", "csq"],
                   help="loss specs: terms of ortho, csq, margin, dpsh joined with +")
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    command = ("python benchmarks/objectives.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    path = args.out / "objectives.json"
    report = json.loads(path.read_text()) if path.exists() else {"runs": []}
    for loss in args.losses:
        prov = provenance(command)
        row = {**run(loss, args.epochs), "command": command, "date": prov["date"]}
        report["runs"] = [r for r in report["runs"] if r["loss"] != loss] + [row]
        report["machine"] = prov["machine"]
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(path, report)
        write_bytes_atomic(args.out / "objectives.md", markdown(report).encode())
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
