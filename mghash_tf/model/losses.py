"""Hashing losses: pure functions of (relaxed codes, labels), plus one Keras ``Loss`` that
applies them segment by segment with each segment's own label level.

Codes ``h`` are (B, K) in (-1, 1). Labels are class ids (B,) or multi-hot (B, C); two items are
similar when they share at least one label. All pairwise terms average over the B(B-1)
ordered pairs i != j, so the numbers do not grow with the batch size.
"""

from __future__ import annotations

import numpy as np
from keras import ops


def similarity_matrix(labels):
    """(B,) ids or (B, C) multi-hot -> (B, B) float32, 1 where the items share a label."""
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) == 1:
        return ops.cast(ops.equal(labels[:, None], labels[None, :]), "float32")
    multi = ops.cast(labels, "float32")
    return ops.cast(ops.matmul(multi, ops.transpose(multi)) > 0, "float32")


def off_diagonal_mean(values):
    b = ops.shape(values)[0]
    mask = 1.0 - ops.eye(b, dtype=values.dtype)
    return ops.sum(values * mask) / ops.maximum(ops.sum(mask), 1.0)


def squared_distances(h):
    sq = ops.sum(h * h, axis=1)
    return ops.maximum(sq[:, None] + sq[None, :] - 2.0 * ops.matmul(h, ops.transpose(h)), 0.0)


def pairwise_margin_loss(h, similarity, *, margin=0.5):
    """``S * d + (1 - S) * max(0, m - d)`` with ``d = ||hi - hj||^2 / 4K``.

    For binary codes ``||bi - bj||^2 = 4 * hamming``, so ``d`` is the fraction of differing
    bits and ``margin`` is a fraction of the code length. Scaling the margin with K keeps one
    setting meaningful for a 16-bit coarse segment and a 48-bit fine one; 0.5 asks dissimilar
    pairs to differ in at least half their bits, as independent random codes do on average.
    """
    h = ops.cast(h, "float32")
    d = squared_distances(h) / (4.0 * h.shape[-1])
    s = ops.cast(similarity, "float32")
    return off_diagonal_mean(s * d + (1.0 - s) * ops.relu(margin - d))


def dpsh_loss(h, similarity, *, scale=None):
    """Pairwise likelihood (DPSH): ``softplus(theta) - S * theta``, ``theta = scale * hi.hj``.

    DPSH uses ``scale = 1/2``; at 64 bits that makes ``theta`` span [-32, 32] and saturates the
    sigmoid early, so the default is ``8 / K`` (theta in [-8, 8] whatever the length).
    """
    h = ops.cast(h, "float32")
    k = h.shape[-1]
    scale = 8.0 / k if scale is None else scale
    theta = scale * ops.matmul(h, ops.transpose(h))
    s = ops.cast(similarity, "float32")
    # softplus(t) - t == softplus(-t): the same value without cancellation in float32.
    return off_diagonal_mean(ops.softplus((1.0 - 2.0 * s) * theta))


def quantization_loss(h):
    """Mean ``(|h| - 1)^2``: pushes codes to ±1 so signs survive int8 export."""
    h = ops.cast(h, "float32")
    return ops.mean(ops.square(ops.abs(h) - 1.0))


def balance_loss(h):
    """Mean over bits of the squared batch mean: each bit should split the data in half."""
    h = ops.cast(h, "float32")
    return ops.mean(ops.square(ops.mean(h, axis=0)))


def hadamard(n: int) -> np.ndarray:
    """A Hadamard matrix of order ``n`` (entries ±1, ``H @ H.T == n * I``): Sylvester's doubling
    from order 1, or from a Paley matrix of order ``q + 1`` for a prime ``q = 3 (mod 4)``. So
    every power of two and e.g. 12, 20, 24, 44, 48 (and their doublings 40, 96, ...) exist here;
    other orders raise ValueError."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"Hadamard order must be a positive int. Received: n={n!r}")
    if n == 1:
        return np.ones((1, 1), dtype=np.float32)
    if n % 4 == 0 and _is_prime(n - 1) and (n - 1) % 4 == 3:
        return _paley(n - 1)
    if n % 2 == 0:
        try:
            m = hadamard(n // 2)
        except ValueError:
            pass
        else:
            return np.block([[m, m], [m, -m]])
    raise ValueError("No Hadamard construction here for this order: it must be a power of two, "
                     f"p + 1 for a prime p = 3 (mod 4), or twice such an order. Received: n={n}")


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(q ** 0.5) + 1))


def _paley(q: int) -> np.ndarray:
    """Paley construction I: with the Jacobsthal matrix ``Q[i, j] = chi(j - i)`` (chi = the
    quadratic character mod q, antisymmetric for q = 3 mod 4), ``H = I + [[0, 1^T], [-1, Q]]``."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = np.array([0] + [1 if a in squares else -1 for a in range(1, q)], dtype=np.float32)
    idx = np.arange(q)
    jacobsthal = chi[(idx[None, :] - idx[:, None]) % q]
    skew = np.zeros((q + 1, q + 1), dtype=np.float32)
    skew[0, 1:], skew[1:, 0], skew[1:, 1:] = 1.0, -1.0, jacobsthal
    return np.eye(q + 1, dtype=np.float32) + skew


