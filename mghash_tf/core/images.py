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

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import ExifTags, Image

from mghash_tf.core.budget import Budget

# Pillow's bicubic resize widens its kernel when shrinking, so it also anti-aliases photos.
RESAMPLE = Image.Resampling.BICUBIC
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
    with Image.open(source) as img:
        drafted = _check_and_draft(img, image_size)
        factor = reduce_factor(img.size, image_size) if image_size and not drafted else (1, 1)
        size, pixels = img.size, img.width * img.height
        with DECODE_BUDGET.hold(pixels):
            img.load()
            transpose = _ORIENTATION.get(img.getexif().get(ExifTags.Base.Orientation, 1))
            rgb = reduced_rgb(img, factor)
            img.close()  # free the full-size pixels before the budget says they are free
    if factor == (1, 1):  # the order of the full-size rule, so small images decode as before
        rgb = rgb.transpose(transpose) if transpose is not None else rgb
        if image_size and rgb.size != (image_size, image_size):
            rgb = rgb.resize((image_size, image_size), RESAMPLE)
    else:
        # The box is the source's extent in reduced pixels: the last block may be partial.
        rgb = rgb.resize((image_size, image_size), RESAMPLE,
                         box=(0, 0, size[0] / factor[0], size[1] / factor[1]))
        rgb = rgb.transpose(transpose) if transpose is not None else rgb
    return np.asarray(rgb, dtype=np.uint8)


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


def reduce_factor(size: tuple, image_size: int) -> tuple:
    """Integer box-reduction factors (x, y) that keep each side >= REDUCING_GAP x ``image_size``."""
    return tuple(max(1, side // (image_size * REDUCING_GAP)) for side in size)


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
