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
from mghash_tf.core.index.mih_tables import SubstringTables


def search_one(tables: SubstringTables, sample: np.ndarray, query: np.ndarray, k: int,
               budget: float):
    """``(D int32 (k,), P int64 (k,))`` of one packed query (W,), or None where probing is
    expected to cost more than ``budget`` (candidates plus probes), so the scan should answer.

    Needs ``k < tables.num_codes``. ``sample`` (S, W) holds stored codes: its ``k * S / n``-th
    distance estimates the k-th distance, hence the last step, and its k-th bounds it.

    At most two probing steps: the first reaches radius 1 (or the estimated last step, if
    sooner). The k-th distance among the codes it found bounds the true one from above, so the
    second step goes straight to the step that bound needs, which finishes the search.
    """
    plan, shift = tables.plan, tables.position_bits
    estimate, upper = _sample_kth(tables, sample, query, k)
    last = tables.last_step(estimate)
    if plan.cum_work[last] > budget:
        return None
    qb = tables.query_buckets_one(query)
    keys = None
    first, last = 0, min(last, tables.radius_one_step)
    while True:
        table, flips, base = tables.step_probes(first, last)
        rows, _ = tables.bucket_rows(base + (qb[table] ^ flips))
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