def hash_centers(num_classes: int, bits: int, *, seed: int = 0) -> np.ndarray:
    """(num_classes, bits) ±1 class centres, far apart (CSQ, Yuan et al. 2020).

    Hadamard rows and their negations are pairwise at Hamming distance >= K/2 when a Hadamard
    matrix of order K exists (:func:`hadamard`: e.g. K = 16, 48, 64) and there are at most 2K
    classes; otherwise the best of 20 seeded random draws by minimum pairwise distance.
    """
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1. Received: num_classes={num_classes}")
    if num_classes <= 2 * bits:
        try:
            h = hadamard(bits)
        except ValueError:
            pass
        else:
            return np.concatenate([h, -h])[:num_classes]
    rng = np.random.default_rng(seed)
    best, best_min = None, -1
    for _ in range(20):
        c = rng.choice([-1.0, 1.0], size=(num_classes, bits)).astype(np.float32)
        d = (bits - c @ c.T) / 2 + np.eye(num_classes) * bits
        if d.min() > best_min:
            best, best_min = c, d.min()
    return best


def center_loss(h, labels, centers):
    """Binary cross-entropy between ``(h+1)/2`` and the label's centre bits ``(c+1)/2``.

    Multi-hot labels take the sign of the summed centres of their classes.
    """
    h = ops.cast(h, "float32")
    centers = ops.convert_to_tensor(centers, dtype="float32")
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) == 1:
        target = ops.take(centers, ops.cast(labels, "int32"), axis=0)
    else:
        summed = ops.matmul(ops.cast(labels, "float32"), centers)
        target = ops.where(summed >= 0, 1.0, -1.0)
    p = ops.clip((h + 1.0) / 2.0, 1e-6, 1.0 - 1e-6)
    t = (target + 1.0) / 2.0
    return ops.mean(-(t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p)))


def orthogonal_center_loss(h, labels, centers, *, scale=8.0, margin=0.2, label_smoothing=0.0):
    """Softmax cross-entropy over cosine similarities to fixed, far-apart class codes, with an
    additive margin on the true class (OrthoHash, Hoe et al., NeurIPS 2021).

    ``logit_k = scale * (cos(h, c_k) - margin * [k == label])``; with ``label_smoothing`` the
    target puts ``1 - label_smoothing + label_smoothing / C`` on the label and
    ``label_smoothing / C`` elsewhere. The classifier is the code book itself, so a code that
    classifies well sits near its class centre in Hamming space. Class ids only.

    Example (hand-computed): K = 2, centres ``[+1, +1]`` and ``[+1, -1]``, ``h = [1, 0]``,
    label 0, scale 1, margin 0: both cosines are ``1/sqrt(2)``, so the loss is ``log 2 = 0.6931``.
    """
    h = ops.cast(h, "float32")
    centers = ops.convert_to_tensor(centers, dtype="float32")
    num_classes, bits = centers.shape
    unit = h / ops.maximum(ops.norm(h, axis=1, keepdims=True), 1e-6)
    cosine = ops.matmul(unit, ops.transpose(centers)) / float(np.sqrt(bits))
    onehot = ops.one_hot(ops.cast(labels, "int32"), num_classes)
    logits = scale * (cosine - margin * onehot)
    target = onehot * (1.0 - label_smoothing) + label_smoothing / num_classes
    return ops.mean(-ops.sum(target * ops.log_softmax(logits, axis=-1), axis=-1))
