"""Multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012): exact k-NN, sub-linear in practice.

Codes are cut into ``m`` disjoint substrings; table ``j`` holds every code sorted by substring
``j`` (:mod:`mih_tables`). Pigeonhole: a code within ``r`` of the query has some substring within
``r // m``. Search probes substring radius ``s = 0, 1, ...`` table by table; after radius ``s`` in
tables ``0..j`` every unseen code is at least ``m * s + j + 1`` away. Once the k-th distance is
provably *below* that bound, every code at the k-th distance has been seen, so ties are broken
by position exactly as the linear scan breaks them. When probing would cost more than scanning,
the query uses the linear scan (same answer).

Batches advance all their queries together, one table per step, so the Python overhead per step
is paid once per batch; fewer than ``SMALL_BATCH`` queries are searched one at a time
(:mod:`mih_single`), several steps at once.
"""

from __future__ import annotations

import logging

import numpy as np

from mghash_tf.core.index import distance, linear, topk
from mghash_tf.core.index.mih_single import search_one
from mghash_tf.core.index.mih_tables import SubstringTables
from mghash_tf.core.index.substrings import MAX_SUBSTRING_BITS, default_num_tables

logger = logging.getLogger(__name__)

# Use the linear scan when probed buckets plus expected candidates exceed this many per stored
# code: ~1.2 ns per code for the scan against ~50-100 ns per probe or candidate here.
WORK_PER_CODE = 1 / 64
PLAN_SAMPLE = 4096  # codes whose exact distances estimate the k-th distance before probing
SINGLE_SAMPLE = 1024  # the same for one query: a quarter of the cost, a coarser estimate
QUERY_CHUNK = 256  # queries probed together: amortises Python overhead, bounds candidate memory
SMALL_BATCH = 8  # below this many queries, each query is searched alone


