"""The callbacks of a training stage: validation mAP per granularity and throughput.

Validation protocol (one for every stage): the validation split queries a seeded sample of
``val_database_size`` training images (:func:`validation_database`). Checkpoints select on
``val_map_fine``, never on the test split.
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np

from mghash_tf.core.layout import CodeLayout
from mghash_tf.evaluation.retrieval import evaluate_codes

logger = logging.getLogger(__name__)


def validation_database(num_train: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the training items the validation queries search."""
    return np.sort(rng.choice(num_train, min(size, num_train), replace=False))


def predict_images(model, images, batch_size: int = 256) -> np.ndarray:
    return model.predict(np.asarray(images).astype("float32"), batch_size=batch_size, verbose=0)


class RetrievalValidation(keras.callbacks.Callback):
    """Adds ``val_map_<granularity>`` to the epoch logs.

    ``query``/``database`` are whatever ``predict(model, inputs)`` takes: images for the full
    model (the default), cached trunk arrays for a head (``cached.predict_cached``).
    """

    def __init__(self, query, query_labels, database, database_labels, layout: CodeLayout, *,
                 has_coarse=True, predict=predict_images):
        super().__init__()
        self.query, self.query_labels = query, np.asarray(query_labels)
        self.database, self.database_labels = database, np.asarray(database_labels)
        self.layout = layout
        self.has_coarse = has_coarse
        self.predict = predict

    def on_epoch_end(self, epoch, logs=None):
        start = time.perf_counter()
        q = self.predict(self.model, self.query)
        db = self.predict(self.model, self.database)
        scores = evaluate_codes(q, db, self.query_labels, self.database_labels, self.layout,
                                has_coarse=self.has_coarse)
        if logs is not None:
            logs.update({f"val_{k}": v for k, v in scores.items()})
        logger.info("epoch %d validation %s (%.1f s)", epoch + 1, scores, time.perf_counter() - start)


class Throughput(keras.callbacks.Callback):
    """Training items per second per epoch, the validation pass excluded (put it first)."""

    def __init__(self, items_per_epoch):
        super().__init__()
        self.items_per_epoch = items_per_epoch
        self.rates = []
        self.start = None

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.rates.append(self.items_per_epoch / (time.perf_counter() - self.start))
