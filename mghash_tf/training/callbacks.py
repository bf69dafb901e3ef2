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

from mghash_tf.core.granularity import evaluation_granularities
from mghash_tf.core.layout import CodeLayout
from mghash_tf.evaluation.retrieval import evaluate_codes
from mghash_tf.model import encode

logger = logging.getLogger(__name__)


def validation_database(num_train: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the training items the validation queries search."""
    return np.sort(rng.choice(num_train, min(size, num_train), replace=False))


def predict_images(model, images, batch_size: int = 256, tta: bool = False) -> np.ndarray:
    return encode(model, images, batch_size=batch_size, tta=tta)


class RetrievalValidation(keras.callbacks.Callback):
    """Adds ``val_map_<granularity>`` to the epoch logs (NaN in epochs that ``every`` skips).

    ``query``/``database`` are whatever ``predict(model, inputs)`` takes: images for the full
    model (the default), cached trunk arrays for a head (``cached.predict_cached``).
    """

    def __init__(self, query, query_labels, database, database_labels, layout: CodeLayout, *,
                 has_coarse=True, predict=predict_images, every: int = 1, final_epoch: int | None = None):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"`every` must be an int >= 1. Received: every={every!r}")
        self.query, self.query_labels = query, np.asarray(query_labels)
        self.database, self.database_labels = database, np.asarray(database_labels)
        self.layout = layout
        self.has_coarse = has_coarse
        self.predict = predict
        self.every, self.final_epoch = every, final_epoch

    def due(self, epoch: int) -> bool:
        """Every ``every``-th epoch counted back from ``final_epoch`` (always validated)."""
        return self.every == 1 or self.final_epoch is None or (self.final_epoch - epoch) % self.every == 0

    def on_epoch_end(self, epoch, logs=None):
        if not self.due(epoch):
            # NaN keeps the columns of log.csv in place; checkpoints skip it.
            names = evaluation_granularities(self.layout, has_coarse=self.has_coarse)
            if logs is not None:
                logs.update({f"val_map_{name}": float("nan") for name in names})
            return
        start = time.perf_counter()
        q = self.predict(self.model, self.query)
        db = self.predict(self.model, self.database)
        scores = evaluate_codes(q, db, self.query_labels, self.database_labels, self.layout,
                                has_coarse=self.has_coarse)
        if logs is not None:
            logs.update({f"val_{k}": v for k, v in scores.items()})
        logger.info("epoch %d validation %s (%.1f s)", epoch + 1, scores, time.perf_counter() - start)


class SetEpoch(keras.callbacks.Callback):
    """Keeps a ``data.pipeline.epoch_counter`` variable at the epoch about to run (Keras opens
    the epoch's data iterator after ``on_epoch_begin``, so the whole epoch reads the new value)."""

    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def on_epoch_begin(self, epoch, logs=None):
        self.variable.assign(epoch)


class QuantizationRamp(keras.callbacks.Callback):
    """Moves the quantisation term's weight (``HashingLoss.quantization_weight_now``) from
    ``start`` to ``final`` over the stage along ``progress**3``: almost no extra pull toward
    +-1 while the codes still move between classes (a saturated tanh passes no gradient), the
    full pull in the last epochs, so the signs the model ends with survive int8 rounding.

    Example: start 0.1, final 1.0, 10 steps: step 5 -> 0.1 + 0.9 * 0.125 = 0.2125.
    """

    def __init__(self, variable, start: float, final: float, steps_per_epoch: int, epochs: int, *,
                 first_epoch: int = 0):
        super().__init__()
        if int(steps_per_epoch) < 1 or int(epochs) < 1 or start < 0 or final < 0:
            raise ValueError("QuantizationRamp needs steps_per_epoch >= 1, epochs >= 1 and weights >= 0. "
                             f"Received: steps_per_epoch={steps_per_epoch}, epochs={epochs}, start={start}, "
                             f"final={final}")
        self.variable, self.start, self.final = variable, float(start), float(final)
        self.steps_per_epoch, self.first_epoch = int(steps_per_epoch), int(first_epoch)
        self.total_steps = int(steps_per_epoch) * int(epochs)
        self.step = 0

    def weight(self, step: int) -> float:
        return self.start + (self.final - self.start) * min(step / self.total_steps, 1.0) ** 3

    def on_epoch_begin(self, epoch, logs=None):
        self.step = (epoch - self.first_epoch) * self.steps_per_epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.variable.assign(self.weight(self.step))
        self.step += 1


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


class Lookahead(keras.callbacks.Callback):
    """Weight averaging as in airbench (Jordan 2024): every ``every`` steps a slow copy moves
    toward the live weights, ``slow <- decay * slow + (1 - decay) * live``, and the live weights
    restart from it; ``decay = base * progress**3`` over the stage (none early, strong at the end).

    At every epoch end the live weights are set to the slow copy, so validation, checkpoints and
    the model left after training are the averaged model (put this callback before them). All
    float weights take part, BatchNorm statistics included: averaged filters with the last
    step's statistics would not match. A resumed stage picks the schedule up at its epoch.

    Args:
        steps_per_epoch, epochs: the stage's length; ``first_epoch``: its first epoch index.
    """

    def __init__(self, steps_per_epoch: int, epochs: int, *, first_epoch: int = 0, every: int = 5,
                 base: float = 0.95 ** 5):
        super().__init__()
        if int(steps_per_epoch) < 1 or int(epochs) < 1 or int(every) < 1 or not 0 <= base < 1:
            raise ValueError("Lookahead needs steps_per_epoch >= 1, epochs >= 1, every >= 1 and "
                             f"0 <= base < 1. Received: steps_per_epoch={steps_per_epoch}, epochs={epochs}, "
                             f"every={every}, base={base}")
        self.steps_per_epoch, self.first_epoch = int(steps_per_epoch), int(first_epoch)
        self.total_steps = int(steps_per_epoch) * int(epochs)
        self.every, self.base = int(every), float(base)
        self.step = 0
        self.slow = None

    def decay(self, step: int) -> float:
        return self.base * min(step / self.total_steps, 1.0) ** 3

    def _averaged(self):
        return [v for v in self.model.weights if "float" in str(v.dtype)]

    def on_train_begin(self, logs=None):
        self.slow = [np.array(keras.ops.convert_to_numpy(v), dtype="float32") for v in self._averaged()]

    def on_epoch_begin(self, epoch, logs=None):
        self.step = (epoch - self.first_epoch) * self.steps_per_epoch

    def average(self, decay: float) -> None:
        for variable, slow in zip(self._averaged(), self.slow):
            slow *= decay
            slow += (1.0 - decay) * keras.ops.convert_to_numpy(variable)
            variable.assign(slow)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            self.average(self.decay(self.step))

    def on_epoch_end(self, epoch, logs=None):
        self.average(self.decay(self.step))
