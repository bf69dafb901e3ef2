"""Keras MGHash model -> TFLite variants with the model's description embedded; Keras<->TFLite
parity; the model-size benchmark. Command line: ``python -m export convert|parity|bench``.

TensorFlow is imported only by the functions that convert; reading a description or encoding
with a ``.tflite`` file lives in :mod:`edge_demo`, which never imports TensorFlow.
"""

from export.convert import DEFAULT_VARIANTS, VARIANTS, convert_file, convert_model, parse_variants
from export.metadata import build_description, embed_description

__all__ = ["VARIANTS", "DEFAULT_VARIANTS", "convert_model", "convert_file", "parse_variants",
           "build_description", "embed_description"]
