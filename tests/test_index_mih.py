"""Multi-index hashing returns exactly what the linear scan returns, tie order included."""

import numpy as np
import pytest

from mghash_tf.core.index import HammingIndex, MultiIndexHash, mih, unpack_bits
from mghash_tf.core.index.linear import linear_topk
from mghash_tf.core.index.distance import full_terms
from mghash_tf.core.index.mih_tables import SubstringTables
from mghash_tf.core.index.substrings import flip_masks, fold, fold_int, substring_values
from mghash_tf.core.index.synthetic import clustered_codes, random_codes
from test_index_reference import ref_distances, ref_knn


def codes(kind, n, num_bits, seed):
    rng = np.random.default_rng(seed)
    if kind == "random":
        return random_codes(n, num_bits, rng), random_codes(9, num_bits, rng)
    centres = random_codes(20, num_bits, rng)
    words, _ = clustered_codes(n, centres, num_bits, 0.06, rng)
    queries, _ = clustered_codes(9, centres, num_bits, 0.06, rng)
    if kind == "duplicates":  # many exact copies: ties at every distance
        words = words[rng.integers(0, 50, size=n)]
        queries = np.concatenate([queries, words[:3]])
    return words, queries


@pytest.mark.parametrize("kind", ["random", "clustered", "duplicates"])
@pytest.mark.parametrize("k", [1, 7, 64])
def test_mih_equals_linear_and_reference(kind, k):
    words, queries = codes(kind, 6000, 64, seed=k)
    D, P = MultiIndexHash(words, 64).search(queries, k)
    refD, refP = ref_knn(ref_distances(queries, words, 64), k)
    np.testing.assert_array_equal(D, refD)
    np.testing.assert_array_equal(P, refP)


@pytest.mark.parametrize("num_bits, tables", [(32, 2), (64, 3), (64, 5), (128, 6), (48, 2)])
def test_mih_table_counts_and_code_lengths(num_bits, tables):
    words, queries = codes("clustered", 4000, num_bits, seed=tables)
    D, P = MultiIndexHash(words, num_bits, tables).search(queries, 10)
    refD, refP = linear_topk(words, queries, 10, full_terms(words.shape[1]))
    np.testing.assert_array_equal(D, refD)
    np.testing.assert_array_equal(P, refP)


@pytest.mark.parametrize("work", [1e-9, 1e9])
def test_forced_fallback_and_exhaustive_probing_are_exact(monkeypatch, work):
    """Tiny budget: every query falls back to the scan. Huge budget: probing may run until a
    table has enumerated every bucket (the 'every code seen' bound)."""
    monkeypatch.setattr(mih, "WORK_PER_CODE", work)
    words, queries = codes("random", 300, 16, seed=4)
    D, P = MultiIndexHash(words, 16, 2).search(queries, 40)
    refD, refP = ref_knn(ref_distances(queries, words, 16), 40)
    np.testing.assert_array_equal(D, refD)
    np.testing.assert_array_equal(P, refP)


def test_mih_edge_cases():
    words, queries = codes("clustered", 50, 64, seed=1)
    D, P = MultiIndexHash(words, 64).search(queries, 80)  # k > n: padded like the scan
    refD, refP = ref_knn(ref_distances(queries, words, 64), 80)
    np.testing.assert_array_equal(P, refP)
    empty = MultiIndexHash(np.zeros((0, 1), np.uint64), 64)
    assert (empty.search(queries, 3)[1] == -1).all()
    with pytest.raises(ValueError, match="num_tables"):
        MultiIndexHash(words, 64, 1)  # a 64-bit substring exceeds the 32-bit limit


