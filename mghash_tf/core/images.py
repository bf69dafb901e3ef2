"""Image decoding rules shared by training and the device: EXIF orientation, RGB conversion
(16-bit rescaled, transparency on white), a pixel budget against decompression bombs, bicubic
resize. NumPy and Pillow only.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps

# Pillow's bicubic resize widens its kernel when shrinking, so it also anti-aliases photos.
RESAMPLE = Image.Resampling.BICUBIC


def check_image_size(image_size, *, required: bool = False):
    if image_size is None and not required:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        rule = "a positive int" + ("" if required else " or None")
        raise ValueError(f"`image_size` must be {rule}. Received: image_size={image_size!r}")
    return image_size


def decode_image(source, image_size: int | None = None) -> np.ndarray:
    """File path or file object -> uint8 (H, W, 3) RGB, EXIF-rotated, squashed to
    ``image_size`` x ``image_size`` when given. Raises on anything unreadable."""
    rgb = _open_rgb(source, (image_size, image_size) if image_size else None)
    if image_size and rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), RESAMPLE)
    return np.asarray(rgb, dtype=np.uint8)


def decode_thumbnail(source, max_side: int) -> Image.Image:
    """File path or file object -> RGB ``PIL.Image`` no larger than ``max_side`` on either side,
    aspect kept, by the rules of :func:`decode_image`. A JPEG is decoded at the smallest DCT
    scale that still covers ``max_side`` (a 12 MP photo at 1/8: ~15x faster than in full)."""
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
        raise ValueError(f"`max_side` must be a positive int. Received: max_side={max_side!r}")
    rgb = _open_rgb(source, (max_side, max_side))
    rgb.thumbnail((max_side, max_side), RESAMPLE)
    return rgb


def _open_rgb(source, draft_size) -> Image.Image:
    """The decoding rules: pixel budget, reduced JPEG decode to at least ``draft_size`` (or
    None: full size), EXIF orientation, RGB."""
    with Image.open(source) as img:
        limit = Image.MAX_IMAGE_PIXELS
        # Pillow only warns between 1x and 2x its limit; a skipped file is the safer answer.
        if limit and img.width * img.height > limit:
            raise Image.DecompressionBombError(
                f"{img.width}x{img.height} pixels exceeds Image.MAX_IMAGE_PIXELS={limit}")
        if draft_size:
            # JPEG: decode at a reduced DCT scale. Callers ask for a square, which a 90-degree
            # EXIF rotation after the draft still covers.
            img.draft("RGB", draft_size)
        img.load()
        return _to_rgb(ImageOps.exif_transpose(img))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I") or img.mode == "F":
        # Pillow's own conversion clips 16-bit values at 255 (nearly all white); rescale instead.
        a = np.asarray(img, dtype=np.float64)
        a = a / 257.0 if img.mode.startswith("I") else a
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")
    if "A" in img.mode or "a" in img.mode or "transparency" in img.info:
        # Composite on white: the colour under transparent pixels is arbitrary (often black).
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def _try_decode(path, image_size):
    try:
        if os.path.getsize(path) == 0:
            return None, "empty file"
        return decode_image(path, image_size), None
    except Exception as e:  # Pillow's plugins raise many types on malformed data; skip them all.
        return None, f"{type(e).__name__}: {e}"


def decode_files(paths, image_size):
    """-> (list of arrays or None, list of (path, reason) for the failures), in input order."""
    paths = [str(p) for p in paths]
    # Pillow releases the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda p: _try_decode(p, image_size), paths))
    skipped = [(p, reason) for p, (_, reason) in zip(paths, results) if reason]
    return [arr for arr, _ in results], skipped


def resize_images(x: np.ndarray, image_size: int) -> np.ndarray:
    size = (image_size, image_size)
    return np.stack([np.asarray(Image.fromarray(im).resize(size, RESAMPLE)) for im in x])
