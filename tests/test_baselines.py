"""Hashing baselines on toy data with known answers."""

import numpy as np
import pytest

from mghash_tf.evaluation.baselines import ITQ, LSH, PCASign, float_cosine, threshold_codes
from mghash_tf.core.metrics import mean_average_precision


def blobs(seed, n=200, dim=16, distance=20.0):
    """Two Gaussian blobs at -/+ distance/2 along axis 0 (noise scale <= 2): labels 0, 1."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    centres = np.zeros((2, dim))
    centres[:, 0] = -distance / 2, distance / 2
    # Anisotropic noise, so the principal axes are distinct and PCA is well defined.
    scale = np.linspace(2.0, 0.5, dim)
    return centres[labels] + rng.standard_normal((n, dim)) * scale, labels


@pytest.mark.parametrize("hasher", [ITQ(8, seed=1), PCASign(8), LSH(8, seed=1)])
def test_codes_are_int8_pm1(hasher):
    x, _ = blobs(0)
    codes = hasher.fit(x).encode(x)
    assert codes.dtype == np.int8 and codes.shape == (200, 8)
    assert set(np.unique(codes)) <= {-1, 1}
    # Bits are the signs of the relaxed projections (bit = value > 0, as pack_bits reads it).
    np.testing.assert_array_equal(codes > 0, hasher.project(x) > 0)


def test_itq_separates_far_blobs():
    x, y = blobs(0)
    xq, yq = blobs(1, n=40)
    itq = ITQ(8, seed=0).fit(x)
    assert mean_average_precision(itq.encode(xq), itq.encode(x), yq, y) > 0.99


def test_itq_quantisation_error_below_pca_sign_and_non_increasing():
    x, _ = blobs(2)
    pca_error = PCASign(8).fit(x).quantization_error(x)
    errors = [ITQ(8, iterations=i, seed=3).fit(x).quantization_error(x) for i in range(0, 12, 2)]
    # Each ITQ step minimises ||B - VR||^2 over B then over R: the error can never go up.
    assert all(later <= earlier + 1e-9 for earlier, later in zip(errors, errors[1:]))
    assert ITQ(8, seed=3).fit(x).quantization_error(x) < pca_error


def test_itq_rotation_is_orthogonal():
    x, _ = blobs(3)
    itq = ITQ(8, seed=0).fit(x)
    np.testing.assert_allclose(itq.rotation_.T @ itq.rotation_, np.eye(8), atol=1e-10)
    np.testing.assert_allclose(itq.projection_.T @ itq.projection_, np.eye(8), atol=1e-10)


def test_pca_directions_match_svd_reference():
    x, _ = blobs(4)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    projection = PCASign(5).fit(x).projection_
    # Eigenvectors are unique up to sign: compare |cosine| of each column pair with 1.
    cosines = np.abs(np.sum(projection * vt[:5].T, axis=0))
    np.testing.assert_allclose(cosines, np.ones(5), atol=1e-8)


def test_lsh_is_deterministic_per_seed():
    x, _ = blobs(5)
    a = LSH(16, seed=7).fit(x).encode(x)
    b = LSH(16, seed=7).fit(x).encode(x)
    c = LSH(16, seed=8).fit(x).encode(x)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_lsh_hyperplanes_pass_through_the_mean():
    x, _ = blobs(6)
    lsh = LSH(8, seed=0).fit(x)
    np.testing.assert_allclose(lsh.project(x.mean(axis=0, keepdims=True)), 0.0, atol=1e-9)


def test_float_cosine_and_l2_upper_bounds():
    x, y = blobs(7)
    xq, yq = blobs(8, n=40)
    unit = float_cosine(x)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(float_cosine(np.zeros((2, 3))), np.zeros((2, 3)))
    assert mean_average_precision(xq, x, yq, y, metric="l2") == pytest.approx(1.0)
    cosine = mean_average_precision(xq, x, yq, y, metric="cosine")
    assert cosine > 0.99
    # Cosine search ignores row norms, so pre-normalised rows give the same answer.
    assert mean_average_precision(float_cosine(xq), unit, yq, y, metric="cosine") == \
        pytest.approx(cosine)


def test_threshold_codes():
    # 0.5 is not > 0.5, so it maps to -1 like sign(0) in pack_bits.
    codes = threshold_codes(np.array([[0.2, 0.5, 0.7], [0.9, 0.51, 0.0]]))
    np.testing.assert_array_equal(codes, [[-1, -1, 1], [1, 1, -1]])
    assert codes.dtype == np.int8
    np.testing.assert_array_equal(threshold_codes([[0.3, 0.6]], threshold=0.25), [[1, 1]])


@pytest.mark.parametrize("make,message", [
    (lambda: PCASign(20).fit(np.zeros((30, 16))), "must be <= the feature dimension \\(16\\)"),
    (lambda: ITQ(20).fit(np.zeros((30, 16))), "Received: num_bits=20"),
    (lambda: LSH(0), "`num_bits` must be a positive integer"),
    (lambda: ITQ(8, iterations=-1), "`iterations`"),
    (lambda: ITQ(8).encode(np.zeros((2, 16))), "not fitted"),
    (lambda: LSH(4).fit(np.ones((5, 6))).encode(np.ones((5, 7))), "6 columns"),
    (lambda: LSH(4).fit(np.full((5, 6), np.nan)), "finite"),
    (lambda: threshold_codes([[0.1]], threshold=2.0), "`threshold`"),
])
def test_bad_input(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_sigmoid_classifier_separates_labelled_clusters():
    from mghash_tf.evaluation.baselines import SigmoidClassifier

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 5)) * 4
    labels = np.repeat(np.arange(3), 40)
    features = centres[labels] + rng.normal(size=(120, 5))
    head = SigmoidClassifier(3).fit(features, labels)
    codes = head.encode(features)
    assert codes.shape == (120, 3) and set(np.unique(codes)) <= {-1, 1}
    # One bit per class: the own class's bit is on for (nearly) every item.
    assert np.mean(codes[np.arange(120), labels] == 1) > 0.95
    with pytest.raises(ValueError, match="labels"):
        head.fit(features, labels[:-1])
