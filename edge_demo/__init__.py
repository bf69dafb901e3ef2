"""Device app: photo-folder indexing and queries (``photos``), the CLI, and the local web app
(``server`` HTTP layer, ``app``, ``params``, ``snapshot``). NumPy + LiteRT + Pillow only, never
TensorFlow or Keras (a test enforces it); it stands on :mod:`mghash_tf.core`, whose
``description.read_description(path)`` reads an exported model's description and whose
``encoder.TFLiteEncoder(path)`` turns uint8 images into codes.
"""
