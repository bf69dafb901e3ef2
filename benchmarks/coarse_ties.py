"""Coarse search on the demo's int8 index: precision@10 when the 16-bit coarse prefix's distance
ties fall in insertion order (FAISS's rule, the index default) against ties ordered by the whole
code (``ties="code"``, what the CLIs, the server and the demo use), and the whole code itself.

    python -m demo --out demo_out
    python benchmarks/coarse_ties.py --demo-out demo_out --json benchmarks/results/coarse_ties.json \\
        --md benchmarks/results/coarse_ties.md

Queries: the demo's test split encoded by its int8 model; database: its indexed training split.
A coarse segment takes a handful of values, so a coarse query ties with most of its class: the
tie rule decides which members come first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from export.report import provenance, write_json  # noqa: E402
from mghash_tf.tf_logs import start_tensorflow  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo-out", default="demo_out", help="the output folder of `python -m demo`")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--json", required=True)
    p.add_argument("--md")
    return p.parse_args(argv)


def precision_at_k(index, queries, k, search, label_of, query_labels) -> float:
    _, ids = index.search(queries, k, **search)
    labels = np.array([label_of[n] for n in index.names_of(ids.ravel())]).reshape(ids.shape)
    return float((labels == query_labels[:, None]).mean())


def measure(demo_out: Path, k: int) -> list:
    from demo.run import demo_config
    from edge_demo.photos import load_index_for
    from mghash_tf.core.encoder import TFLiteEncoder
    from mghash_tf.core.granularity import search_args
    from mghash_tf.training.train import load_splits

    splits = load_splits(demo_config())
    train, test = splits.train, splits.test
    names = [f"{train.class_names_coarse[c]}/{train.class_names_fine[f]}/{i:05d}.png"
             for i, (f, c) in enumerate(zip(train.y_fine, train.y_coarse))]
    encoder = TFLiteEncoder(demo_out / "tflite" / "model_int8.tflite")
    index = load_index_for(demo_out / "photos.mgh", encoder)
    queries = encoder.encode(test.x)
    coarse = search_args(encoder.layout, "coarse")
    rules = [("coarse prefix, ties in insertion order", dict(coarse, ties="insertion")),
             ("coarse prefix, ties by the whole code", coarse),
             ("whole code", search_args(encoder.layout, "fine"))]
    levels = {"coarse": (dict(zip(names, train.y_coarse)), test.y_coarse),
              "fine": (dict(zip(names, train.y_fine)), test.y_fine)}
    return [{"search": name, "k": k, "queries": len(queries), "database": len(index),
             **{f"precision_{level}": precision_at_k(index, queries, k, search, *levels[level])
                for level in levels}}
            for name, search in rules]


def markdown(data: dict) -> str:
    p = data["provenance"]
    lines = ["# Coarse search: how distance ties are ordered", "",
             f"- Command: `{p['command']}`", f"- Date: {p['date']}", f"- Machine: {p['machine']}", "",
             "| search | k | precision@k, coarse label | precision@k, fine label |", "|---|---|---|---|"]
    lines += [f"| {r['search']} | {r['k']} | {r['precision_coarse']:.4f} | {r['precision_fine']:.4f} |"
              for r in data["results"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    start_tensorflow(verbose=False)
    data = {"provenance": provenance("python benchmarks/coarse_ties.py " + " ".join(sys.argv[1:])),
            "results": measure(Path(args.demo_out), args.k)}
    write_json(args.json, data)
    if args.md:
        Path(args.md).write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
