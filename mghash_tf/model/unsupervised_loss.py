"""The label-free training objective: pure functions of relaxed codes, plus one Keras ``Loss``.

Two terms, both on the tanh codes ``h`` (B, K) of a batch:

- ``contrastive``: NT-Xent between the codes of two views of each image (the cache's original
  and mirrored image, each with random feature dropout): the other view of an image is its
  positive, the 2B - 2 other codes of the batch its negatives. This is the contrastive
  objective of CIBHash (Qiu et al., IJCAI 2021, "Unsupervised Hashing with Contrastive
  Information Bottleneck"), on cosines of the relaxed codes, without its information-bottleneck
  term (the quantisation term below keeps the codes near ±1 instead).
- ``affinity``: the codes' normalised inner products ``h_i . h_j / K`` (for ±1 codes
  ``1 - 2 hamming / K``) regress onto the cosine similarities of the frozen pretrained
  backbone's centred features, the similarity-preserving target of SSDH (Yang et al., IJCAI
  2018, "Semantic Structure-based Unsupervised Deep Hashing") without its thresholding: every
  pair counts, weighted equally.

Pairwise terms average over the B(B-1) ordered pairs i != j, as :mod:`mghash_tf.model.losses`.
"""

from __future__ import annotations

import keras
from keras import ops

from mghash_tf.core.layout import get_layout
from mghash_tf.model import losses

UNSUPERVISED_TERMS = ("contrastive", "affinity")


def parse_unsupervised_terms(spec: str) -> tuple:
    """``"contrastive+affinity"`` -> ``("contrastive", "affinity")``."""
    terms = tuple(t.strip() for t in str(spec).split("+"))
    if not terms or any(t not in UNSUPERVISED_TERMS for t in terms) or len(set(terms)) != len(terms):
        raise ValueError(f"`unsupervised_loss` must join distinct terms of {UNSUPERVISED_TERMS} with '+'. "
                         f"Received: unsupervised_loss={spec!r}")
    return terms


def _unit_rows(x):
    x = ops.cast(x, "float32")
    return x / ops.maximum(ops.norm(x, axis=1, keepdims=True), 1e-12)


def nt_xent_loss(h1, h2, *, temperature=0.5):
    """NT-Xent (SimCLR's normalised-temperature cross-entropy) between two views.

    Row ``i`` of ``h1`` and row ``i`` of ``h2`` are the two views of item ``i``. With
    ``z = unit rows of [h1; h2]`` and ``s_ab = z_a . z_b / temperature``, the loss of ``a`` is
    ``-log(exp(s_{a,a'}) / sum_{b != a} exp(s_ab))`` where ``a'`` is ``a``'s other view, averaged
    over the 2B rows.

    Example (hand-computed): B = 2, K = 2, ``h1 = [[1, 0], [0, 1]]``, ``h2 = h1``, temperature 1:
    each row sees its positive at cosine 1 and the two codes of the other item at cosine 0, so
    the loss is ``-log(e / (e + 2)) = log(1 + 2/e) = 0.5514``.
    """
    z = _unit_rows(ops.concatenate([h1, h2], axis=0))
    b = ops.shape(h1)[0]
    logits = ops.matmul(z, ops.transpose(z)) / temperature
    # Self-similarity is not a candidate: a large negative (not -inf, which makes NaN gradients).
    logits = logits - 1e9 * ops.eye(2 * b, dtype="float32")
    positive = ops.concatenate([ops.arange(b) + b, ops.arange(b)], axis=0)
    log_p = ops.log_softmax(logits, axis=-1)
    return -ops.mean(ops.take_along_axis(log_p, positive[:, None], axis=1))


def affinity_loss(h, target):
    """Mean over pairs i != j of ``(h_i . h_j / K - target_ij)^2``.

    Example (hand-computed): ``h = [[1, 1], [1, -1]]`` (inner product 0) and target 0.5 for the
    pair: ``(0 - 0.5)^2 = 0.25``.
    """
    h = ops.cast(h, "float32")
    code_similarity = ops.matmul(h, ops.transpose(h)) / float(h.shape[-1])
    return losses.off_diagonal_mean(ops.square(code_similarity - ops.cast(target, "float32")))


def feature_affinity(features):
    """(B, D) features -> (B, B) cosine similarities (rows made unit length here; centre the
    features on the data's mean beforehand, or every ReLU feature pair looks similar)."""
    z = _unit_rows(features)
    return ops.matmul(z, ops.transpose(z))


@keras.saving.register_keras_serializable(package="mghash_tf")
class UnsupervisedHashingLoss(keras.losses.Loss):
    """Label-free objective per code segment (each weighted by its layout weight), plus the
    quantisation and bit-balance terms on the whole code.

    ``y_pred`` is (B, 2K): the codes of view 1, then of view 2. ``y_true`` is (B, D): the frozen
    backbone's centred features of each item (the ``affinity`` target).

    Args:
        layout: layout dict (``CodeLayout.to_dict()``) or preset name.
        loss: terms joined by ``+`` from ``contrastive`` and ``affinity``.
        temperature: NT-Xent temperature.
        affinity_weight: weight of the ``affinity`` term.
        quantization_weight, balance_weight: weights of the regularisers.
    """

    def __init__(self, layout, loss="contrastive", temperature=0.5, affinity_weight=1.0,
                 quantization_weight=0.1, balance_weight=0.01, name="unsupervised_hashing_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.layout = get_layout(layout).to_dict()
        self.loss = loss
        self._terms = parse_unsupervised_terms(loss)
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0. Received: temperature={temperature!r}")
        self.temperature = float(temperature)
        self.affinity_weight = float(affinity_weight)
        self.quantization_weight = float(quantization_weight)
        self.balance_weight = float(balance_weight)
        self._bits = get_layout(self.layout).bits

    def call(self, y_true, y_pred):
        h1, h2 = y_pred[:, :self._bits], y_pred[:, self._bits:]
        target = feature_affinity(y_true) if "affinity" in self._terms else None
        total, start = 0.0, 0
        for seg in get_layout(self.layout).segments:
            a, b = h1[:, start:start + seg.bits], h2[:, start:start + seg.bits]
            term = 0.0
            if "contrastive" in self._terms:
                term += nt_xent_loss(a, b, temperature=self.temperature)
            if "affinity" in self._terms:
                term += self.affinity_weight * (affinity_loss(a, target) + affinity_loss(b, target)) / 2.0
            total += seg.weight * term
            start += seg.bits
        both = ops.concatenate([h1, h2], axis=0)
        total += self.quantization_weight * losses.quantization_loss(both)
        total += self.balance_weight * losses.balance_loss(both)
        return total

    def get_config(self):
        config = super().get_config()
        config.update({"layout": self.layout, "loss": self.loss, "temperature": self.temperature,
                       "affinity_weight": self.affinity_weight, "quantization_weight": self.quantization_weight,
                       "balance_weight": self.balance_weight})
        return config
