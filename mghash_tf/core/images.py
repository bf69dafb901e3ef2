"""Image decoding rules shared by training and the device: EXIF orientation, RGB conversion
(16-bit rescaled, transparency on white), a pixel budget against decompression bombs, bicubic
resize. NumPy and Pillow only.

Memory: Pillow holds a decoded image whole (up to 4 bytes a pixel), so the budget is counted in
decoded pixels. A JPEG decodes at a reduced DCT scale (``Image.draft``); any other format decodes
at full size, is converted to RGB and box-reduced strip by strip (no full-size copy), and only the
reduced image is resized to the model's input, as Pillow's ``resize(reducing_gap=...)`` would.
Importing this module sets Pillow's allocation block size (:data:`PIXEL_BLOCK_BYTES`) so that
freed pixels go back to the system.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import ExifTags, Image

from mghash_tf.core.budget import Budget

# Pillow's bicubic resize widens its kernel when shrinking, so it also anti-aliases photos.
RESAMPLE = Image.Resampling.BICUBIC
# What counts as a photo when a folder is read by file name (device indexing, unlabelled folders).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                            ".ppm", ".pgm", ".pbm"})
# The pixel budget: decoded pixels held at once by all the decodes of a process; a file that
# alone needs more is refused (PixelBudgetError). Pillow keeps RGB, RGBA, CMYK and 32-bit pixels in
# 4 bytes (L and P in 1), so that is <= 256 MB: a 1 GB Raspberry Pi keeps room for the interpreter,
# the index and the OS. A JPEG counts at its reduced decoding scale (1/64 of its pixels at most).
# DECODE_BUDGET's capacity is the one rule: replace it (``Budget(n)``) for another budget.
MAX_DECODE_PIXELS = 64_000_000
DECODE_BUDGET = Budget(MAX_DECODE_PIXELS)
# Box-reduce to at least this many times the target size before the bicubic resize: Pillow's
# ``reducing_gap`` rule; at 3 the result stays within a few grey levels of a full-size resize.
REDUCING_GAP = 3
# Thumbnails reduce by Image.thumbnail's own gap, so a reduced decode gives its very thumbnail.
THUMBNAIL_REDUCING_GAP = 2
# Pixels converted to RGB per step of a reduced decode (float64 for 16-bit images: 8 MB).
STRIP_PIXELS = 1 << 20
# Pillow allocates pixels in blocks of PILLOW_BLOCK_SIZE (16 MB by default). glibc serves
# allocations up to 32 MB from per-thread arenas that keep what is freed, so a server decoding
# each request in a new thread kept every decode's pixels (4 uploads of a 60-MP PNG in turn:
# 803 MB peak); larger blocks are mmap-ed and go back to the system when freed (318 MB).
# A user's own PILLOW_BLOCK_SIZE wins.
PIXEL_BLOCK_BYTES = 64 << 20
if "PILLOW_BLOCK_SIZE" not in os.environ:
    Image.core.set_block_size(PIXEL_BLOCK_BYTES)
# EXIF orientation -> the transposition that undoes it (as ``ImageOps.exif_transpose``).
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}
_SWAPS_SIDES = {Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90,
                Image.Transpose.ROTATE_270}


class PixelBudgetError(ValueError):
    """An image that would decode to more pixels than the pixel budget (:data:`DECODE_BUDGET`)."""

    def __init__(self, message: str, *, pixels: int, limit: int):
        super().__init__(message)
        self.pixels, self.limit = pixels, limit


def check_image_size(image_size, *, required: bool = False):
    if image_size is None and not required:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        rule = "a positive int" + ("" if required else " or None")
        raise ValueError(f"`image_size` must be {rule}. Received: image_size={image_size!r}")
    return image_size


def decode_image(source, image_size: int | None = None) -> np.ndarray:
    """File path or file object -> uint8 (H, W, 3) RGB, EXIF-rotated, squashed to
    ``image_size`` x ``image_size`` when given. Raises on anything unreadable, and
    :class:`PixelBudgetError` for an image over the pixel budget."""
    square = (lambda oriented: (image_size, image_size)) if image_size else None
    rgb, resized = _decode_rgb(source, image_size, square, REDUCING_GAP)
    # Not reduced: the order of the full-size rule, so small images and JPEGs decode as before.
    if image_size and not resized and rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), RESAMPLE)
    return np.asarray(rgb, dtype=np.uint8)


def decode_thumbnail(source, max_side: int) -> Image.Image:
    """File path or file object -> RGB ``PIL.Image`` no larger than ``max_side`` on either side,
    aspect kept, by the rules of :func:`decode_image` (pixel budget included). A JPEG is decoded
    at the smallest DCT scale that still covers ``max_side`` (a 12 MP photo at 1/8: ~15x faster
    than in full); any other large image is box-reduced strip by strip while it is converted, by
    the factor ``Image.thumbnail`` would reduce a full decode with, so the result is the same."""
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
        raise ValueError(f"`max_side` must be a positive int. Received: max_side={max_side!r}")
    rgb, resized = _decode_rgb(source, max_side, lambda oriented: thumbnail_size(oriented, max_side),
                               THUMBNAIL_REDUCING_GAP)
    if not resized:
        rgb.thumbnail((max_side, max_side), RESAMPLE)
    return rgb


def thumbnail_size(size: tuple, max_side: int) -> tuple | None:
    """The (width, height) ``Image.thumbnail`` gives ``size`` in a ``max_side`` square: the long
    side ``max_side``, the short side the whole number (floor or ceil) whose aspect ratio is
    closest to the original's, at least 1; None when ``size`` already fits."""
    width, height = size
    if width <= max_side and height <= max_side:
        return None
    aspect = width / height
    if width <= height:
        exact = max_side * aspect
        short = min(math.floor(exact), math.ceil(exact), key=lambda n: abs(aspect - n / max_side))
        return max(short, 1), max_side
    exact = max_side / aspect
    # A zero-pixel side has no aspect ratio; Pillow picks it (and then 1) when it is a candidate.
    short = min(math.floor(exact), math.ceil(exact), key=lambda n: abs(aspect - max_side / n) if n else 0)
    return max_side, max(short, 1)


