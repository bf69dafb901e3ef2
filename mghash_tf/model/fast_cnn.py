"""``fast_cnn``: a from-scratch network for small images, after the fast-CIFAR literature.

Ideas from airbench94 (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024),
written here for Keras:

- a 2x2 *patch-whitening* convolution: its filters are the eigenvectors of the covariance of
  the training images' 2x2 patches, scaled by ``1 / sqrt(eigenvalue + eps)``, with their
  negations (so the GELU after it keeps both signs); set from data by
  :func:`init_whitening` and never trained;
- three blocks ``conv3x3 -> max-pool -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU`` at
  widths 64 / 256 / 256, BatchNorm without a learnt scale (fixed at 1);
- identity (Dirac) initialisation of the first ``in_channels`` filters of every 3x3
  convolution, so each block starts close to passing its input through.

Stages: the outputs of the three blocks (``low`` / ``mid`` / ``high``): 15 / 7 / 3 px for a
32 px input (the whitening convolution is unpadded: 32 -> 31).
"""

from __future__ import annotations

import keras
import numpy as np

from mghash_tf.model.layers import PatchWhitening, walk

WIDTHS = (64, 256, 256)
# airbench's BatchNorm momentum 0.6 (PyTorch 0.4): short runs need statistics that follow the weights.
BN_MOMENTUM = 0.6
# eps relative to the mean pixel variance: airbench's 5e-4 on unit-variance pixels.
WHITENING_EPS = 5e-4
# The covariance is taken over at most this many patches (5,000 images at 32 px).
MAX_PATCHES = 5_000_000


def fast_cnn(image_size: int, widths=WIDTHS) -> keras.Model:
    """Pixels in [0, 1] (``unit`` normalisation) -> ``[low, mid, high]`` feature maps."""
    if len(widths) != 3:
        raise ValueError(f"`widths` must have three entries. Received: widths={widths!r}")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = PatchWhitening(name="whitening")(inputs)
    x = keras.layers.Activation("gelu", name="whitening_gelu")(x)
    stages, convs = [], []
    for i, width in enumerate(widths):
        for j in range(2):
            conv = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{i}_conv{j}")
            convs.append(conv)
            x = conv(x)
            if j == 0:
                x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
            x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, scale=False, name=f"block{i}_bn{j}")(x)
            x = keras.layers.Activation("gelu", name=f"block{i}_gelu{j}")(x)
        stages.append(x)
    model = keras.Model(inputs, stages, name="backbone_fast_cnn")
    for conv in convs:
        dirac_init(conv)
    return model


def dirac_init(conv: keras.layers.Conv2D) -> None:
    """Filters ``0 .. min(in, out) - 1`` become the identity (1 at the centre tap of their own
    input channel, 0 elsewhere); the rest keep their random initialisation."""
    kernel = keras.ops.convert_to_numpy(conv.kernel).copy()
    kh, kw, cin, cout = kernel.shape
    m = min(cin, cout)
    kernel[:, :, :, :m] = 0.0
    kernel[kh // 2, kw // 2, np.arange(m), np.arange(m)] = 1.0
    conv.kernel.assign(kernel)


def patches(images, size: int) -> np.ndarray:
    """All ``size`` x ``size`` patches of (N, H, W, C) images as rows ordered (dy, dx, c),
    the order of a Conv2D kernel's (kh, kw, cin) axes."""
    x = np.asarray(images, dtype=np.float64)
    _, h, w, c = x.shape
    shifted = [x[:, dy:h - size + 1 + dy, dx:w - size + 1 + dx, :] for dy in range(size) for dx in range(size)]
    return np.stack(shifted, axis=3).reshape(-1, size * size * c)


def whitening_weights(images, size: int = 2, eps: float = WHITENING_EPS):
    """``(kernel, bias)`` of a :class:`PatchWhitening` layer for images as the layer sees them.

    Output channel ``k < d`` (``d = size * size * C``) is the projection of the centred patch on
    the k-th eigenvector ``v_k`` of the patch covariance, divided by ``sqrt(lambda_k + eps')``
    with ``eps' = eps * mean pixel variance``; channel ``d + k`` is its negation.
    """
    rows = patches(images, size)
    mean = rows.mean(axis=0)
    cov = np.cov(rows, rowvar=False)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    filters = eigenvectors / np.sqrt(np.maximum(eigenvalues, 0.0) + eps * np.mean(np.diag(cov)))
    filters = np.concatenate([filters, -filters], axis=1)
    c = rows.shape[1] // (size * size)
    kernel = filters.reshape(size, size, c, 2 * rows.shape[1])
    return kernel.astype("float32"), (-mean @ filters).astype("float32")


def init_whitening(model: keras.Model, images, *, seed: int = 0) -> bool:
    """Set every :class:`PatchWhitening` layer of ``model`` from a seeded sample of ``images``
    (uint8 or float pixels in [0, 255], the model's input). Returns whether there was one."""
    layers = [layer for layer in walk(model) if isinstance(layer, PatchWhitening)]
    if not layers:
        return False
    images = np.asarray(images)
    sample = max(1, MAX_PATCHES // (images.shape[1] * images.shape[2]))
    if len(images) > sample:
        images = images[np.sort(np.random.default_rng(seed).choice(len(images), sample, replace=False))]
    preprocess = model.get_layer("preprocessing")
    seen = keras.ops.convert_to_numpy(preprocess(images.astype("float32"))).astype("float32")
    for layer in layers:
        layer.set_weights(list(whitening_weights(seen, layer.patch_size)))
    return True

