"""Result grid: the query and its top-k photos as captioned thumbnails in one PNG. Pillow only.

Geometry (pixels): every tile is ``thumb + 2 * FRAME`` wide and ``thumb + 2 * FRAME + CAPTION``
tall, tiles sit in rows of ``columns``; the frame is green or red when a result's folder label
agrees or disagrees with the query's, the background colour when there is no label to compare.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from mghash_tf.core.images import decode_thumbnail

logger = logging.getLogger(__name__)

FRAME = 4
CAPTION = 16
BACKGROUND = (255, 255, 255)
MISSING = (200, 200, 200)
COLOURS = {True: (0, 170, 0), False: (210, 0, 0), None: BACKGROUND}


def grid_size(tiles: int, thumb: int, columns: int) -> tuple:
    """(width, height) of a grid of ``tiles`` tiles."""
    cols = min(tiles, columns)
    rows = math.ceil(tiles / columns)
    return cols * (thumb + 2 * FRAME), rows * (thumb + 2 * FRAME + CAPTION)


def _thumbnail(image, thumb: int) -> Image.Image:
    """Aspect-preserving thumbnail of an array or path; a grey square when the file is unreadable."""
    try:
        small = Image.fromarray(image) if isinstance(image, np.ndarray) else decode_thumbnail(image, thumb)
    except Exception as e:  # a photo deleted or damaged since indexing must not stop the grid
        logger.warning("no thumbnail for %s: %s: %s", image, type(e).__name__, e)
        return Image.new("RGB", (thumb, thumb), MISSING)
    return ImageOps.contain(small, (thumb, thumb), Image.Resampling.BICUBIC)


def write_grid(out_path, query, results, *, thumb: int = 96, columns: int = 6) -> tuple:
    """Write the grid PNG; returns its (width, height).

    Args:
        query: the query image (uint8 (H, W, 3) array or path).
        results: list of ``(image or path, caption, match)`` with ``match`` True/False/None
            (green frame, red frame, no frame).
        thumb: thumbnail side in pixels; columns: tiles per row (the query is the first tile).
    """
    if not isinstance(thumb, int) or thumb < 16 or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"`thumb` must be an int >= 16 and `columns` an int >= 1. "
                         f"Received: thumb={thumb!r}, columns={columns!r}")
    tiles = [(query, "query", None)] + list(results)
    size = grid_size(len(tiles), thumb, columns)
    canvas = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    tile_w, tile_h = thumb + 2 * FRAME, thumb + 2 * FRAME + CAPTION
    for i, (image, caption, match) in enumerate(tiles):
        x, y = (i % columns) * tile_w, (i // columns) * tile_h
        draw.rectangle([x, y, x + tile_w - 1, y + thumb + 2 * FRAME - 1], fill=COLOURS[match])
        small = _thumbnail(image, thumb)
        canvas.paste(small, (x + FRAME + (thumb - small.width) // 2, y + FRAME + (thumb - small.height) // 2))
        draw.text((x + FRAME, y + thumb + 2 * FRAME + 2), caption, fill=(0, 0, 0), font=font)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_path, format="PNG")
    return size
