"""Multi-granularity search terms: one segment, a prefix, several segments, or weights.

Segment names come from the code layout (``mghash_tf.core.layout``), e.g. ``coarse``/``fine`` for
semantic granularity or ``low``/``mid``/``high``/``fused`` for scales. A granularity is turned
into distance *terms* (see ``distance``), so a coarse query reads only the coarse bits.
"""

from __future__ import annotations

import math

import numpy as np

from mghash_tf.core.index import distance
from mghash_tf.core.layout import CodeLayout


def resolve_terms(layout: CodeLayout, num_bits: int, granularity) -> tuple:
    """Terms for ``granularity``: None (full code), a segment name, a list of names, or an int.

    An int ``p`` means the prefix of ``p`` bits, bits ``[0, p)``.
    """
    if granularity is None:
        return distance.full_terms(-(-num_bits // 64))
    if isinstance(granularity, str):
        sl = layout.slice(granularity)
        return distance.bit_range_terms(sl.start, sl.stop)
    if isinstance(granularity, (int, np.integer)) and not isinstance(granularity, bool):
        if not 1 <= granularity <= num_bits:
            raise ValueError(
                f"A prefix `granularity` must be in [1, {num_bits}]. "
                f"Received: granularity={granularity!r}"
            )
        return distance.bit_range_terms(0, int(granularity))
    if isinstance(granularity, (list, tuple)) and granularity and all(
        isinstance(g, str) for g in granularity
    ):
        return _union([resolve_terms(layout, num_bits, g) for g in granularity])
    raise TypeError(
        "`granularity` must be None, a segment name, a list of segment names or a prefix "
        f"length in bits. Received: granularity={granularity!r}"
    )


def _union(term_lists) -> tuple:
    masks = {}
    for terms in term_lists:
        for w, mask in terms:
            full = ~np.uint64(0) if mask is None else mask
            masks[w] = masks.get(w, np.uint64(0)) | full
    return tuple((w, None if m == ~np.uint64(0) else m) for w, m in sorted(masks.items()))


def resolve_weights(layout: CodeLayout, num_bits: int, weights) -> list:
    """``[(weight, terms), ...]`` for a ``{segment: weight}`` dict; weight-0 segments dropped."""
    if not isinstance(weights, dict) or not weights:
        raise TypeError(
            f"`weights` must be a non-empty dict {{segment: weight}}. Received: weights={weights!r}"
        )
    out = []
    for name, w in weights.items():
        if not isinstance(w, (int, float, np.integer, np.floating)) or isinstance(w, bool) or (
            not math.isfinite(w) or w < 0
        ):
            raise ValueError(
                f"Segment weights must be finite numbers >= 0. Received: {name!r}={w!r}"
            )
        terms = resolve_terms(layout, num_bits, name) if isinstance(name, str) else None
        if terms is None:
            raise TypeError(f"`weights` keys must be segment names. Received: {name!r}")
        if w > 0:
            out.append((float(w), terms))
    if not out:
        raise ValueError(f"At least one segment weight must be > 0. Received: weights={weights!r}")
    return out


def weighted_distances(words: np.ndarray, query: np.ndarray, weighted) -> np.ndarray:
    """float64 ``sum_s w_s * d_s`` of one query to every code, summed in the dict's order."""
    total = np.zeros(words.shape[0], dtype=np.float64)
    for w, terms in weighted:
        total += w * distance.distances(words, query[None, :], terms)[0]
    return total
