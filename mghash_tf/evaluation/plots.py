"""PNG plots of an evaluation (matplotlib, Agg backend: no display needed).

Every function takes the dict of :func:`mghash_tf.evaluation.evaluate.evaluate` (or a list of them), writes
one PNG of exactly ``FIGSIZE * DPI`` pixels (no tight bounding box, so the size is predictable)
and returns its path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from mghash_tf.core.files import atomic_path  # noqa: E402

logger = logging.getLogger(__name__)

DPI = 100
PANEL_SIZE = (5.0, 4.0)
GRID_CELL = 1.0
RELEVANT_COLOUR = (0.1, 0.7, 0.1)
IRRELEVANT_COLOUR = (0.85, 0.1, 0.1)
METHOD_STYLE = {"mghash": dict(color="black", lw=2.2), "itq": dict(color="tab:blue"),
                "pca": dict(color="tab:orange"), "lsh": dict(color="tab:green"),
                "float_cosine": dict(color="tab:purple", ls="--")}


def save_figure(fig, path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=DPI)
    plt.close(fig)
    logger.info("wrote %s", path)
    return path


def panels(count: int):
    """A figure with ``count`` panels side by side and their axes."""
    fig, axes = plt.subplots(1, count, figsize=(PANEL_SIZE[0] * count, PANEL_SIZE[1]), squeeze=False)
    return fig, axes[0]


def pr_curves(result: dict, path) -> Path:
    """Precision-recall over Hamming radii, one panel per granularity, one line per method
    (float cosine has no radius, so it is shown as a horizontal line at its P@100)."""
    grans = result["granularities"]
    if not grans:
        raise ValueError("`result` has no granularities to plot. Received: granularities={}")
    fig, axes = panels(len(grans))
    for ax, (name, g) in zip(axes, grans.items()):
        for method, m in g["methods"].items():
            style = METHOD_STYLE.get(method, {})
            if "pr_curve" in m:
                c = m["pr_curve"]
                ax.plot(c["recall"], c["precision"], marker=".", label=f"{method} (mAP {m['map']:.3f})",
                        **style)
            elif "map" in m:
                ax.axhline(m["precision@100"], label=f"{method} P@100 (mAP {m['map']:.3f})", **style)
        ax.set(title=f"{name}: {g['bits']} bits, {g['label_level']} labels", xlabel="recall",
               ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path)


def map_vs_bits(results: list, path, *, granularity: str = "fine") -> Path:
    """mAP@all against code length for each method, over several evaluations (one model per
    bit count); a single evaluation gives one point per method."""
    series = {}
    for r in results:
        g = r["granularities"].get(granularity)
        if g is None:
            continue
        for method, m in g["methods"].items():
            if "map" in m:
                series.setdefault(method, []).append((g["bits"], m["map"]))
    if not series:
        raise ValueError(f"No result has granularity {granularity!r} to plot. "
                         f"Received: {len(results)} results")
    fig, axes = panels(1)
    ax = axes[0]
    for method, points in series.items():
        bits, maps = zip(*sorted(points))
        ax.plot(bits, maps, marker="o", label=method, **METHOD_STYLE.get(method, {}))
    all_bits = sorted({b for pts in series.values() for b, _ in pts})
    ax.set(title=f"mAP@all vs bits ({granularity})", xlabel="bits", ylabel="mAP@all", ylim=(0, 1.02),
           xticks=all_bits)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def retrieval_grid(images, examples: list, path, *, title: str = "") -> Path:
    """One row per query: the query, then its top results framed green (relevant) or red."""
    if not examples:
        raise ValueError("`examples` must not be empty. Received: []")
    images = np.asarray(images)
    cols = 1 + max(len(e["db_indices"]) for e in examples)
    rows = len(examples)
    fig, axes = plt.subplots(rows, cols, figsize=(GRID_CELL * cols, GRID_CELL * rows + 0.4),
                             squeeze=False)
    for r, e in enumerate(examples):
        cells = [(e["query_index"], None)] + list(zip(e["db_indices"], e["relevant"]))
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cells):
                ax.axis("off")
                continue
            index, relevant = cells[c]
            ax.imshow(images[index])
            colour = "black" if relevant is None else (RELEVANT_COLOUR if relevant else IRRELEVANT_COLOUR)
            for spine in ax.spines.values():
                spine.set_color(colour)
                spine.set_linewidth(1.5 if relevant is None else 3)
        axes[r][0].set_ylabel("query", fontsize=7)
    fig.suptitle(title or "query, then top results (green = relevant, red = not)", fontsize=9)
    return save_figure(fig, path)


def robustness(result: dict, path, *, granularity: str = "fine") -> Path:
    """mAP against corruption severity (0 = clean queries), one line per corruption."""
    rob = result.get("robustness")
    if not rob:
        raise ValueError("`result` has no robustness section: evaluate with robustness=True.")
    fig, axes = panels(1)
    ax = axes[0]
    severities = [0]
    for name, per_gran in rob.items():
        maps = per_gran.get(granularity)
        if maps is not None:
            severities = list(range(len(maps)))
            ax.plot(severities, maps, marker="o", label=name)
    ax.set(title=f"mAP@all of corrupted queries ({granularity})", xlabel="severity (0 = clean)",
           ylabel="mAP@all", ylim=(0, 1.02), xticks=severities)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