def test_index_uses_mih_after_build_and_drops_it_on_change():
    words, queries = codes("clustered", 5000, 64, seed=2)
    index = HammingIndex(64)
    index.add(words)
    linear = index.search(queries, 5, method="linear")
    built = index.build_mih()
    assert built.nbytes > 0 and built.num_tables >= 2
    np.testing.assert_array_equal(index.search(queries, 5)[1], linear[1])  # auto -> MIH
    index.remove(index.ids[:10])
    assert index._mih is None  # stale tables are never searched
    ref = ref_knn(ref_distances(queries, np.asarray(index.codes), 64), 5)[1]
    np.testing.assert_array_equal(index.search(queries, 5, method="mih")[1], index.ids[ref])
    with pytest.raises(ValueError, match="full code"):
        index.search(queries, 5, method="mih", granularity="code")


def test_probing_until_every_bucket_is_enumerated(monkeypatch):
    monkeypatch.setattr(mih, "WORK_PER_CODE", 1e9)
    rng = np.random.default_rng(5)
    query = random_codes(1, 8, rng)
    complement = query ^ np.uint64(0xFF)  # two codes at the maximum distance 8
    words = np.concatenate([random_codes(200, 8, rng), complement, complement])
    k = len(words) - 1  # the k-th distance is 8: only a full enumeration proves it
    D, P = MultiIndexHash(words, 8, 2).search(query, k)
    refD, refP = ref_knn(ref_distances(query, words, 8), k)
    assert refD[0, -1] == 8
    np.testing.assert_array_equal(D, refD)
    np.testing.assert_array_equal(P, refP)


def test_substrings_fold_and_flips():
    rng = np.random.default_rng(6)
    words = random_codes(500, 128, rng)
    bits = unpack_bits(words, 128).astype(np.uint64)
    for start, stop in [(0, 21), (50, 78), (120, 128)]:  # 50..78 straddles the word boundary
        expected = (bits[:, start:stop] << np.arange(stop - start, dtype=np.uint64)).sum(axis=1)
        np.testing.assert_array_equal(substring_values(words, start, stop), expected)
    v = substring_values(words, 0, 21)
    f = flip_masks(21, 2)
    assert len(f) == 210 and all(bin(int(x)).count("1") == 2 for x in f)  # C(21, 2) = 210
    # The fold is linear, which lets probes reuse folded flip masks.
    np.testing.assert_array_equal(fold(v[:, None] ^ f[None, :], 21, 12),
                                  fold(v, 21, 12)[:, None] ^ fold(f, 21, 12)[None, :])


@pytest.fixture
def probe_count(monkeypatch):
    """Counts single-query searches that probing answered (not the fallback scan), so a
    reference test cannot pass on the scan alone."""
    answered = []
    real = mih.search_one
    monkeypatch.setattr(mih, "search_one",
                        lambda *a: (lambda r: answered.append(r is not None) or r)(real(*a)))
    return answered


@pytest.mark.parametrize("kind", ["random", "clustered", "duplicates"])
@pytest.mark.parametrize("k", [1, 7, 64, 5999])
def test_single_queries_equal_the_reference(kind, k, probe_count):
    """One query at a time (the device path) and small batches, against brute force: the same
    distances and positions, ties by position, including heavy ties (duplicates) and k larger
    than what the first radii hold."""
    words, queries = codes(kind, 6000, 64, seed=k)
    refD, refP = ref_knn(ref_distances(queries, words, 64), k)
    index = MultiIndexHash(words, 64)
    for i in range(len(queries)):
        D, P = index.search(queries[i : i + 1], k)
        np.testing.assert_array_equal(D, refD[i : i + 1])
        np.testing.assert_array_equal(P, refP[i : i + 1])
    D, P = index.search(queries[:3], k)  # a small batch takes the same path
    np.testing.assert_array_equal(D, refD[:3])
    np.testing.assert_array_equal(P, refP[:3])
    if kind != "random" and k < 64:
        assert any(probe_count)  # clustered queries are answered by probing


@pytest.mark.parametrize("num_bits, tables",
                         [(32, 2), (64, 3), (64, 5), (128, 6), (48, 2), (136, 5)])
