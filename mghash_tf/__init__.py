"""mghash_tf: multi-granularity deep hashing for image retrieval on the edge.

Importing the package stays light (no TensorFlow). ``mghash_tf.core`` (layout, granularity,
index, images, description, encoder, metrics) never imports TensorFlow or Keras and runs on
devices; ``model``, ``data``, ``training`` and ``evaluation`` are the TensorFlow side.
"""

__version__ = "0.1.0"
