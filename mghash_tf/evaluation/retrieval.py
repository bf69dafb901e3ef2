"""Retrieval mAP of codes per granularity (:mod:`mghash_tf.core.granularity`). NumPy only."""

from __future__ import annotations

from mghash_tf.core.granularity import evaluation_granularities
from mghash_tf.core.layout import CodeLayout
from mghash_tf.core.metrics import mean_average_precision


def evaluate_codes(query_codes, db_codes, query_labels, db_labels, layout: CodeLayout,
                   *, has_coarse: bool = True, tie_aware: bool = False) -> dict:
    """``{"map_<granularity>": mAP@all}``. Labels are (N, 2) [fine, coarse] int arrays."""
    results = {}
    for name, g in evaluation_granularities(layout, has_coarse=has_coarse).items():
        bits, col = g.bit_indices(), g.label_column
        results[f"map_{name}"] = float(mean_average_precision(
            query_codes[:, bits], db_codes[:, bits], query_labels[:, col], db_labels[:, col],
            tie_aware=tie_aware,
        ))
    return results
