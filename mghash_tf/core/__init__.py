"""The TensorFlow-free core: code layout and granularity, bit packing and the index, image
decoding, the model-description format, the LiteRT encoder, retrieval metrics.

Never import TensorFlow, Keras or a non-core part of ``mghash_tf`` here, even indirectly;
``tests/test_core_no_tf.py`` and ``tests/test_import_rules.py`` check it.
"""