def test_single_queries_across_code_lengths(monkeypatch, num_bits, tables, probe_count):
    """Multi-word codes and substrings that straddle word boundaries (128 / 6, 136 / 5)."""
    monkeypatch.setattr(mih, "WORK_PER_CODE", 1.0)  # small n: probe even where a scan is cheaper
    words, queries = codes("clustered", 4000, num_bits, seed=tables)
    refD, refP = ref_knn(ref_distances(queries, words, num_bits), 10)
    index = MultiIndexHash(words, num_bits, tables)
    for i in range(len(queries)):
        D, P = index.search(queries[i : i + 1], 10)
        np.testing.assert_array_equal(D, refD[i : i + 1])
        np.testing.assert_array_equal(P, refP[i : i + 1])
    assert any(probe_count)


@pytest.mark.parametrize("work", [1e-9, 1e9])
def test_single_query_fallback_and_exhaustive_probing(monkeypatch, work, probe_count):
    monkeypatch.setattr(mih, "WORK_PER_CODE", work)
    words, queries = codes("random", 300, 16, seed=4)
    refD, refP = ref_knn(ref_distances(queries, words, 16), 40)
    index = MultiIndexHash(words, 16, 2)
    for i in range(len(queries)):
        D, P = index.search(queries[i : i + 1], 40)
        np.testing.assert_array_equal(D, refD[i : i + 1])
        np.testing.assert_array_equal(P, refP[i : i + 1])
    assert any(probe_count) == (work > 1)


def test_single_query_until_every_bucket_is_enumerated(monkeypatch):
    monkeypatch.setattr(mih, "WORK_PER_CODE", 1e9)
    rng = np.random.default_rng(7)
    query = random_codes(1, 8, rng)
    complement = query ^ np.uint64(0xFF)  # the farthest codes: only a full enumeration reaches them
    words = np.concatenate([random_codes(40, 8, rng), complement, complement, query])
    for k in (len(words) - 1, len(words) - 2):
        D, P = MultiIndexHash(words, 8, 2).search(query, k)
        refD, refP = ref_knn(ref_distances(query, words, 8), k)
        np.testing.assert_array_equal(D, refD)
        np.testing.assert_array_equal(P, refP)


def test_fold_int_matches_fold_and_plan_bounds_hold():
    rng = np.random.default_rng(8)
    for bits, out_bits in [(21, 20), (32, 8), (16, 16), (40, 17)]:
        values = rng.integers(0, 1 << bits, size=200, dtype=np.uint64)
        np.testing.assert_array_equal(fold(values, bits, out_bits),
                                      [fold_int(int(v), bits, out_bits) for v in values])
    words = random_codes(5000, 64, rng)
    tables = SubstringTables(words, 64, [(0, 21), (21, 42), (42, 64)])
    assert (np.diff(tables.plan.bounds) >= 0).all()
    # Pigeonhole, checked by brute force: after step i, every code with some substring within
    # the probed radius has been probed, so a code not probed is at least bounds[i] away.
    query = random_codes(1, 64, rng)
    d = ref_distances(query, words, 64)[0]
    sub = np.stack([ref_distances(query, words, 64, slice(a, b))[0] for a, b in tables.substrings])
    for i, (s, j) in enumerate(tables.plan.steps[:9]):
        probed = np.zeros(len(words), dtype=bool)
        for s2, j2 in tables.plan.steps[: i + 1]:
            probed |= sub[j2] <= s2
        assert d[~probed].min() >= tables.plan.bounds[i]
    # Probes of a step range are distinct per table, so a step meets a code at most once per
    # table (the multiset bound of the single-query search relies on it).
    probes = tables.step_probes(0, 5)
    pairs = probes.table.astype(np.int64) * (1 << 32) + probes.flip
    assert len(np.unique(pairs)) == len(pairs)
    # Uniform codes (5000 in 2**13 buckets per table) fill them as the cost model expects.
    qb = tables.query_buckets_one(query[0])
    _, lengths = tables.bucket_spans(probes.base + (qb[probes.table] ^ probes.flip))
    assert 0.5 * probes.uniform < lengths.sum() < 2 * probes.uniform
