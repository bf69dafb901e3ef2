"""Training data: sources (npz / folder / tfds), ``ImageSet``, the validation split and the
``tf.data`` pipeline with augmentation. TensorFlow and Keras are imported only by
``make_dataset`` and ``build_augmenter``."""

from mghash_tf.core.images import decode_image
from mghash_tf.data.imageset import ImageSet, demo_data_path, load_source, save_npz, train_val_split, with_test_split
from mghash_tf.data.pipeline import build_augmenter, make_dataset

__all__ = ["ImageSet", "load_source", "save_npz", "demo_data_path", "train_val_split", "with_test_split",
           "make_dataset", "build_augmenter", "decode_image"]
