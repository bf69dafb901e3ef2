"""Search speed: our linear scan and MIH against FAISS IndexBinaryFlat, in one process and run.

    python benchmarks/search.py --n 100000 1000000 --bits 64 --k 1 10 100 --batch 1 100 \\
        --json benchmarks/results/search.json --md benchmarks/results/search.md

Every method answers the same queries, in rotating order (so load from other processes hits all
alike); ``ms_per_query`` is the median over queries (batch 1) or over repeats (batch > 1, total
time / batch). Results are checked: linear and MIH must agree exactly, and their distances must
equal FAISS's. FAISS runs on one thread with OMP_WAIT_POLICY=PASSIVE (set before it is imported).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from mghash_tf.core.index import HammingIndex  # noqa: E402
from mghash_tf.core.index.faiss_export import faiss_bytes, import_faiss  # noqa: E402
from mghash_tf.core.index.synthetic import clustered_codes, random_codes  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--bits", type=int, nargs="+", default=[64])
    p.add_argument("--k", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 100])
    p.add_argument("--codes", nargs="+", default=["random", "clustered"],
                   choices=["random", "clustered"])
    p.add_argument("--centres", type=int, default=100, help="clusters of the clustered codes")
    p.add_argument("--flip-p", type=float, default=0.1, help="bit-flip probability around a centre")
    p.add_argument("--single-queries", type=int, default=30, help="timed queries at batch 1")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats at batch > 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True, help="output: list of records")
    p.add_argument("--md", help="output: Markdown table")
    return p.parse_args(argv)


def make_data(kind, n, bits, nq, args, rng):
    if kind == "random":
        return random_codes(n, bits, rng), random_codes(nq, bits, rng)
    centres = random_codes(args.centres, bits, rng)
    db, _ = clustered_codes(n, centres, bits, args.flip_p, rng)
    queries, _ = clustered_codes(nq, centres, bits, args.flip_p, rng)  # fresh, not stored codes
    return db, queries


def build(db, bits):
    faiss = import_faiss()
    faiss.omp_set_num_threads(1)
    index, t0 = HammingIndex(bits), time.perf_counter()
    index.add(db)
    t1 = time.perf_counter()
    mih = index.build_mih()
    t2 = time.perf_counter()
    flat = faiss.IndexBinaryFlat(bits)
    flat.add(faiss_bytes(db, bits))
    t3 = time.perf_counter()
    builds = {"numpy_linear": t1 - t0, "numpy_mih": t2 - t1, "faiss_flat": t3 - t2}
    n = len(db)
    sizes = {"numpy_linear": index.nbytes / n, "numpy_mih": (index.nbytes + mih.nbytes) / n,
             "faiss_flat": flat.code_size}
    return index, flat, builds, sizes, mih.num_tables


def searchers(index, flat, bits):
    return {
        "numpy_linear": lambda q, k: index.search(q, k, method="linear"),
        "numpy_mih": lambda q, k: index.search(q, k, method="mih"),
        "faiss_flat": lambda q, k: flat.search(faiss_bytes(q, bits), k),
    }


def time_methods(methods, queries, k, batch, args):
    """{method: [ms per query, ...]} and each method's results on the timed queries."""
    names = list(methods)
    times = {m: [] for m in names}
    results = {m: [] for m in names}
    if batch == 1:
        rounds = [queries[i : i + 1] for i in range(args.single_queries)]
    else:
        rounds = [queries[:batch]] * args.repeats
    for r, q in enumerate(rounds):
        for m in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
            t0 = time.perf_counter()
            out = methods[m](q, k)
            times[m].append((time.perf_counter() - t0) * 1e3 / len(q))
            if batch == 1 or r == 0:
                results[m].append(out)
    return times, results


def check(results):
    """Linear and MIH identical; FAISS distances identical (its tie order may differ)."""
    for (dl, il), (dm, im), (df, _) in zip(results["numpy_linear"], results["numpy_mih"],
                                           results["faiss_flat"]):
        if not (np.array_equal(dl, dm) and np.array_equal(il, im) and np.array_equal(dl, df)):
            raise SystemExit("results differ between methods: the benchmark is invalid")


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


