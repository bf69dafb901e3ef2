import math

import numpy as np
import pytest

from mghash_tf.model import losses
from mghash_tf.model.hashing_loss import HashingLoss, parse_terms


def _np(x):
    return np.asarray(x, dtype=np.float32)


def test_similarity_ids_and_multi_hot():
    np.testing.assert_array_equal(
        losses.similarity_matrix(np.array([0, 0, 1])), [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    )
    # items 0 and 2 share no label; item 1 shares one with each
    multi = np.array([[1, 0], [1, 1], [0, 1]])
    np.testing.assert_array_equal(losses.similarity_matrix(multi), [[1, 1, 0], [1, 1, 1], [0, 1, 1]])


def test_margin_loss_perfect_codes_zero():
    h = _np([[1, 1, 1, 1], [1, 1, 1, 1], [-1, -1, -1, -1]])
    s = losses.similarity_matrix(np.array([0, 0, 1]))
    assert float(losses.pairwise_margin_loss(h, s)) == pytest.approx(0.0, abs=1e-6)


def test_margin_loss_all_wrong_hand_value():
    # labels [0,0,1]; h0=+1s, h1=-1s, h2=+1s (K=4).
    # d = ||hi-hj||^2/16: (0,1) similar d=1 -> 1; (0,2) dissimilar d=0 -> 0.5; (1,2) d=1 -> 0.
    # 6 ordered pairs: 2 * (1 + 0.5 + 0) / 6 = 0.5
    h = _np([[1] * 4, [-1] * 4, [1] * 4])
    s = losses.similarity_matrix(np.array([0, 0, 1]))
    assert float(losses.pairwise_margin_loss(h, s)) == pytest.approx(0.5, abs=1e-6)


def test_margin_behaviour_for_dissimilar_pairs():
    # one differing bit of 4 -> d = 4/16 = 0.25 < margin 0.5 -> 0.25; three bits -> 0.75 -> 0
    s = np.array([[1, 0], [0, 1]], dtype=np.float32)
    near = _np([[1, 1, 1, 1], [1, 1, 1, -1]])
    far = _np([[1, 1, 1, 1], [1, -1, -1, -1]])
    assert float(losses.pairwise_margin_loss(near, s)) == pytest.approx(0.25, abs=1e-6)
    assert float(losses.pairwise_margin_loss(far, s)) == pytest.approx(0.0, abs=1e-6)


def test_dpsh_hand_values():
    s = losses.similarity_matrix(np.array([0, 0, 1]))
    zeros = np.zeros((3, 8), np.float32)
    # theta = 0 everywhere -> softplus(0) = ln 2 for every pair
    assert float(losses.dpsh_loss(zeros, s)) == pytest.approx(math.log(2), abs=1e-6)
    perfect = _np([[1] * 8, [1] * 8, [-1] * 8])
    # scale 8/K = 1 -> theta = ±8 with the right sign: softplus(-8) = ln(1 + e^-8) per pair
    assert float(losses.dpsh_loss(perfect, s)) == pytest.approx(math.log1p(math.exp(-8)), rel=1e-4)
    wrong = -perfect * _np([[1], [-1], [-1]])  # h0=-1s, h1=+1s, h2=+1s: all wrong
    # similar (0,1): theta=-8 -> softplus(-8)+8; dissimilar (1,2): theta=8 -> softplus(8);
    # (0,2): theta=-8 -> softplus(-8). Mean over 3 unordered pairs.
    expected = (math.log1p(math.exp(-8)) + 8 + math.log1p(math.exp(8)) + math.log1p(math.exp(-8))) / 3
    assert float(losses.dpsh_loss(wrong, s)) == pytest.approx(expected, rel=1e-5)


def test_quantization_and_balance_hand_values():
    # (|0.5|-1)^2 = 0.25, (|-1|-1)^2 = 0 -> mean 0.125
    assert float(losses.quantization_loss(_np([[0.5, -1.0]]))) == pytest.approx(0.125)
    # bit means [1, 0] -> (1 + 0) / 2
    assert float(losses.balance_loss(_np([[1, 1], [1, -1]]))) == pytest.approx(0.5)


def test_hadamard_and_centres_are_far_apart():
    h = losses.hadamard(8)
    np.testing.assert_array_equal(h @ h.T, 8 * np.eye(8))
    c = losses.hash_centers(10, 16)
    dist = (16 - c @ c.T) / 2
    off = dist[~np.eye(10, dtype=bool)]
    assert off.min() >= 8  # Hadamard rows and negations: distance 8 or 16 at K=16
    c48 = losses.hash_centers(10, 48, seed=3)  # Paley order 48 (47 prime, 3 mod 4)
    d48 = ((48 - c48 @ c48.T) / 2)[~np.eye(10, dtype=bool)]
    assert c48.shape == (10, 48) and d48.min() == 24
    c36 = losses.hash_centers(10, 36, seed=3)  # no construction: seeded random draws
    assert c36.shape == (10, 36) and np.array_equal(c36, losses.hash_centers(10, 36, seed=3))
    with pytest.raises(ValueError, match="Hadamard construction"):
        losses.hadamard(36)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 12, 20, 24, 40, 44, 48, 96])
