"""Exact linear scans: top-k and radius search over packed codes. NumPy only.

Distances are computed in blocks of (queries x codes) under ``distance.MAX_DISTANCE_BYTES``.
Why slabs of codes: at 10M codes a full row alone fills the budget, so a batch would run one
query at a time and re-read all codes per query; slabs let ~16 queries share each read. Top-k
per slab then merges exactly: a global top-k item is also in its own slab's top-k.
Rows are padded to a multiple of ``topk.GROUPS`` with the dtype's maximum, which no threshold
reaches, so padding never enters a result.
"""

from __future__ import annotations

import numpy as np

from mghash_tf.core.index import distance, topk

# Queries that share one read of the codes, and the most per block: a taller block measured
# slower (100 queries x 100k codes: 0.78 ns per pair, in blocks of 16: 0.47 ns).
SHARED_QUERIES = 16


def _blocks(words: np.ndarray, queries: np.ndarray, terms, max_distance: int):
    """Yield ``(q0, c0, count, block)``: distances of a query slice to ``words[c0:c0+count]``."""
    n, nq = words.shape[0], len(queries)
    dtype = distance.distance_dtype(max_distance)
    budget = distance.MAX_DISTANCE_BYTES // np.dtype(dtype).itemsize
    slab = min(n, max(topk.GROUPS, budget // min(nq, SHARED_QUERIES)))
    slab -= slab % topk.GROUPS if slab < n else 0
    width = max(topk.GROUPS, -(-slab // topk.GROUPS) * topk.GROUPS)
    per_block = max(1, min(nq, SHARED_QUERIES, budget // width))
    for q0 in range(0, nq, per_block):
        qs = queries[q0 : q0 + per_block]
        for c0 in range(0, n, slab):
            count = min(slab, n - c0)
            block = distance.scratch("dist", (len(qs), width), dtype)
            block[:, count:] = np.iinfo(dtype).max
            distance.block_distances(words[c0 : c0 + count], qs, terms, block)
            yield q0, c0, count, block


def linear_topk(words: np.ndarray, queries: np.ndarray, k: int, terms):
    """``(D int32 (Q, k), P int64 (Q, k))``: positions of the k nearest codes per query.

    Ties keep position order; missing results are padded with ``topk.PAD_DISTANCE`` / -1.
    """
    n, max_distance = words.shape[0], distance.terms_bits(terms)
    D, P = topk.padded(len(queries), k)
    if n == 0 or len(queries) == 0:
        return D, P
    parts = {}
    for q0, c0, count, block in _blocks(words, queries, terms, max_distance):
        d, p = topk.smallest_rows(block, count, k, max_distance)
        parts.setdefault(q0, []).append((d, np.where(p >= 0, p + c0, p)))
    for q0, slabs in parts.items():
        d, p = slabs[0] if len(slabs) == 1 else _merge(slabs, k)
        D[q0 : q0 + len(d)], P[q0 : q0 + len(p)] = d, p
    return D, P


def _merge(slabs, k):
    d = np.concatenate([s[0] for s in slabs], axis=1)
    p = np.concatenate([s[1] for s in slabs], axis=1)
    order = np.lexsort((np.where(p < 0, np.iinfo(np.int64).max, p), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, axis=1), np.take_along_axis(p, order, axis=1)


def linear_range(words: np.ndarray, queries: np.ndarray, radius: int, terms):
    """FAISS-style radius search: all codes with distance ``< radius``.

    Returns ``(lims, D, P)``: results of query ``i`` are ``D[lims[i]:lims[i+1]]``, sorted by
    (distance, position).
    """
    n, max_distance = words.shape[0], distance.terms_bits(terms)
    radius = min(int(radius), max_distance + 1)  # keeps the uint8 compare in range
    hits = [([], []) for _ in range(len(queries))]
    if n:
        for q0, c0, count, block in _blocks(words, queries, terms, max_distance):
            for i, row in enumerate(block[:, :count]):
                pos = np.flatnonzero(row < radius)
                hits[q0 + i][0].append(row[pos].astype(np.int32))
                hits[q0 + i][1].append(pos + c0)
    dists, positions = [np.empty(0, np.int32)], [np.empty(0, np.int64)]
    for d, p in hits:
        d = np.concatenate(d) if d else np.empty(0, np.int32)
        p = np.concatenate(p).astype(np.int64) if p else np.empty(0, np.int64)
        order = np.lexsort((p, d))
        dists.append(d[order])
        positions.append(p[order])
    lims = np.zeros(len(queries) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in dists[1:]], out=lims[1:])
    return lims, np.concatenate(dists), np.concatenate(positions)
