"""Hamming distances from packed queries to packed codes, blocked for the CPU cache. NumPy only.

A *term* is ``(word, mask)``: the distance is the sum over terms of
``popcount((code[word] ^ query[word]) & mask)`` (``mask=None`` means all 64 bits). The full
code, one segment or a prefix are all lists of terms, so every search mode shares one kernel.

Why blocks: for a batch, XOR-ing a few thousand codes against a block of queries keeps the codes
in L2 while NumPy runs its contiguous scalar-operand loop, which measured ~0.3 ns per pair here
against ~0.5 ns for a whole-array pass that streams from memory.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from mghash_tf.core.index.packing import popcount_lut

HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")

# 2 MiB of uint64 scratch per block: L3-resident; measured fastest of 2^14..2^18 here.
BLOCK_ELEMENTS = 1 << 18
# Upper bound on one (queries x codes) distance block, so 10M-code batches stay in memory.
MAX_DISTANCE_BYTES = 16 << 20


_SCRATCH = threading.local()


def scratch(name: str, shape: tuple, dtype) -> np.ndarray:
    """A reusable per-thread buffer: fresh multi-MB arrays cost page faults on every query.

    Kept until the thread ends; at most one distance block (``MAX_DISTANCE_BYTES``) plus one
    XOR block per thread.
    """
    size = math.prod(shape) * np.dtype(dtype).itemsize
    buf = getattr(_SCRATCH, name, None)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype=np.uint8)
        setattr(_SCRATCH, name, buf)
    return buf[:size].view(dtype).reshape(shape)


def popcount_into(x: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = popcount(x)``; the lookup-table path stands in for NumPy < 2."""
    if HAS_BITWISE_COUNT:
        np.bitwise_count(x, out=out)
    else:
        out[...] = popcount_lut(x)


def popcount(x: np.ndarray) -> np.ndarray:
    """uint8 ``popcount(x)`` in a new array (lookup table for NumPy < 2)."""
    return np.bitwise_count(x) if HAS_BITWISE_COUNT else popcount_lut(x)


def full_terms(num_words: int) -> tuple:
    return tuple((w, None) for w in range(num_words))


def bit_range_terms(start: int, stop: int) -> tuple:
    """Terms reading only code bits ``[start, stop)`` (bit order of ``packing``)."""
    terms = []
    for w in range(start // 64, (stop - 1) // 64 + 1):
        lo, hi = max(start, 64 * w) - 64 * w, min(stop, 64 * w + 64) - 64 * w
        mask = None if (lo, hi) == (0, 64) else np.uint64(((1 << (hi - lo)) - 1) << lo)
        terms.append((w, mask))
    return tuple(terms)


def terms_bits(terms) -> int:
    """Largest distance the terms can produce."""
    return sum(64 if m is None else bin(int(m)).count("1") for _, m in terms)


def distance_dtype(max_distance: int):
    # uint8 keeps the arrays 8x smaller than int64; 255 is reserved as the padding value.
    return np.uint8 if max_distance < 255 else np.uint16


def block_distances(words: np.ndarray, queries: np.ndarray, terms, out: np.ndarray) -> None:
    """Write distances of every query to every code into ``out`` of shape (Q, >= N)."""
    nq, n = queries.shape[0], words.shape[0]
    chunk = max(256, BLOCK_ELEMENTS // nq)
    xor = scratch("xor", (nq, max(1, min(chunk, n))), np.uint64)
    part = np.empty(xor.shape, dtype=out.dtype) if len(terms) > 1 else None
    qcols = [np.ascontiguousarray(queries[:, w, None]) for w, _ in terms]
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        x, dst = xor[:, : stop - start], out[:, start:stop]
        for t, ((w, mask), qcol) in enumerate(zip(terms, qcols)):
            np.bitwise_xor(qcol, words[None, start:stop, w], out=x)
            if mask is not None:
                np.bitwise_and(x, mask, out=x)
            if t == 0:
                popcount_into(x, dst)
            else:
                popcount_into(x, part[:, : stop - start])
                np.add(dst, part[:, : stop - start], out=dst)


def distances(words: np.ndarray, queries: np.ndarray, terms) -> np.ndarray:
    """(Q, N) distances; the dtype fits the largest possible distance."""
    out = np.empty((queries.shape[0], words.shape[0]), dtype=distance_dtype(terms_bits(terms)))
    block_distances(words, queries, terms, out)
    return out


def row_distances(codes: np.ndarray, query: np.ndarray, terms) -> np.ndarray:
    """int32 distances of one query to a (small) set of codes (C, W)."""
    dist = np.zeros(len(codes), dtype=np.int32)
    buf = np.empty(len(codes), dtype=np.uint8)
    for w, mask in terms:
        x = codes[:, w] ^ query[w]
        if mask is not None:
            x &= mask
        popcount_into(x, buf)
        dist += buf
    return dist


def query_block_size(num_queries: int, num_codes: int, itemsize: int = 1) -> int:
    """How many queries fit one distance block under ``MAX_DISTANCE_BYTES``."""
    return int(max(1, min(num_queries, MAX_DISTANCE_BYTES // max(1, num_codes * itemsize))))
