"""fast_cnn: patch whitening from data, Dirac initialisation, stage shapes, TFLite int8 export."""

import keras
import numpy as np
import pytest

from mghash_tf.model import fast_cnn as fc
from mghash_tf.model.layers import PatchWhitening
from mghash_tf.model.network import build_model


def _brute_covariance(images, size):
    """Patch covariance by explicit loops: every (y, x) window, features ordered (dy, dx, c)."""
    rows = []
    n, h, w, c = images.shape
    for i in range(n):
        for y in range(h - size + 1):
            for x in range(w - size + 1):
                rows.append([images[i, y + dy, x + dx, ch] for dy in range(size) for dx in range(size)
                             for ch in range(c)])
    rows = np.array(rows)
    mean = rows.mean(axis=0)
    return rows, mean, (rows - mean).T @ (rows - mean) / (len(rows) - 1)


def test_patches_order_matches_a_conv_kernel():
    # 1 image, 2x2 pixels, 1 channel: the only 2x2 patch is [a, b, c, d] in (dy, dx) order.
    img = np.array([[[[1.0], [2.0]], [[3.0], [4.0]]]])
    np.testing.assert_array_equal(fc.patches(img, 2), [[1.0, 2.0, 3.0, 4.0]])


def test_whitening_weights_against_a_hand_computed_covariance():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 4, 4, 1))
    images = np.concatenate([base, 0.5 * base + 0.1 * rng.normal(size=base.shape)], axis=-1)  # correlated
    rows, mean, cov = _brute_covariance(images, 2)
    kernel, bias = fc.whitening_weights(images, 2, eps=1e-3)
    d = rows.shape[1]
    assert kernel.shape == (2, 2, 2, 2 * d) and bias.shape == (2 * d,)
    filters = kernel.reshape(d, 2 * d).astype(np.float64)
    np.testing.assert_allclose(filters[:, d:], -filters[:, :d])
    eigenvalues = np.linalg.eigvalsh(cov)
    eps = 1e-3 * np.mean(np.diag(cov))
    # Whitened outputs: covariance diag(lambda / (lambda + eps)), zero mean.
    out = rows @ filters[:, :d] + bias[:d]
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(out, rowvar=False), np.diag(eigenvalues / (eigenvalues + eps)),
                               atol=1e-4)


def test_whitening_layer_computes_the_projection_of_each_patch():
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(3, 5, 5, 3)).astype("float32")
    kernel, bias = fc.whitening_weights(images, 2)
    layer = PatchWhitening(2)
    layer.build(images.shape)
    layer.set_weights([kernel, bias])
    got = keras.ops.convert_to_numpy(layer(images))
    want = fc.patches(images, 2) @ kernel.reshape(12, 24) + bias
    np.testing.assert_allclose(got.reshape(-1, 24), want, rtol=1e-4, atol=1e-4)
    assert got.shape == (3, 4, 4, 24)
    assert layer.trainable_weights == []


def test_dirac_init_makes_the_first_filters_identities():
    conv = keras.layers.Conv2D(6, 3, padding="same", use_bias=False)
    x = np.random.default_rng(2).normal(size=(1, 5, 5, 4)).astype("float32")
    conv.build(x.shape)
    fc.dirac_init(conv)
    y = keras.ops.convert_to_numpy(conv(x))
    np.testing.assert_allclose(y[..., :4], x, atol=1e-6)  # 4 input channels -> 4 identity filters
    assert np.abs(y[..., 4:]).sum() > 0  # the rest stay random


@pytest.mark.parametrize("size, shapes", [(32, [(15, 15, 64), (7, 7, 256), (3, 3, 256)]),
                                          (64, [(31, 31, 64), (15, 15, 256), (7, 7, 256)])])
def test_stage_shapes(size, shapes):
    net = fc.fast_cnn(size)
    assert [tuple(o.shape[1:]) for o in net.outputs] == shapes


def test_init_whitening_sets_the_layer_from_the_model_input():
    model = build_model(backbone="fast_cnn", layout=16, image_size=16)
    images = np.random.default_rng(3).integers(0, 256, size=(20, 16, 16, 3), dtype=np.uint8)
    assert fc.init_whitening(model, images)
    layer = model.get_layer("backbone").get_layer("whitening")
    kernel, bias = fc.whitening_weights(images.astype("float32") / 255.0, 2)
    np.testing.assert_allclose(layer.get_weights()[0], kernel, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.get_weights()[1], bias, rtol=1e-4, atol=1e-4)
    assert not fc.init_whitening(build_model(backbone="small_cnn", layout=16, image_size=16), images)
