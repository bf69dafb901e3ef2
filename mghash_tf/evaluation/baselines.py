"""Unsupervised hashing baselines on float features, and the reference points around them.

NumPy only. Each hasher learns a linear projection of centred features; ``encode`` returns
±1 ``int8`` codes (bit = projection > 0, the rule of :func:`mghash_tf.core.index.packing.pack_bits`)
that :mod:`mghash_tf.core.metrics` and the index take as they are.

- :class:`LSH`: random Gaussian hyperplanes (Charikar 2002 sign random projections).
- :class:`PCASign`: the top ``num_bits`` principal directions, thresholded at 0.
- :class:`ITQ`: PCA, then the rotation that minimises the quantisation error
  ``||B - V R||^2`` by alternating ``B = sign(V R)`` and orthogonal Procrustes for ``R``
  (Gong & Lazebnik 2011, "Iterative Quantization").
- :func:`float_cosine`: L2-normalised features, the float upper bound (``metric="cosine"``).
- :func:`threshold_codes`: the seed's classifier-head codes, ``sigmoid(logits) > threshold``;
  :class:`SigmoidClassifier` is that head (one logistic unit per class, one bit per class),
  fitted on labelled features (supervised, unlike the hashers above).
  Float L2 search is ``metric="l2"`` in :mod:`mghash_tf.core.metrics`.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


class _LinearHash:
    """Centre, project, sign. Subclasses set ``self.projection_`` (D, K) in ``_learn``."""

    def __init__(self, num_bits: int):
        if isinstance(num_bits, bool) or not isinstance(num_bits, (int, np.integer)) or num_bits < 1:
            raise ValueError(f"`num_bits` must be a positive integer. Received: num_bits={num_bits!r}")
        self.num_bits = int(num_bits)
        self.mean_ = None
        self.projection_ = None

    def fit(self, features) -> "_LinearHash":
        x = _features(features)
        self.mean_ = x.mean(axis=0)
        self._learn(x - self.mean_)
        logger.info("%s fit on %d x %d features -> %d bits", type(self).__name__, *x.shape,
                    self.num_bits)
        return self

    def project(self, features) -> np.ndarray:
        """Real-valued relaxed codes (N, K), float64; their signs are the bits."""
        if self.projection_ is None:
            raise ValueError(f"{type(self).__name__} is not fitted: call fit(features) first.")
        x = _features(features)
        if x.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"`features` must have {self.mean_.shape[0]} columns as in fit. "
                             f"Received: shape={x.shape}")
        return (x - self.mean_) @ self.projection_

    def encode(self, features) -> np.ndarray:
        """±1 int8 codes (N, K)."""
        return np.where(self.project(features) > 0, 1, -1).astype(np.int8)

    def quantization_error(self, features) -> float:
        """Mean over items of ``||sign(v) - v||^2`` for the relaxed codes ``v``."""
        v = self.project(features)
        return float(np.mean(np.sum((np.where(v > 0, 1.0, -1.0) - v) ** 2, axis=1)))

    def _learn(self, centred: np.ndarray) -> None:
        raise NotImplementedError


class LSH(_LinearHash):
    """Random hyperplanes through the feature mean; ``seed`` fixes them."""

    def __init__(self, num_bits: int, *, seed: int = 0):
        super().__init__(num_bits)
        self.seed = seed

    def _learn(self, centred):
        rng = np.random.default_rng(self.seed)
        self.projection_ = rng.standard_normal((centred.shape[1], self.num_bits))


class PCASign(_LinearHash):
    """Top ``num_bits`` principal directions (needs ``num_bits <= feature dim``)."""

    def _learn(self, centred):
        self.projection_ = _principal_directions(centred, self.num_bits)


class ITQ(_LinearHash):
    """PCA to ``num_bits`` dimensions, then ``iterations`` rounds of rotation learning."""

    def __init__(self, num_bits: int, *, iterations: int = 50, seed: int = 0):
        super().__init__(num_bits)
        if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
            raise ValueError(
                f"`iterations` must be a non-negative integer. Received: iterations={iterations!r}")
        self.iterations = int(iterations)
        self.seed = seed

    def _learn(self, centred):
        pca = _principal_directions(centred, self.num_bits)
        v = centred @ pca
        rng = np.random.default_rng(self.seed)
        rotation, _ = np.linalg.qr(rng.standard_normal((self.num_bits, self.num_bits)))
        for _ in range(self.iterations):
            b = np.where(v @ rotation > 0, 1.0, -1.0)
            # Procrustes: max tr(R^T V^T B) over orthogonal R is U W^T from svd(V^T B).
            u, _, wt = np.linalg.svd(v.T @ b)
            rotation = u @ wt
        self.rotation_ = rotation
        self.projection_ = pca @ rotation


def _principal_directions(centred: np.ndarray, num_bits: int) -> np.ndarray:
    dim = centred.shape[1]
    if num_bits > dim:
        raise ValueError(f"`num_bits` must be <= the feature dimension ({dim}) for PCA-based "
                         f"hashing. Received: num_bits={num_bits}")
    cov = centred.T @ centred / max(centred.shape[0] - 1, 1)
    _, vectors = np.linalg.eigh(cov)
    return vectors[:, ::-1][:, :num_bits]


def _features(features) -> np.ndarray:
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"`features` must be a non-empty 2-D array (N, D). Received: shape={x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"`features` must be numeric. Received: dtype={x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("`features` must be finite. Received: NaN or inf values")
    return x


def float_cosine(features) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32, for ``metric="cosine"``."""
    x = _features(features)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def threshold_codes(probabilities, threshold: float = 0.5) -> np.ndarray:
    """±1 int8 codes: +1 where ``probabilities > threshold`` (the seed's sigmoid-head codes)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"`probabilities` must be 2-D (N, K). Received: shape={p.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"`threshold` must be in [0, 1]. Received: threshold={threshold!r}")
    return np.where(p > threshold, 1, -1).astype(np.int8)


class SigmoidClassifier:
    """One-vs-rest logistic regression on features, fitted by full-batch gradient descent with
    Adam steps: the classifier head whose ``sigmoid(logits) > 0.5`` bits are the seed's codes
    (``encode``: one bit per class, ±1 int8)."""

    def __init__(self, num_classes: int, *, steps: int = 300, learning_rate: float = 0.05,
                 l2: float = 1e-4):
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2. Received: num_classes={num_classes}")
        self.num_classes, self.steps, self.learning_rate, self.l2 = int(num_classes), int(steps), learning_rate, l2

    def fit(self, features, labels) -> "SigmoidClassifier":
        x = _features(features)
        y = np.asarray(labels)
        if y.shape != (len(x),) or y.min() < 0 or y.max() >= self.num_classes:
            raise ValueError(f"`labels` must be ({len(x)},) class ids in [0, {self.num_classes}). "
                             f"Received: shape={y.shape}")
        self.mean_, self.scale_ = x.mean(axis=0), x.std(axis=0) + 1e-8
        x = (x - self.mean_) / self.scale_
        target = np.eye(self.num_classes)[y]
        w = np.zeros((x.shape[1] + 1, self.num_classes))
        xb = np.hstack([x, np.ones((len(x), 1))])
        m, v = np.zeros_like(w), np.zeros_like(w)
        for t in range(1, self.steps + 1):
            p = 1.0 / (1.0 + np.exp(-(xb @ w)))
            grad = xb.T @ (p - target) / len(x) + self.l2 * w
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad ** 2
            w -= self.learning_rate * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        self.weights_ = w
        return self

    def probabilities(self, features) -> np.ndarray:
        x = (_features(features) - self.mean_) / self.scale_
        return 1.0 / (1.0 + np.exp(-(np.hstack([x, np.ones((len(x), 1))]) @ self.weights_)))

    def encode(self, features) -> np.ndarray:
        return threshold_codes(self.probabilities(features))