def run(args):
    rng = np.random.default_rng(args.seed)
    nq = max(max(args.batch), args.single_queries)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    records = []
    for bits in args.bits:
        for n in args.n:
            for kind in args.codes:
                db, queries = make_data(kind, n, bits, nq, args, rng)
                index, flat, builds, sizes, tables = build(db, bits)
                methods = searchers(index, flat, bits)
                for k in args.k:
                    for batch in args.batch:
                        times, results = time_methods(methods, queries, k, batch, args)
                        check(results)
                        faiss_ms = statistics.median(times["faiss_flat"])
                        for m, ts in times.items():
                            ms = statistics.median(ts)
                            records.append({
                                "n": n, "bits": bits, "k": k, "batch": batch, "codes": kind,
                                "method": m, "ms_per_query": round(ms, 4),
                                "ms_min": round(min(ts), 4), "ms_max": round(max(ts), 4),
                                "timings": len(ts), "ratio_vs_faiss": round(ms / faiss_ms, 3),
                                "bytes_per_item": round(sizes[m], 2),
                                "build_s": round(builds[m], 3),
                                "mih_tables": tables if m == "numpy_mih" else None,
                                "flip_p": args.flip_p if kind == "clustered" else None,
                                "date": stamp,
                            })
                            print(json.dumps(records[-1]), flush=True)
                del index, flat, methods, db
    return records


def markdown(records, args, load_before, load_after):
    faiss = import_faiss()
    lines = [
        "# Search benchmark: NumPy linear scan and MIH vs FAISS IndexBinaryFlat", "",
        f"Command: `python benchmarks/search.py {' '.join(sys.argv[1:])}`  ",
        f"Date: {records[0]['date'] if records else '-'}  ",
        f"Machine: {machine()}  ",
        f"Python {platform.python_version()}, NumPy {np.__version__}, faiss-cpu "
        f"{faiss.__version__} (1 thread, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']})  ",
        f"Load average (1/5/15 min) before: {load_before}, after: {load_after} "
        "(other processes shared the 2 cores; medians of rotating-order timings)", "",
        f"Clustered codes: {args.centres} random centres, each bit flipped with p={args.flip_p}; "
        "queries are fresh samples, not stored codes. ms = median per query; ratio = ms / FAISS "
        "ms in the same run (< 1 is faster than FAISS). All methods returned identical "
        "distances; linear and MIH identical ids too.", "",
        "| codes | n | bits | k | batch | linear ms | MIH ms | FAISS ms | linear/FAISS | "
        "MIH/FAISS | linear/MIH |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {}
    for r in records:
        by_key.setdefault((r["codes"], r["n"], r["bits"], r["k"], r["batch"]), {})[r["method"]] = r
    for (codes, n, bits, k, batch), row in by_key.items():
        lin, mih, fl = (row[m]["ms_per_query"] for m in ("numpy_linear", "numpy_mih", "faiss_flat"))
        lines.append(f"| {codes} | {n:,} | {bits} | {k} | {batch} | {lin:.3f} | {mih:.3f} | "
                     f"{fl:.3f} | {lin / fl:.2f} | {mih / fl:.2f} | {lin / mih:.1f} |")
    lines += ["", "| codes | n | bits | bytes/item linear | bytes/item MIH | bytes/item FAISS | "
              "build s linear | build s MIH | MIH tables |",
              "|---|---|---|---|---|---|---|---|---|"]
    seen = set()
    for r in records:
        key = (r["codes"], r["n"], r["bits"])
        if key in seen:
            continue
        seen.add(key)
        row = by_key[key + (r["k"], r["batch"])]
        lin, mih, fl = row["numpy_linear"], row["numpy_mih"], row["faiss_flat"]
        lines.append(f"| {key[0]} | {key[1]:,} | {key[2]} | {lin['bytes_per_item']} | "
                     f"{mih['bytes_per_item']} | {fl['bytes_per_item']} | {lin['build_s']} | "
                     f"{mih['build_s']} | {mih['mih_tables']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    records = run(args)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    Path(args.json).write_text(json.dumps(records, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(records, args, load_before, load_after))


if __name__ == "__main__":
    main()
