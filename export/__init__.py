"""Keras MGHash model -> TFLite variants with the model's description embedded; Keras<->TFLite
parity; the model-size benchmark. Command line: ``python -m export convert|parity|bench``.

TensorFlow is imported only by the functions that convert; the description format and encoding
with a ``.tflite`` file live in the TensorFlow-free :mod:`mghash_tf.core`.
"""

from export.convert import DEFAULT_VARIANTS, VARIANTS, convert_file, convert_model, parse_variants
from export.metadata import embed_description
from mghash_tf.core.description import build_description

__all__ = ["VARIANTS", "DEFAULT_VARIANTS", "convert_model", "convert_file", "parse_variants",
           "build_description", "embed_description"]
