"""Validation and conversion of user input to the index: codes, ids, counts. NumPy only."""

from __future__ import annotations

import numpy as np

from mghash_tf.core.index.packing import num_words, pack_bits


def as_words(codes, num_bits: int, what: str) -> np.ndarray:
    """Real/±1/{0,1} (N, num_bits) or packed uint64 (N, ceil(num_bits/64)) -> packed words."""
    arr = np.asarray(codes)
    words = num_words(num_bits)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"`{what}` must be numeric. Received: dtype={arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"`{what}` must be 2-D (N, num_bits). Received: shape={arr.shape}")
    if arr.dtype == np.uint64 and arr.shape[1] == words:
        pad = num_bits % 64
        if pad and len(arr) and (arr[:, -1] >> np.uint64(pad)).any():
            raise ValueError(f"Packed `{what}` have bits set beyond num_bits={num_bits}.")
        return np.ascontiguousarray(arr)
    if arr.shape[1] != num_bits:
        raise ValueError(
            f"`{what}` must have num_bits={num_bits} columns (or {words} packed uint64 words). "
            f"Received: shape={arr.shape}"
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"`{what}` contain NaN or infinity.")
    return pack_bits(arr)


def new_ids(ids, n: int, existing: np.ndarray, next_id: int) -> np.ndarray:
    """int64 ids for ``n`` new codes: given (validated, unique) or ``next_id, next_id + 1, ...``."""
    if ids is None:
        return np.arange(next_id, next_id + n, dtype=np.int64)
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu" or arr.shape != (n,):
        raise ValueError(
            f"`ids` must be {n} integers, one per code. Received: dtype={arr.dtype}, "
            f"shape={arr.shape}"
        )
    if n and (arr.min() < 0 or arr.max() > np.iinfo(np.int64).max):
        raise ValueError(
            f"`ids` must be in [0, 2**63). Received: min={arr.min()}, max={arr.max()}"
        )
    arr = arr.astype(np.int64)
    uniq, counts = np.unique(arr, return_counts=True)
    clash = uniq[counts > 1].tolist() + arr[np.isin(arr, existing)].tolist()
    if clash:
        raise ValueError(f"`ids` must be unique in the index. Received duplicate id {clash[0]}")
    return arr


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}")
    return int(value)