def _decode_rgb(source, draft_side, fit, gap: int) -> tuple:
    """The decoding rules shared by every decode -> (RGB image, EXIF-oriented; resized).

    Refuses bombs and images over the pixel budget and holds the budget while decoding; a JPEG
    decodes at the reduced DCT scale covering a ``draft_side`` square (None: full size).
    ``fit(oriented size)`` gives the caller's target size (None: keep the size); an image that
    is not a JPEG and is over ``gap`` x the target is box-reduced strip by strip while it is
    converted, then resized to the target (resized=True). Otherwise the image comes back at its
    decoded size for the caller's own resize (resized=False), exactly as a full decode would."""
    with Image.open(source) as img:
        drafted = _check_and_draft(img, draft_side)
        size, pixels = img.size, img.width * img.height
        with DECODE_BUDGET.hold(pixels):
            img.load()
            transpose = _ORIENTATION.get(img.getexif().get(ExifTags.Base.Orientation, 1))
            target = None if fit is None or drafted else fit(_oriented(size, transpose))
            # The target is for the oriented image; the reduction happens before the rotation.
            target = None if target is None else _oriented(target, transpose)
            factor = reduce_factor(size, target, gap) if target else (1, 1)
            rgb = reduced_rgb(img, factor)
            img.close()  # free the full-size pixels before the budget says they are free
    resized = factor != (1, 1)
    if resized:
        # The box is the source's extent in reduced pixels: the last block may be partial.
        rgb = rgb.resize(target, RESAMPLE, box=(0, 0, size[0] / factor[0], size[1] / factor[1]))
    return (rgb.transpose(transpose) if transpose is not None else rgb), resized


def _oriented(size: tuple, transpose) -> tuple:
    """``size`` after ``transpose`` (a quarter turn or a diagonal flip swaps the sides)."""
    return size[::-1] if transpose in _SWAPS_SIDES else size


def _check_and_draft(img: Image.Image, image_size) -> bool:
    """Refuse bombs and images over the pixel budget; True when ``img`` (a JPEG) will decode at
    a reduced DCT scale, the smallest that keeps both sides >= ``image_size``."""
    limit = Image.MAX_IMAGE_PIXELS
    # Pillow only warns between 1x and 2x its limit; a skipped file is the safer answer.
    if limit and img.width * img.height > limit:
        raise Image.DecompressionBombError(
            f"{img.width}x{img.height} pixels exceeds Image.MAX_IMAGE_PIXELS={limit}")
    drafted = bool(image_size) and img.draft("RGB", (image_size, image_size)) is not None
    pixels, limit = img.width * img.height, DECODE_BUDGET.capacity
    if pixels > limit:
        raise PixelBudgetError(
            f"decoding {img.width}x{img.height} = {pixels} pixels is over the pixel budget "
            f"MAX_DECODE_PIXELS={limit}", pixels=pixels, limit=limit)
    return drafted


def reduce_factor(size: tuple, target, gap: int = REDUCING_GAP) -> tuple:
    """Integer box-reduction factors (x, y) that keep each side >= ``gap`` x the target's side
    (``target``: (width, height), or an int for a square)."""
    target = (target, target) if isinstance(target, int) else target
    return tuple(max(1, side // (goal * gap)) for side, goal in zip(size, target))


def reduced_rgb(img: Image.Image, factor: tuple = (1, 1)) -> Image.Image:
    """``img`` (loaded) as RGB, box-reduced by ``factor`` (x, y); converted in strips of
    whole blocks, so the only full-size buffer is ``img`` itself."""
    fx, fy = factor
    width, height = img.size
    out = Image.new("RGB", (-(-width // fx), -(-height // fy)))
    rows = fy * max(1, STRIP_PIXELS // (width * fy))
    for top in range(0, height, rows):
        strip = _to_rgb(img.crop((0, top, width, min(top + rows, height))))
        out.paste(strip.reduce(factor) if factor != (1, 1) else strip, (0, top // fy))
    return out


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
    """-> (list of arrays or None, list of (path, reason) for the failures), in input order.
    Decodes in threads; :data:`DECODE_BUDGET` bounds the pixels they hold together."""
    paths = [str(p) for p in paths]
    # Pillow releases the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda p: _try_decode(p, image_size), paths))
    skipped = [(p, reason) for p, (_, reason) in zip(paths, results) if reason]
    return [arr for arr, _ in results], skipped


def resize_images(x: np.ndarray, image_size: int) -> np.ndarray:
    size = (image_size, image_size)
    return np.stack([np.asarray(Image.fromarray(im).resize(size, RESAMPLE)) for im in x])
