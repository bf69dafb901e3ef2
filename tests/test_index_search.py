"""Every search mode of HammingIndex against the brute-force reference (exact tie order)."""

import numpy as np
import pytest

from mghash_tf.core.index import HammingIndex, distance, topk
from mghash_tf.core.index.synthetic import clustered_codes, random_codes
from mghash_tf.core.layout import get_layout
from test_index_reference import ref_distances, ref_ids, ref_knn

LAYOUT = get_layout("scales")  # low 0-16, mid 16-32, high 32-48, fused 48-64


def make_index(n, num_bits=64, layout=None, seed=0, clustered=True):
    rng = np.random.default_rng(seed)
    if clustered:  # clustered codes have many exact ties: the tie rule is exercised
        centres = random_codes(8, num_bits, rng)
        words, _ = clustered_codes(n, centres, num_bits, 0.05, rng)
        queries, _ = clustered_codes(7, centres, num_bits, 0.05, rng)
    else:
        words, queries = random_codes(n, num_bits, rng), random_codes(7, num_bits, rng)
    index = HammingIndex(num_bits, layout)
    ids = rng.permutation(10 * n)[:n]  # arbitrary ids: results must map positions to them
    index.add(words, ids)
    return index, words, queries, ids


def check(index, queries, k, dist, **kwargs):
    D, I = index.search(queries, k, **kwargs)
    refD, refP = ref_knn(dist, k)
    np.testing.assert_array_equal(D, refD)
    np.testing.assert_array_equal(I, ref_ids(refP, index.ids))


@pytest.mark.parametrize("n, k", [(1, 1), (50, 10), (3000, 1), (3000, 10), (20000, 100),
                                  (300, 500)])
@pytest.mark.parametrize("clustered", [True, False])
def test_full_code_matches_reference(n, k, clustered):
    index, words, queries, _ = make_index(n, clustered=clustered)
    check(index, queries, k, ref_distances(queries, words, 64), method="linear")


@pytest.mark.parametrize("num_bits", [8, 24, 128, 200])
def test_other_code_lengths(num_bits):
    index, words, queries, _ = make_index(2000, num_bits)
    check(index, queries, 25, ref_distances(queries, words, num_bits))


@pytest.mark.parametrize("granularity, columns", [
    ("low", slice(0, 16)), ("fused", slice(48, 64)), (["low", "high"], np.r_[0:16, 32:48]),
    (24, slice(0, 24)),
])
def test_granularity_reads_only_its_bits(granularity, columns):
    index, words, queries, _ = make_index(5000, layout=LAYOUT)
    dist = ref_distances(queries, words, 64, columns)
    check(index, queries, 30, dist, granularity=granularity)


def test_segment_straddling_a_word_boundary():
    layout = get_layout({"segments": [{"name": "a", "bits": 56}, {"name": "b", "bits": 24},
                                      {"name": "c", "bits": 48}]})
    index, words, queries, _ = make_index(3000, 128, layout)
    check(index, queries, 12, ref_distances(queries, words, 128, slice(56, 80)), granularity="b")


def test_weighted_segments():
    index, words, queries, _ = make_index(4000, layout=LAYOUT)
    weights = {"low": 1.0, "mid": 0.5, "fused": 0.25}
    dist = (1.0 * ref_distances(queries, words, 64, slice(0, 16))
            + 0.5 * ref_distances(queries, words, 64, slice(16, 32))
            + 0.25 * ref_distances(queries, words, 64, slice(48, 64)))
    D, I = index.search(queries, 40, weights=weights)
    refD, refP = ref_knn(dist, 40, pad=np.inf)
    np.testing.assert_array_equal(D, refD)
    np.testing.assert_array_equal(I, ref_ids(refP, index.ids))
    D, I = index.search(queries[:1], 4001, weights={"low": 1})
    assert np.isinf(D[0, -1]) and I[0, -1] == -1


def ref_cascade(coarse_row, full_row, shortlist, k):
    """Brute force: every code within the shortlist-th coarse distance, top k by (full, position)."""
    boundary = np.sort(coarse_row)[min(shortlist, len(coarse_row)) - 1]
    short = np.flatnonzero(coarse_row <= boundary)
    return short[np.argsort(full_row[short], kind="stable")[:k]]


