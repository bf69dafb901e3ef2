"""Retrieval metrics for hash codes: mAP (@all, @k), P@k, R@k, PR curve over Hamming radii.

NumPy only (runs on devices without TensorFlow).

Conventions (state them next to any number you report):

- **Codes**: real / ±1 / {0, 1} arrays (N, K) (bit = value > 0, as in
  :func:`mghash_tf.core.index.packing.pack_bits`) or packed ``uint64`` words (N, W); dtype ``uint64``
  means packed. ``metric="cosine"`` or ``"l2"`` takes float embeddings instead (distance =
  -cosine similarity, or squared Euclidean distance).
- **Relevance**: labels are class ids (N,) or multi-hot (N, C); relevant = shares a label.
  The query set is not removed from the database: pass disjoint sets.
- **Ties** (items at equal distance): ``tie_aware=False`` ranks them by database order (stable
  sort); ``tie_aware=True`` gives the exact expectation over random orders of each tie group
  (closed form, see :mod:`mghash_tf.core.rank_stats`), including the group cut by ``k``.
  :func:`retrieval_report` also takes ``tie_aware="both"``: both rules from one ranking.
- **k**: ``None`` = the whole database; a ``k`` above the database size is clipped to it.
- **AP normalisation**: ``"retrieved"`` divides the sum of precisions at relevant ranks within
  the top k by the number of relevant items in the top k (the usual hashing mAP@k; a query
  with none retrieved scores 0); ``"recall"`` divides by ``min(k, total relevant)``. For
  ``k=None`` both are the same.
- **Queries without any relevant database item** (AP and recall undefined):
  ``no_relevant="exclude"`` (default) drops them from every mean, ``"zero"`` counts them as 0.
  :func:`retrieval_report` returns how many there were.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from mghash_tf.core import rank_stats, ranking

logger = logging.getLogger(__name__)

_NORMALIZE = ("retrieved", "recall")
_NO_RELEVANT = ("exclude", "zero")


def average_precision(query_codes, db_codes, query_labels, db_labels, *, k=None,
                      normalize="retrieved", tie_aware=False, metric="hamming",
                      chunk_size=None) -> np.ndarray:
    """Per-query average precision; NaN for queries with no relevant database item."""
    report = retrieval_report(query_codes, db_codes, query_labels, db_labels, ks=(),
                              map_ks=(k,), normalize=normalize, tie_aware=_one_rule(tie_aware),
                              metric=metric, chunk_size=chunk_size, per_query=True)
    return report["per_query_ap"][_key("map", k)]


def mean_average_precision(query_codes, db_codes, query_labels, db_labels, *, k=None,
                           normalize="retrieved", tie_aware=False, metric="hamming",
                           no_relevant="exclude", chunk_size=None) -> float:
    """Mean average precision over queries (mAP@all for ``k=None``, else mAP@k).

    Example (hand-computed): 4-bit query ``[+,+,+,+]`` of class 0; database items at
    Hamming distances 0, 1, 1, 4 with classes 0, 1, 0, 0.

    - stable ranking: relevant at ranks 1, 3, 4 -> AP = (1/1 + 2/3 + 3/4) / 3 = 29/36 = 0.8056.
    - ``tie_aware=True``: the two items at distance 1 come in either order with probability
      1/2, so the second hit scores 2/3 or 2/2 -> AP = (1 + 5/6 + 3/4) / 3 = 31/36 = 0.8611.
    - ``k=2``, stable: top 2 = ranks 1, 2, one hit -> ``"retrieved"``: 1/1 = 1.0;
      ``"recall"``: 1 / min(2, 3) = 0.5.
    - ``k=2``, tie-aware, ``"recall"``: rank 2 is relevant with probability 1/2 ->
      (1 + 1/2 * 2/2) / 2 = 0.75.

    >>> q = np.array([[1, 1, 1, 1]]); ql = np.array([0])
    >>> db = np.array([[1, 1, 1, 1], [-1, 1, 1, 1], [1, -1, 1, 1], [-1, -1, -1, -1]])
    >>> dl = np.array([0, 1, 0, 0])
    >>> round(mean_average_precision(q, db, ql, dl), 4)
    0.8056
    >>> round(mean_average_precision(q, db, ql, dl, tie_aware=True), 4)
    0.8611
    """
    ap = average_precision(query_codes, db_codes, query_labels, db_labels, k=k,
                           normalize=normalize, tie_aware=tie_aware, metric=metric,
                           chunk_size=chunk_size)
    return _mean(ap, no_relevant)


def precision_at_k(query_codes, db_codes, query_labels, db_labels, *, k, tie_aware=False,
                   metric="hamming", no_relevant="exclude", chunk_size=None) -> float:
    """Mean fraction of the top ``k`` that is relevant. Above example, k=2: 1/2 (stable),
    (1 + 1/2) / 2 = 0.75 (tie-aware)."""
    report = retrieval_report(query_codes, db_codes, query_labels, db_labels, ks=(k,),
                              map_ks=(), tie_aware=_one_rule(tie_aware), metric=metric,
                              no_relevant=no_relevant, chunk_size=chunk_size)
    return report[_key("precision", k)]


def recall_at_k(query_codes, db_codes, query_labels, db_labels, *, k, tie_aware=False,
                metric="hamming", no_relevant="exclude", chunk_size=None) -> float:
    """Mean fraction of a query's relevant items found in the top ``k``. Above example, k=2:
    1/3 (stable), 1.5/3 = 0.5 (tie-aware)."""
    report = retrieval_report(query_codes, db_codes, query_labels, db_labels, ks=(k,),
                              map_ks=(), tie_aware=_one_rule(tie_aware), metric=metric,
                              no_relevant=no_relevant, chunk_size=chunk_size)
    return report[_key("recall", k)]


def pr_curve(query_codes, db_codes, query_labels, db_labels, *, no_relevant="exclude",
             chunk_size=None) -> dict:
    """Precision and recall of Hamming-ball retrieval for radius 0..K (ties do not matter).

    Per query, precision = relevant / retrieved within the radius (0 when nothing is
    retrieved; ``retrieved_fraction`` says how often), recall = relevant within the radius /
    all relevant; both averaged over queries. K is the code length (64 * W for packed codes).
    Above example: radius 1 retrieves 3 items, 2 relevant -> precision 2/3, recall 2/3.
    """
    report = retrieval_report(query_codes, db_codes, query_labels, db_labels, ks=(),
                              map_ks=(), curve=True, no_relevant=no_relevant,
                              chunk_size=chunk_size)
    return report["pr_curve"]


def precision_within_radius(query_codes, db_codes, query_labels, db_labels, *, radius=2,
                            no_relevant="exclude", chunk_size=None) -> float:
    """Mean precision of items within Hamming ``radius`` (0 for a query retrieving none)."""
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"`radius` must be a non-negative integer. Received: radius={radius!r}")
    report = retrieval_report(query_codes, db_codes, query_labels, db_labels, ks=(),
                              map_ks=(), radius=int(radius), no_relevant=no_relevant,
                              chunk_size=chunk_size)
    return report[f"precision@r{int(radius)}"]


def retrieval_report(query_codes, db_codes, query_labels, db_labels, *, map_ks=(None,),
                     ks=(100, 1000), radius=2, curve=False, normalize="retrieved",
                     tie_aware=False, metric="hamming", no_relevant="exclude",
                     chunk_size=None, per_query=False) -> dict:
    """All metrics in one pass over the distance matrix.

    Keys: ``map`` / ``map@k`` for each of ``map_ks``, ``precision@k`` and ``recall@k`` for each
    of ``ks``, ``precision@r<radius>`` and ``pr_curve`` (Hamming only; ``radius=None`` skips
    the former, ``curve=True`` adds the latter), ``num_queries``, ``num_no_relevant``, and the
    options used. ``per_query=True`` adds ``per_query_ap`` (NaN where excluded).

    ``tie_aware="both"`` ranks once and reports both tie rules: the keys above hold the stable
    values and each mAP, precision and recall key gets a ``_tie_aware`` twin (``map_tie_aware``,
    ``precision@100_tie_aware``, also in ``per_query_ap``); the numbers equal those of two calls
    with ``False`` and ``True``.
    """
    if normalize not in _NORMALIZE:
        raise ValueError(f"`normalize` must be one of {_NORMALIZE}. Received: normalize={normalize!r}")
    if no_relevant not in _NO_RELEVANT:
        raise ValueError(
            f"`no_relevant` must be one of {_NO_RELEVANT}. Received: no_relevant={no_relevant!r}")
    suffixes = _tie_suffixes(tie_aware)
    data = ranking.prepare(query_codes, db_codes, query_labels, db_labels, metric=metric)
    # Keys keep the k asked for; the computation clips it to the database size.
    map_ks = {k: _check_k(k, data.num_db, allow_none=True) for k in map_ks}
    ks = {k: _check_k(k, data.num_db, allow_none=False) for k in ks}
    radial = metric == "hamming" and (curve or radius is not None)
    if metric != "hamming" and curve:
        raise ValueError(f"The PR curve over radii needs metric='hamming'. Received: metric={metric!r}")
    logger.debug("ranking %d queries x %d database items, metric=%s, tie_aware=%s",
                 data.query.shape[0], data.num_db, metric, tie_aware)
    acc = _Accumulator()
    cut = {**{_key("map", k): ("map", data.num_db if kk is None else kk) for k, kk in map_ks.items()},
           **{_key("hits", k): ("hits", kk) for k, kk in ks.items()}}
    tables = rank_stats.tables(data.num_db)
    for chunk in ranking.ranked_chunks(data, chunk_size=chunk_size):
        acc.add("total", chunk.total)
        for name, values in _chunk_stats(chunk, cut, normalize, suffixes, tables).items():
            acc.add(name, values)
        if radial:
            retrieved, relevant = rank_stats.within_radius(*chunk.counts)
            acc.add("radius_retrieved", retrieved)
            acc.add("radius_relevant", relevant)
    return _summarise(acc.arrays(), map_ks, ks, radius if radial else None, curve,
                      no_relevant, per_query, suffixes,
                      options={"normalize": normalize,
                               "tie_aware": "both" if len(suffixes) == 2 else bool(tie_aware),
                               "metric": metric, "no_relevant": no_relevant})


def _one_rule(tie_aware):
    if isinstance(tie_aware, str):
        raise ValueError("This function returns one number, so `tie_aware` must be True or False "
                         "(retrieval_report takes 'both'). Received: tie_aware=" + repr(tie_aware))
    return tie_aware


def _tie_suffixes(tie_aware) -> dict:
    """``{tie rule: key suffix}`` for the rules asked for."""
    if isinstance(tie_aware, str) and tie_aware == "both":
        return {"stable": "", "tie_aware": "_tie_aware"}
    if isinstance(tie_aware, (bool, np.bool_)):
        return {"tie_aware" if tie_aware else "stable": ""}
    raise ValueError(f"`tie_aware` must be True, False or 'both'. Received: tie_aware={tie_aware!r}")


def _chunk_stats(chunk, cut: dict, normalize: str, suffixes: dict, tables) -> dict:
    """Per-query AP and hits of one chunk under each rule; ``cut``: ``{name: (kind, k)}``."""
    out = {}
    for name, (kind, k) in cut.items():
        if "stable" in suffixes:
            out[name + suffixes["stable"]] = (
                rank_stats.ap_stable(chunk.ranked_rel, chunk.total, k, normalize) if kind == "map"
                else rank_stats.hits_stable(chunk.ranked_rel, k))
        if "tie_aware" in suffixes:
            groups, rows = chunk.tie_groups, len(chunk.total)
            out[name + suffixes["tie_aware"]] = (
                rank_stats.ap_tied(groups, rows, chunk.total, k, normalize, *tables) if kind == "map"
                else rank_stats.hits_tied(groups, rows, k))
    return out


def _summarise(arrays, map_ks, ks, radius, curve, no_relevant, per_query, suffixes,
               options) -> dict:
    total = arrays["total"]
    empty = total == 0
    if no_relevant == "exclude" and empty.all():
        raise ValueError("No query has a relevant database item, so no metric is defined. "
                         f"Received: {len(total)} queries, all without relevant items")
    keep = ~empty if no_relevant == "exclude" else np.ones_like(empty)
    out = {"num_queries": int(len(total)), "num_no_relevant": int(empty.sum()), **options}
    per_query_ap = {}
    for suffix in suffixes.values():
        for k in map_ks:
            ap = np.where(empty, np.nan, arrays[_key("map", k) + suffix])
            per_query_ap[_key("map", k) + suffix] = ap
            out[_key("map", k) + suffix] = float(np.nan_to_num(ap[keep]).mean())
        for k, kk in ks.items():
            hits = arrays[_key("hits", k) + suffix][keep]
            out[_key("precision", k) + suffix] = float((hits / kk).mean())
            out[_key("recall", k) + suffix] = float(rank_stats.safe_divide(hits, total[keep]).mean())
    if radius is not None:
        retrieved = arrays["radius_retrieved"][keep]
        precision = rank_stats.safe_divide(arrays["radius_relevant"][keep], retrieved).mean(axis=0)
        recall = rank_stats.safe_divide(arrays["radius_relevant"][keep], total[keep, None]).mean(axis=0)
        out[f"precision@r{radius}"] = float(precision[min(radius, len(precision) - 1)])
        if curve:
            out["pr_curve"] = {"radius": np.arange(len(precision)), "precision": precision,
                               "recall": recall, "retrieved_fraction": (retrieved > 0).mean(axis=0)}
    if per_query:
        out["per_query_ap"] = per_query_ap
    return out


def mean_retrieval_time(search_fn, queries, *, repeats=3, warmup=1, batch_size=1) -> dict:
    """Wall time per query of ``search_fn(batch)`` over ``queries`` in batches.

    Runs ``warmup`` untimed passes, then ``repeats`` timed passes; a batch's time is split
    evenly over its queries. Returns seconds per query: ``mean``, ``median``, ``p95`` over all
    timed batches of all passes, plus ``num_queries``, ``batch_size`` and ``repeats``.
    """
    for name, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0),
                             ("batch_size", batch_size, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}. Received: {name}={value!r}")
    if not callable(search_fn):
        raise TypeError(f"`search_fn` must be callable. Received: {type(search_fn).__name__}")
    num = len(queries)
    if num == 0:
        raise ValueError("`queries` must not be empty. Received: 0 queries")
    starts = range(0, num, batch_size)
    for _ in range(warmup):
        for s in starts:
            search_fn(queries[s:s + batch_size])
    per_query = []
    for _ in range(repeats):
        for s in starts:
            batch = queries[s:s + batch_size]
            t0 = time.perf_counter()
            search_fn(batch)
            per_query.append((time.perf_counter() - t0) / len(batch))
    times = np.asarray(per_query)
    return {"mean": float(times.mean()), "median": float(np.median(times)),
            "p95": float(np.percentile(times, 95)), "num_queries": num,
            "batch_size": int(batch_size), "repeats": int(repeats)}


class _Accumulator:
    def __init__(self):
        self._parts = {}

    def add(self, name, values):
        self._parts.setdefault(name, []).append(np.asarray(values))

    def arrays(self) -> dict:
        return {name: np.concatenate(parts) for name, parts in self._parts.items()}


def _key(name: str, k) -> str:
    if name == "map":
        return "map" if k is None else f"map@{k}"
    return f"{name}@{k}"


def _check_k(k, num_db: int, *, allow_none: bool):
    if k is None and allow_none:
        return None
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`k` must be a positive integer{' or None' if allow_none else ''}. "
                         f"Received: k={k!r}")
    return int(min(k, num_db))


def _mean(values: np.ndarray, no_relevant: str) -> float:
    if no_relevant not in _NO_RELEVANT:
        raise ValueError(
            f"`no_relevant` must be one of {_NO_RELEVANT}. Received: no_relevant={no_relevant!r}")
    finite = ~np.isnan(values)
    if no_relevant == "exclude":
        if not finite.any():
            raise ValueError("No query has a relevant database item, so no metric is defined. "
                             f"Received: {len(values)} queries, all without relevant items")
        return float(values[finite].mean())
    return float(np.nan_to_num(values).mean())
