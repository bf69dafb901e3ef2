"""Custom Keras layers of the MGHash model, registered so `.keras` files reload without
``custom_objects``. Math in ``keras.ops`` so the layers stay backend neutral."""

from __future__ import annotations

import keras
from keras import ops

PACKAGE = "mghash_tf"


def walk(model: keras.Model):
    """Every layer of ``model``, those of nested models included (depth first)."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from walk(layer)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpatialAttentionPooling(keras.layers.Layer):
    """``A = sigmoid(Conv1x1(F))``; returns ``GAP(F * A)`` of shape (B, C).

    The 1x1 convolution maps C channels to a single H x W attention map, so the pooled vector
    weights each location by how much the map attends to it.

    Args:
        return_attention: also return the (B, H, W, 1) attention map (for visualisation).
    """

    def __init__(self, return_attention=False, **kwargs):
        super().__init__(**kwargs)
        self.return_attention = return_attention
        self.score = keras.layers.Conv2D(1, 1, name="score", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.score.build(input_shape)
        self.built = True

    def call(self, features):
        attention = ops.sigmoid(self.score(features))
        pooled = ops.mean(features * ops.cast(attention, features.dtype), axis=(1, 2))
        if self.return_attention:
            return pooled, attention
        return pooled

    def compute_output_shape(self, input_shape):
        pooled = (input_shape[0], input_shape[-1])
        if self.return_attention:
            return pooled, tuple(input_shape[:3]) + (1,)
        return pooled

    def get_config(self):
        config = super().get_config()
        config.update({"return_attention": self.return_attention})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class HashHead(keras.layers.Layer):
    """Maps pooled stage features to a K-bit relaxed code laid out by segments.

    Each segment ``s`` reads the concatenation of its stages' pooled vectors and computes
    ``h_s = tanh(W_s f_s + v_s)``; the segments are concatenated in layout order. ``sign(h)``
    is the binary code at inference (see :func:`mghash_tf.core.index.packing.pack_bits`).

    Args:
        layout: a ``CodeLayout.to_dict()`` dict; kept as plain data so the config is JSON.
        stage_names: order of the input list, e.g. ``["low", "mid", "high"]``.
    """

    def __init__(self, layout, stage_names=("low", "mid", "high"), **kwargs):
        super().__init__(**kwargs)
        from mghash_tf.core.layout import CodeLayout

        self.layout = CodeLayout.from_dict(layout).to_dict()
        self.stage_names = list(stage_names)
        self._segments = CodeLayout.from_dict(self.layout).segments
        self.projections = [
            keras.layers.Dense(s.bits, name=f"hash_{s.name}", dtype=self.dtype_policy)
            for s in self._segments
        ]

    def _segment_input(self, inputs, segment):
        parts = [inputs[self.stage_names.index(st)] for st in segment.stages]
        return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)

    def build(self, input_shape):
        for seg, dense in zip(self._segments, self.projections):
            width = sum(input_shape[self.stage_names.index(st)][-1] for st in seg.stages)
            dense.build((None, width))
        self.built = True

    def call(self, inputs):
        codes = [
            ops.tanh(dense(self._segment_input(inputs, seg)))
            for seg, dense in zip(self._segments, self.projections)
        ]
        out = codes[0] if len(codes) == 1 else ops.concatenate(codes, axis=-1)
        return ops.cast(out, "float32")

    def get_config(self):
        config = super().get_config()
        config.update({"layout": self.layout, "stage_names": self.stage_names})
        return config


_NORMALISATIONS = ("none", "unit", "symmetric", "caffe")


@keras.saving.register_keras_serializable(package=PACKAGE)
class PixelPreprocessing(keras.layers.Layer):
    """Raw RGB pixels in [0, 255] -> the backbone's input: resize, then normalise.

    Living inside the model means a saved or exported model takes plain pixels, so the device
    never has to know which backbone produced its codes.

    Args:
        image_size: side of the square image the backbone sees.
        normalisation: ``"none"`` (backbone normalises itself), ``"unit"`` (x / 255),
            ``"symmetric"`` (x / 127.5 - 1) or ``"caffe"`` (BGR, ImageNet mean subtracted).
    """

    def __init__(self, image_size, normalisation="unit", **kwargs):
        super().__init__(**kwargs)
        if normalisation not in _NORMALISATIONS:
            raise ValueError(
                f"`normalisation` must be one of {_NORMALISATIONS}. "
                f"Received: normalisation={normalisation!r}"
            )
        self.image_size = int(image_size)
        self.normalisation = normalisation

    def call(self, pixels):
        x = ops.cast(pixels, self.compute_dtype)
        if x.shape[1] != self.image_size or x.shape[2] != self.image_size:
            x = ops.image.resize(x, (self.image_size, self.image_size), interpolation="bilinear")
        if self.normalisation == "unit":
            return x / 255.0
        if self.normalisation == "symmetric":
            return x / 127.5 - 1.0
        if self.normalisation == "caffe":
            mean = ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=x.dtype)
            return ops.flip(x, axis=-1) - mean
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.image_size, self.image_size, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"image_size": self.image_size, "normalisation": self.normalisation})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchWhitening(keras.layers.Layer):
    """Unpadded ``patch_size`` x ``patch_size`` convolution to ``2 * patch_size**2 * C`` channels
    whose kernel and bias are fixed: set from training images by
    :func:`mghash_tf.model.fast_cnn.init_whitening`, stored in the model, never trained (they are
    non-trainable weights, so unfreezing the backbone leaves them alone).

    Args:
        patch_size: side of the patches (2 in airbench).
    """

    def __init__(self, patch_size=2, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)

    def build(self, input_shape):
        p, c = self.patch_size, input_shape[-1]
        self.kernel = self.add_weight(shape=(p, p, c, 2 * p * p * c), initializer="zeros",
                                      trainable=False, name="kernel")
        self.bias = self.add_weight(shape=(2 * p * p * c,), initializer="zeros", trainable=False, name="bias")
        self.built = True

    def call(self, x):
        kernel = ops.cast(self.kernel, x.dtype)
        return ops.conv(x, kernel, strides=1, padding="valid") + ops.cast(self.bias, x.dtype)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        shrink = self.patch_size - 1
        return (n, None if h is None else h - shrink, None if w is None else w - shrink,
                2 * self.patch_size ** 2 * c)

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size})
        return config
