"""Ranking engine behind :mod:`mghash_tf.core.metrics`: codes and labels -> ranked chunks.
NumPy only.

:func:`prepare` validates the inputs once; :func:`ranked_chunks` walks the queries in chunks
(bounded memory) and yields one :class:`HammingChunk` or :class:`FloatChunk` per chunk, which
offer, computed on first use,

- ``ranked_rel``: (q, n) relevance in ranked order, ties by database order (the stable rule);
- ``tie_groups``: the tie groups that hold a relevant item, flattened over the chunk's queries
  (:class:`TieGroups`), for the tie-aware rule.

Hamming distances are small integers: their tie groups come from per-distance counts and the
stable order from a radix sort. Float distances are sorted once, as 64-bit keys (distance bits,
database index), which yields the stable order directly and shows the ties as equal neighbours
(float32 distances tie more often than one might think: ~17 exact ties per row of 50,000 64-d
cosine distances in benchmarks/metrics_speed.py, so nearly every row has some); the tie groups
then come from the few relevant items and tie links alone.

The tie rules and their statistics are in :mod:`mghash_tf.core.rank_stats`.
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import numpy as np

from mghash_tf.core.index.packing import popcount, to_bits, pack_bits
from mghash_tf.core.rank_stats import TieGroups

METRICS = ("hamming", "cosine", "l2")
_MAX_FLOAT_DB = (1 << 31) - 1
_MAX_SQUARED_NORM = float(np.finfo(np.float32).max) / 4
# Elements of one (queries x database) chunk: ~35 bytes each live at the peak (~150 MB), for
# either tie rule or both; larger chunks measured slower here (fresh pages for every big
# temporary), smaller ones no faster.
_CHUNK_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Validated inputs: packed words (Hamming) or float32 rows (cosine, l2), and labels."""

    query: np.ndarray
    db: np.ndarray
    query_labels: np.ndarray
    db_labels: np.ndarray
    metric: str
    num_bits: int

    @property
    def num_db(self) -> int:
        return self.db.shape[0]


def prepare(query_codes, db_codes, query_labels, db_labels, *, metric="hamming") -> Prepared:
    """Check shapes and kinds once; pack binary codes, normalise cosine embeddings."""
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {METRICS}. Received: metric={metric!r}")
    query, db = np.asarray(query_codes), np.asarray(db_codes)
    for name, x in (("query_codes", query), ("db_codes", db)):
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"`{name}` must be a non-empty 2-D array. Received: shape={x.shape}")
    if metric == "hamming":
        query, db, num_bits = _binary(query, db)
    else:
        query, db, num_bits = _embeddings(query, db, metric), _embeddings(db, query, metric), 0
        if db.shape[0] > _MAX_FLOAT_DB:
            raise ValueError(f"Float ranking packs database indices into 31 bits: at most "
                             f"{_MAX_FLOAT_DB} items. Received: {db.shape[0]}")
    ql, dl = _labels(query_labels, query.shape[0], "query"), _labels(db_labels, db.shape[0], "db")
    if ql.ndim != dl.ndim or ql.shape[1:] != dl.shape[1:]:
        raise ValueError("Query and database labels must both be class ids (N,) or multi-hot "
                         f"(N, C) with the same C. Received: {ql.shape} and {dl.shape}")
    return Prepared(query, db, ql, dl, metric, num_bits)


def _binary(query, db):
    packed = [x.dtype == np.uint64 for x in (query, db)]
    if packed[0] != packed[1]:
        raise ValueError("Pass both code sets packed (uint64) or both unpacked. "
                         f"Received: dtypes {query.dtype} and {db.dtype}")
    if query.shape[1] != db.shape[1]:
        raise ValueError(f"Query and database codes must have the same width. "
                         f"Received: {query.shape[1]} and {db.shape[1]}")
    if packed[0]:
        return query, db, 64 * query.shape[1]
    num_bits = query.shape[1]
    return _pack_any_width(query), _pack_any_width(db), num_bits


def _pack_any_width(codes):
    bits = to_bits(codes)
    # pack_bits wants whole bytes; zero padding adds nothing to any distance.
    pad = -bits.shape[1] % 8
    return pack_bits(np.pad(bits, ((0, 0), (0, pad)))) if pad else pack_bits(bits)


