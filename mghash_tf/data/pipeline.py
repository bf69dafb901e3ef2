"""The tf.data input pipeline and the training augmentation (Keras 3 core layers)."""

from __future__ import annotations

import numpy as np

AUGMENT_SEED = 1


def build_augmenter(seed: int = AUGMENT_SEED):
    """Keras 3 core layers on float images in [0, 255]; output keeps shape and range.

    Translation by up to 1/8 of the side with reflected borders stands in for pad-and-crop.
    No saturation jitter: RandomSaturation in Keras 3.15 leaves [0, 255] (it clips the
    HSV saturation to ``value_range`` instead of [0, 1]).
    """
    import keras

    layers = keras.layers
    return layers.Pipeline([
        layers.RandomTranslation(0.125, 0.125, fill_mode="reflect", seed=seed),
        layers.RandomFlip("horizontal", seed=seed + 1),
        layers.RandomRotation(15 / 360, fill_mode="reflect", seed=seed + 2),  # +-15 degrees
        layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed + 3),
        layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 4),
    ], name="augmenter")


AUGMENTATIONS = ("standard", "flip_translate", "alternating_flip_translate")
# Policies applied per image (the others run on batches).
PER_IMAGE = ("flip_translate", "alternating_flip_translate")
# flip_translate: shifts of up to this many pixels (reflected borders), as in the fast-CIFAR recipes.
TRANSLATE_PIXELS = 2


def translate(image, seed=None, pixels: int = TRANSLATE_PIXELS):
    """A random shift of one image (H, W, C) by up to ``pixels`` in each direction with
    reflected borders (pad, then crop back to the size)."""
    import tensorflow as tf

    padded = tf.pad(image, [[pixels, pixels], [pixels, pixels], [0, 0]], mode="REFLECT")
    return tf.image.random_crop(padded, tf.shape(image), seed=seed)


def flip_translate(image, seed=None, pixels: int = TRANSLATE_PIXELS):
    """One image (H, W, C): a random horizontal flip, then :func:`translate`."""
    import tensorflow as tf

    return translate(tf.image.random_flip_left_right(image, seed=seed), seed=seed, pixels=pixels)


def alternating_flip(image, first_flip, epoch):
    """Mirror the image in epochs where ``(first_flip + epoch)`` is odd: a random half in the
    first epoch, then every image alternates, so each one is seen both ways in every two
    epochs (airbench, Jordan 2024) instead of by chance."""
    import tensorflow as tf

    flip = tf.equal(tf.math.floormod(tf.cast(first_flip, tf.int64) + epoch, 2), 1)
    return tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)


def epoch_counter(initial_epoch: int = 0):
    """The scalar variable ``make_dataset`` reads the epoch from for alternating flips; keep it
    current with ``training.callbacks.SetEpoch``."""
    import tensorflow as tf

    return tf.Variable(int(initial_epoch), dtype=tf.int64, trainable=False, name="data_epoch")


def make_dataset(x, labels, *, batch_size: int, shuffle: bool = False, seed: int = 0, augment=False,
                 augmentation: str = "standard", cache: bool = True, drop_remainder: bool = False,
                 epoch=None):
    """-> ``tf.data.Dataset`` of ``(float32 images in [0, 255], int32 labels (B, 2))``.

    Images keep their stored size (the model resizes). ``augment``: False, True (the policy named
    by ``augmentation``: ``"standard"`` = the ``build_augmenter()`` layers on batches,
    ``"flip_translate"`` = :func:`flip_translate` per image, ``"alternating_flip_translate"`` =
    :func:`alternating_flip` then :func:`translate`, reading the epoch from ``epoch``, a variable
    from :func:`epoch_counter`) or any callable on float batches.
    The uint8 elements are cached before shuffling, so augmentation differs every epoch; the
    epoch order and the first epoch's alternating flips depend only on ``seed``.
    """
    import tensorflow as tf

    x = np.asarray(x)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"`x` must have shape (N, H, W, 3). Received: x.shape={x.shape}")
    labels = np.asarray(labels)
    labels = np.stack([labels, labels], axis=1) if labels.ndim == 1 else labels
    if labels.shape != (len(x), 2):
        raise ValueError(f"`labels` must have shape ({len(x)}, 2) or ({len(x)},). "
                         f"Received: labels.shape={labels.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}")
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"`augmentation` must be one of {AUGMENTATIONS}. Received: augmentation={augmentation!r}")
    per_image = augment is True and augmentation in PER_IMAGE
    alternating = per_image and augmentation == "alternating_flip_translate"
    if alternating and epoch is None:
        raise ValueError("augmentation='alternating_flip_translate' reads the epoch from `epoch` "
                         "(data.pipeline.epoch_counter()). Received: epoch=None")
    if augment is True:
        augmenter = None if per_image else build_augmenter()
    else:
        augmenter = augment or None
    first_flip = np.random.default_rng(seed).integers(0, 2, len(x), dtype=np.int8)
    ds = tf.data.Dataset.from_tensor_slices((x, labels.astype(np.int32), first_flip))
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if alternating:
        ds = ds.map(lambda image, label, first: (translate(alternating_flip(image, first, epoch)), label),
                    num_parallel_calls=tf.data.AUTOTUNE)
    elif per_image:
        ds = ds.map(lambda image, label, _: (flip_translate(image), label), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda image, label, _: (image, label))
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def to_float(images, batch_labels):
        images = tf.cast(images, tf.float32)
        return (augmenter(images) if augmenter else images), batch_labels

    return ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
