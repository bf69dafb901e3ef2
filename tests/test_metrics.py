"""Metrics against hand-computed cases and brute-force Python references."""

import doctest
import itertools
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mghash_tf.core import metrics
from mghash_tf.evaluation.baselines import ITQ
from mghash_tf.core.index.packing import pack_bits
from mghash_tf.core.metrics import (average_precision, mean_average_precision, mean_retrieval_time,
                               pr_curve, precision_at_k, precision_within_radius, recall_at_k,
                               retrieval_report)

REPO = Path(__file__).resolve().parents[1]

# The docstring example: query [+,+,+,+] of class 0; database at Hamming distances 0, 1, 1, 4.
Q = np.array([[1, 1, 1, 1]])
QL = np.array([0])
DB = np.array([[1, 1, 1, 1], [-1, 1, 1, 1], [1, -1, 1, 1], [-1, -1, -1, -1]])
DL = np.array([0, 1, 0, 0])


# ---- brute-force references: explicit loops, one query at a time ---------------------------

def bf_hamming(q, db):
    return [[sum((a > 0) != (b > 0) for a, b in zip(x, y)) for y in db] for x in q]


def bf_relevant(ql, dl):
    if np.ndim(ql) == 1:
        return [[bool(a == b) for b in dl] for a in ql]
    return [[any(x and y for x, y in zip(a, b)) for b in dl] for a in ql]


def bf_scores(ranked_rel, k, total):
    """AP (retrieved), AP (recall), P@k, R@k of one ranked relevance list."""
    k = min(k, len(ranked_rel))
    hits, s = 0, 0.0
    for i, r in enumerate(ranked_rel[:k], start=1):
        if r:
            hits += 1
            s += hits / i
    return (s / hits if hits else 0.0, s / min(k, total) if total else 0.0, hits / k,
            hits / total if total else 0.0)


def bf_stable(dist, rel, k):
    order = sorted(range(len(dist)), key=lambda j: (dist[j], j))
    return bf_scores([rel[j] for j in order], k, sum(rel))


def bf_tied_exact(dist, rel, k):
    """Mean of the scores over every ordering of every tie group (tiny cases only)."""
    groups = [[j for j in range(len(dist)) if dist[j] == v] for v in sorted(set(dist))]
    scores = [bf_scores([rel[j] for g in perm for j in g], k, sum(rel))
              for perm in itertools.product(*[itertools.permutations(g) for g in groups])]
    return np.mean(scores, axis=0)


def random_case(rng, nq, ndb, bits, classes, multi_hot=False):
    q = rng.choice([-1, 1], size=(nq, bits))
    db = rng.choice([-1, 1], size=(ndb, bits))
    if multi_hot:
        ql = (rng.random((nq, classes)) < 0.3).astype(np.int64)
        dl = (rng.random((ndb, classes)) < 0.3).astype(np.int64)
    else:
        # Class ids up to classes + 1 while the database has 0..classes-1: some queries have
        # no relevant item at all.
        ql, dl = rng.integers(0, classes + 2, nq), rng.integers(0, classes, ndb)
    return q, db, ql, dl


# ---- hand-computed ---------------------------------------------------------------------------

def test_hand_example_stable():
    # Stable order: d0 (rel), d1, d2 (rel), d3 (rel): precisions 1/1, 2/3, 3/4 -> 29/36.
    assert mean_average_precision(Q, DB, QL, DL) == pytest.approx(29 / 36)
    # Top 2 = d0, d1: one hit at rank 1 -> retrieved: 1/1; recall: 1/min(2, 3) = 1/2.
    assert mean_average_precision(Q, DB, QL, DL, k=2) == pytest.approx(1.0)
    assert mean_average_precision(Q, DB, QL, DL, k=2, normalize="recall") == pytest.approx(0.5)
    assert precision_at_k(Q, DB, QL, DL, k=2) == pytest.approx(1 / 2)
    assert recall_at_k(Q, DB, QL, DL, k=2) == pytest.approx(1 / 3)


