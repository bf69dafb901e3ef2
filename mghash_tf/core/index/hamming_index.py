"""HammingIndex: packed binary codes with int64 ids and exact search. NumPy only.

The API follows FAISS (``add``, ``search`` -> ``(D, I)``, ``-1`` padding, ``len``), plus
multi-granularity search over the named segments of a code layout.

Tie rule (every search mode): equal distances are ordered by insertion order. ``remove``
keeps the order of the remaining codes, so it never changes how ties fall.
Memory: 8 bytes of ids plus 8 bytes per started 64 bits of code, i.e. 16 bytes per 64-bit item.
"""

from __future__ import annotations

import logging

import numpy as np

from mghash_tf.core.granularity import SEGMENT_PREFIX
from mghash_tf.core.index import distance, faiss_export, fileformat, inputs, linear, multigran, topk
from mghash_tf.core.index.items import ItemData
from mghash_tf.core.index.mih import MultiIndexHash
from mghash_tf.core.index.packing import num_words
from mghash_tf.core.layout import get_layout

logger = logging.getLogger(__name__)

METHODS = ("auto", "linear", "mih")
TIES = ("insertion", "code")


class HammingIndex:
    """Exact Hamming-distance index over binary codes.

    Args:
        num_bits: code length, a positive multiple of 8.
        layout: a ``CodeLayout`` (or anything ``get_layout`` accepts) whose segments name the
            granularities; default: one segment ``"code"`` covering all bits.
        fingerprint: identifies the model that made the codes (e.g. a weight hash); stored in
            the index file and checked by ``load(..., expect_fingerprint=...)``.
    """

    def __init__(self, num_bits: int, layout=None, *, fingerprint: str = ""):
        self._num_words = num_words(num_bits)
        self.layout = get_layout(num_bits if layout is None else layout)
        if self.layout.bits != num_bits:
            raise ValueError(
                f"The layout must cover exactly `num_bits`={num_bits} bits. "
                f"Received: layout with {self.layout.bits} bits {list(self.layout.names)}"
            )
        if not isinstance(fingerprint, str):
            raise TypeError(f"`fingerprint` must be a str. Received: {fingerprint!r}")
        self.num_bits, self.fingerprint = int(num_bits), fingerprint
        self._words = np.zeros((0, self._num_words), dtype=np.uint64)
        self._ids = np.zeros(0, dtype=np.int64)
        self._items = ItemData()
        self._next_id = 0
        self._mih = None

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (f"HammingIndex(num_bits={self.num_bits}, segments={list(self.layout.names)}, "
                f"ntotal={len(self)})")

    ntotal = property(__len__)

    @property
    def codes(self) -> np.ndarray:
        """Packed codes (N, W) uint64 in insertion order (read-only view)."""
        view = self._words.view()
        view.flags.writeable = False
        return view

    @property
    def ids(self) -> np.ndarray:
        view = self._ids.view()
        view.flags.writeable = False
        return view

    @property
    def names(self):
        return self._items.names

    @property
    def extras(self) -> dict:
        return self._items.extras

    @property
    def next_id(self) -> int:
        """The id the next ``add`` without ``ids`` starts from."""
        return self._next_id

    @property
    def nbytes(self) -> int:
        """Bytes held for codes and ids (metadata and a built MIH not included)."""
        return self._words.nbytes + self._ids.nbytes

    def add(self, codes, ids=None, *, names=None, extras=None) -> None:
        """Append codes: real/±1/{0,1} (N, num_bits), or packed uint64 (N, ceil(num_bits/64)).

        ``ids`` default to consecutive integers after the largest id seen so far. ``names`` (one
        str per code) and ``extras`` (dict of 1-D columns) are stored with the codes.
        """
        words = self._as_words(codes, "codes")
        ids = inputs.new_ids(ids, len(words), self._ids, self._next_id)
        self._items.append(names, extras, len(words), had_rows=len(self) > 0)
        self._words = np.concatenate([self._words, words])
        self._ids = np.concatenate([self._ids, ids])
        if len(ids):
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        self._mih = None

    def remove(self, ids) -> int:
        """Remove the codes with these ids (unknown ids are ignored); returns how many."""
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"`ids` must be integers. Received: dtype={ids.dtype}")
        drop = np.isin(self._ids, ids.ravel())
        count = int(drop.sum())
        if count:
            keep = ~drop
            self._words, self._ids = self._words[keep], self._ids[keep]
            self._items.keep(keep)
            self._mih = None
        return count

    def search(self, queries, k: int, *, granularity=None, weights=None, method: str = "auto",
               ties: str = "insertion"):
        """k nearest codes per query: ``(D (Q, k), I (Q, k))``, padded with -1 ids.

        ``granularity``: None or ``"fine"`` (full code), ``"coarse"`` (the coarse-labelled
        segments), ``"segment:NAME"`` or a bare segment name, a list of those, or an int prefix
        length (:mod:`mghash_tf.core.granularity`). ``weights``: ``{segment: weight}``; distances
        are then the float64 weighted sums (padding ``inf``), else int32 (padding ``2**31-1``).
        ``method``: ``"linear"`` scan, ``"mih"`` (multi-index hashing, full code only, built on
        first use) or ``"auto"`` (MIH when one has been built, else linear). All are exact.
        ``ties``: how equal distances are ordered: ``"insertion"`` (FAISS's rule) or, for a
        granularity, ``"code"``: by the whole code's distance, then insertion. A 16-bit coarse
        segment takes a few values, so a coarse query ties with its whole class; ``"code"``
        returns that class nearest first (D stays the granularity's distance).
        """
        q = self._as_words(queries, "queries")
        k = inputs.check_int("k", k, 1)
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
        if ties not in TIES:
            raise ValueError(f"`ties` must be one of {TIES}. Received: ties={ties!r}")
        if ties == "code" and granularity is not None:
            if weights is not None or method == "mih":
                raise ValueError("ties='code' goes with a granularity and method 'linear' or 'auto'. "
                                 f"Received: weights={weights!r}, method={method!r}")
            D, P = self._code_tie_topk(q, k, multigran.resolve_terms(self.layout, granularity))
            return D, self._ids_at(P)
        if weights is not None:
            if granularity is not None or method == "mih":
                raise ValueError(
                    "`weights` replaces `granularity` and needs method='linear' or 'auto'. "
                    f"Received: granularity={granularity!r}, method={method!r}"
                )
            D, P = self._weighted_topk(q, k, weights)
        elif method == "mih" or (method == "auto" and granularity is None and self._mih):
            if granularity is not None:
                raise ValueError(
                    "MIH searches the full code; use method='linear' for a granularity. "
                    f"Received: granularity={granularity!r}"
                )
            D, P = (self._mih or self.build_mih()).search(q, k)
        else:
            terms = multigran.resolve_terms(self.layout, granularity)
            D, P = linear.linear_topk(self._words, q, k, terms)
        return D, self._ids_at(P)

    def range_search(self, queries, radius: int, *, granularity=None):
        """All codes with distance ``< radius`` (FAISS semantics): ``(lims, D, I)``.

        Results of query ``i`` are ``D[lims[i]:lims[i+1]]``, sorted by distance then insertion.
        """
        q = self._as_words(queries, "queries")
        radius = inputs.check_int("radius", radius, 0)
        terms = multigran.resolve_terms(self.layout, granularity)
        lims, D, P = linear.linear_range(self._words, q, radius, terms)
        return lims, D, self._ids_at(P)

    def cascade(self, queries, k: int, *, coarse: str | None = None, shortlist: int | None = None):
        """Coarse-to-fine search: the ``shortlist`` nearest by the ``coarse`` segment (default:
        the first segment, a prefix), re-ranked by the full code. Returns full-code distances.

        The shortlist keeps its whole boundary tie: every code whose coarse distance is at most
        the ``shortlist``-th smallest one is re-ranked, so the result never depends on insertion
        order at the cut (an exact match is never dropped because 10·k others share its coarse
        code). It is the top k by (full distance, insertion order) of that set.
        """
        q = self._as_words(queries, "queries")
        k = inputs.check_int("k", k, 1)
        shortlist = inputs.check_int("shortlist", 10 * k if shortlist is None else shortlist, k)
        coarse = SEGMENT_PREFIX + self.layout.names[0] if coarse is None else coarse
        terms = multigran.resolve_terms(self.layout, coarse)
        D, P = topk.padded(len(q), k)
        full = distance.full_terms(self._num_words)
        for i in range(len(q)):
            dist = distance.row_distances(self._words, q[i], terms)
            cand = _within_nth(dist, shortlist)
            d, p = topk.smallest_of(distance.row_distances(self._words[cand], q[i], full), cand, k)
            D[i, : len(d)], P[i, : len(p)] = d, p
        return D, self._ids_at(P)

    def build_mih(self, num_tables: int | None = None) -> MultiIndexHash:
        """Build (and keep, until the codes change) multi-index hashing tables."""
        self._mih = MultiIndexHash(self._words, self.num_bits, num_tables)
        logger.info("Built MIH: %d tables, %.1f MB", self._mih.num_tables, self._mih.nbytes / 1e6)
        return self._mih

    def names_of(self, ids) -> list:
        """Names for ids (e.g. a row of ``I`` from ``search``); None for -1 or unknown ids."""
        if self.names is None:
            raise ValueError("This index stores no names (add(..., names=[...]) stores them).")
        ids = np.asarray(ids, dtype=np.int64).ravel()
        order = np.argsort(self._ids)
        at = np.minimum(np.searchsorted(self._ids[order], ids), len(order) - 1)
        found = self._ids[order[at]] == ids if len(order) else np.zeros(len(ids), dtype=bool)
        return [self.names[order[a]] if f else None for a, f in zip(at, found)]

    def save(self, path) -> None:
        """Write the index atomically (see ``fileformat``)."""
        fileformat.save_index(self, path)

    @classmethod
    def load(cls, path, *, expect_fingerprint: str | None = None) -> "HammingIndex":
        """Read an index. Corrupt, truncated, foreign, newer or wrong-model files: ValueError."""
        return fileformat.load_index(cls, path, expect_fingerprint=expect_fingerprint)

    def to_faiss(self, kind: str = "flat", **kwargs):
        """A FAISS binary index with the same codes and ids (``faiss_export.to_faiss``)."""
        return faiss_export.to_faiss(self, kind, **kwargs)

    def _code_tie_topk(self, q, k, terms):
        """Top k by (granularity distance, whole-code distance, insertion): every code inside
        the k-th granularity distance is re-ranked, so the order is exact."""
        D, P = topk.padded(len(q), k)
        full = distance.full_terms(self._num_words)
        for i in range(len(q)):
            dist = distance.row_distances(self._words, q[i], terms)
            cand = _within_nth(dist, k)
            whole = distance.row_distances(self._words[cand], q[i], full)
            order = np.lexsort((cand, whole, dist[cand]))[:k]
            D[i, : len(order)], P[i, : len(order)] = dist[cand][order], cand[order]
        return D, P

    def _weighted_topk(self, q, k, weights):
        weighted = multigran.resolve_weights(self.layout, weights)
        D, P = topk.padded(len(q), k, dtype=np.float64)
        for i in range(len(q)):
            dist = multigran.weighted_distances(self._words, q[i], weighted)
            d, p = topk.smallest_float(dist, k)
            D[i, : len(d)], P[i, : len(p)] = d, p
        return D, P

    def _as_words(self, codes, what: str) -> np.ndarray:
        return inputs.as_words(codes, self.num_bits, what)

    def _ids_at(self, positions: np.ndarray) -> np.ndarray:
        if positions.size and positions.min() >= 0:  # no padding: one gather (single queries)
            return self._ids[positions]
        out = np.full(positions.shape, -1, dtype=np.int64)
        valid = positions >= 0
        out[valid] = self._ids[positions[valid]]
        return out


def _within_nth(dist: np.ndarray, n: int) -> np.ndarray:
    """Positions whose distance is at most the n-th smallest: the n nearest and every code tied
    with the n-th (all positions when there are at most n)."""
    if len(dist) <= n:
        return np.arange(len(dist))
    return np.flatnonzero(dist <= np.partition(dist, n - 1)[n - 1])
