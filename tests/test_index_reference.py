"""Brute-force references for the index tests, and tests of the references themselves.

The references never use the code under test: distances come from unpacked bits compared
column by column, top-k from a full stable argsort (ties by position = insertion order).
"""

import numpy as np

from mghash_tf.core.index import PAD_DISTANCE, pack_bits, unpack_bits


def ref_distances(q_words, db_words, num_bits, columns=None):
    """(Q, N) int64 Hamming distances over the bit ``columns`` (all when None)."""
    qb = unpack_bits(q_words, num_bits).astype(bool)
    db = unpack_bits(db_words, num_bits).astype(bool)
    if columns is not None:
        qb, db = qb[:, columns], db[:, columns]
    return (qb[:, None, :] != db[None, :, :]).sum(axis=2)


def ref_knn(dist, k, pad=PAD_DISTANCE):
    """Stable top-k of each row: (D, P) padded with ``pad`` / -1."""
    nq, n = dist.shape
    D = np.full((nq, k), pad, dtype=np.float64 if dist.dtype.kind == "f" else np.int64)
    P = np.full((nq, k), -1, dtype=np.int64)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    D[:, : order.shape[1]] = np.take_along_axis(dist, order, axis=1)
    P[:, : order.shape[1]] = order
    return D, P


def ref_ids(P, ids):
    return np.where(P >= 0, ids[np.maximum(P, 0)], -1)


def assert_knn_tie_equivalent(D, I, dist_by_id):
    """For an index with another tie rule (FAISS): same distances, and every returned id is at its
    stated distance; ids strictly inside the k-th distance must match as sets."""
    ref = np.sort(np.fromiter(dist_by_id.values(), dtype=np.int64))[: D.shape[0]]
    np.testing.assert_array_equal(np.sort(D), ref)
    for d, i in zip(D, I):
        assert dist_by_id[int(i)] == d
    kth = D.max()
    inside = {i for i, d in dist_by_id.items() if d < kth}
    assert inside <= set(int(i) for i in I)


def test_ref_distances_hand_example():
    # q = 1000_0000, db = 1000_0000 (0 apart), 0100_0000 (2), 1100_0000 (1), 0111_1111 (8).
    q = pack_bits(np.array([[1, 0, 0, 0, 0, 0, 0, 0]]))
    db = pack_bits(np.array([
        [1, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 1],
    ]))
    np.testing.assert_array_equal(ref_distances(q, db, 8), [[0, 2, 1, 8]])
    # Only bits 0..1: distances 0, 2, 1, 2.
    np.testing.assert_array_equal(ref_distances(q, db, 8, slice(0, 2)), [[0, 2, 1, 2]])


def test_ref_knn_ties_by_position_and_padding():
    dist = np.array([[3, 1, 3, 1, 0]])
    D, P = ref_knn(dist, 4)
    np.testing.assert_array_equal(D, [[0, 1, 1, 3]])  # the two 1s keep order 1 then 3
    np.testing.assert_array_equal(P, [[4, 1, 3, 0]])
    D, P = ref_knn(dist, 7)
    np.testing.assert_array_equal(P, [[4, 1, 3, 0, 2, -1, -1]])
    assert D[0, 5] == PAD_DISTANCE
