"""Device side: NumPy + LiteRT + Pillow only, never TensorFlow or Keras (a test enforces it).

``edge_demo.description.read_description(path)`` reads the model description embedded in an
exported ``.tflite`` file; ``edge_demo.encoder.TFLiteEncoder(path)`` turns uint8 images into codes.
"""
