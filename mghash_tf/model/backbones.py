"""Backbones with three named stage outputs: ``low``, ``mid``, ``high``.

The stages are the last three resolution levels of the network (strides 8, 16 and 32 for the
ImageNet models). For ``keras.applications`` models they are found from the graph: the last
layer at each output resolution, so one rule covers MobileNet, EfficientNet and ResNet without
hand-kept layer-name tables that break between Keras releases.

Backbones register by name (:func:`register_backbone`); ``build_model`` and ``TrainConfig``
accept any registered name.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Callable

import keras

from mghash_tf.model.fast_cnn import fast_cnn


logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """``build(image_size, weights)`` -> a model mapping preprocessed images to ``[low, mid,
    high]``; ``preprocessing``: the normalisation it expects on 0..255 RGB input (see
    ``layers.PixelPreprocessing``); ``pretrained``: whether it accepts ``weights``."""

    build: Callable
    preprocessing: str
    pretrained: bool = True


_REGISTRY: dict = {}


def register_backbone(name: str, build: Callable, *, preprocessing: str, pretrained: bool = True) -> None:
    """Make ``name`` a ``backbone`` choice of ``build_model`` and ``TrainConfig``."""
    if name in _REGISTRY:
        raise ValueError(f"Backbone {name!r} is already registered. Received: name={name!r}")
    _REGISTRY[name] = BackboneSpec(build, preprocessing, pretrained)


def backbone_names() -> tuple:
    return tuple(_REGISTRY)


def get_backbone(name: str) -> BackboneSpec:
    if name not in _REGISTRY:
        raise ValueError(f"`backbone` must be one of {backbone_names()}. Received: backbone={name!r}")
    return _REGISTRY[name]


def _check_weights(weights):
    if weights in (None, "imagenet"):
        return weights
    if isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights):
        return os.fspath(weights)
    raise ValueError(
        "`weights` must be None, 'imagenet' (downloads on first use) or an existing weights "
        f"file. Received: weights={weights!r}"
    )


def small_cnn(image_size: int) -> keras.Model:
    """A from-scratch CNN, fast on CPU at 32 px. Stages at strides 2, 4 and 8.

    Narrow on purpose (~0.3 M parameters, ~14 M multiply-adds at 32 px): it is the model a
    2-core CPU trains in minutes and a Raspberry Pi runs in a few milliseconds."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    stages = {}
    for i, (width, stage) in enumerate([(16, None), (32, "low"), (64, "mid"), (128, "high")]):
        for j in range(2):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}_{j}")(x)
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}_{j}")(x)
            x = keras.layers.ReLU(name=f"relu{i}_{j}")(x)
        if stage:
            stages[stage] = x
        if i < 3:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    return keras.Model(inputs, [stages["low"], stages["mid"], stages["high"]], name="backbone_small_cnn")


def _stage_key(image_size, layer):
    shape = layer.output.shape
    if len(shape) != 4 or shape[1] is None or isinstance(layer, keras.layers.ZeroPadding2D):
        return None
    # Padding layers and odd sizes give e.g. 13 px at stride 8 of 96: round the log stride.
    return round(math.log2(image_size / shape[1]))


def stage_layers(model: keras.Model, image_size: int) -> list:
    """Names of the last layer at each of the last three resolution levels."""
    last = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        key = _stage_key(image_size, layer)
        if key is not None:
            last[key] = layer.name
    # Squeeze-excite branches pool to 1x1 mid-network; nothing deeper than the output counts.
    deepest = round(math.log2(image_size / model.output.shape[1]))
    keys = sorted(k for k in last if k <= deepest)
    if len(keys) < 3:
        raise ValueError(
            f"The backbone has fewer than three resolution levels at this size. "
            f"Received: image_size={image_size}; levels={keys}"
        )
    return [last[k] for k in keys[-3:]]


def _application(name: str, constructor: str, *, include_preprocessing: bool = False) -> Callable:
    def build(image_size: int, weights) -> keras.Model:
        # MobileNetV3/EfficientNet normalise inside; PixelPreprocessing then passes pixels through.
        kwargs = {"include_preprocessing": True} if include_preprocessing else {}
        base = getattr(keras.applications, constructor)(
            input_shape=(image_size, image_size, 3), include_top=False, weights=_check_weights(weights),
            **kwargs,
        )
        outputs = [base.get_layer(n).output for n in stage_layers(base, image_size)]
        logger.debug("backbone %s stages: %s", name, [o.shape for o in outputs])
        return keras.Model(base.inputs, outputs, name=f"backbone_{name}")

    return build


def build_backbone(name: str, image_size: int, weights=None) -> keras.Model:
    """A model mapping preprocessed images to ``[low, mid, high]`` feature maps."""
    spec = get_backbone(name)
    if not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"`image_size` must be an int >= 16. Received: image_size={image_size!r}")
    if not spec.pretrained and weights is not None:
        raise ValueError(f"`{name}` trains from scratch. Received: weights={weights!r}")
    return spec.build(image_size, weights)


register_backbone("small_cnn", lambda image_size, weights: small_cnn(image_size), preprocessing="unit",
                  pretrained=False)
register_backbone("fast_cnn", lambda image_size, weights: fast_cnn(image_size), preprocessing="unit",
                  pretrained=False)
# (name, keras.applications constructor, preprocessing, normalises inside)
for _name, _constructor, _preprocessing, _inside in (
    ("mobilenet_v2", "MobileNetV2", "symmetric", False),
    ("mobilenet_v3_small", "MobileNetV3Small", "none", True),
    ("mobilenet_v3_large", "MobileNetV3Large", "none", True),
    ("efficientnet_v2_b0", "EfficientNetV2B0", "none", True),
    ("resnet50", "ResNet50", "caffe", False),
):
    register_backbone(_name, _application(_name, _constructor, include_preprocessing=_inside),
                      preprocessing=_preprocessing)
