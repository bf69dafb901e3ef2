"""Multi-index hashing for one query at a time (the device case). NumPy only.

A single query has no batch to amortise NumPy's per-call overhead (~1-2 us, more when a scan
has just evicted the caches), which is most of its cost at ~4000 candidates. So a step probes
many (radius, table) steps of the plan at once, in one bucket lookup, one gather and one
popcount, and a query takes at most two such steps.

Candidates become int64 keys ``distance << position_bits | position``: one sort of the few keys
within the upper bound orders them by (distance, position), the linear scan's tie rule, and
exposes the copies of a code met in several tables as equal neighbours. The upper bound only
prunes: were it ever too small, fewer than k codes would pass, the search would give up and the
scan would answer, so no bound can make an answer wrong.
"""

from __future__ import annotations

import numpy as np

from mghash_tf.core.index.distance import popcount
from mghash_tf.core.index.mih_tables import SubstringTables, span_rows

# The first step's buckets holding at most this many times what uniform codes would put there
# mark a query far from the stored codes: the sample then decides whether probing pays. Uniform
# codes fill them about 1x; a query inside a cluster of trained codes finds 8-60x.
SPARSE = 4.0


def search_one(tables: SubstringTables, sample: np.ndarray, query: np.ndarray, k: int,
               budget: float):
    """``(D int32 (k,), P int64 (k,))`` of one packed query (W,), or None where probing is
    expected to cost more than ``budget`` (candidates plus probes), so the scan should answer.

    Needs ``k < tables.num_codes``. At most two probing steps: the first reaches radius 1 in
    every table (if the budget allows). The k-th distance among the codes it found bounds the
    true one from above, so the second step goes straight to the plan step that bound needs,
    which finishes the search. Where the first step's buckets are no fuller than uniform codes
    would fill them (the neighbours are likely far), ``sample`` (S, W) of stored codes decides
    first whether probing pays: its ``k * S / n``-th distance estimates the k-th distance, its
    k-th bounds it.
    """
    plan, shift = tables.plan, tables.position_bits
    # Radius 1 where the budget allows (small indexes may afford radius 0 only).
    affordable = int(plan.cum_work.searchsorted(budget, side="right")) - 1
    first, last = 0, min(tables.radius_one_step, affordable)
    if last < 0:
        return None
    qb = tables.query_buckets_one(query)
    keys, upper = None, tables.num_bits
    while True:
        probes = tables.step_probes(first, last)
        idx = probes.base + (qb[probes.table] ^ probes.flip)
        starts, lengths = tables.bucket_spans(idx)
        if keys is None and lengths.sum() <= SPARSE * probes.uniform:
            estimate, upper = _sample_kth(tables, sample, query, k)
            if plan.cum_work[tables.last_step(estimate)] > budget:
                return None
        rows = span_rows(starts, lengths)
        d = _distances(tables.code_words, query, rows)
        upper = min(upper, _multiset_kth(d, k * tables.num_tables, upper))
        near = (d <= upper).nonzero()[0]
        found = (d[near].astype(np.int64) << shift) | tables.pos[rows[near]]
        keys = _distinct_sorted(found if keys is None else np.concatenate([keys, found]))
        if len(keys) >= k:
            upper = int(keys[k - 1] >> shift)
            # Every code at distance <= upper has been seen once upper < bound: exact.
            if upper < plan.bounds[last]:
                top = keys[:k]
                return (top >> shift).astype(np.int32), top & ((1 << shift) - 1)
            keys = keys[: keys.searchsorted((upper + 1) << shift)]
        elif upper == tables.num_bits:  # fewer than k found and no bound yet
            upper = _sample_kth(tables, sample, query, k)[1]
        first, last = last + 1, max(last + 1, tables.last_step(upper))
        if last == len(plan.steps) or plan.cum_work[last] > budget:
            return None


def _sample_kth(tables, sample, query, k):
    """(estimate of the k-th distance, upper bound on it) from the sample's distances: its
    ``k * S / n``-th and k-th smallest (``num_bits`` where the sample has fewer than k)."""
    cums = np.bincount(_distances(sample, query), minlength=tables.num_bits + 1).cumsum()
    estimate = int(cums.searchsorted(k * len(sample) / tables.num_codes))
    return estimate, min(int(cums.searchsorted(k)), tables.num_bits)


def _multiset_kth(d: np.ndarray, count: int, default: int) -> int:
    """Upper bound on the k-th distance among the distinct codes of one step, each met at most
    ``count // k`` times (once per table): the ``count``-th smallest of ``d`` with repeats.

    Why a histogram, not ``np.partition``: on fresh data partition mispredicts its branches
    and costs ~25 us per 4000 distances, the histogram ~6 us.
    """
    if len(d) < count:
        return default
    return int(np.bincount(d).cumsum().searchsorted(count))


def _distances(codes, query: np.ndarray, rows=None) -> np.ndarray:
    """Hamming distances (uint8 for one word, else int) of a query to ``codes`` (N, W) or, with
    ``rows``, to the rows of the per-word columns ``codes``."""
    words = [codes[:, w] for w in range(codes.shape[1])] if rows is None else codes
    d = None
    for w, column in enumerate(words):
        x = popcount((column if rows is None else column[rows]) ^ query[w])
        d = x if d is None else d + x.astype(np.int32)
    return d


def _distinct_sorted(keys: np.ndarray) -> np.ndarray:
    """``keys`` (a fresh array, sorted in place) without repeats."""
    keys.sort()
    if keys.size < 2:
        return keys
    first = np.empty(keys.size, dtype=bool)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    return keys[first]
