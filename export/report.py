"""Benchmark and parity results as files: JSON (atomic), a Markdown table, the size/latency plot."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from mghash_tf.core.files import atomic_path, write_bytes_atomic


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()} {platform.processor() or platform.platform()}, {os.cpu_count()} CPUs, "
            f"load average {load:.2f} at the start, Python {sys.version.split()[0]}")


def provenance(command: str) -> dict:
    return {"command": command, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine()}


def write_json(path, data) -> Path:
    return write_bytes_atomic(path, (json.dumps(data, indent=1, sort_keys=False) + "\n").encode())


def _fmt(value, spec="") -> str:
    if value is None:
        return "–"
    return format(value, spec) if spec else str(value)


def bench_table(records: list) -> str:
    lines = ["| backbone | img | bits | variant | trained | params | KB | p50 1t ms | p90 1t ms | "
             "p50 2t ms | heads % | bit agr. | mAP | Keras mAP |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(
            f"| {r['backbone']}{' (bare)' if r['model'] == 'backbone_only' else ''} | {r['image_size']} | "
            f"{_fmt(r['bits'])} | {r['variant']} | {'yes' if r['trained'] else 'no'} | {r['params']:,} | "
            f"{r['bytes'] / 1024:,.0f} | {r['latency_ms_p50_1t']:.2f} | {r['latency_ms_p90_1t']:.2f} | "
            f"{r['latency_ms_p50_2t']:.2f} | {_fmt(r.get('head_overhead_pct'), '+.1f')} | "
            f"{_fmt(r['bit_agreement'], '.4f')} | {_fmt(r['map'], '.4f')} | {_fmt(r.get('map_keras'), '.4f')} |")
    return "\n".join(lines)


# Parity targets (as in parity_summary): bit agreement >= 99.5 %, mAP loss <= 0.5 point.
AGREEMENT_TARGET, MAP_LOSS_TARGET = 0.995, 0.5
QUANTISED = ("dynamic", "int8", "int8_io", "int8_fhead")


def parity_lines(full: list) -> list:
    """Per quantised variant, over the trained models only (a random-init head's |h| is so
    small that any rounding flips its bits): bit agreement and mAP change against Keras."""
    lines = []
    for variant in QUANTISED:
        rows = [r for r in full if r.get("trained") and r["variant"] == variant and r.get("map_keras") is not None]
        if not rows:
            continue
        agreement = [r["bit_agreement"] for r in rows]
        delta = [100 * (r["map"] - r["map_keras"]) for r in rows]
        met = sum(a >= AGREEMENT_TARGET and d >= -MAP_LOSS_TARGET for a, d in zip(agreement, delta))
        lines.append(f"{variant}, trained models: bit agreement {min(agreement):.4f} to {max(agreement):.4f}, "
                     f"mAP - Keras mAP {min(delta):+.2f} to {max(delta):+.2f} points; both targets (agreement >= "
                     f"{AGREEMENT_TARGET}, mAP loss <= {MAP_LOSS_TARGET} point) met by {met} of {len(rows)}")
    return lines


def bench_summary(records: list) -> list:
    """Lines on the issue's targets: int8 size ratio, head latency overhead and, for trained
    models, parity."""
    full = [r for r in records if r["model"] == "full"]
    size = {(r["backbone"], r["bits"], r["variant"]): r["bytes"] for r in full}
    lines = []
    for variant in ("int8", "int8_io"):
        ratios = [size[k] / size[(k[0], k[1], "fp32")] for k in size
                  if k[2] == variant and (k[0], k[1], "fp32") in size]
        if ratios:
            lines.append(f"{variant} file / fp32 file: {min(ratios):.3f} to {max(ratios):.3f} "
                         f"over {len(ratios)} models (target <= 0.3)")
    for backbone in sorted({r["backbone"] for r in full}):
        parts = [f"{r['variant']} {r['bits']} bits {r['head_overhead_pct']:+.1f} %" for r in full
                 if r["backbone"] == backbone and "head_overhead_pct" in r]
        if parts:
            lines.append(f"heads' latency overhead, {backbone}: " + ", ".join(parts) + " (target <= 5 %)")
    return lines + parity_lines(full)


def write_bench_markdown(path, records: list, meta: dict, notes: list) -> Path:
    text = "\n".join([
        "# Model size benchmark", "",
        f"- Command: `{meta['command']}`", f"- Date: {meta['date']}", f"- Machine: {meta['machine']}",
        *[f"- {n}" for n in notes], "", "## Against the targets", "",
        *[f"- {line}" for line in bench_summary(records)], "", "## All rows", "",
        bench_table(records), "",
        "`heads %`: p50 (1 thread) of the full model over the bare backbone (preprocessing + "
        "backbone, no attention pooling or hash head) in the same variant, minus 100 %.",
        "", f"![size vs latency]({Path(path).with_suffix('.png').name})", "",
    ])
    return write_bytes_atomic(path, text.encode())


def plot_bench(path, records: list) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = [r for r in records if r["model"] == "full"]
    markers = {"fp32": "o", "fp16": "s", "dynamic": "D", "int8": "^", "int8_io": "v", "int8_fhead": "P"}
    fig, ax = plt.subplots(figsize=(9, 6))
    scatter = None
    for variant, marker in markers.items():
        rows = [r for r in full if r["variant"] == variant]
        if rows:
            scatter = ax.scatter([r["bytes"] / 2**20 for r in rows], [r["latency_ms_p50_1t"] for r in rows],
                                 c=[r["map"] for r in rows], cmap="viridis", marker=marker, s=60,
                                 vmin=min(r["map"] for r in full), vmax=max(r["map"] for r in full),
                                 edgecolors=["red" if r["trained"] else "k" for r in rows],
                                 linewidths=[1.8 if r["trained"] else 0.4 for r in rows], label=variant)
    for backbone in sorted({r["backbone"] for r in full}):
        rows = [r for r in full if r["backbone"] == backbone and r["variant"] == "fp32"]
        if rows:
            ax.annotate(backbone, (rows[0]["bytes"] / 2**20, rows[0]["latency_ms_p50_1t"]), fontsize=8,
                        xytext=(-6, 6), textcoords="offset points", ha="right")
    ax.set_xscale("log")
    ax.set_xlabel("file size (MiB, log)")
    ax.set_ylabel("latency p50, 1 thread, batch 1 (ms)")
    ax.legend(title="variant", fontsize=8)
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label="mAP@all (fine labels)")
    ax.set_title("MGHash TFLite variants: size vs latency (colour = mAP; red edge = trained)")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def _bins(edges) -> list:
    return [f"[{lo:g}, {hi:g})" for lo, hi in zip(edges[:-1], edges[1:])]


def _label(row: dict) -> str:
    count = row.get("representative_count")
    return row["variant"] + (f" ({count} calib.)" if count else "")


def parity_summary(results: list) -> list:
    lines = ["| run | variant | bit agreement | mAP | Keras mAP | Δ mAP (points) | "
             "targets met (agreement ≥ 99.5 %, mAP loss ≤ 0.5 point) |", "|---|---|---|---|---|---|---|"]
    for result in results:
        run = (result.get("note") or result["model"]["backbone"]).split(" ")[0].rstrip(".")
        for r in result["variants"]:
            delta = 100 * (r["map"] - result["keras"]["map"])
            met = r["bit_agreement"]["all"] >= 0.995 and delta >= -0.5
            lines.append(f"| {run} | {_label(r)} | {r['bit_agreement']['all']:.4%} | {r['map']:.4f} | "
                         f"{result['keras']['map']:.4f} | {delta:+.2f} | "
                         f"{'yes' if met else 'no'} |")
    return lines


def parity_table(result: dict) -> str:
    segments = [s["name"] for s in result["model"]["layout"]["segments"]]
    keras_map = result["keras"]["map"]
    lines = [f"Model `{result.get('model_path', '?')}` ({result['model']['backbone']}, "
             f"{result['model']['bits']} bits, fingerprint `{result['model']['fingerprint']}`); "
             f"Keras mAP {keras_map:.4f}. Protocol: {result['protocol']}.", "",
             "| file | variant | calib. images | KB | bit agreement | " + " | ".join(segments) +
             " | mAP | Δ mAP (points) | mAP vs Keras db | flipped bits | max \\|h\\| flipped |",
             "|---" * (10 + len(segments)) + "|"]
    for r in result["variants"]:
        agreement = r["bit_agreement"]
        flipped = sum(r["flips"]["flipped"])
        lines.append(
            f"| {r['file']} | {r['variant']} | {_fmt(r['representative_count'])} | {r['bytes'] / 1024:,.0f} | "
            f"{agreement['all']:.4%} | " + " | ".join(f"{agreement[s]:.4%}" for s in segments) +
            f" | {r['map']:.4f} | {100 * (r['map'] - keras_map):+.2f} | {r['map_cross']:.4f} | {flipped:,d} | "
            f"{_fmt(r['flips']['flipped_max_abs_h'], '.3f')} |")
    edges = result["variants"][0]["flips"]["edges"] if result["variants"] else []
    lines += ["", "Where flips happen: count of bits per |h| bin (|h| from Keras), all bits vs flipped.", "",
              "| \\|h\\| bin | all bits | " + " | ".join(f"flipped {_label(r)}" for r in result["variants"]) + " |",
              "|---" * (2 + len(result["variants"])) + "|"]
    for i, label in enumerate(_bins(edges)):
        lines.append(f"| {label} | {result['keras']['abs_h_histogram'][i]:,d} | "
                     + " | ".join(f"{r['flips']['flipped'][i]:,d}" for r in result["variants"]) + " |")
    return "\n".join(lines)


def write_parity_markdown(path, results: list, notes: list = ()) -> Path:
    parts = ["# Keras ↔ TFLite parity", "", *[f"- {n}" for n in notes], "", "## Summary", "",
             *parity_summary(results), ""]
    for result in results:
        parts += [f"## {result.get('note') or result['model']['backbone']}", "",
                  f"- Command: `{result['command']}`", f"- Date: {result['date']}",
                  f"- Machine: {result['machine']}", "", parity_table(result), ""]
    return write_bytes_atomic(path, ("\n".join(parts) + "\n").encode())
