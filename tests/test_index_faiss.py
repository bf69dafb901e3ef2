"""Export to FAISS keeps codes, ids and bit order (skipped where faiss is not installed)."""

import numpy as np
import pytest

from mghash_tf.core.index import HammingIndex
from mghash_tf.core.index.faiss_export import faiss_bytes
from mghash_tf.core.index.packing import pack_bits
from test_index_reference import assert_knn_tie_equivalent, ref_distances

faiss = pytest.importorskip("faiss")


def make_index(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    index = HammingIndex(64, "mg64")
    index.add(rng.standard_normal((n, 64)), ids=rng.permutation(10 * n)[:n])
    return index


def test_our_bytes_are_faiss_bit_order():
    x = np.random.default_rng(1).standard_normal((7, 64)).astype(np.float32)
    expected = np.zeros((7, 8), dtype=np.uint8)
    faiss.real_to_binary(x.size, faiss.swig_ptr(x), faiss.swig_ptr(expected))
    np.testing.assert_array_equal(faiss_bytes(pack_bits(x), 64), expected)


def test_flat_export_finds_the_same_neighbours():
    index = make_index()
    flat = index.to_faiss("flat")
    queries = np.asarray(index.codes[:6]) ^ np.uint64(0xF0F0)
    D, I = flat.search(faiss_bytes(queries, 64), 20)
    ours_D, _ = index.search(queries, 20)
    np.testing.assert_array_equal(D, ours_D)
    dist = ref_distances(queries, np.asarray(index.codes), 64)
    for qi in range(len(queries)):
        by_id = dict(zip(index.ids.tolist(), dist[qi].tolist()))
        assert_knn_tie_equivalent(D[qi], I[qi], by_id)


def test_hash_export_buckets_by_our_prefix_bits():
    index = make_index()
    hashed = index.to_faiss("hash")  # hashes the 16-bit coarse prefix
    assert hashed.b == 16
    queries = np.asarray(index.codes[:5])
    D, I = hashed.search(faiss_bytes(queries, 64), 50)
    prefix = ref_distances(queries, np.asarray(index.codes), 64, slice(0, 16))
    pos = {int(i): p for p, i in enumerate(index.ids)}
    for qi in range(len(queries)):
        found = [pos[int(i)] for i in I[qi] if i >= 0]
        assert found and all(prefix[qi, p] == 0 for p in found)  # same bucket = same prefix


def test_bad_kind_is_refused():
    with pytest.raises(ValueError, match="`kind` must be one of"):
        make_index(10).to_faiss("ivf")
