"""Export a HammingIndex to FAISS for server-side scale. faiss is optional and imported lazily.

Bit order: FAISS binary codes are bytes, bit ``j`` in byte ``j // 8`` at position ``j % 8`` (LSB
first, as ``faiss.real_to_binary`` packs them). Our uint64 words stored little-endian are exactly
those bytes, so the export is a byte view, and ``IndexBinaryHash`` hashes the same prefix bits
that ``granularity=<prefix>`` reads here.
"""

from __future__ import annotations

import numpy as np

KINDS = ("flat", "hash")


def import_faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError("FAISS export needs faiss: pip install faiss-cpu") from err
    return faiss


def faiss_bytes(words: np.ndarray, num_bits: int) -> np.ndarray:
    """Packed uint64 words (N, W) -> FAISS uint8 codes (N, num_bits // 8)."""
    as_le = np.ascontiguousarray(words, dtype="<u8")
    return np.ascontiguousarray(as_le.view(np.uint8)[:, : num_bits // 8])


def to_faiss(index, kind: str = "flat", *, hash_bits: int | None = None):
    """``IndexBinaryIDMap(IndexBinaryFlat)`` (exact) or ``IndexBinaryHash`` holding our ids.

    ``hash_bits`` (kind="hash"): how many leading bits FAISS hashes; default: the first layout
    segment (the coarse prefix), at most 32 bits.
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}. Received: kind={kind!r}")
    faiss = import_faiss()
    codes = faiss_bytes(index.codes, index.num_bits)
    ids = np.ascontiguousarray(index.ids, dtype=np.int64)
    if kind == "flat":
        out = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(index.num_bits))
    else:
        if hash_bits is None:
            hash_bits = min(32, index.layout.segments[0].bits)
        if isinstance(hash_bits, bool) or not isinstance(hash_bits, int) or not (
            1 <= hash_bits <= min(64, index.num_bits)
        ):
            raise ValueError(
                f"`hash_bits` must be an int in [1, {min(64, index.num_bits)}]. "
                f"Received: hash_bits={hash_bits!r}"
            )
        out = faiss.IndexBinaryHash(index.num_bits, hash_bits)
    if len(ids):
        out.add_with_ids(codes, ids)
    return out
