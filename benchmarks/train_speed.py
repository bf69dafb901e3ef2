"""Training images/s of the fast recipe (``fast_cnn``) in float32 against bfloat16, same run.

    python benchmarks/train_speed.py [--images 6144] [--epochs 3] [--layout plain64]

Each precision trains through :func:`mghash_tf.training.train.train` (the real pipeline:
augmentation, Lookahead, the OrthoHash loss) on the first ``--images`` CIFAR-10 training images
from ``../shared/data/cifar10.npz``; images/s is the median over epochs of the training pass
alone (the validation pass is not counted). bfloat16 needs AVX512_BF16/AMX; without it only
float32 is measured and the report says so. Results: ``benchmarks/results/train_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "cifar10.npz"


def measure(precision: str, args) -> dict:
    from mghash_tf.training.config import TrainConfig
    from mghash_tf.training.train import train

    config = TrainConfig.preset("fast", data=f"npz:{DATA}", layout=args.layout, frozen_epochs=args.epochs,
                                max_train=args.images, mixed_precision=precision, val_database_size=500,
                                tta=False, seed=1)
    with tempfile.TemporaryDirectory() as out:
        result = train(config, out, verbose=0)
    rate = result.metrics["train_images_per_second"]
    return {"precision": result.metrics["mixed_precision"], "images_per_second": rate,
            "train_seconds": result.metrics["train_seconds"]}


def markdown(report: dict) -> str:
    lines = ["# Training speed of the fast recipe", "",
             f"`{report['command']}`, {report['date']}, {report['machine']}.", "",
             f"{report['images']} CIFAR-10 training images, {report['epochs']} epochs, batch "
             f"{report['batch_size']}, layout {report['layout']}; images/s = median over epochs of the "
             "training pass (validation excluded).", "",
             "| precision | images/s | training s |", "|---|---|---|"]
    lines += [f"| {r['precision']} | {r['images_per_second']:.0f} | {r['train_seconds']:.0f} |" for r in report["runs"]]
    if report.get("speedup") is not None:
        lines += ["", f"bfloat16 / float32: **{report['speedup']:.2f}x**."]
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from export.report import provenance, write_json
    from mghash_tf.core.files import write_bytes_atomic
    from mghash_tf.training.precision import cpu_has_bf16

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=6144)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--layout", default="plain64")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    if not DATA.is_file():
        raise SystemExit(f"{DATA} is absent (see ../shared/data/README.md); nothing was measured.")
    command = ("python benchmarks/train_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    precisions = ["none", "bfloat16"] if cpu_has_bf16() else ["none"]
    runs = [measure(pr, args) for pr in precisions]
    from mghash_tf.training.config import RECIPES

    report = {**provenance(command), "images": args.images, "epochs": args.epochs, "layout": args.layout,
              "batch_size": RECIPES["fast"]["batch_size"], "runs": runs,
              "speedup": round(runs[1]["images_per_second"] / runs[0]["images_per_second"], 2) if len(runs) == 2 else None,
              "note": None if len(runs) == 2 else "This CPU has no native bfloat16: float32 only."}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "train_speed.json", report)
    write_bytes_atomic(args.out / "train_speed.md", markdown(report).encode())
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
