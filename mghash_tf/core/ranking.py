"""Ranking engine behind :mod:`mghash_tf.core.metrics`: codes and labels -> chunks of tie groups
and relevance -> per-query statistics. NumPy only.

:func:`prepare` validates the inputs once; :func:`ranked_chunks` walks the queries in chunks
(bounded memory) and turns each chunk's distances into small unsigned tie-group ids. The
statistics functions then take one chunk of queries against the whole database as

- ``groups``: (q, n) unsigned ints, the tie group of each database item (equal value = equal
  distance, smaller value = closer), and ``rel``: (q, n) bool relevance; or
- ``n, r``: (q, G) counts of items and of relevant items per tie group, closest group first.

Two tie rules:

- **stable**: tied items keep database order (``argsort(kind="stable")``).
- **tie-aware**: the exact expectation over uniformly random orders within each tie group
  (the quantity McSherry & Najork 2008 compute). Derivation used below: in a group of ``n``
  items with ``r`` relevant, preceded by ``N`` items of which ``R`` are relevant, position ``p``
  of the group is relevant with probability ``r/n``; given that, the other relevant items in
  front of it number ``(p-1)(r-1)/(n-1)`` on average (hypergeometric mean). So the group's
  expected sum of precisions at relevant ranks over its first ``m`` positions is
  ``sum_p (r/n) (R + 1 + b (p-1)) / (N + p)`` with ``b = (r-1)/(n-1)``, which the harmonic
  numbers ``H`` turn into ``(r/n) [(R + 1 - b (N+1)) (H[N+m] - H[N]) + b m]`` (write
  ``p - 1 = (N + p) - (N + 1)``). No sort is needed: only the counts per group.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mghash_tf.core.index.packing import popcount, to_bits, pack_bits

METRICS = ("hamming", "cosine", "l2")
# Elements of one (queries x database) chunk: ~30 bytes each live at the peak (~130 MB);
# larger chunks measured slower here (fresh pages for every big temporary).
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
    """Yield ``(groups, rel, num_groups)`` for consecutive chunks of queries."""
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // data.num_db)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer. Received: chunk_size={chunk_size!r}")
    db_t = np.ascontiguousarray(data.db.T)
    for start in range(0, data.query.shape[0], chunk_size):
        query = data.query[start:start + chunk_size]
        labels = data.query_labels[start:start + chunk_size]
        rel = (labels[:, None] == data.db_labels[None, :] if labels.ndim == 1
               else (labels @ data.db_labels.T) > 0)
        if data.metric == "hamming":
            yield _hamming(query, db_t, data.num_bits), rel, data.num_bits + 1
        else:
            yield _dense_ranks(_float_distances(query, data.db, db_t, data.metric)), rel, data.num_db


def _hamming(query, db_t, num_bits):
    """Distances in the smallest unsigned type that holds them (radix sort, small memory)."""
    dist = np.zeros((query.shape[0], db_t.shape[1]), np.uint8 if num_bits < 256 else np.uint16)
    xor = np.empty(dist.shape, np.uint64)
    for w in range(db_t.shape[0]):
        np.bitwise_xor(query[:, w, None], db_t[None, w, :], out=xor)
        dist += popcount(xor)
    return dist


def _float_distances(query, db, db_t, metric):
    if metric == "cosine":
        return -(query @ db_t)
    sq = (query * query).sum(axis=1)[:, None] + (db * db).sum(axis=1)[None, :]
    return sq - 2.0 * (query @ db_t)


def _dense_ranks(dist):
    """Float distances -> tie-group ids: 0 for the smallest value, +1 at each larger value."""
    # Equal values get equal ids whatever their order here, so the fast unstable sort is fine;
    # the tie rule is applied later on these ids.
    order = np.argsort(dist, axis=1)
    ranked = np.take_along_axis(dist, order, axis=1)
    steps = np.zeros(dist.shape, np.uint32)
    steps[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    ids = np.cumsum(steps, axis=1, dtype=np.uint32)
    groups = np.empty_like(ids)
    np.put_along_axis(groups, order, ids, axis=1)
    return groups.astype(np.uint16) if dist.shape[1] <= 65536 else groups


def tables(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic numbers ``H[0..size]`` and log-factorials ``log(i!)`` for ``i`` in 0..size."""
    i = np.arange(1, size + 1, dtype=np.float64)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / i)])
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(i))])
    return harmonic, log_fact


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