def test_cascade_is_shortlist_then_full_rerank():
    index, words, queries, _ = make_index(6000, layout=get_layout("mg64"))
    coarse = ref_distances(queries, words, 64, slice(0, 16))
    full = ref_distances(queries, words, 64)
    D, I = index.cascade(queries, 10, shortlist=50)
    for qi in range(len(queries)):
        pick = ref_cascade(coarse[qi], full[qi], 50, 10)
        np.testing.assert_array_equal(D[qi], full[qi, pick])
        np.testing.assert_array_equal(I[qi], index.ids[pick])


def test_cascade_keeps_the_boundary_tie_so_exact_matches_survive():
    # 400 codes whose 16-bit coarse segment takes two values: a coarse query ties with ~200.
    rng = np.random.default_rng(3)
    codes = np.where(rng.random((400, 64)) < 0.5, 1.0, -1.0)
    codes[:, :16] = np.where(rng.random((400, 1)) < 0.5, 1.0, -1.0)
    index = HammingIndex(64, get_layout("mg64"))
    index.add(codes)
    words = index.codes
    for qi in (5, 123, 399):  # late items: insertion order alone would cut them from a 10·k list
        D, I = index.cascade(codes[qi:qi + 1], 5)
        assert I[0, 0] == qi and D[0, 0] == 0
        coarse = ref_distances(words[qi:qi + 1], words, 64, slice(0, 16))[0]
        full = ref_distances(words[qi:qi + 1], words, 64)[0]
        pick = ref_cascade(coarse, full, 50, 5)
        np.testing.assert_array_equal(D[0], full[pick])
        np.testing.assert_array_equal(I[0], index.ids[pick])
    D, I = index.cascade(codes[:3], 400, shortlist=400)  # shortlist = everything: a full search
    refD, refI = index.search(codes[:3], 400)
    np.testing.assert_array_equal(D, refD)
    np.testing.assert_array_equal(I, refI)


def test_range_search_matches_reference():
    index, words, queries, _ = make_index(3000, layout=LAYOUT)
    dist = ref_distances(queries, words, 64)
    lims, D, I = index.range_search(queries, 9)
    for qi in range(len(queries)):
        hit = np.flatnonzero(dist[qi] < 9)  # FAISS semantics: strictly below the radius
        hit = hit[np.argsort(dist[qi, hit], kind="stable")]
        np.testing.assert_array_equal(D[lims[qi] : lims[qi + 1]], dist[qi, hit])
        np.testing.assert_array_equal(I[lims[qi] : lims[qi + 1]], index.ids[hit])
    lims, D, I = index.range_search(queries, 5, granularity="mid")
    dist = ref_distances(queries, words, 64, slice(16, 32))
    assert lims[-1] == (dist < 5).sum() and len(D) == len(I) == lims[-1]


def test_ties_keep_insertion_order_after_remove():
    index = HammingIndex(16)
    same = np.ones((6, 16))
    index.add(same, ids=[50, 40, 30, 20, 10, 0])
    index.remove([40, 10])
    D, I = index.search(same[:1], 6)
    np.testing.assert_array_equal(I, [[50, 30, 20, 0, -1, -1]])  # insertion order, then padding
    np.testing.assert_array_equal(D[0, :4], [0, 0, 0, 0])
    assert D[0, 4] == topk.PAD_DISTANCE


