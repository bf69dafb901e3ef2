"""Substrings of packed codes for multi-index hashing: extraction, bucket folding, flip masks.

NumPy only. A substring is a run of at most ``MAX_SUBSTRING_BITS`` code bits (bit order of
``packing``). Its bucket is a linear (GF(2)) fold of its value down to about log2(n) bits, so
bucket tables stay O(n) and ``fold(v ^ f) == fold(v) ^ fold(f)`` lets probes reuse folded
flip masks. Folding merges buckets: it adds candidates, it never hides one.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

MAX_SUBSTRING_BITS = 32


@functools.lru_cache(maxsize=256)
def flip_masks(bits: int, radius: int) -> np.ndarray:
    """All ``bits``-bit masks with exactly ``radius`` ones, as uint64."""
    combos = itertools.combinations([1 << i for i in range(bits)], radius)
    return np.fromiter((sum(c) for c in combos), dtype=np.uint64, count=math.comb(bits, radius))


def substring_values(words: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Bits ``[start, stop)`` (at most 64) of each packed code as uint64."""
    w, off = divmod(start, 64)
    out = words[:, w] >> np.uint64(off)
    if off and off + (stop - start) > 64:
        out = out | (words[:, w + 1] << np.uint64(64 - off))
    if stop - start < 64:
        out = out & np.uint64((1 << (stop - start)) - 1)
    return out


def default_num_tables(num_bits: int, n: int) -> int:
    """Norouzi et al.'s choice: substrings of about log2(n) bits."""
    m = round(num_bits / max(8.0, math.log2(max(n, 2))))
    return max(2, -(-num_bits // MAX_SUBSTRING_BITS), m)


def bucket_bits(substring_bits: int, n: int) -> int:
    """Bits of a folded bucket index: about log2(n), at least 8, at most the substring."""
    return min(substring_bits, max(8, math.ceil(math.log2(max(n, 2)))))


def fold(values: np.ndarray, bits: int, out_bits: int) -> np.ndarray:
    """Bucket of each ``bits``-bit substring value: XOR-folded to ``out_bits`` bits, as intp."""
    if out_bits < bits:
        values = values ^ (values >> np.uint64(out_bits))
    return (values & np.uint64((1 << out_bits) - 1)).astype(np.intp)


def fold_int(value: int, bits: int, out_bits: int) -> int:
    """``fold`` of one substring value as a Python int (same bucket, no NumPy call)."""
    if out_bits < bits:
        value ^= value >> out_bits
    return value & ((1 << out_bits) - 1)