def test_hand_example_tie_aware():
    # d1, d2 tie at distance 1: second hit scores 2/3 or 2/2 -> (1 + 5/6 + 3/4) / 3 = 31/36.
    assert mean_average_precision(Q, DB, QL, DL, tie_aware=True) == pytest.approx(31 / 36)
    # k=2, recall: rank 2 is d2 with prob. 1/2 -> (1 + 1/2 * 2/2) / 2 = 3/4.
    assert mean_average_precision(Q, DB, QL, DL, k=2, normalize="recall",
                                  tie_aware=True) == pytest.approx(3 / 4)
    # k=2, retrieved: 1 hit (AP 1/1) or 2 hits (AP (1 + 1) / 2): 1 either way.
    assert mean_average_precision(Q, DB, QL, DL, k=2, tie_aware=True) == pytest.approx(1.0)
    # P@2 = (1 + 1/2) / 2 = 3/4; R@2 = 1.5 / 3 = 1/2.
    assert precision_at_k(Q, DB, QL, DL, k=2, tie_aware=True) == pytest.approx(3 / 4)
    assert recall_at_k(Q, DB, QL, DL, k=2, tie_aware=True) == pytest.approx(1 / 2)


def test_hand_example_radius():
    curve = pr_curve(Q, DB, QL, DL)
    # Radius 0: {d0}: P 1, R 1/3. Radii 1-3: {d0, d1, d2}: P 2/3, R 2/3. Radius 4: all: 3/4, 1.
    np.testing.assert_allclose(curve["precision"], [1, 2 / 3, 2 / 3, 2 / 3, 3 / 4])
    np.testing.assert_allclose(curve["recall"], [1 / 3, 2 / 3, 2 / 3, 2 / 3, 1])
    assert precision_within_radius(Q, DB, QL, DL, radius=2) == pytest.approx(2 / 3)
    assert precision_within_radius(Q, DB, QL, DL, radius=99) == pytest.approx(3 / 4)


def test_last_database_item_counts():
    # Only relevant item is the last one, farthest: rank 4 -> AP 1/4 (the [0:-1] bug gives 0).
    assert mean_average_precision(Q, DB, QL, np.array([1, 1, 1, 0])) == pytest.approx(1 / 4)


