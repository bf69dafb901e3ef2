"""Build the MGHash model and read back what it is (layout, sizes, backbone)."""

from __future__ import annotations

import hashlib

import keras
import numpy as np

from mghash_tf.model import backbones as backbones_lib
from mghash_tf.model.layers import HashHead, PixelPreprocessing, SpatialAttentionPooling
from mghash_tf.core.layout import STAGES, CodeLayout, get_layout

BACKBONE_LAYER = "backbone"


def build_model(
    *,
    backbone: str = "small_cnn",
    layout="mg64",
    image_size: int = 32,
    input_size: int | None = None,
    weights=None,
) -> keras.Model:
    """Pixels (B, input_size, input_size, 3) in [0, 255] -> relaxed codes (B, K) in (-1, 1).

    Args:
        backbone: a registered name (``backbones.backbone_names()``).
        layout: a preset name, int K, dict or ``CodeLayout``.
        image_size: side the backbone sees (the model resizes to it internally).
        input_size: side of the pixels the model takes; defaults to ``image_size``. Training on
            32 px data with a 96 px backbone keeps ``input_size=32``, so a device feeds the
            model images at the size the training data had.
        weights: ``None``, ``"imagenet"`` or a weights file path for pretrained backbones.
    """
    code_layout = get_layout(layout)
    input_size = image_size if input_size is None else input_size
    if not isinstance(input_size, int) or input_size < 8:
        raise ValueError(f"`input_size` must be an int >= 8. Received: input_size={input_size!r}")
    pixels = keras.Input((input_size, input_size, 3), name="pixels")
    x = PixelPreprocessing(
        image_size, backbones_lib.get_backbone(backbone).preprocessing, name="preprocessing"
    )(pixels)
    net = backbones_lib.build_backbone(backbone, image_size, weights)
    features = keras.Model(net.inputs, net.outputs, name=BACKBONE_LAYER)(x)
    pooled = [
        SpatialAttentionPooling(name=f"attention_{stage}")(f) for stage, f in zip(STAGES, features)
    ]
    codes = HashHead(code_layout.to_dict(), STAGES, name="hash_head")(pooled)
    return keras.Model(pixels, codes, name=f"mghash_{backbone}")


def get_layout_of(model: keras.Model) -> CodeLayout:
    return CodeLayout.from_dict(model.get_layer("hash_head").layout)


def weights_fingerprint(model: keras.Model) -> str:
    """SHA-256 (hex, first 16 chars) over all weights in order: identifies a trained model."""
    digest = hashlib.sha256()
    for w in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return digest.hexdigest()[:16]


def describe(model: keras.Model) -> dict:
    """What a device or an index needs to know about the model, as plain JSON-able data."""
    pre = model.get_layer("preprocessing")
    backbone = model.name.removeprefix("mghash_")
    return {
        "layout": get_layout_of(model).to_dict(),
        "bits": get_layout_of(model).bits,
        "backbone": backbone,
        "input_size": int(model.input_shape[1]),
        "image_size": pre.image_size,
        "input": "RGB pixels, float32 or uint8, range [0, 255], shape (N, S, S, 3)",
        "normalisation": pre.normalisation,
        "params": int(model.count_params()),
        "fingerprint": weights_fingerprint(model),
    }


def encode(model: keras.Model, images, *, batch_size: int = 256, tta: bool = False) -> np.ndarray:
    """Relaxed codes (N, K) float32 for uint8/float pixel images (N, S, S, 3).

    ``tta``: flip test-time augmentation, the mean of the relaxed codes of each image and its
    horizontal mirror (its sign is the code: bits on which the two views disagree go to the
    more confident one)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"`images` must be (N, H, W, 3). Received: shape={images.shape}")
    codes = np.asarray(model.predict(images.astype("float32"), batch_size=batch_size, verbose=0))
    if tta:
        mirrored = model.predict(images[:, :, ::-1].astype("float32"), batch_size=batch_size, verbose=0)
        codes = (codes + np.asarray(mirrored)) / 2.0
    return codes


def set_backbone_trainable(model: keras.Model, trainable: bool, *, train_batchnorm: bool = False):
    """Freeze or unfreeze the backbone. BatchNorm stays frozen by default when unfreezing:
    fine-tuning with small batches would otherwise wreck the pretrained statistics."""
    net = model.get_layer(BACKBONE_LAYER)
    net.trainable = trainable
    if trainable and not train_batchnorm:
        for layer in net.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
