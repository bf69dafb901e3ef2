"""Synthetic packed codes for tests and benchmarks. NumPy only.

``clustered_codes`` mimics a trained model: codes gather around class centres (here random
centres), each bit flipped independently with probability ``flip_p``. Real codes of a
well-trained model are far from uniform, which is what makes sub-linear search (MIH) pay off,
while uniform random codes are its worst case.
"""

from __future__ import annotations

import numpy as np

from mghash_tf.core.index.packing import num_words, pack_bits

CHUNK = 1 << 18  # rows generated at a time, so 10M codes never need a 10M x bits float array


def random_codes(n: int, num_bits: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random packed codes (N, W); bits beyond ``num_bits`` stay zero."""
    out = np.empty((n, num_words(num_bits)), dtype=np.uint64)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        out[start : start + m] = pack_bits(rng.integers(0, 2, size=(m, num_bits), dtype=np.uint8))
    return out


def clustered_codes(n: int, centres: np.ndarray, num_bits: int, flip_p: float,
                    rng: np.random.Generator):
    """``(codes, labels)``: each code is a random centre with each bit flipped w.p. ``flip_p``."""
    if not 0.0 <= flip_p <= 0.5:
        raise ValueError(f"`flip_p` must be in [0, 0.5]. Received: flip_p={flip_p!r}")
    labels = rng.integers(0, len(centres), size=n)
    out = np.empty((n, centres.shape[1]), dtype=np.uint64)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        flips = pack_bits(rng.random((m, num_bits)) < flip_p)
        out[start : start + m] = centres[labels[start : start + m]] ^ flips
    return out, labels
