"""The Keras model: layers, backbones (a registry), the hash head, losses."""

from mghash_tf.model.network import (BACKBONE_LAYER, build_model, describe, encode, get_layout_of,
                                     set_backbone_trainable, weights_fingerprint)

__all__ = ["BACKBONE_LAYER", "build_model", "describe", "encode", "get_layout_of",
           "set_backbone_trainable", "weights_fingerprint"]
