"""Binary codes <-> packed uint64 words, and Hamming distance. NumPy only.

Bit order (fixed; files and the device depend on it): code bit ``j`` is stored in word
``j // 64`` at bit position ``j % 64``, least significant bit first. A bit is 1 where the
relaxed code ``h`` is strictly positive, so ``sign(0)`` counts as -1: a value exactly at the
decision boundary must map to one side, and this choice is the same for Keras and TFLite
outputs. Codes shorter than a multiple of 64 are zero-padded in the last word, which adds
nothing to any Hamming distance.
"""

from __future__ import annotations

import numpy as np

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def num_words(num_bits: int) -> int:
    if not isinstance(num_bits, (int, np.integer)) or num_bits <= 0 or num_bits % 8:
        raise ValueError(
            f"`num_bits` must be a positive multiple of 8. Received: num_bits={num_bits!r}"
        )
    return (int(num_bits) + 63) // 64


def to_bits(codes) -> np.ndarray:
    """Relaxed (real), ±1 or {0, 1} codes of shape (N, K) -> uint8 {0, 1} array."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"`codes` must be 2-D (N, K). Received: shape={codes.shape}")
    if codes.dtype == np.bool_:
        return codes.astype(np.uint8)
    if np.issubdtype(codes.dtype, np.integer) and codes.size and codes.min() >= 0:
        if codes.max() > 1:
            raise ValueError(
                f"Integer codes must be {{0, 1}} or ±1. Received: max value {codes.max()}"
            )
        return codes.astype(np.uint8)
    return (codes > 0).astype(np.uint8)


def pack_bits(bits) -> np.ndarray:
    """(N, K) {0,1} or real/±1 codes -> (N, ceil(K/64)) uint64 words (bit order above)."""
    bits = to_bits(bits)
    n, k = bits.shape
    words = num_words(k)
    padded = np.zeros((n, words * 64), dtype=np.uint8)
    padded[:, :k] = bits
    packed = np.packbits(padded, axis=1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False).reshape(n, words)


def unpack_bits(words, num_bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: (N, W) uint64 -> (N, num_bits) uint8 {0, 1}."""
    words = np.ascontiguousarray(np.asarray(words, dtype=np.uint64))
    if words.ndim != 2 or words.shape[1] != num_words(num_bits):
        raise ValueError(
            f"`words` must have shape (N, {num_words(num_bits)}) for num_bits={num_bits}. "
            f"Received: shape={words.shape}"
        )
    as_bytes = words.astype("<u8", copy=False).view(np.uint8)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :num_bits]


def popcount(x: np.ndarray) -> np.ndarray:
    """Bit count per element of an unsigned integer array (uint8 result for uint64 input)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return popcount_lut(x)


def popcount_lut(x: np.ndarray) -> np.ndarray:
    """Lookup-table popcount for NumPy < 2 (no ``np.bitwise_count``)."""
    x = np.ascontiguousarray(x)
    per_byte = _POPCOUNT8[x.view(np.uint8)].reshape(x.shape + (x.itemsize,))
    return per_byte.sum(axis=-1, dtype=np.uint16).astype(np.uint8)


def hamming(a_words: np.ndarray, b_words: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances between packed codes: (Na, W), (Nb, W) -> (Na, Nb) int32."""
    a = np.asarray(a_words, dtype=np.uint64)
    b = np.asarray(b_words, dtype=np.uint64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"Packed codes must be 2-D with the same word count. Received: {a.shape} and {b.shape}"
        )
    dist = np.zeros((a.shape[0], b.shape[0]), dtype=np.int32)
    for w in range(a.shape[1]):
        dist += popcount(a[:, w, None] ^ b[None, :, w])
    return dist
