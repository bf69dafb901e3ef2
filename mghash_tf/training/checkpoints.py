"""One checkpoint scheme for every stage, and the model file.

``out/best.weights.h5`` holds the full model's weights at the best ``val_map_fine`` so far,
``log.csv`` one row per epoch; a later stage or a resumed run only overwrites the best with a
better model. ``stage1.weights.h5`` marks stage 1 complete.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import keras


logger = logging.getLogger(__name__)

BEST_WEIGHTS = "best.weights.h5"
STAGE1_WEIGHTS = "stage1.weights.h5"
LOG = "log.csv"
MONITOR = "val_map_fine"


def best_logged(out: Path):
    """Best ``val_map_fine`` in log.csv while best.weights.h5 exists, else None."""
    log = out / LOG
    if not log.exists() or not (out / BEST_WEIGHTS).exists():
        return None
    with open(log, newline="") as f:
        values = [_number(r.get(MONITOR)) for r in csv.DictReader(f)]
    values = [v for v in values if not math.isnan(v)]  # epochs without validation
    return max(values) if values else None


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


class BestWeights(keras.callbacks.Callback):
    """Keeps ``target``'s weights (the full model, also when a head is the one fitting) whenever
    ``val_map_fine`` beats the best so far: in ``out/best.weights.h5``, or in memory when ``out``
    is None. ``restore``: put the best weights back in ``target`` when training ends."""

    def __init__(self, out: Path | None, target: keras.Model, *, restore: bool = False):
        super().__init__()
        self.path = None if out is None else out / BEST_WEIGHTS
        self.target = target
        self.restore = restore
        logged = None if out is None else best_logged(out)
        self.best = -math.inf if logged is None else logged
        self.best_epoch = None
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(MONITOR)
        if value is None or math.isnan(value) or value <= self.best:
            return
        self.best, self.best_epoch = float(value), epoch + 1
        if self.path is None:
            self.best_weights = self.target.get_weights()
        else:
            self.target.save_weights(str(self.path))

    def on_train_end(self, logs=None):
        if not self.restore or self.best_epoch is None:
            return
        if self.path is None:
            self.target.set_weights(self.best_weights)
        else:
            self.target.load_weights(str(self.path))