class MultiIndexHash:
    """Exact k-NN over packed codes (N, W) with ``num_tables`` substring tables.

    Memory (``nbytes``): per table a copy of the codes and one position per code, plus
    ``2**bucket_bits`` offsets. Build it again after the codes change.
    """

    def __init__(self, words: np.ndarray, num_bits: int, num_tables: int | None = None):
        n = words.shape[0]
        num_tables = default_num_tables(num_bits, n) if num_tables is None else num_tables
        lo = -(-num_bits // MAX_SUBSTRING_BITS)
        if not isinstance(num_tables, (int, np.integer)) or not lo <= num_tables <= num_bits:
            raise ValueError(
                f"`num_tables` must be an int in [{lo}, {num_bits}] for {num_bits}-bit codes "
                f"(substrings of at most {MAX_SUBSTRING_BITS} bits). Received: {num_tables!r}"
            )
        bounds = np.linspace(0, num_bits, int(num_tables) + 1).round().astype(int)
        self.num_bits, self.num_codes = num_bits, n
        self.substrings = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self._words = words
        self._tables = SubstringTables(words, num_bits, self.substrings)
        self._full_terms = distance.full_terms(words.shape[1])
        self._sample, self._single_sample = (
            words[np.linspace(0, n - 1, min(n, size)).astype(np.intp)]
            for size in (PLAN_SAMPLE, SINGLE_SAMPLE)
        )

    @property
    def num_tables(self) -> int:
        return len(self.substrings)

    @property
    def nbytes(self) -> int:
        return self._tables.nbytes

    def search(self, queries: np.ndarray, k: int):
        """``(D int32 (Q, k), P int64 (Q, k))``, identical to ``linear.linear_topk``."""
        nq, n = len(queries), self.num_codes
        found = None
        if 0 < nq < SMALL_BATCH and k < n:
            found = [search_one(self._tables, self._single_sample, q, k, n * WORK_PER_CODE)
                     for q in queries]
            if nq == 1 and found[0] is not None:  # the device case: no copies
                return found[0][0][None], found[0][1][None]
        D, P = topk.padded(nq, k)
        if nq == 0 or n == 0:
            return D, P
        if found is not None:
            for i, one in enumerate(found):
                if one is not None:
                    D[i], P[i] = one
        elif k < n:
            self._search_batch(queries, k, D, P)
        rest = np.flatnonzero(P[:, 0] < 0)
        if rest.size:
            logger.debug("MIH: %d of %d queries use the linear scan", rest.size, nq)
            D[rest], P[rest] = linear.linear_topk(self._words, queries[rest], k, self._full_terms)
        return D, P

    def _search_batch(self, queries: np.ndarray, k: int, D: np.ndarray, P: np.ndarray):
        """Fill the rows of D, P that probing solves, chunk by chunk of queries."""
        for start in range(0, len(queries), QUERY_CHUNK):
            chunk = np.arange(start, min(len(queries), start + QUERY_CHUNK))
            pays, upper = self._probing_pays(queries[chunk], k)
            chunk = chunk[pays]
            d, p, solved = self._probe_search(queries[chunk], k, upper[pays])
            D[chunk[solved]], P[chunk[solved]] = d[solved], p[solved]

    def _probing_pays(self, queries: np.ndarray, k: int):
        """Per query: is probing expected to cost less than the linear scan? And an upper bound.

        Distances to a fixed sample of codes estimate the k-th distance, hence the radius and
        probe cost needed. The sample's exact k-th distance also bounds the true one from above
        (a subset cannot have k codes closer than the whole set), which prunes candidates.
        """
        plan = self._tables.plan
        d = distance.distances(self._sample, queries, self._full_terms)
        kth = topk.kth_from_sample(d, k * len(self._sample) / self.num_codes, self.num_bits)
        steps = np.minimum(np.searchsorted(plan.bounds, kth, side="right"), len(plan.bounds) - 1)
        upper = topk.kth_from_sample(d, k, self.num_bits) if k <= len(self._sample) else None
        if upper is None:
            upper = np.full(len(queries), self.num_bits)
        return plan.cum_work[steps] <= self.num_codes * WORK_PER_CODE, upper

    def _probe_search(self, queries: np.ndarray, k: int, upper: np.ndarray):
        """Probe (radius, table) steps for all queries at once; ``solved`` marks finished ones.

        ``kept`` holds distinct candidates within each query's current upper bound on the k-th
        distance; the bound shrinks as candidates arrive.
        """
        n, nq = self.num_codes, len(queries)
        D, P = topk.padded(nq, k)
        solved = np.zeros(nq, dtype=bool)
        qbuckets = self._tables.query_buckets(queries)
        query_words = [np.ascontiguousarray(queries[:, w]) for w in range(queries.shape[1])]
        upper = upper.astype(np.int32)
        active = np.arange(nq)
        kept_key, kept_d = np.empty(0, np.int64), np.empty(0, np.int32)
        plan = self._tables.plan
        for step, (s, j) in enumerate(plan.steps):
            if not active.size or plan.cum_work[step] > n * WORK_PER_CODE:
                break
            q, d, rows = self._probe(query_words, qbuckets, active, s, j, upper)
            key = np.concatenate([kept_key, q * n + self._tables.pos[rows]])
            key, first = np.unique(key, return_index=True)
            d = np.concatenate([kept_d, d])[first]
            q = key // n
            hist = _rows_hist(q, d, nq, self.num_bits)
            upper = np.minimum(upper, topk.kth_from_sample(hist, k, self.num_bits, hist=True))
            upper = upper.astype(np.int32)
            keep = d <= upper[q]
            kept_key, kept_d = key[keep], d[keep]
            done = active[upper[active] < plan.bounds[step]]
            if done.size:
                solved[done] = True
                q = kept_key // n
                sel = solved[q]
                D[done], P[done] = _first_k(q[sel], kept_d[sel], kept_key[sel] % n, done, k)
                active = active[~solved[active]]
                kept_key, kept_d = kept_key[~sel], kept_d[~sel]
        return D, P, solved

    def _probe(self, query_words, qbuckets, active, s, j, upper):
        """(query, distance, row) of codes in table j's buckets at radius s, within ``upper``.

        ``query_words``: the queries' words as contiguous columns (1-D gathers are cheaper
        than gathering rows of a 2-D array). A code may be returned more than once.
        """
        t = self._tables
        flips = t.flips(s, j)
        idx = t.offset_base[j] + (qbuckets[j][active][:, None] ^ flips[None, :])
        rows, lengths = t.bucket_rows(idx.ravel())
        row_q = np.repeat(np.repeat(active, len(flips)), lengths)
        d = None
        for column, qcol in zip(t.code_words, query_words):
            x = distance.popcount(column[rows] ^ qcol[row_q])
            d = x if d is None else d + x.astype(np.int32)
        keep = (d <= upper[row_q]).nonzero()[0]
        return row_q[keep], d[keep], rows[keep]


def _rows_hist(q, d, nq, max_distance):
    width = max_distance + 1
    return np.bincount(q * width + d, minlength=nq * width).reshape(nq, width)


def _first_k(q, d, p, done, k):
    """Per query in ``done`` (sorted): its k nearest of (d, p) by (distance, position)."""
    order = np.lexsort((p, d, q))
    starts = np.searchsorted(q[order], done)
    pick = order[starts[:, None] + np.arange(k)[None, :]]
    return d[pick], p[pick]
