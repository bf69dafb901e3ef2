"""Multi-granularity search terms: one segment, a prefix, several segments, or weights.

Names follow :mod:`mghash_tf.core.granularity` (``fine`` = the whole code, ``coarse`` = the
coarse-labelled segments, ``segment:NAME`` = one segment). A granularity is turned into
distance *terms* (see ``distance``), so a coarse query reads only the coarse bits.
"""

from __future__ import annotations

import numpy as np

from mghash_tf.core import granularity as granularity_lib
from mghash_tf.core.index import distance
from mghash_tf.core.layout import CodeLayout


def resolve_terms(layout: CodeLayout, granularity) -> tuple:
    """Terms for ``granularity``: None (full code), a granularity name (see
    :mod:`mghash_tf.core.granularity`: ``fine`` is the whole code, ``coarse`` the coarse-labelled
    segments, ``segment:NAME`` or a bare name one segment), a list of those, or an int.

    An int ``p`` means the prefix of ``p`` bits, bits ``[0, p)``.
    """
    num_bits = layout.bits
    if granularity is None:
        return distance.full_terms(-(-num_bits // 64))
    if isinstance(granularity, str):
        return _union([distance.bit_range_terms(s.start, s.stop)
                       for s in granularity_lib.resolve(layout, granularity).slices])
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
        return _union([resolve_terms(layout, g) for g in granularity])
    raise TypeError(
        "`granularity` must be None, a granularity or segment name, a list of them or a prefix "
        f"length in bits. Received: granularity={granularity!r}"
    )


def _union(term_lists) -> tuple:
    masks = {}
    for terms in term_lists:
        for w, mask in terms:
            full = ~np.uint64(0) if mask is None else mask
            masks[w] = masks.get(w, np.uint64(0)) | full
    return tuple((w, None if m == ~np.uint64(0) else m) for w, m in sorted(masks.items()))


def resolve_weights(layout: CodeLayout, weights) -> list:
    """``[(weight, terms), ...]`` for a ``{segment: weight}`` dict; weight-0 segments dropped."""
    return [(w, resolve_terms(layout, granularity_lib.SEGMENT_PREFIX + name))
            for name, w in granularity_lib.check_weights(layout, weights).items()]


def weighted_distances(words: np.ndarray, query: np.ndarray, weighted) -> np.ndarray:
    """float64 ``sum_s w_s * d_s`` of one query to every code, summed in the dict's order."""
    total = np.zeros(words.shape[0], dtype=np.float64)
    for w, terms in weighted:
        total += w * distance.distances(words, query[None, :], terms)[0]
    return total
