"""Retrieval-metric speed: stable + tie-aware mAP@all and P@100 before and after the one-pass
ranking, on the same data in one process and run.

    python benchmarks/metrics_speed.py --queries 10000 --db 50000 \\
        --json benchmarks/results/metrics_speed.json --md benchmarks/results/metrics_speed.md

``before`` is ``mghash_tf/core/{ranking,metrics}.py`` as of ``--before`` (a git revision; by
default the last commit before the change), loaded from ``git show`` into a temporary package,
called as the evaluation did: once per tie rule. ``after (2 calls)`` is the current code called
the same way, ``after (both)`` one ``retrieval_report(tie_aware="both")``. Data: class-clustered
64-d float32 embeddings (cosine) and their 64 sign bits (Hamming). Every mAP, P@100 and
per-query AP is compared with the before values (max relative difference).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from mghash_tf.core.metrics import retrieval_report  # noqa: E402

BEFORE = "7f3d5ee"  # last commit before the one-pass ranking
KEYS = ("map", "precision@100")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--db", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=64, help="embedding size = code bits")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--noise", type=float, default=1.5, help="within-class spread (centres ~N(0, 1))")
    p.add_argument("--metrics", nargs="+", default=["cosine", "hamming"], choices=["cosine", "hamming"])
    p.add_argument("--before", default=BEFORE, help="git revision of the code to compare with")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True)
    p.add_argument("--md")
    return p.parse_args(argv)


def load_before(revision: str, workdir: Path):
    """``retrieval_report`` of ``revision``, as package ``metrics_before`` under ``workdir``."""
    package = workdir / "metrics_before"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("ranking", "metrics"):
        source = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:mghash_tf/core/{name}.py"],
                                check=True, capture_output=True, text=True).stdout
        source = source.replace("from mghash_tf.core import ranking", "from . import ranking")
        (package / f"{name}.py").write_text(source)
    sys.path.insert(0, str(workdir))
    return importlib.import_module("metrics_before.metrics").retrieval_report


def make_data(args):
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.classes, args.dim))
    ql, dl = rng.integers(0, args.classes, args.queries), rng.integers(0, args.classes, args.db)
    q = (centres[ql] + args.noise * rng.standard_normal((args.queries, args.dim))).astype(np.float32)
    db = (centres[dl] + args.noise * rng.standard_normal((args.db, args.dim))).astype(np.float32)
    return q, db, ql, dl


def timed(fn):
    """Result, wall seconds and CPU seconds of this process (less hit by the other load)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - wall, time.process_time() - cpu)


def run_metric(metric, data, before_fn):
    q, db, ql, dl = data
    if metric == "hamming":
        q, db = np.where(q > 0, 1, -1).astype(np.int8), np.where(db > 0, 1, -1).astype(np.int8)
    options = dict(map_ks=(None,), ks=(100,), radius=None, metric=metric, per_query=True)
    two_calls = lambda fn: [fn(q, db, ql, dl, tie_aware=rule, **options) for rule in (False, True)]
    before, t_before = timed(lambda: two_calls(before_fn))
    after_two, t_two = timed(lambda: two_calls(retrieval_report))
    both, t_both = timed(lambda: retrieval_report(q, db, ql, dl, tie_aware="both", **options))
    record = {"metric": metric, "queries": len(q), "db": len(db)}
    for i, kind in enumerate(("seconds", "cpu_seconds")):
        record[kind] = {"before": round(t_before[i], 2), "after_two_calls": round(t_two[i], 2),
                        "after_both": round(t_both[i], 2)}
        record["speedup_both" + kind[:-7]] = round(t_before[i] / t_both[i], 2)
        record["speedup_two_calls" + kind[:-7]] = round(t_before[i] / t_two[i], 2)
    diffs = []
    for old, suffix in zip(before, ("", "_tie_aware")):
        for key in KEYS:
            record[key + suffix] = both[key + suffix]
            diffs.append(relative(old[key], both[key + suffix]))
        diffs.append(relative(old["per_query_ap"]["map"], both["per_query_ap"]["map" + suffix]))
    record["max_relative_difference"] = float(max(diffs))
    record["two_calls_equal_both"] = all(
        single[key] == both[key + suffix]
        for single, suffix in zip(after_two, ("", "_tie_aware")) for key in KEYS)
    return record


def relative(old, new) -> float:
    old, new = np.atleast_1d(np.asarray(old, np.float64)), np.atleast_1d(np.asarray(new, np.float64))
    keep = ~np.isnan(old)
    return float(np.max(np.abs(new[keep] - old[keep]) / np.maximum(np.abs(old[keep]), 1e-300)))


def machine():
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}"


def markdown(records, args, load_start, load_end, started):
    lines = [
        "# Metrics speed: stable + tie-aware mAP@all and P@100, before vs after the one-pass ranking",
        "",
        f"Command: `python benchmarks/metrics_speed.py {' '.join(sys.argv[1:])}`  ",
        f"Date: {started}  ",
        f"Machine: {machine()}  ",
        f"Python {platform.python_version()}, NumPy {np.__version__}  ",
        f"Load average (1/5/15 min) at start: {load_start}, at end: {load_end} (the 2 cores were "
        "shared with a training job: read the ratios, not the seconds)",
        "",
        f"Data: {args.queries:,} queries x {args.db:,} database items, {args.classes} classes, "
        f"{args.dim}-d class-clustered float32 embeddings (cosine) and their {args.dim} sign bits "
        f"(Hamming). before = revision `{args.before}` called once per tie rule (as the "
        "evaluation did); after (2 calls) = the current code called the same way; after (both) = "
        "one `retrieval_report(tie_aware=\"both\")`. Each timed once, in that order; CPU = "
        "this process's CPU time (NumPy's BLAS may use both cores for the float matmul).",
        "",
        "| metric | time | before s | after 2 calls s | after both s | before / after both | "
        "before / after 2 calls | mAP | mAP tie-aware | max rel. diff vs before |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        for kind, label in (("seconds", "wall"), ("cpu_seconds", "CPU")):
            s, tag = r[kind], kind[:-7]
            lines.append(f"| {r['metric']} | {label} | {s['before']} | {s['after_two_calls']} | "
                         f"{s['after_both']} | {r['speedup_both' + tag]} | "
                         f"{r['speedup_two_calls' + tag]} | {r['map']:.6f} | "
                         f"{r['map_tie_aware']:.6f} | {r['max_relative_difference']:.1e} |")
    lines += ["", "max rel. diff: over mAP, P@100 (both rules) and every per-query AP. "
              "after (2 calls) and after (both) gave identical numbers: "
              f"{all(r['two_calls_equal_both'] for r in records)}.", ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    data = make_data(args)
    with tempfile.TemporaryDirectory() as workdir:
        before_fn = load_before(args.before, Path(workdir))
        records = []
        for metric in args.metrics:
            records.append(run_metric(metric, data, before_fn))
            print(json.dumps(records[-1]), flush=True)
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    result = {"command": "python benchmarks/metrics_speed.py " + " ".join(sys.argv[1:]),
              "date": started, "machine": machine(), "numpy": np.__version__,
              "load_average_start": load_start, "load_average_end": load_end,
              "before_revision": args.before, "records": records}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(records, args, load_start, load_end, started))


if __name__ == "__main__":
    main()
