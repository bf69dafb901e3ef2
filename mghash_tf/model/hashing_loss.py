"""The training loss: hashing terms per code segment, each with its own label level."""

from __future__ import annotations

import keras
from keras import ops

from mghash_tf.model import losses
from mghash_tf.core.granularity import LABEL_COLUMN
from mghash_tf.core.layout import get_layout

TERMS = ("csq", "ortho", "margin", "dpsh")
# Terms that read fixed class centres.
CENTRE_TERMS = ("csq", "ortho")


def parse_terms(spec: str) -> tuple:
    """``"csq+margin"`` -> ``("csq", "margin")``."""
    terms = tuple(t.strip() for t in str(spec).split("+"))
    if not terms or any(t not in TERMS for t in terms) or len(set(terms)) != len(terms):
        raise ValueError(f"`loss` must join distinct terms of {TERMS} with '+'. Received: loss={spec!r}")
    return terms


@keras.saving.register_keras_serializable(package="mghash_tf")
class HashingLoss(keras.losses.Loss):
    """Sum over segments of ``weight_s * (hash terms on segment s with its label level)``,
    plus quantisation and bit-balance terms on the whole code.

    ``y_true`` is (B, 2) int: column 0 fine labels, column 1 coarse labels (``ImageSet.labels``).

    Args:
        layout: layout dict (``CodeLayout.to_dict()``) or preset name.
        num_classes: ``{"fine": n_fine, "coarse": n_coarse}``; needed by the centre terms.
        loss: terms joined by ``+`` from ``csq`` (class centres, binary cross-entropy),
            ``ortho`` (cosine softmax to the class centres with a margin, OrthoHash),
            ``margin``, ``dpsh``.
        quantization_weight, balance_weight: weights of the regularisers.
        seed: seed of the random class centres (used when Hadamard centres do not fit).
        ortho_scale, ortho_margin, label_smoothing: options of the ``ortho`` term.
    """

    def __init__(self, layout, num_classes, loss="csq", quantization_weight=0.1,
                 balance_weight=0.01, seed=0, ortho_scale=8.0, ortho_margin=0.2, label_smoothing=0.0,
                 name="hashing_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.layout = get_layout(layout).to_dict()
        self.num_classes = {k: int(v) for k, v in dict(num_classes).items()}
        self.loss = loss
        self.quantization_weight = float(quantization_weight)
        # The weight in force: a variable, so a schedule (training.callbacks.QuantizationRamp)
        # can move it during fit; it starts at quantization_weight.
        self.quantization_weight_now = keras.Variable(self.quantization_weight, trainable=False,
                                                      dtype="float32", name="quantization_weight")
        self.balance_weight = float(balance_weight)
        self.seed = int(seed)
        self.ortho_scale = float(ortho_scale)
        self.ortho_margin = float(ortho_margin)
        self.label_smoothing = float(label_smoothing)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1). Received: label_smoothing={label_smoothing!r}")
        self._terms = parse_terms(loss)
        self._segments = []
        start = 0
        for seg in get_layout(self.layout).segments:
            centers = None
            if set(CENTRE_TERMS) & set(self._terms):
                if seg.label_level not in self.num_classes:
                    raise ValueError(
                        f"`num_classes` needs an entry for label level {seg.label_level!r}. "
                        f"Received: num_classes={self.num_classes}"
                    )
                centers = losses.hash_centers(self.num_classes[seg.label_level], seg.bits, seed=self.seed)
            self._segments.append((seg, start, centers))
            start += seg.bits

    def _segment_loss(self, h, labels, centers):
        total = 0.0
        similarity = losses.similarity_matrix(labels) if {"margin", "dpsh"} & set(self._terms) else None
        if "csq" in self._terms:
            total += losses.center_loss(h, labels, centers)
        if "ortho" in self._terms:
            total += losses.orthogonal_center_loss(h, labels, centers, scale=self.ortho_scale,
                                                   margin=self.ortho_margin,
                                                   label_smoothing=self.label_smoothing)
        if "margin" in self._terms:
            total += losses.pairwise_margin_loss(h, similarity)
        if "dpsh" in self._terms:
            total += losses.dpsh_loss(h, similarity)
        return total

    def call(self, y_true, y_pred):
        y_true = ops.cast(ops.reshape(y_true, (-1, 2)), "int32")
        total = 0.0
        for seg, start, centers in self._segments:
            h = y_pred[:, start:start + seg.bits]
            labels = y_true[:, LABEL_COLUMN[seg.label_level]]
            total += seg.weight * self._segment_loss(h, labels, centers)
        total += self.quantization_weight_now * losses.quantization_loss(y_pred)
        total += self.balance_weight * losses.balance_loss(y_pred)
        return total

    def get_config(self):
        config = super().get_config()
        config.update({
            "layout": self.layout, "num_classes": self.num_classes, "loss": self.loss,
            "quantization_weight": self.quantization_weight,
            "balance_weight": self.balance_weight, "seed": self.seed,
            "ortho_scale": self.ortho_scale, "ortho_margin": self.ortho_margin,
            "label_smoothing": self.label_smoothing,
        })
        return config
