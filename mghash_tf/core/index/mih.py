"""Multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012): exact k-NN, sub-linear in practice.

Codes are cut into ``m`` disjoint substrings; table ``j`` holds every code sorted by substring
``j`` with bucket offsets. Pigeonhole: a code within ``r`` of the query has some substring within
``r // m``. Search probes substring radius ``s = 0, 1, ...`` table by table; after radius ``s`` in
tables ``0..j`` every unseen code is at least ``m * s + j + 1`` away. Once the k-th distance is
provably *below* that bound, every code at the k-th distance has been seen, so ties are broken
by position exactly as the linear scan breaks them. When probing would cost more than scanning,
the query uses the linear scan (same answer).

Why each table stores a copy of the codes in bucket order: candidates are then read from
contiguous memory instead of ~100 ns random reads, which dominated the search time. Buckets are
indexed by a fold of the substring to at most ~log2(n) bits, so offset tables stay O(n); a fold
only adds candidates, never hides one, so the bound above still holds. All queries of a batch
advance together, so the Python overhead per step is paid once per batch.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from mghash_tf.core.index import distance, linear, topk
from mghash_tf.core.index.substrings import (
    MAX_SUBSTRING_BITS, bucket_bits, default_num_tables, flip_masks, fold, substring_values,
)

logger = logging.getLogger(__name__)

# Use the linear scan when probed buckets plus expected candidates exceed this many per stored
# code: ~1.2 ns per code for the scan against ~50-100 ns per probe or candidate here.
WORK_PER_CODE = 1 / 64
PLAN_SAMPLE = 4096  # codes whose exact distances estimate the k-th distance before probing
QUERY_CHUNK = 256  # queries probed together: amortises Python overhead, bounds candidate memory
SMALL_BATCH = 8  # below this many queries, probe a whole radius per step


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
        self._bucket_bits = [bucket_bits(b - a, n) for a, b in self.substrings]
        self._words = words
        idx_type = np.int32 if n * num_tables < 2**31 else np.int64
        orders, offsets, self._offset_base = [], [], []
        for j, ((a, b), bb) in enumerate(zip(self.substrings, self._bucket_bits)):
            keys = fold(substring_values(words, a, b), b - a, bb)
            orders.append(np.argsort(keys, kind="stable").astype(idx_type))
            counts = np.bincount(keys, minlength=1 << bb)
            self._offset_base.append(sum(len(o) for o in offsets))
            offsets.append(j * n + np.concatenate([[0], np.cumsum(counts)]))
        self._pos = np.concatenate(orders)
        self._codes = words[self._pos]
        self._offsets = np.concatenate(offsets).astype(idx_type)
        self._full_terms = distance.full_terms(words.shape[1])
        self._sample = words[np.linspace(0, n - 1, min(n, PLAN_SAMPLE)).astype(np.intp)]
        # Probe order: radius by radius, table by table. Small batches probe a whole radius per
        # step (fewer, larger steps: Python overhead dominates); large batches one table per step
        # (the bound tightens sooner, so fewer candidates).
        sizes = [b - a for a, b in self.substrings]
        radii = range(max(sizes) + 1)
        self._plans = {
            "table": [(s, (j,)) for s in radii for j in range(num_tables) if s <= sizes[j]],
            "radius": [(s, tuple(j for j in range(num_tables) if s <= sizes[j])) for s in radii],
        }
        self._cum_work = {
            name: np.cumsum([sum(math.comb(sizes[j], s) * (1 + n / 2 ** self._bucket_bits[j])
                                 for j in js) for s, js in steps])
            for name, steps in self._plans.items()
        }
        self._bounds = {name: self._step_bounds(steps) for name, steps in self._plans.items()}
        self._flip_cache = {}

    @property
    def num_tables(self) -> int:
        return len(self.substrings)

    @property
    def nbytes(self) -> int:
        return self._pos.nbytes + self._codes.nbytes + self._offsets.nbytes

    def search(self, queries: np.ndarray, k: int):
        """``(D int32 (Q, k), P int64 (Q, k))``, identical to ``linear.linear_topk``."""
        D, P = topk.padded(len(queries), k)
        if self.num_codes == 0 or len(queries) == 0:
            return D, P
        rest = np.arange(len(queries))
        if k < self.num_codes:
            for start in range(0, len(queries), QUERY_CHUNK):
                chunk = np.arange(start, min(len(queries), start + QUERY_CHUNK))
                pays, upper = self._probing_pays(queries[chunk], k)
                chunk = chunk[pays]
                d, p, solved = self._probe_search(queries[chunk], k, upper[pays])
                D[chunk[solved]], P[chunk[solved]] = d[solved], p[solved]
            rest = np.flatnonzero(P[:, 0] < 0)
        if rest.size:
            logger.debug("MIH: %d of %d queries use the linear scan", rest.size, len(queries))
            D[rest], P[rest] = linear.linear_topk(self._words, queries[rest], k, self._full_terms)
        return D, P

    @staticmethod
    def _plan_for(num_queries: int) -> str:
        return "radius" if num_queries < SMALL_BATCH else "table"

    def _probing_pays(self, queries: np.ndarray, k: int):
        """Per query: is probing expected to cost less than the linear scan? And an upper bound.

        Distances to a fixed sample of codes estimate the k-th distance, hence the radius and
        probe cost needed. The sample's exact k-th distance also bounds the true one from above
        (a subset cannot have k codes closer than the whole set), which prunes candidates.
        """
        d = distance.distances(self._sample, queries, self._full_terms)
        kth = topk.kth_from_sample(d, k * len(self._sample) / self.num_codes, self.num_bits)
        cum_work = self._cum_work[self._plan_for(len(queries))]
        bounds = self._bounds[self._plan_for(len(queries))]
        steps = np.minimum(np.searchsorted(bounds, kth, side="right"), len(bounds) - 1)
        upper = topk.kth_from_sample(d, k, self.num_bits) if k <= len(self._sample) else None
        if upper is None:
            upper = np.full(len(queries), self.num_bits)
        return cum_work[steps] <= self.num_codes * WORK_PER_CODE, upper

    def _step_bounds(self, steps) -> np.ndarray:
        """Per step: every code not yet seen is at least this far away (pigeonhole)."""
        m, sizes = self.num_tables, [b - a for a, b in self.substrings]
        return np.array([
            self.num_bits + 1 if any(s == sizes[j] for j in js) else m * s + max(js) + 1
            for s, js in steps
        ])

    def _probe_search(self, queries: np.ndarray, k: int, upper: np.ndarray):
        """Probe (radius, table) steps for all queries at once; ``solved`` marks finished ones.

        ``kept`` holds distinct candidates within each query's current upper bound on the k-th
        distance; the bound shrinks as candidates arrive.
        """
        n, nq = self.num_codes, len(queries)
        D, P = topk.padded(nq, k)
        solved = np.zeros(nq, dtype=bool)
        qbuckets = [fold(substring_values(queries, a, b), b - a, bb)
                    for (a, b), bb in zip(self.substrings, self._bucket_bits)]
        upper = upper.astype(np.int32)
        active = np.arange(nq)
        kept_key, kept_d = np.empty(0, np.int64), np.empty(0, np.int32)
        plan = self._plan_for(nq)
        bounds, cum_work = self._bounds[plan], self._cum_work[plan]
        for step, (s, tables) in enumerate(self._plans[plan]):
            if not active.size or cum_work[step] > n * WORK_PER_CODE:
                break
            q, d, rows = self._probe(queries, qbuckets, active, s, tables, upper)
            key = np.concatenate([kept_key, q * n + self._pos[rows]])
            key, first = np.unique(key, return_index=True)
            d = np.concatenate([kept_d, d])[first]
            q = key // n
            hist = _rows_hist(q, d, nq, self.num_bits)
            upper = np.minimum(upper, topk.kth_from_sample(hist, k, self.num_bits, hist=True))
            upper = upper.astype(np.int32)
            keep = d <= upper[q]
            kept_key, kept_d = key[keep], d[keep]
            done = active[upper[active] < bounds[step]]
            if done.size:
                solved[done] = True
                q = kept_key // n
                sel = solved[q]
                D[done], P[done] = _first_k(q[sel], kept_d[sel], kept_key[sel] % n, done, k)
                active = active[~solved[active]]
                kept_key, kept_d = kept_key[~sel], kept_d[~sel]
        return D, P, solved

    def _probe(self, queries, qbuckets, active, s, tables, upper):
        """(query, distance, row) of codes in the tables' buckets at radius s, within ``upper``.

        XOR-folding is linear over GF(2), so fold(v ^ f) = fold(v) ^ fold(f): the folded flips
        are cached per radius. A code may be returned more than once.
        """
        idx = np.concatenate([
            self._offset_base[j] + (qbuckets[j][active][:, None] ^ self._flips(s, j)[None, :])
            for j in tables
        ], axis=1)
        probes = idx.shape[1]
        idx = idx.ravel()
        starts = self._offsets[idx].astype(np.intp)
        lengths = self._offsets[idx + 1] - starts
        total = int(lengths.sum())
        rows = np.arange(total) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        row_q = np.repeat(np.repeat(active, probes), lengths)
        x = self._codes[rows] ^ queries[row_q]
        counts8 = np.empty(x.shape, dtype=np.uint8)
        distance.popcount_into(x, counts8)
        d = counts8[:, 0].astype(np.int32) if x.shape[1] == 1 else counts8.sum(1, dtype=np.int32)
        keep = d <= upper[row_q]
        return row_q[keep], d[keep], rows[keep]

    def _flips(self, s, j):
        """Folded flip masks of table j at radius s (cached)."""
        if (s, j) not in self._flip_cache:
            a, b = self.substrings[j]
            self._flip_cache[s, j] = fold(flip_masks(b - a, s), b - a, self._bucket_bits[j])
        return self._flip_cache[s, j]


def _rows_hist(q, d, nq, max_distance):
    width = max_distance + 1
    return np.bincount(q * width + d, minlength=nq * width).reshape(nq, width)


def _first_k(q, d, p, done, k):
    """Per query in ``done`` (sorted): its k nearest of (d, p) by (distance, position)."""
    order = np.lexsort((p, d, q))
    starts = np.searchsorted(q[order], done)
    pick = order[starts[:, None] + np.arange(k)[None, :]]
    return d[pick], p[pick]