def ap_stable(ranked_rel: np.ndarray, total: np.ndarray, k: int, normalize: str) -> np.ndarray:
    """Average precision over the top ``k`` of a ranked relevance matrix, per query."""
    top = ranked_rel[:, :k]
    q = top.shape[0]
    # Only relevant ranks contribute and they are few: work on their (row, rank) list, where
    # the hit count at each is its index within its row's run (nonzero is row-major).
    rows, cols = np.nonzero(top)
    retrieved = np.bincount(rows, minlength=q)
    first = np.cumsum(retrieved) - retrieved
    hits = np.arange(1, rows.size + 1) - first[rows]
    sums = np.bincount(rows, hits / (cols + 1.0), minlength=q)
    return safe_divide(sums, retrieved if normalize == "retrieved" else np.minimum(k, total))


def _group_sum(n, r, before_n, before_r, m, harmonic):
    """Expected sum of precisions at relevant ranks over the first ``m`` positions of groups."""
    n_safe = np.maximum(n, 1)
    b = np.where(n > 1, (r - 1) / np.maximum(n - 1, 1), 0.0)
    span = harmonic[before_n + m] - harmonic[before_n]
    return (r / n_safe) * ((before_r + 1 - b * (before_n + 1)) * span + b * m)


def ap_tied(n, r, k: int, normalize: str, harmonic, log_fact) -> np.ndarray:
    """Expected average precision over the top ``k`` under random tie orders, per query.

    ``normalize="recall"`` divides by ``min(k, total relevant)``, a constant, so the expectation
    is the expected sum over the positions that fall inside the top ``k``. ``"retrieved"``
    divides by the number of relevant items retrieved, which is random when the group that
    straddles the cut-off mixes relevant and irrelevant items; that case conditions on the
    hypergeometric count of relevant items drawn into the top ``k`` (see ``_straddle``).
    """
    before_n = np.cumsum(n, axis=1) - n
    before_r = np.cumsum(r, axis=1) - r
    m = np.clip(k - before_n, 0, n)
    total = r.sum(axis=1)
    if normalize == "recall":
        sums = _group_sum(n, r, before_n, before_r, m, harmonic).sum(axis=1)
        return safe_divide(sums, np.minimum(k, total))
    full = m == n
    sums = np.where(full, _group_sum(n, r, before_n, before_r, n, harmonic), 0.0).sum(axis=1)
    got = np.where(full, r, 0).sum(axis=1)
    out = safe_divide(sums, got)
    partial = (m > 0) & ~full
    for row, col in zip(*np.nonzero(partial)):
        out[row] = _straddle(sums[row], got[row], n[row, col], r[row, col], before_n[row, col],
                             m[row, col], harmonic, log_fact)
    return out


def _straddle(sums, got, n, r, before_n, m, harmonic, log_fact) -> float:
    """E[(sums + S_j) / (got + j)] with ``j`` relevant among the ``m`` drawn of the group.

    Given ``j``, the drawn relevant items sit uniformly among the ``m`` positions, so the
    group-sum formula applies with ``(n, r)`` replaced by ``(m, j)``.
    """
    j = np.arange(max(0, m - (n - r)), min(r, m) + 1)
    log_pmf = (log_fact[r] - log_fact[j] - log_fact[r - j]
               + log_fact[n - r] - log_fact[m - j] - log_fact[n - r - m + j]
               - log_fact[n] + log_fact[m] + log_fact[n - m])
    drawn = _group_sum(np.full_like(j, m), j, before_n, got, m, harmonic)
    return float(np.sum(np.exp(log_pmf) * safe_divide(sums + drawn, got + j)))


def hits_stable(ranked_rel: np.ndarray, k: int) -> np.ndarray:
    """Relevant items in the top ``k``, per query."""
    return np.count_nonzero(ranked_rel[:, :k], axis=1).astype(np.float64)


def hits_tied(n, r, k: int) -> np.ndarray:
    """Expected relevant items in the top ``k`` under random tie orders (linearity)."""
    before_n = np.cumsum(n, axis=1) - n
    m = np.clip(k - before_n, 0, n)
    return (r * safe_divide(m, n)).sum(axis=1)


def within_radius(n, r) -> tuple[np.ndarray, np.ndarray]:
    """Retrieved and relevant-retrieved counts within each radius (group index), (q, G)."""
    return np.cumsum(n, axis=1), np.cumsum(r, axis=1)


def safe_divide(num, den) -> np.ndarray:
    """``num / den`` with 0 where ``den == 0`` (nothing retrieved: precision and AP are 0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)