def test_hadamard_orders_are_orthogonal(n):
    h = losses.hadamard(n)
    assert h.shape == (n, n) and set(np.unique(h)) <= {-1.0, 1.0}
    np.testing.assert_array_equal(h @ h.T, n * np.eye(n))


def test_center_loss_hand_values():
    centres = losses.hash_centers(2, 8)
    labels = np.array([0, 1])
    right = centres[labels]
    # p clipped to 1 - 1e-6 on the right side: -ln(1 - 1e-6) ~ 1e-6
    assert float(losses.center_loss(right, labels, centres)) == pytest.approx(0.0, abs=1e-5)
    # every bit on the wrong side: -ln(1e-6) = 13.8155
    assert float(losses.center_loss(-right, labels, centres)) == pytest.approx(13.8155, rel=1e-3)
    # multi-hot: class 0 alone targets centre 0
    assert float(losses.center_loss(right[:1], np.array([[1, 0]]), centres)) == pytest.approx(0, abs=1e-5)


def test_hashing_loss_uses_each_segments_label_level():
    loss = HashingLoss("mg64", {"fine": 4, "coarse": 2}, loss="csq", quantization_weight=0, balance_weight=0)
    coarse_c = losses.hash_centers(2, 16)
    fine_c = losses.hash_centers(4, 48)
    y = np.array([[0, 0], [1, 0], [2, 1], [3, 1]])
    perfect = np.concatenate([coarse_c[y[:, 1]], fine_c[y[:, 0]]], axis=1)
    assert float(loss(y, perfect)) == pytest.approx(0.0, abs=1e-4)
    # swap the coarse labels: only the 16-bit coarse segment is now wrong
    swapped = np.concatenate([coarse_c[1 - y[:, 1]], fine_c[y[:, 0]]], axis=1)
    assert float(loss(y, swapped)) > 5.0


@pytest.mark.parametrize("spec", ["csq", "margin", "dpsh", "csq+margin"])
def test_hashing_loss_terms_and_config_round_trip(spec):
    loss = HashingLoss("mg64", {"fine": 4, "coarse": 2}, loss=spec)
    clone = HashingLoss.from_config(loss.get_config())
    rng = np.random.default_rng(0)
    h = np.tanh(rng.normal(size=(6, 64))).astype(np.float32)
    y = np.stack([rng.integers(0, 4, 6), rng.integers(0, 2, 6)], axis=1)
    assert float(loss(y, h)) == pytest.approx(float(clone(y, h)), rel=1e-6)
    assert np.isfinite(float(loss(y, h)))


def test_bad_loss_specs():
    with pytest.raises(ValueError, match="terms"):
        parse_terms("csq+triplet")
    with pytest.raises(ValueError, match="label level 'coarse'"):
        HashingLoss("mg64", {"fine": 4}, loss="csq")