def test_docstring_examples_run():
    result = doctest.testmod(metrics, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 2 and result.failed == 0


# ---- brute force on random inputs ------------------------------------------------------------

@pytest.mark.parametrize("seed,multi_hot", [(0, False), (1, False), (2, True)])
@pytest.mark.parametrize("k", [None, 1, 5, 23, 40])
def test_stable_matches_brute_force(seed, multi_hot, k):
    rng = np.random.default_rng(seed)
    q, db, ql, dl = random_case(rng, 9, 23, 8, 3, multi_hot)
    dist, rel = bf_hamming(q, db), bf_relevant(ql, dl)
    ref = np.array([bf_stable(dist[i], rel[i], k or 23) for i in range(len(q))])
    has = np.array([any(r) for r in rel])
    report = retrieval_report(q, db, ql, dl, map_ks=(k,), ks=(k or 23,), radius=None,
                              per_query=True, chunk_size=4)
    ap = report["per_query_ap"][metrics._key("map", k)]
    np.testing.assert_allclose(ap[has], ref[has, 0])
    assert np.isnan(ap[~has]).all()
    recall_ap = average_precision(q, db, ql, dl, k=k, normalize="recall")
    np.testing.assert_allclose(recall_ap[has], ref[has, 1])
    assert report[f"precision@{k or 23}"] == pytest.approx(ref[has, 2].mean())
    assert report[f"recall@{k or 23}"] == pytest.approx(ref[has, 3].mean())


@pytest.mark.parametrize("k", [None, 1, 2, 3, 4, 6])
@pytest.mark.parametrize("normalize", ["retrieved", "recall"])
def test_tie_aware_matches_all_orderings(k, normalize):
    rng = np.random.default_rng(3)
    # 7 items, 2-bit codes: groups of up to 7 tied items; every ordering enumerated.
    q, db, ql, dl = random_case(rng, 6, 7, 2, 2)
    dist, rel = bf_hamming(q, db), bf_relevant(ql, dl)
    ap = average_precision(q, db, ql, dl, k=k, normalize=normalize, tie_aware=True)
    column = 0 if normalize == "retrieved" else 1
    for i in range(len(q)):
        if any(rel[i]):
            assert ap[i] == pytest.approx(bf_tied_exact(dist[i], rel[i], k or 7)[column])


def test_tie_aware_precision_recall_match_all_orderings():
    rng = np.random.default_rng(4)
    q, db, ql, dl = random_case(rng, 6, 7, 2, 2)
    dist, rel = bf_hamming(q, db), bf_relevant(ql, dl)
    has = [i for i in range(len(q)) if any(rel[i])]
    for k in (1, 3, 5):
        ref = np.array([bf_tied_exact(dist[i], rel[i], k) for i in has])
        assert precision_at_k(q, db, ql, dl, k=k, tie_aware=True) == pytest.approx(ref[:, 2].mean())
        assert recall_at_k(q, db, ql, dl, k=k, tie_aware=True) == pytest.approx(ref[:, 3].mean())


def test_all_tied():
    # Every code equal: stable = database order; tie-aware = mean over all 6! orderings.
    q, db = np.ones((1, 8)), np.ones((6, 8))
    ql, dl = np.array([1]), np.array([0, 1, 0, 1, 1, 0])
    # Stable: relevant at ranks 2, 4, 5 -> (1/2 + 2/4 + 3/5) / 3 = 8/15.
    assert mean_average_precision(q, db, ql, dl) == pytest.approx(8 / 15)
    exact = bf_tied_exact([0] * 6, list(dl == 1), 6)[0]
    assert mean_average_precision(q, db, ql, dl, tie_aware=True) == pytest.approx(exact)
    for k in (1, 2, 4):
        exact = bf_tied_exact([0] * 6, list(dl == 1), k)
        assert mean_average_precision(q, db, ql, dl, k=k, tie_aware=True) == pytest.approx(exact[0])


def test_tie_aware_monte_carlo_larger_case():
    rng = np.random.default_rng(5)
    # 60 items on 3-bit codes: groups of ~8 to ~20, too many orderings to enumerate.
    q, db, ql, dl = random_case(rng, 1, 60, 3, 3)
    ql[:] = dl[0]
    dist = np.array(bf_hamming(q, db)[0])
    rel = dl == ql[0]
    samples = []
    for _ in range(4000):
        order = np.lexsort((rng.random(len(dist)), dist))
        samples.append([bf_scores(list(rel[order]), k, rel.sum())[0] for k in (60, 15)])
    samples = np.array(samples)
    tolerance = 5 * samples.std(axis=0) / np.sqrt(len(samples))
    for column, k in enumerate((None, 15)):
        got = mean_average_precision(q, db, ql, dl, k=k, tie_aware=True)
        assert abs(got - samples[:, column].mean()) < tolerance[column]


def test_pr_curve_matches_brute_force():
    rng = np.random.default_rng(6)
    q, db, ql, dl = random_case(rng, 8, 30, 8, 3)
    dist, rel = bf_hamming(q, db), bf_relevant(ql, dl)
    has = [i for i in range(len(q)) if any(rel[i])]
    curve = pr_curve(q, db, ql, dl, chunk_size=3)
    for t in range(9):
        precision, recall = [], []
        for i in has:
            inside = [j for j in range(30) if dist[i][j] <= t]
            good = sum(rel[i][j] for j in inside)
            precision.append(good / len(inside) if inside else 0.0)
            recall.append(good / sum(rel[i]))
        assert curve["precision"][t] == pytest.approx(np.mean(precision))
        assert curve["recall"][t] == pytest.approx(np.mean(recall))


# ---- input forms and options -------------------------------------------------------------------

def test_code_forms_agree():
    rng = np.random.default_rng(7)
    real = rng.standard_normal((10, 64))
    db_real = rng.standard_normal((40, 64))
    ql, dl = rng.integers(0, 3, 10), rng.integers(0, 3, 40)
    forms = [(real, db_real), (np.sign(real), np.sign(db_real)),
             ((real > 0).astype(np.uint8), (db_real > 0).astype(np.uint8)),
             (pack_bits(real), pack_bits(db_real))]
    for tie_aware in (False, True):
        values = [retrieval_report(a, b, ql, dl, map_ks=(None, 7), ks=(5,), curve=True,
                                   tie_aware=tie_aware) for a, b in forms]
        for v in values[1:]:
            for key in ("map", "map@7", "precision@5", "recall@5", "precision@r2"):
                assert v[key] == values[0][key]


def test_width_not_multiple_of_8():
    rng = np.random.default_rng(8)
    q, db, ql, dl = random_case(rng, 5, 20, 12, 2)
    dist, rel = bf_hamming(q, db), bf_relevant(ql, dl)
    has = [i for i in range(5) if any(rel[i])]
    expected = np.mean([bf_stable(dist[i], rel[i], 20)[0] for i in has])
    assert mean_average_precision(q, db, ql, dl) == pytest.approx(expected)
    assert len(pr_curve(q, db, ql, dl)["precision"]) == 13


def test_k_beyond_database_and_chunking():
    rng = np.random.default_rng(9)
    q, db, ql, dl = random_case(rng, 11, 17, 8, 3)
    full = mean_average_precision(q, db, ql, dl)
    assert mean_average_precision(q, db, ql, dl, k=1000) == pytest.approx(full)
    assert mean_average_precision(q, db, ql, dl, k=1000, normalize="recall") == pytest.approx(full)
    for chunk in (1, 3, 100):
        assert mean_average_precision(q, db, ql, dl, chunk_size=chunk) == pytest.approx(full)
    # P@1000 on 17 items: the cut is clipped to 17, so it is the mean relevant fraction.
    report = retrieval_report(q, db, ql, dl, ks=(1000,))
    has = np.array([(dl == c).any() for c in ql])
    assert report["precision@1000"] == pytest.approx(np.mean([(dl == c).mean() for c in ql[has]]))


def test_no_relevant_policy():
    q, db = np.ones((3, 8)), np.ones((4, 8))
    ql, dl = np.array([0, 5, 1]), np.array([0, 1, 1, 0])
    # Query 0: relevant at ranks 1, 4 -> (1 + 2/4)/2 = 3/4. Query 2: ranks 2, 3 ->
    # (1/2 + 2/3)/2 = 7/12. Query 1 has none.
    report = retrieval_report(q, db, ql, dl, per_query=True)
    assert report["num_no_relevant"] == 1 and report["num_queries"] == 3
    assert report["map"] == pytest.approx((3 / 4 + 7 / 12) / 2)
    assert mean_average_precision(q, db, ql, dl, no_relevant="zero") == pytest.approx(
        (3 / 4 + 7 / 12) / 3)
    with pytest.raises(ValueError, match="No query has a relevant"):
        mean_average_precision(q, db, np.array([7, 8, 9]), dl)


def test_float_metrics_match_brute_force():
    rng = np.random.default_rng(10)
    q, db = rng.standard_normal((6, 5)), rng.standard_normal((25, 5))
    db[7] = db[3]  # an exact tie
    ql, dl = rng.integers(0, 3, 6), rng.integers(0, 3, 25)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    rel = bf_relevant(ql, dl)
    has = [i for i in range(6) if any(rel[i])]
    for metric, dist in (("cosine", -(unit(q) @ unit(db).T)),
                         ("l2", ((q[:, None] - db[None]) ** 2).sum(-1))):
        expected = np.mean([bf_stable(list(dist[i]), rel[i], 10)[0] for i in has])
        got = mean_average_precision(q, db, ql, dl, k=10, metric=metric)
        assert got == pytest.approx(expected)
    dist = -(unit(q) @ unit(db).T)
    expected = np.mean([bf_tied_exact(list(dist[i]), rel[i], 25)[0] for i in has])
    tied = mean_average_precision(q, db, ql, dl, metric="cosine", tie_aware=True)
    assert tied == pytest.approx(expected)


@pytest.mark.parametrize("kwargs,message", [
    ({"normalize": "all"}, "`normalize` must be one of"),
    ({"k": 0}, "`k` must be a positive integer"),
    ({"metric": "jaccard"}, "`metric` must be one of"),
    ({"chunk_size": 0}, "`chunk_size` must be a positive integer"),
    ({"no_relevant": "skip"}, "`no_relevant` must be one of"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mean_average_precision(Q, DB, QL, DL, **kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="packed"):
        mean_average_precision(pack_bits(np.ones((1, 64))), np.ones((4, 64)), QL, DL)
    with pytest.raises(ValueError, match="same width"):
        mean_average_precision(Q, np.ones((4, 8)), QL, DL)
    with pytest.raises(ValueError, match="db_labels"):
        mean_average_precision(Q, DB, QL, DL[:3])
    with pytest.raises(ValueError, match="multi-hot must hold only 0 and 1"):
        mean_average_precision(Q, DB, np.array([[2, 0]]), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="metric='hamming'"):
        retrieval_report(Q * 1.0, DB * 1.0, QL, DL, metric="cosine", curve=True)
    with pytest.raises(ValueError, match="radius"):
        precision_within_radius(Q, DB, QL, DL, radius=-1)


# ---- timing helper and the device-side import rule ------------------------------------------

def test_mean_retrieval_time_calls_and_lower_bound():
    calls = []

    def search(batch):
        calls.append(len(batch))
        time.sleep(0.002)

    timing = mean_retrieval_time(search, np.zeros((5, 8)), repeats=2, warmup=1, batch_size=2)
    assert calls == [2, 2, 1] * 3  # 1 warm-up + 2 timed passes over batches of 2, 2, 1
    # Each batch sleeps 2 ms, split over at most 2 queries: at least 1 ms per query.
    assert timing["median"] >= 0.001 and timing["num_queries"] == 5
    with pytest.raises(ValueError, match="repeats"):
        mean_retrieval_time(search, np.zeros((5, 8)), repeats=0)


def test_imports_without_tensorflow():
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('tensorflow', 'keras'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import numpy as np\n"
            "from mghash_tf.core import metrics; from mghash_tf.evaluation import baselines\n"
            "x = np.random.default_rng(0).standard_normal((50, 16))\n"
            "codes = baselines.ITQ(8).fit(x).encode(x)\n"
            "labels = np.arange(50) % 3\n"
            "print(metrics.mean_average_precision(codes, codes, labels, labels))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    x = np.random.default_rng(0).standard_normal((50, 16))
    codes = ITQ(8).fit(x).encode(x)
    labels = np.arange(50) % 3
    assert float(out.stdout) == mean_average_precision(codes, codes, labels, labels)


# ---- float ranking and both tie rules in one pass ---------------------------------------------

def bf_tied_groups(dist, rel, k):
    """Tie-aware AP (retrieved, recall), P@k, R@k: every placement of each group's relevant items.

    Groups are independent (the items and relevant items ahead of a group do not depend on the
    order inside earlier groups), so each group's placements are enumerated on their own, and
    only the group cut by ``k`` (which sets the retrieved count) is averaged jointly.
    """
    k, total = min(k, len(dist)), sum(rel)
    ahead, ahead_rel, full_sum, got, straddle = 0, 0, 0.0, 0, None
    for value in sorted(set(dist)):
        members = [j for j in range(len(dist)) if dist[j] == value]
        n, r = len(members), sum(rel[j] for j in members)
        placements = []
        for spots in itertools.combinations(range(n), r):
            inside = [p for p in spots if ahead + p < k]
            placements.append((sum((ahead_rel + i + 1) / (ahead + p + 1)
                                   for i, p in enumerate(inside)), len(inside)))
        if ahead + n <= k:
            full_sum += np.mean([s for s, _ in placements])
            got += r
        elif ahead < k:
            straddle = placements
        ahead, ahead_rel = ahead + n, ahead_rel + r
    straddle = straddle or [(0.0, 0)]
    retrieved = np.mean([(full_sum + s) / (got + j) if got + j else 0.0 for s, j in straddle])
    expected_sum = full_sum + np.mean([s for s, _ in straddle])
    hits = got + np.mean([j for _, j in straddle])
    return (retrieved, expected_sum / min(k, total) if total else 0.0, hits / k,
            hits / total if total else 0.0)


def exact_float_case(rng, nq, ndb, metric, multi_hot, ties):
    """Embeddings whose float32 distances are exact (no round-off), so ties are known.

    Cosine: vectors with exactly 16 entries of +-1 among 24 (norm 4: unit rows hold +-1/4, dot
    products are sums of +-1/16), or 4 among 8 for many ties (norm 2). L2: small integers.
    ``ties``: "none" (distinct values where possible), "duplicates" (repeated database rows)
    or "many" (few distinct distances).
    """
    if metric == "cosine":
        dims, nonzero = (8, 4) if ties == "many" else (24, 16)

        def draw(num):
            x = np.zeros((num, dims))
            for row in x:
                row[rng.choice(dims, nonzero, replace=False)] = rng.choice([-1, 1], nonzero)
            return x
        q, db = draw(nq), draw(ndb)
    else:
        scale = 3 if ties == "many" else 1000
        q, db = rng.integers(-scale, scale + 1, (nq, 3)), rng.integers(-scale, scale + 1, (ndb, 3))
    if ties == "duplicates":
        db[ndb // 2:ndb // 2 + 4] = db[1]
        db[-3:] = db[2]
    if multi_hot:
        ql = (rng.random((nq, 3)) < 0.4).astype(np.int64)
        dl = (rng.random((ndb, 3)) < 0.4).astype(np.int64)
    else:
        ql, dl = rng.integers(0, 4, nq), rng.integers(0, 3, ndb)
    return q, db, ql, dl


def exact_distances(q, db, metric):
    if metric == "cosine":
        unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
        return -(unit(q) @ unit(db).T)
    return ((q[:, None].astype(np.float64) - db[None]) ** 2).sum(-1)


@pytest.mark.parametrize("metric,ties", [("cosine", "duplicates"), ("cosine", "many"),
                                         ("l2", "none"), ("l2", "duplicates"), ("l2", "many")])
@pytest.mark.parametrize("multi_hot", [False, True])
@pytest.mark.parametrize("normalize", ["retrieved", "recall"])
def test_float_both_rules_match_brute_force(metric, ties, multi_hot, normalize):
    rng = np.random.default_rng(11)
    q, db, ql, dl = exact_float_case(rng, 7, 26, metric, multi_hot, ties)
    dist, rel = exact_distances(q, db, metric), bf_relevant(ql, dl)
    # Ties present as asked, in groups small enough to enumerate.
    largest = max(np.unique(row, return_counts=True)[1].max() for row in dist)
    assert (largest == 1) == (ties == "none") and largest <= 12
    has = np.array([any(r) for r in rel])
    ks = (None, 1, 5, 13)
    report = retrieval_report(q, db, ql, dl, map_ks=ks, ks=(1, 5, 13), radius=None,
                              normalize=normalize, metric=metric, tie_aware="both",
                              per_query=True, chunk_size=3)
    column = 0 if normalize == "retrieved" else 1
    for k in ks:
        stable = np.array([bf_stable(list(dist[i]), rel[i], k or 26) for i in range(7)])
        tied = np.array([bf_tied_groups(list(dist[i]), rel[i], k or 26) for i in range(7)])
        for ref, suffix in ((stable, ""), (tied, "_tie_aware")):
            ap = report["per_query_ap"][metrics._key("map", k) + suffix]
            np.testing.assert_allclose(ap[has], ref[has, column], rtol=1e-12)
            assert np.isnan(ap[~has]).all()
            if k is not None:
                assert report[f"precision@{k}{suffix}"] == pytest.approx(ref[has, 2].mean(), rel=1e-12)
                assert report[f"recall@{k}{suffix}"] == pytest.approx(ref[has, 3].mean(), rel=1e-12)


def test_tied_groups_reference_matches_all_orderings():
    # The group-wise reference above against the plain enumeration of item orders.
    dist = [0, 1, 1, 1, 2, 2, 3, 3, 3, 3]
    rel = [False, True, False, True, True, False, True, True, False, False]
    for k in (1, 2, 3, 5, 7, 10):
        np.testing.assert_allclose(bf_tied_groups(dist, rel, k), bf_tied_exact(dist, rel, k))


@pytest.mark.parametrize("metric", ["hamming", "cosine", "l2"])
@pytest.mark.parametrize("duplicates", [False, True])
@pytest.mark.parametrize("multi_hot", [False, True])
def test_both_equals_separate_calls(metric, duplicates, multi_hot):
    rng = np.random.default_rng(12)
    q, db = rng.standard_normal((37, 12)), rng.standard_normal((300, 12))
    if duplicates:
        db[50:60] = db[3]
        q[:5] = db[3]
    if multi_hot:
        ql = (rng.random((37, 4)) < 0.3).astype(np.int64)
        dl = (rng.random((300, 4)) < 0.3).astype(np.int64)
    else:
        ql, dl = rng.integers(0, 6, 37), rng.integers(0, 5, 300)
    options = dict(map_ks=(None, 10, 299), ks=(1, 50), metric=metric, per_query=True,
                   radius=2 if metric == "hamming" else None, chunk_size=8)
    both = retrieval_report(q, db, ql, dl, tie_aware="both", **options)
    assert both["tie_aware"] == "both"
    for tie_aware, suffix in ((False, ""), (True, "_tie_aware")):
        single = retrieval_report(q, db, ql, dl, tie_aware=tie_aware, **options)
        for key in ("map", "map@10", "map@299", "precision@1", "recall@1", "precision@50",
                    "recall@50"):
            assert both[key + suffix] == single[key]
            np.testing.assert_array_equal(both["per_query_ap"].get(key + suffix),
                                          single["per_query_ap"].get(key))
    if metric == "hamming":
        assert both["precision@r2"] == single["precision@r2"]


def test_sorted_keys_give_stable_order_of_floats():
    from mghash_tf.core import ranking

    rng = np.random.default_rng(13)
    special = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, np.finfo(np.float32).max,
                        -np.finfo(np.float32).max, 1.0, -1.0], np.float32)
    dist = rng.choice(np.concatenate([special, rng.standard_normal(6).astype(np.float32)]),
                      size=(20, 200))
    keys = ranking._sorted_keys(dist.copy(), np.empty(dist.shape, np.int64))
    distance, index = ranking._halves(keys)
    np.testing.assert_array_equal(index, np.argsort(dist, axis=1, kind="stable"))
    ranked = np.sort(dist, axis=1)
    np.testing.assert_array_equal(distance[:, 1:] == distance[:, :-1], ranked[:, 1:] == ranked[:, :-1])
    np.testing.assert_array_equal(keys & 0xFFFFFFFF, index)  # the index is the low half


def test_float_all_tied_and_single_item():
    # Every distance equal (zero query): stable = database order, tie-aware = all orderings.
    q, db = np.zeros((1, 4)), np.ones((6, 4))
    ql, dl = np.array([1]), np.array([0, 1, 0, 1, 1, 0])
    report = retrieval_report(q, db, ql, dl, ks=(2,), radius=None, metric="cosine",
                              tie_aware="both")
    exact = bf_tied_exact([0] * 6, list(dl == 1), 6)
    assert report["map"] == pytest.approx(8 / 15)  # ranks 2, 4, 5: (1/2 + 2/4 + 3/5) / 3
    assert report["map_tie_aware"] == pytest.approx(exact[0])
    assert report["precision@2_tie_aware"] == pytest.approx(bf_tied_exact([0] * 6, list(dl == 1), 2)[2])
    one = retrieval_report(q + 1, db[:1], ql, dl[1:2], ks=(1,), radius=None, metric="l2",
                           tie_aware="both")
    assert one["map"] == one["map_tie_aware"] == 1.0


def test_tie_rule_options():
    with pytest.raises(ValueError, match="`tie_aware` must be True, False or 'both'"):
        retrieval_report(Q, DB, QL, DL, tie_aware="random")
    with pytest.raises(ValueError, match="returns one number"):
        mean_average_precision(Q, DB, QL, DL, tie_aware="both")
    with pytest.raises(ValueError, match="float32 range"):
        mean_average_precision(Q * 1e19, DB * 1.0, QL, DL, metric="l2")
    report = retrieval_report(Q, DB, QL, DL, tie_aware="both", ks=(2,))
    # The docstring example: 29/36 stable, 31/36 tie-aware; P@2 1/2 and 3/4.
    assert (report["map"], report["map_tie_aware"]) == (pytest.approx(29 / 36), pytest.approx(31 / 36))
    assert (report["precision@2"], report["precision@2_tie_aware"]) == (0.5, 0.75)