def test_huge_tie_class_and_empty_index():
    index = HammingIndex(64)
    D, I = index.search(np.ones((2, 64)), 3)
    assert (I == -1).all() and (D == topk.PAD_DISTANCE).all()
    index.add(np.ones((100000, 64)))  # every distance equal: the per-row exact path
    D, I = index.search(-np.ones((1, 64)), 5)
    np.testing.assert_array_equal(I, [[0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(D, [[64] * 5])


@pytest.mark.parametrize("budget", [3 * 5056, 2000, 10**8])
def test_batch_and_slabs_equal_one_by_one(monkeypatch, budget):
    """Small budgets split queries into blocks and codes into slabs; answers must not change."""
    index, words, queries, _ = make_index(5000)
    expected = [index.search(q[None, :], 17) for q in queries]
    expected_range = index.range_search(queries, 8)
    monkeypatch.setattr(distance, "MAX_DISTANCE_BYTES", budget)
    D, I = index.search(queries, 17)
    for qi, (d, i) in enumerate(expected):
        np.testing.assert_array_equal(d[0], D[qi])
        np.testing.assert_array_equal(i[0], I[qi])
    for a, b in zip(index.range_search(queries, 8), expected_range):
        np.testing.assert_array_equal(a, b)
    D, I = index.search(queries, 6000)  # k > n across slabs: padding stays last
    refD, refP = ref_knn(ref_distances(queries, words, 64), 6000)
    np.testing.assert_array_equal(D, refD)
    np.testing.assert_array_equal(I, ref_ids(refP, index.ids))


def test_lookup_table_popcount_gives_same_results(monkeypatch):
    index, words, queries, _ = make_index(5000, layout=LAYOUT)
    calls = []
    lut = distance.popcount_lut
    monkeypatch.setattr(distance, "popcount_lut", lambda x: calls.append(1) or lut(x))
    expected = [index.search(queries, 20), index.search(queries, 20, granularity="mid"),
                index.search(queries, 20, method="mih")]
    monkeypatch.setattr(distance, "HAS_BITWISE_COUNT", False)  # the NumPy < 2 path
    got = [index.search(queries, 20), index.search(queries, 20, granularity="mid"),
           index.search(queries, 20, method="mih")]
    assert calls  # the fallback really ran
    for (d0, i0), (d1, i1) in zip(expected, got):
        np.testing.assert_array_equal(d0, d1)
        np.testing.assert_array_equal(i0, i1)


@pytest.mark.parametrize("rows, long_row", [(3, topk.LONG_ROW), (1, topk.LONG_ROW), (3, 64)])
def test_smallest_rows_randomised_against_argsort(monkeypatch, rows, long_row):
    """Joint rows, a single row, and rows solved one at a time (``LONG_ROW``)."""
    monkeypatch.setattr(topk, "LONG_ROW", long_row)
    rng = np.random.default_rng(3)
    for _ in range(200):
        n, k, hi = int(rng.integers(0, 9000)), int(rng.integers(1, 300)), int(rng.integers(0, 65))
        if rng.random() < 0.3:
            k = int(rng.integers(1, 12))  # tight k: the count-up path settles it
        width = max(topk.GROUPS, -(-n // topk.GROUPS) * topk.GROUPS)
        dist = np.full((rows, width), 255, dtype=np.uint8)
        dist[:, :n] = rng.integers(0, hi + 1, size=(rows, n))
        if rng.random() < 0.3:  # one small value per group, spread out: counting up gives up
            dist[:, :n] = hi
            head = min(n, width // topk.GROUPS)
            dist[:, :head] = np.arange(head) % (hi + 1)
        D, P = topk.smallest_rows(dist, n, k, 64)
        refD, refP = ref_knn(dist[:, :n].astype(np.int64), k)
        np.testing.assert_array_equal(P, refP)
        np.testing.assert_array_equal(D, refD)


def test_code_ties_rank_a_coarse_class_by_the_whole_code():
    # A 16-bit coarse segment with two values: a coarse query ties with about half the index.
    rng = np.random.default_rng(5)
    codes = np.where(rng.random((500, 64)) < 0.5, 1.0, -1.0)
    codes[:, :16] = np.where(rng.random((500, 1)) < 0.5, 1.0, -1.0)
    index = HammingIndex(64, get_layout("mg64"))
    index.add(codes, ids=np.arange(500)[::-1] * 3)  # ids unlike positions
    words = index.codes
    for qi in (0, 250, 499):
        coarse = ref_distances(words[qi:qi + 1], words, 64, slice(0, 16))[0]
        full = ref_distances(words[qi:qi + 1], words, 64)[0]
        for k in (1, 10, 300, 500, 600):
            D, I = index.search(codes[qi:qi + 1], k, granularity="coarse", ties="code")
            ref = np.lexsort((np.arange(500), full, coarse))[:k]  # brute force over every code
            got = min(k, 500)
            np.testing.assert_array_equal(D[0, :got], coarse[ref])
            np.testing.assert_array_equal(I[0, :got], index.ids[ref])
            assert (I[0, got:] == -1).all()
        D, I = index.search(codes[qi:qi + 1], 5, granularity="coarse", ties="code")
        assert I[0, 0] == index.ids[qi]  # the photo itself comes first, not the first-inserted tie
    insertion = index.search(codes[499:500], 5, granularity="coarse")[1]
    assert insertion[0, 0] != index.ids[499]  # FAISS's rule: the earliest-inserted ties
    with pytest.raises(ValueError, match="ties"):
        index.search(codes[:1], 5, ties="nearest")
    with pytest.raises(ValueError, match="ties='code' goes with"):
        index.search(codes[:1], 5, granularity="coarse", ties="code", method="mih")
