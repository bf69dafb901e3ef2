"""mghash_tf: multi-granularity deep hashing for image retrieval on the edge.

Importing the package stays light (no TensorFlow): the index, metrics and layout run on
devices without it. TensorFlow-side modules (layers, model, train, ...) import it themselves.
"""

__version__ = "0.1.0"
