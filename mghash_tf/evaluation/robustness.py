"""Query corruptions (NumPy/Pillow) and the mAP of corrupted queries against a clean database.

Each corruption takes uint8 images (N, H, W, 3) and returns uint8 images of the same shape;
severity 0 returns an unchanged copy, severities 1..3 grow in strength (:data:`SEVERITIES`
holds the parameters). Randomness (noise, rotation direction, brightness sign) comes from
``seed`` alone, so a report can be reproduced.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageFilter

logger = logging.getLogger(__name__)

# One parameter per severity 1, 2, 3; chosen so severity 3 is clearly visible on 32 px images
# without erasing the object (CIFAR-C style, scaled down for small images).
SEVERITIES = {
    "gaussian_noise": (8.0, 16.0, 32.0),          # std of the noise, in pixel units (0..255)
    "blur": (0.5, 1.0, 1.5),                      # Gaussian blur radius, pixels
    "rotation": (10.0, 20.0, 30.0),               # degrees, direction drawn per image
    "brightness_contrast": (0.15, 0.3, 0.45),     # brightness shift (fraction of 255) and
                                                  # contrast reduction (1 - factor)
    "jpeg": (50, 25, 10),                         # JPEG quality of the re-compression
}
CORRUPTIONS = tuple(SEVERITIES)
MAX_SEVERITY = 3


def corrupt(images, name: str, severity: int, *, seed: int = 0) -> np.ndarray:
    """``images`` corrupted by ``name`` at ``severity`` (0 = unchanged copy)."""
    x = _check_images(images)
    if name not in SEVERITIES:
        raise ValueError(f"`name` must be one of {CORRUPTIONS}. Received: name={name!r}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) \
            or not 0 <= severity <= MAX_SEVERITY:
        raise ValueError(f"`severity` must be an integer in [0, {MAX_SEVERITY}]. "
                         f"Received: severity={severity!r}")
    if severity == 0:
        return x.copy()
    param = SEVERITIES[name][severity - 1]
    rng = np.random.default_rng(seed)
    return _APPLY[name](x, param, rng)


def _check_images(images) -> np.ndarray:
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError("`images` must be uint8 of shape (N, H, W, 3). "
                         f"Received: dtype={x.dtype}, shape={x.shape}")
    return x


def _gaussian_noise(x, sigma, rng):
    noisy = x.astype(np.float32) + rng.normal(0.0, sigma, x.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _per_image(x, fn):
    return np.stack([np.asarray(fn(Image.fromarray(img)), dtype=np.uint8) for img in x])


def _blur(x, radius, rng):
    return _per_image(x, lambda im: im.filter(ImageFilter.GaussianBlur(radius)))


def _rotation(x, degrees, rng):
    signs = rng.choice((-1.0, 1.0), size=len(x))
    # Corners left empty by the rotation are filled with the image's mean colour rather than
    # black, so the corruption is the rotation and not a dark frame.
    out = []
    for img, sign in zip(x, signs):
        fill = tuple(int(v) for v in img.reshape(-1, 3).mean(axis=0))
        rotated = Image.fromarray(img).rotate(sign * degrees, resample=Image.BILINEAR,
                                              fillcolor=fill)
        out.append(np.asarray(rotated, dtype=np.uint8))
    return np.stack(out)


def _brightness_contrast(x, strength, rng):
    signs = rng.choice((-1.0, 1.0), size=(len(x), 1, 1, 1))
    f = x.astype(np.float32)
    mean = f.mean(axis=(1, 2, 3), keepdims=True)
    # Contrast is reduced around each image's mean, then the brightness shifts by +-strength.
    out = (f - mean) * (1.0 - strength) + mean + signs * strength * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _jpeg(x, quality, rng):
    def recompress(im):
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        return Image.open(buf).convert("RGB")

    return _per_image(x, recompress)


_APPLY = {"gaussian_noise": _gaussian_noise, "blur": _blur, "rotation": _rotation,
          "brightness_contrast": _brightness_contrast, "jpeg": _jpeg}


def robustness_maps(encode_fn, query_images, query_labels, db_codes, db_labels, granularities,
                    *, corruptions=CORRUPTIONS, seed: int = 0) -> dict:
    """mAP@all (stable ties) of corrupted queries against the clean database codes.

    Args:
        encode_fn: images (N, H, W, 3) uint8 -> codes (N, K).
        query_labels, db_labels: (N, 2) [fine, coarse] int labels.
        granularities: ``{name: (bit indices, label column)}``.

    Returns ``{corruption: {granularity: [mAP at severity 0, 1, 2, 3]}}``; severity 0 is the
    clean query set (the same for every corruption, computed once).
    """
    from mghash_tf.core.metrics import mean_average_precision

    def maps(codes):
        return {name: float(mean_average_precision(codes[:, bits], db_codes[:, bits],
                                                   query_labels[:, col], db_labels[:, col]))
                for name, (bits, col) in granularities.items()}

    clean = maps(np.asarray(encode_fn(query_images)))
    out = {}
    for name in corruptions:
        per_severity = [clean]
        for severity in range(1, MAX_SEVERITY + 1):
            corrupted = corrupt(query_images, name, severity, seed=seed)
            per_severity.append(maps(np.asarray(encode_fn(corrupted))))
            logger.info("robustness %s severity %d: %s", name, severity, per_severity[-1])
        out[name] = {g: [s[g] for s in per_severity] for g in granularities}
    return out
