"""Substring tables of multi-index hashing: codes in bucket order, probes, the plan. NumPy only.

Table ``j`` holds every code sorted by the folded bucket of substring ``j``, with bucket offsets.
Why each table stores a copy of the codes in bucket order: candidates are then read from
contiguous memory instead of ~100 ns random reads, which dominated the search time. Buckets are
indexed by a fold of the substring to at most ~log2(n) bits, so offset tables stay O(n); a fold
only adds candidates, never hides one, so the pigeonhole bounds of the plans still hold.

The *plan* is the probe order, a list of steps ``(radius s, table j)``, radius by radius. After
step ``i``, every code not yet seen is at least ``bounds[i]`` away (pigeonhole: ``m * s + j + 1``);
``cum_work[i]`` estimates the probes plus candidates read up to it (the cost model that decides
between probing and the scan).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from mghash_tf.core.index.substrings import (
    bucket_bits, flip_masks, fold, fold_int, substring_values,
)


class Plan(NamedTuple):
    steps: list
    bounds: np.ndarray
    cum_work: np.ndarray


class Probes(NamedTuple):
    """Probes of a range of plan steps: bucket ``base + (qb[table] ^ flip)`` in ``offsets``
    for query buckets ``qb``; ``uniform``: codes they would hold if codes were uniform."""
    table: np.ndarray
    flip: np.ndarray
    base: np.ndarray
    uniform: float


class SubstringTables:
    """Bucket-ordered copies of packed codes (N, W), one per substring ``[a, b)``.

    Lazily cached probe lists (folded flip masks per radius) stay small: probing stops once the
    work exceeds a fraction of a scan, so only radii with few masks are ever enumerated.
    """

    def __init__(self, words: np.ndarray, num_bits: int, substrings: list):
        n = words.shape[0]
        self.num_bits, self.num_codes, self.substrings = num_bits, n, substrings
        self.sizes = [b - a for a, b in substrings]
        self.bucket_bits = [bucket_bits(size, n) for size in self.sizes]
        # Positions and distances share one int64 sort key in the single-query search.
        self.position_bits = max(1, (n - 1).bit_length())
        idx_type = np.int32 if n * len(substrings) < 2**31 else np.int64
        orders, offsets, self.offset_base = [], [], []
        for j, ((a, b), bb) in enumerate(zip(substrings, self.bucket_bits)):
            keys = fold(substring_values(words, a, b), b - a, bb)
            orders.append(np.argsort(keys, kind="stable").astype(idx_type))
            counts = np.bincount(keys, minlength=1 << bb)
            self.offset_base.append(sum(len(o) for o in offsets))
            offsets.append(j * n + np.concatenate([[0], np.cumsum(counts)]))
        self.pos = np.concatenate(orders)
        self.codes = words[self.pos]
        self.code_words = [self.codes[:, w] for w in range(words.shape[1])]
        self.offsets = np.concatenate(offsets).astype(idx_type)
        self._ends = self.offsets[1:]  # bucket i ends where bucket i + 1 starts
        self._flip_cache, self._range_cache = {}, {}
        m = len(substrings)
        # Radius by radius, one table per step: the bound tightens after every table.
        self.plan = self._plan([(s, j) for s in range(max(self.sizes) + 1) for j in range(m)
                                if s <= self.sizes[j]])
        self.radius_one_step = sum(s <= 1 for s, _ in self.plan.steps) - 1  # last step at s <= 1

    @property
    def num_tables(self) -> int:
        return len(self.substrings)

    @property
    def nbytes(self) -> int:
        return self.pos.nbytes + self.codes.nbytes + self.offsets.nbytes

    def _plan(self, steps) -> Plan:
        m, n = self.num_tables, self.num_codes
        bounds = np.array([
            # A radius equal to a substring's length enumerates every bucket of its table.
            self.num_bits + 1 if s == self.sizes[j] else m * s + j + 1 for s, j in steps
        ])
        work = [math.comb(self.sizes[j], s) * (1 + n / 2 ** self.bucket_bits[j]) for s, j in steps]
        # Steps accumulate: after step i, every earlier bound holds too.
        return Plan(steps, np.maximum.accumulate(bounds), np.cumsum(work))

    def last_step(self, distance: int) -> int:
        """The first step after which every code within ``distance`` has been seen (the last
        step if none)."""
        return min(int(self.plan.bounds.searchsorted(distance, side="right")),
                   len(self.plan.steps) - 1)

    def query_buckets(self, queries: np.ndarray) -> list:
        """Per table: the folded bucket of each query (intp)."""
        return [fold(substring_values(queries, a, b), b - a, bb)
                for (a, b), bb in zip(self.substrings, self.bucket_bits)]

    def query_buckets_one(self, query: np.ndarray) -> np.ndarray:
        """Buckets of one packed query (W,), one per table, with Python ints: a handful of
        scalar operations cost less than the NumPy calls of ``query_buckets``."""
        value = sum(int(w) << (64 * i) for i, w in enumerate(query.tolist()))  # bit j = code bit j
        return np.array([fold_int((value >> a) & ((1 << (b - a)) - 1), b - a, bb)
                         for (a, b), bb in zip(self.substrings, self.bucket_bits)], dtype=np.intp)

    def flips(self, s: int, j: int) -> np.ndarray:
        """Folded flip masks of table j at radius s (cached).

        XOR-folding is linear over GF(2), so fold(v ^ f) = fold(v) ^ fold(f).
        """
        if (s, j) not in self._flip_cache:
            a, b = self.substrings[j]
            self._flip_cache[s, j] = fold(flip_masks(b - a, s), b - a, self.bucket_bits[j])
        return self._flip_cache[s, j]

    def step_probes(self, first: int, last: int) -> Probes:
        """Distinct probes of plan steps ``first..last`` (cached).

        Distinct per table (folding maps some flips together), so the steps meet a code at
        most once per table.
        """
        if (first, last) not in self._range_cache:
            per_table = [[] for _ in self.substrings]
            for s, j in self.plan.steps[first : last + 1]:
                per_table[j].append(self.flips(s, j))
            flips = [np.unique(np.concatenate(f)) if f else np.empty(0, np.intp)
                     for f in per_table]
            table = np.repeat(np.arange(self.num_tables), [len(f) for f in flips])
            base = np.asarray(self.offset_base, dtype=np.intp)[table]
            uniform = sum(len(f) * self.num_codes / 2**bb for f, bb in zip(flips, self.bucket_bits))
            self._range_cache[first, last] = Probes(table, np.concatenate(flips), base, uniform)
        return self._range_cache[first, last]

    def bucket_spans(self, idx: np.ndarray):
        """``(starts, lengths)`` of the buckets ``idx`` (flat ``offsets`` indices)."""
        starts = self.offsets[idx]
        return starts, self._ends[idx] - starts

    def bucket_rows(self, idx: np.ndarray):
        """``(rows, lengths)``: rows of ``codes``/``pos`` in the buckets ``idx``, bucket after
        bucket, and each bucket's length."""
        starts, lengths = self.bucket_spans(idx)
        return span_rows(starts, lengths), lengths


def span_rows(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` in four calls."""
    ends = lengths.cumsum(dtype=np.int64)  # int32 offsets, but a batch may pass 2**31 rows
    total = int(ends[-1]) if ends.size else 0
    return np.arange(total) + (starts - (ends - lengths)).repeat(lengths)
