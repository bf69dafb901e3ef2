"""Per-query statistics of ranked chunks (:mod:`mghash_tf.core.ranking`) under two tie rules.
NumPy only.

- **stable** (``ap_stable``, ``hits_stable``): from a (q, n) relevance matrix in ranked order,
  tied items in database order.
- **tie-aware**: the exact expectation over uniformly random orders within each tie group
  (the quantity McSherry & Najork 2008 compute). Derivation used below: in a group of ``n``
  items with ``r`` relevant, preceded by ``N`` items of which ``R`` are relevant, position ``p``
  of the group is relevant with probability ``r/n``; given that, the other relevant items in
  front of it number ``(p-1)(r-1)/(n-1)`` on average (hypergeometric mean). So the group's
  expected sum of precisions at relevant ranks over its first ``m`` positions is
  ``sum_p (r/n) (R + 1 + b (p-1)) / (N + p)`` with ``b = (r-1)/(n-1)``, which the harmonic
  numbers ``H`` turn into ``(r/n) [(R + 1 - b (N+1)) (H[N+m] - H[N]) + b m]`` (write
  ``p - 1 = (N + p) - (N + 1)``). No sort is needed: only the counts per group. Groups without
  a relevant item add nothing to AP or hits, so only groups with ``r > 0`` are kept.
  The groups come flattened over a chunk's queries as :class:`TieGroups`.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TieGroups:
    """Tie groups holding at least one relevant item, flattened over a chunk's queries.

    Per group: its query ``row``, ``size`` (items), ``relevant`` (relevant items), and the items
    and relevant items ranked before it (``before_n``, ``before_r``). Int64 arrays.
    """

    row: np.ndarray
    size: np.ndarray
    relevant: np.ndarray
    before_n: np.ndarray
    before_r: np.ndarray


def tables(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic numbers ``H[0..size]`` and log-factorials ``log(i!)`` for ``i`` in 0..size."""
    i = np.arange(1, size + 1, dtype=np.float64)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / i)])
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(i))])
    return harmonic, log_fact


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
    # One position spans exactly 1/(N+1); the difference of two harmonic numbers near
    # H[50,000] ~ 11.4 keeps only ~10 significant digits of it, and single-item groups are
    # most groups of a float ranking.
    span = np.where(m == 1, 1.0 / (before_n + 1), harmonic[before_n + m] - harmonic[before_n])
    return (r / n_safe) * ((before_r + 1 - b * (before_n + 1)) * span + b * m)


def ap_tied(groups: TieGroups, num_rows: int, total, k: int, normalize: str, harmonic,
            log_fact) -> np.ndarray:
    """Expected average precision over the top ``k`` under random tie orders, per query.

    ``normalize="recall"`` divides by ``min(k, total relevant)``, a constant, so the expectation
    is the expected sum over the positions that fall inside the top ``k``. ``"retrieved"``
    divides by the number of relevant items retrieved, which is random when the group that
    straddles the cut-off mixes relevant and irrelevant items; that case conditions on the
    hypergeometric count of relevant items drawn into the top ``k`` (see ``_straddle``).
    """
    g = groups
    m = np.clip(k - g.before_n, 0, g.size)
    if normalize == "recall":
        sums = np.bincount(g.row, _group_sum(g.size, g.relevant, g.before_n, g.before_r, m, harmonic),
                           minlength=num_rows)
        return safe_divide(sums, np.minimum(k, total))
    full = m == g.size
    whole = _group_sum(g.size[full], g.relevant[full], g.before_n[full], g.before_r[full],
                       g.size[full], harmonic)
    sums = np.bincount(g.row[full], whole, minlength=num_rows)
    got = np.bincount(g.row[full], g.relevant[full], minlength=num_rows)
    out = safe_divide(sums, got)
    for i in np.flatnonzero((m > 0) & ~full):
        row = g.row[i]
        out[row] = _straddle(sums[row], got[row], g.size[i], g.relevant[i], g.before_n[i], m[i],
                             harmonic, log_fact)
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


def hits_tied(groups: TieGroups, num_rows: int, k: int) -> np.ndarray:
    """Expected relevant items in the top ``k`` under random tie orders (linearity)."""
    m = np.clip(k - groups.before_n, 0, groups.size)
    return np.bincount(groups.row, groups.relevant * (m / groups.size), minlength=num_rows)


def within_radius(n, r) -> tuple[np.ndarray, np.ndarray]:
    """Retrieved and relevant-retrieved counts within each radius (group index), (q, G)."""
    return np.cumsum(n, axis=1), np.cumsum(r, axis=1)


def safe_divide(num, den) -> np.ndarray:
    """``num / den`` with 0 where ``den == 0`` (nothing retrieved: precision and AP are 0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)
