"""Decoding with reduction against the full-size rule, the pixel budget, and the budget's hold
on concurrent decodes (mghash_tf.core.images)."""

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from mghash_tf.core import images
from mghash_tf.core.budget import Budget

SIZE = 16
REPO = Path(__file__).resolve().parents[1]


def _scene(width=600, height=450, seed=0):
    """Smooth waves plus colour blocks: detail at every scale, as in a photo."""
    yy, xx = np.mgrid[0:height, 0:width]
    waves = np.stack([127 + 100 * np.sin(xx / 37.0 + yy / 23.0), 127 + 100 * np.cos(xx / 11.0),
                      127 + 80 * np.sin(yy / 7.0)], axis=-1)
    blocks = np.random.default_rng(seed).integers(0, 256, (height // 30 + 1, width // 30 + 1, 3))
    blocks = np.repeat(np.repeat(blocks, 30, axis=0), 30, axis=1)[:height, :width]
    return np.clip((waves + blocks) / 2, 0, 255).astype(np.uint8)


def _variants():
    rgb = _scene()
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    palette = Image.fromarray(rgb).quantize(64)
    palette.info["transparency"] = 5
    deep = rgb[..., 0].astype(np.uint16) * 257 + np.random.default_rng(1).integers(0, 200, rgb.shape[:2]).astype(np.uint16)
    return {"RGB": Image.fromarray(rgb), "RGBA": Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
            "L": Image.fromarray(rgb[..., 1]), "P": Image.fromarray(rgb).quantize(64),
            "P+transparency": palette, "I;16": Image.fromarray(deep),
            "1": Image.fromarray(rgb[..., 2] > 127)}


def _png(img, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def _full_rule(data: bytes, size: int) -> np.ndarray:
    """The reference: decode at full size, then the bicubic squash to ``size``."""
    full = images.decode_image(io.BytesIO(data))
    return np.asarray(Image.fromarray(full).resize((size, size), images.RESAMPLE)).astype(int)


@pytest.mark.parametrize("mode", list(_variants()))
def test_a_reduced_decode_is_pillows_reducing_gap_resize_of_the_full_decode(mode):
    data = _png(_variants()[mode])
    assert images.reduce_factor((600, 450), SIZE) == (12, 9)  # the reduction does happen
    got = images.decode_image(io.BytesIO(data), SIZE).astype(int)
    full = Image.fromarray(images.decode_image(io.BytesIO(data)))
    # Strip by strip, the reduction is exactly Pillow's resize(reducing_gap=3) of the full decode ...
    expected = full.resize((SIZE, SIZE), images.RESAMPLE, reducing_gap=images.REDUCING_GAP)
    np.testing.assert_array_equal(got, np.asarray(expected))
    # ... which stays within a few grey levels of the plain full-size squash (measured: photo-like
    # modes mean <= 0.7, max 3; the two-level "1" image, all edges, mean 2.0, max 8).
    diff = np.abs(got - _full_rule(data, SIZE))
    mean_limit, max_limit = (2.5, 10) if mode == "1" else (1.0, 4)
    assert diff.mean() < mean_limit and diff.max() <= max_limit, (diff.mean(), diff.max())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_reduced_decode_applies_the_exif_orientation(orientation):
    rgb = _scene()
    rgb[:60, :80] = (255, 0, 0)  # a red top-left corner tells where the image went
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = orientation
    data = _png(img, exif=exif.tobytes())
    got = images.decode_image(io.BytesIO(data), 64).astype(int)
    expected = np.asarray(ImageOps.exif_transpose(img).resize((64, 64), images.RESAMPLE)).astype(int)
    diff = np.abs(got - expected)
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 8, (diff.mean(), diff.max())


def test_small_images_and_jpegs_decode_exactly_as_before():
    """No reduction below REDUCING_GAP x the target, and none for a JPEG (its DCT draft already
    reduced it): the result is the full-size rule's, bit for bit."""
    small = Image.fromarray(_scene(40, 30))
    assert images.reduce_factor(small.size, SIZE) == (1, 1)
    data = _png(small)
    np.testing.assert_array_equal(images.decode_image(io.BytesIO(data), SIZE), _full_rule(data, SIZE))
    for orientation in (1, 6):
        img = Image.fromarray(_scene())
        exif = img.getexif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90, exif=exif.tobytes())
        with Image.open(io.BytesIO(buf.getvalue())) as ref:  # the rule as it stood: draft, rotate, resize
            ref.draft("RGB", (SIZE, SIZE))
            expected = np.asarray(ImageOps.exif_transpose(ref).convert("RGB").resize((SIZE, SIZE), images.RESAMPLE))
        np.testing.assert_array_equal(images.decode_image(io.BytesIO(buf.getvalue()), SIZE), expected)


def test_over_the_pixel_budget_is_refused_with_the_rule_and_the_value(monkeypatch, tmp_path):
    monkeypatch.setattr(images, "DECODE_BUDGET", Budget(1000))
    path = tmp_path / "big.png"
    Image.fromarray(_scene(40, 30)).save(path)  # 1200 pixels
    with pytest.raises(images.PixelBudgetError, match=r"40x30 = 1200 pixels .* MAX_DECODE_PIXELS=1000") as e:
        images.decode_image(path, SIZE)
    assert (e.value.pixels, e.value.limit) == (1200, 1000)
    arrays, skipped = images.decode_files([path], SIZE)
    assert arrays == [None] and skipped == [(str(path), f"PixelBudgetError: {e.value}")]


def test_a_jpeg_counts_at_its_reduced_decoding_scale(monkeypatch, tmp_path):
    monkeypatch.setattr(images, "DECODE_BUDGET", Budget(1000))
    path = tmp_path / "photo.jpg"
    Image.fromarray(_scene(256, 128)).save(path, quality=90)  # 32768 pixels; 1/8 scale: 32 x 16
    assert images.decode_image(path, SIZE).shape == (SIZE, SIZE, 3)
    with pytest.raises(images.PixelBudgetError, match="256x128 = 32768 pixels"):
        images.decode_image(path)  # no target size: no draft, the full size counts


class _Recording(Budget):
    def __init__(self, capacity):
        super().__init__(capacity)
        self.peak, self.grants, self._lock = 0, [], threading.Lock()

    def acquire(self, units, timeout=None):
        granted = super().acquire(units, timeout)
        with self._lock:
            self.grants.append(units)
            self.peak = max(self.peak, self.used)
        return granted


def test_threads_decoding_together_hold_at_most_the_budget(monkeypatch, tmp_path):
    budget = _Recording(3 * 600 * 450)  # room for three of the twelve at once
    monkeypatch.setattr(images, "DECODE_BUDGET", budget)
    paths = []
    for i in range(12):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(_scene(seed=i)).save(paths[-1])
    arrays, skipped = images.decode_files(paths, SIZE)
    assert skipped == [] and all(a.shape == (SIZE, SIZE, 3) for a in arrays)
    assert budget.grants == [600 * 450] * 12  # every decode held its full-size pixels ...
    assert 0 < budget.peak <= budget.capacity and budget.used == 0  # ... and gave them back


def test_pillow_blocks_are_large_enough_to_go_back_to_the_system_unless_the_user_chose():
    assert Image.core.get_block_size() == images.PIXEL_BLOCK_BYTES > 32 << 20  # glibc's mmap ceiling
    code = "import mghash_tf.core.images; from PIL import Image; print(Image.core.get_block_size())"
    env = {**os.environ, "PILLOW_BLOCK_SIZE": "1m"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == str(1 << 20), out.stderr


# --- thumbnails ----------------------------------------------------------------------------------

def _recorded_factors(monkeypatch):
    factors = []
    original = images.reduced_rgb

    def recording(img, factor=(1, 1)):
        factors.append(factor)
        return original(img, factor)

    monkeypatch.setattr(images, "reduced_rgb", recording)
    return factors


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P+transparency", "I;16"])
def test_a_large_non_jpeg_thumbnail_decodes_reduced_and_equals_pillows_thumbnail(monkeypatch, mode):
    data = _png(_variants()[mode])
    factors = _recorded_factors(monkeypatch)
    got = images.decode_thumbnail(io.BytesIO(data), 64)
    # 600x450 into 64 px: 64x48, and Image.thumbnail's gap of 2 reduces by 600 // 128 = 450 // 96 = 4.
    assert factors == [(4, 4)]
    expected = Image.fromarray(images.decode_image(io.BytesIO(data)))
    expected.thumbnail((64, 64), images.RESAMPLE)
    assert got.mode == "RGB" and got.size == expected.size == (64, 48)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_reduced_thumbnail_applies_the_exif_orientation(orientation):
    rgb = _scene(601, 451)  # partial blocks at the right and bottom edges
    rgb[:60, :80] = (255, 0, 0)
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = orientation
    got = images.decode_thumbnail(io.BytesIO(_png(img, exif=exif.tobytes())), 64)
    expected = ImageOps.exif_transpose(img)
    expected.thumbnail((64, 64), images.RESAMPLE)
    assert got.size == expected.size
    diff = np.abs(np.asarray(got).astype(int) - np.asarray(expected).astype(int))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 8, (diff.mean(), diff.max())


def test_thumbnails_hold_the_pixel_budget_and_are_refused_over_it(monkeypatch, tmp_path):
    budget = _Recording(1000)
    monkeypatch.setattr(images, "DECODE_BUDGET", budget)
    png, jpeg = tmp_path / "big.png", tmp_path / "photo.jpg"
    Image.fromarray(_scene(40, 30)).save(png)  # 1200 pixels
    with pytest.raises(images.PixelBudgetError, match=r"40x30 = 1200 pixels .* MAX_DECODE_PIXELS=1000"):
        images.decode_thumbnail(png, 8)
    Image.fromarray(_scene(256, 128)).save(jpeg, quality=90)  # 1/8 scale: 32 x 16 = 512 pixels
    assert images.decode_thumbnail(jpeg, 16).size == (16, 8)
    assert budget.grants == [512] and budget.used == 0


def test_thumbnail_size_is_pillows_for_any_shape():
    """Brute-force reference: Image.thumbnail on blank images of every shape up to 70 px."""
    for width in range(1, 71):
        for height in range(1, 71):
            for max_side in (1, 7, 16, 33):
                img = Image.new("L", (width, height))
                img.thumbnail((max_side, max_side))
                expected = None if img.size == (width, height) else img.size
                assert images.thumbnail_size((width, height), max_side) == expected, (width, height, max_side)