def _embeddings(x, other, metric):
    if not np.issubdtype(x.dtype, np.number) or x.dtype == np.uint64:
        raise TypeError(f"metric={metric!r} needs float embeddings. Received: dtype={x.dtype}")
    if x.shape[1] != other.shape[1]:
        raise ValueError(f"Query and database embeddings must have the same dimension. "
                         f"Received: {x.shape[1]} and {other.shape[1]}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError("Embeddings must be finite. Received: NaN or inf values")
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    elif (largest := np.square(x, dtype=np.float64).sum(axis=1).max()) > _MAX_SQUARED_NORM:
        # Squared distances, up to (|a| + |b|)^2, must stay finite in float32 to rank.
        raise ValueError("metric='l2' needs squared distances within float32 range (norms up to "
                         f"{np.sqrt(_MAX_SQUARED_NORM):.3g}). Received: norm {np.sqrt(largest):.3g}")
    return x


def _labels(labels, num, name):
    labels = np.asarray(labels)
    if labels.shape[:1] != (num,) or labels.ndim not in (1, 2):
        raise ValueError(f"`{name}_labels` must be (N,) class ids or (N, C) multi-hot with "
                         f"N={num}. Received: shape={labels.shape}")
    if labels.ndim == 1:
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
            raise TypeError(f"`{name}_labels` class ids must be integers. Received: dtype={labels.dtype}")
        return labels
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"`{name}_labels` multi-hot must hold only 0 and 1. "
                         f"Received: values {np.unique(labels)[:5]}")
    return labels.astype(np.float32)


def ranked_chunks(data: Prepared, *, chunk_size=None):
    """Yield a :class:`HammingChunk` or :class:`FloatChunk` for consecutive chunks of queries."""
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // data.num_db)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer. Received: chunk_size={chunk_size!r}")
    db_t = np.ascontiguousarray(data.db.T)
    if data.metric != "hamming":
        # Reused by every chunk: fresh pages for these (q, n) arrays cost as much as filling them.
        rows = min(chunk_size, data.query.shape[0])
        dist_buffer = np.empty((rows, data.num_db), np.float32)
        key_buffer = np.empty((rows, data.num_db), np.int64)
    for start in range(0, data.query.shape[0], chunk_size):
        query = data.query[start:start + chunk_size]
        labels = data.query_labels[start:start + chunk_size]
        if data.metric == "hamming":
            yield HammingChunk(_hamming(query, db_t, data.num_bits), labels, data.db_labels,
                               data.num_bits + 1)
        else:
            dist = _float_distances(query, data.db, db_t, data.metric, dist_buffer[:len(query)])
            yield FloatChunk(_sorted_keys(dist, key_buffer[:len(query)]), labels, data.db_labels)


