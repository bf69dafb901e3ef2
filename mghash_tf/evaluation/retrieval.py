"""Retrieval mAP of a model per granularity, and the Keras callback that tracks it.

Granularities (label level -> bits):
- ``fine``: the full code, fine labels (a coarse prefix helps fine retrieval too: items of
  one fine class share their coarse class).
- ``coarse``: the segments supervised by coarse labels (the prefix of ``mg64``), coarse labels;
  the full code when the layout has no coarse segment.
- ``seg_<name>``: one segment alone with its own label level, when there are several segments.
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np

from mghash_tf.core.layout import CodeLayout

logger = logging.getLogger(__name__)
_COLUMN = {"fine": 0, "coarse": 1}


def granularity_bits(layout: CodeLayout) -> dict:
    """``{name: (bit index array, label level)}`` for every granularity of the layout."""
    full = np.arange(layout.bits)
    coarse = [np.arange(layout.bits)[layout.slice(s.name)] for s in layout.segments
              if s.label_level == "coarse"]
    out = {
        "fine": (full, "fine"),
        "coarse": (np.concatenate(coarse) if coarse else full, "coarse"),
    }
    if len(layout.segments) > 1:
        for s in layout.segments:
            out[f"seg_{s.name}"] = (np.arange(layout.bits)[layout.slice(s.name)], s.label_level)
    return out


def evaluate_codes(query_codes, db_codes, query_labels, db_labels, layout: CodeLayout,
                   *, has_coarse: bool = True, tie_aware: bool = False) -> dict:
    """mAP@all per granularity. Labels are (N, 2) [fine, coarse] int arrays."""
    from mghash_tf.core.metrics import mean_average_precision

    results = {}
    for name, (bits, level) in granularity_bits(layout).items():
        if level == "coarse" and not has_coarse:
            continue
        col = _COLUMN[level]
        results[f"map_{name}"] = float(mean_average_precision(
            query_codes[:, bits], db_codes[:, bits], query_labels[:, col], db_labels[:, col],
            tie_aware=tie_aware,
        ))
    return results


class RetrievalValidation(keras.callbacks.Callback):
    """Adds ``val_map_<granularity>`` to the epoch logs: validation images query a fixed sample
    of the training images. Checkpoints select on these, never on the test split."""

    def __init__(self, query, database, layout: CodeLayout, *, has_coarse=True, batch_size=256):
        super().__init__()
        self.query = query
        self.database = database
        self.layout = layout
        self.has_coarse = has_coarse
        self.batch_size = batch_size

    def on_epoch_end(self, epoch, logs=None):
        start = time.perf_counter()
        q = self.model.predict(self.query.x.astype("float32"), batch_size=self.batch_size, verbose=0)
        db = self.model.predict(self.database.x.astype("float32"), batch_size=self.batch_size, verbose=0)
        scores = evaluate_codes(q, db, self.query.labels, self.database.labels, self.layout,
                                has_coarse=self.has_coarse)
        if logs is not None:
            logs.update({f"val_{k}": v for k, v in scores.items()})
        logger.info("epoch %d validation %s (%.1f s)", epoch + 1, scores, time.perf_counter() - start)
