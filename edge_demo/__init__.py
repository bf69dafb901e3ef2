"""Device side: NumPy + LiteRT + Pillow only, never TensorFlow or Keras (a test enforces it).

``mghash_tf.core.description.read_description(path)`` reads the model description embedded in an
exported ``.tflite`` file; ``mghash_tf.core.encoder.TFLiteEncoder(path)`` turns uint8 images into codes.
"""