class HammingChunk:
    """One chunk of queries ranked by small integer distances (the tie group ids)."""

    def __init__(self, dist, query_labels, db_labels, num_groups: int):
        self.dist = dist
        self.rel = relevance(query_labels, db_labels)
        self.num_groups = num_groups
        self.total = np.count_nonzero(self.rel, axis=1)

    @functools.cached_property
    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Items ``n`` and relevant items ``r`` per distance, (q, num_groups)."""
        return group_counts(self.dist, self.rel, self.num_groups)

    @functools.cached_property
    def ranked_rel(self) -> np.ndarray:
        return stable_order(self.dist, self.rel)

    @functools.cached_property
    def tie_groups(self) -> TieGroups:
        n, r = self.counts
        before_n = np.cumsum(n, axis=1) - n
        before_r = np.cumsum(r, axis=1) - r
        at = np.nonzero(r)
        return TieGroups(at[0].astype(np.int64), *(x[at].astype(np.int64)
                                                   for x in (n, r, before_n, before_r)))


class FloatChunk:
    """One chunk of queries ranked by float distances, from their sorted keys (:func:`_sorted_keys`)."""

    def __init__(self, keys, query_labels, db_labels):
        distance, index = _halves(keys)
        # Neighbours in sorted order with equal distance bits are exact ties.
        self.tie_links = np.flatnonzero(distance[:, 1:] == distance[:, :-1])
        self.ranked_rel = relevance(query_labels, db_labels, index)
        self.total = np.count_nonzero(self.ranked_rel, axis=1)

    @functools.cached_property
    def tie_groups(self) -> TieGroups:
        """Runs of tied items holding a relevant item, plus every other relevant item alone.

        Works on flat (row-major) positions of the relevant items and of the tie links
        (position ``j`` tied with ``j + 1``), both few next to ``q * n``, with binary searches
        instead of passes over the whole chunk.
        """
        q, n = self.ranked_rel.shape
        rel_at = np.flatnonzero(self.ranked_rel)
        rows_start = np.searchsorted(rel_at, np.arange(q) * n)  # relevant items in earlier rows
        link = self.tie_links // max(n - 1, 1) * n + self.tie_links % max(n - 1, 1)
        # A run is a chain of links j, j + 1, ...; chains never cross rows (j < n - 1).
        chain_edge = np.ones(link.size + 1, bool)
        chain_edge[1:-1] = np.diff(link) != 1
        first, last = link[chain_edge[:-1]], link[chain_edge[1:]] + 1
        lo, hi = np.searchsorted(rel_at, first), np.searchsorted(rel_at, last, side="right")
        runs = hi > lo
        first, last, lo, hi = first[runs], last[runs], lo[runs], hi[runs]
        inside = np.cumsum(np.bincount(lo, minlength=rel_at.size + 1)
                           - np.bincount(hi, minlength=rel_at.size + 1))[:-1] > 0
        alone = np.flatnonzero(~inside)
        row = np.concatenate([rel_at[alone] // n, first // n])
        before = np.concatenate([rel_at[alone], first]) - row * n
        size = np.concatenate([np.ones(alone.size, np.int64), last - first + 1])
        relevant = np.concatenate([np.ones(alone.size, np.int64), hi - lo])
        before_r = np.concatenate([alone, lo]) - rows_start[row]
        return TieGroups(row, size, relevant, before, before_r)


def relevance(query_labels, db_labels, order=None) -> np.ndarray:
    """(q, n) bool: query shares a label with the database item (at ``order``, if given)."""
    if query_labels.ndim == 1:
        return (db_labels if order is None else db_labels[order]) == query_labels[:, None]
    rel = (query_labels @ db_labels.T) > 0
    return rel if order is None else np.take_along_axis(rel, order, axis=1)


def _sorted_keys(dist, out):
    """Each row's ``(distance, database index)`` pairs as sorted int64 keys, into ``out``.

    The high 32 bits map float32 distances to int32 in the same order (IEEE bits read as an
    int, with the magnitude bits of negatives flipped), the low 32 bits hold the index: one
    sort of plain integers then ranks ties by database order, measured ~2x faster here than
    one unstable float argsort (and ~10x faster than a stable one). Overwrites ``dist``.
    """
    dist += np.float32(0.0)  # -0.0 becomes +0.0: equal distances need equal bits
    bits = dist.view(np.int32)
    flip = bits >> 31
    flip &= np.int32(0x7FFFFFFF)
    distance, index = _halves(out)
    np.bitwise_xor(bits, flip, out=distance)
    index[...] = np.arange(dist.shape[1], dtype=np.int32)
    out.sort(axis=1)
    return out


def _halves(keys):
    """(q, n) int32 views of the high (distance) and low (index) halves of int64 keys."""
    pairs = keys.view(np.int32).reshape(*keys.shape, 2)
    return (pairs[..., 1], pairs[..., 0]) if sys.byteorder == "little" else (pairs[..., 0], pairs[..., 1])


def _hamming(query, db_t, num_bits):
    """Distances in the smallest unsigned type that holds them (radix sort, small memory)."""
    dist = np.zeros((query.shape[0], db_t.shape[1]), np.uint8 if num_bits < 256 else np.uint16)
    xor = np.empty(dist.shape, np.uint64)
    for w in range(db_t.shape[0]):
        np.bitwise_xor(query[:, w, None], db_t[None, w, :], out=xor)
        dist += popcount(xor)
    return dist


def _float_distances(query, db, db_t, metric, out):
    if metric == "cosine":
        np.matmul(query, db_t, out=out)
        return np.negative(out, out=out)
    sq = (query * query).sum(axis=1)[:, None] + (db * db).sum(axis=1)[None, :]
    return np.subtract(sq, 2.0 * (query @ db_t), out=out)


def group_counts(groups: np.ndarray, rel: np.ndarray, num_groups: int):
    """(q, n) group ids + relevance -> items ``n`` and relevant items ``r`` per group, (q, G)."""
    q = groups.shape[0]
    flat = (np.arange(q, dtype=np.int64)[:, None] * num_groups + groups).ravel()
    n = np.bincount(flat, minlength=q * num_groups).reshape(q, num_groups)
    r = np.bincount(flat[rel.ravel()], minlength=q * num_groups).reshape(q, num_groups)
    return n, r


def stable_order(groups: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Relevance in ranked order, ties by database order. Small unsigned ids sort by radix."""
    order = np.argsort(groups, axis=1, kind="stable")
    return np.take_along_axis(rel, order, axis=1)


