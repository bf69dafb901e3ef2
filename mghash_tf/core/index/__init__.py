"""Device-side binary-code index. NumPy only (faiss optional, for export): runs on a Pi or phone.

Never import TensorFlow or Keras here, even indirectly; ``tests/test_index_no_tf.py`` checks it.
"""

from mghash_tf.core.index.hamming_index import HammingIndex
from mghash_tf.core.index.mih import MultiIndexHash
from mghash_tf.core.index.packing import hamming, pack_bits, popcount, unpack_bits
from mghash_tf.core.index.topk import PAD_DISTANCE, PAD_POSITION

__all__ = [
    "HammingIndex",
    "MultiIndexHash",
    "PAD_DISTANCE",
    "PAD_POSITION",
    "hamming",
    "pack_bits",
    "popcount",
    "unpack_bits",
]
