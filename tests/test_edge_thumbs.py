"""Thumbnails of ``edge_demo serve``: the reduced JPEG decode against a full decode (the
brute-force reference), EXIF orientation, and the byte-bounded cache."""

import io

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from edge_demo.thumbs import ThumbCache, encode_thumbnail
from mghash_tf.core.images import decode_image, decode_thumbnail

ORIENTATION = 0x0112


def photo(width, height, seed=0):
    """A smooth, photo-like image: random colours at 1/100 scale, enlarged bicubically."""
    small = np.random.default_rng(seed).integers(0, 256, (height // 100 + 1, width // 100 + 1, 3), np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def save_jpeg(image, path, orientation=None):
    exif = Image.Exif()
    if orientation:
        exif[ORIENTATION] = orientation
    image.save(path, "JPEG", quality=92, exif=exif)
    return path


def reference(path, size):
    """The thumbnail by a full-resolution decode: what the server made before draft decoding."""
    img = Image.fromarray(decode_image(path))
    img.thumbnail((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, np.float32)


@pytest.fixture
def draft_sizes(monkeypatch):
    """The sizes JPEG drafts reduce to, recorded."""
    seen = []
    original = JpegImagePlugin.JpegImageFile.draft

    def recording(self, mode, size):
        result = original(self, mode, size)
        seen.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording)
    return seen


def test_a_large_jpeg_is_decoded_reduced_and_matches_the_full_decode(tmp_path, draft_sizes):
    path = save_jpeg(photo(2400, 1800), tmp_path / "big.jpg")
    got = decode_thumbnail(path, 128)
    # 2400 // 128 = 18, 1800 // 128 = 14: libjpeg's largest scale, 1/8, still covers 128 px.
    assert draft_sizes == [(300, 225)]
    assert got.mode == "RGB" and got.size == (128, 96)
    diff = np.abs(np.asarray(got, np.float32) - reference(path, 128))
    assert diff.mean() < 1 and diff.max() <= 8, (diff.mean(), diff.max())


@pytest.mark.parametrize("orientation, size", [(1, (128, 96)), (3, (128, 96)), (6, (96, 128)),
                                               (8, (96, 128))])
def test_exif_orientation_is_applied_after_the_reduced_decode(tmp_path, orientation, size):
    image = photo(1600, 1200, seed=orientation)
    image.paste((255, 0, 0), (0, 0, 400, 300))  # a red top-left corner shows where it went
    path = save_jpeg(image, tmp_path / "o.jpg", orientation)
    got = decode_thumbnail(path, 128)
    assert got.size == size
    ref = reference(path, 128)
    diff = np.abs(np.asarray(got, np.float32) - ref)
    assert diff.mean() < 1 and np.percentile(diff, 99) <= 4, (diff.mean(), np.percentile(diff, 99))
    # Where the red corner lands: top-left unrotated, bottom-right at 180, top-right at 90 CW (6),
    # bottom-left at 90 CCW (8).
    h, w = ref.shape[:2]
    y, x = {1: (2, 2), 3: (h - 3, w - 3), 6: (2, w - 3), 8: (h - 3, 2)}[orientation]
    red, green, blue = np.asarray(got)[y, x]
    assert red > 200 and green < 60 and blue < 60, (red, green, blue)


def test_non_jpeg_thumbnails_equal_the_full_decode(tmp_path):
    path = tmp_path / "p.png"
    photo(900, 500).save(path)
    assert np.array_equal(np.asarray(decode_thumbnail(path, 100), np.float32), reference(path, 100))


def test_small_photos_are_not_enlarged(tmp_path):
    path = save_jpeg(photo(60, 40), tmp_path / "s.jpg")
    assert decode_thumbnail(path, 256).size == (60, 40)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_thumbnail_size_must_be_a_positive_int(tmp_path, bad):
    path = save_jpeg(photo(60, 40), tmp_path / "s.jpg")
    with pytest.raises(ValueError, match="max_side"):
        decode_thumbnail(path, bad)


def test_encoded_thumbnail_is_a_jpeg_within_the_size(tmp_path):
    path = save_jpeg(photo(1000, 700), tmp_path / "e.jpg")
    with Image.open(io.BytesIO(encode_thumbnail(path, 64))) as img:
        assert img.format == "JPEG" and img.size == (64, 45)


# --- cache -------------------------------------------------------------------------------------

def test_cache_returns_the_stored_bytes_for_the_same_stamp_only():
    cache = ThumbCache(1000)
    cache.put("a.jpg", 64, (10, 1), b"x" * 100)
    assert cache.get("a.jpg", 64, (10, 1)) == b"x" * 100
    assert cache.get("a.jpg", 128, (10, 1)) is None  # another size is another thumbnail
    # The file changed (size or mtime): the entry is dropped, not kept beside the new one.
    assert cache.get("a.jpg", 64, (10, 2)) is None
    assert len(cache) == 0 and cache.nbytes == 0
    cache.put("a.jpg", 64, (10, 2), b"y" * 50)
    cache.put("a.jpg", 64, (11, 3), b"z" * 70)  # replaced in place
    assert len(cache) == 1 and cache.nbytes == 70 and cache.get("a.jpg", 64, (11, 3)) == b"z" * 70


def test_cache_bound_holds_and_evicts_least_recently_used():
    cache = ThumbCache(250)
    for name in "abc":
        cache.put(name, 64, 0, name.encode() * 100)
    # a, b fit (200 bytes); c pushed out a, the least recently used.
    assert cache.nbytes == 200 and cache.get("a", 64, 0) is None
    assert cache.get("b", 64, 0) == b"b" * 100  # b is now the most recent
    cache.put("d", 64, 0, b"d" * 100)
    assert cache.get("c", 64, 0) is None and cache.get("b", 64, 0) and cache.get("d", 64, 0)
    cache.put("huge", 64, 0, b"h" * 251)  # longer than the whole bound: not stored, nothing evicted
    assert cache.get("huge", 64, 0) is None and cache.nbytes == 200 and len(cache) == 2


def test_cache_agrees_with_a_plain_lru_under_random_use():
    """Brute-force reference: an OrderedDict LRU evicting from the front until the bytes fit."""
    from collections import OrderedDict

    bound, cache, ref = 300, ThumbCache(300), OrderedDict()
    rng = np.random.default_rng(0)
    for _ in range(2000):
        key, stamp = (f"p{rng.integers(12)}", int(rng.choice([64, 128]))), int(rng.integers(2))
        if rng.random() < 0.5:
            data = bytes([int(rng.integers(256))]) * int(rng.integers(1, 140))
            cache.put(*key, stamp, data)
            if len(data) <= bound:
                ref.pop(key, None)
                ref[key] = (stamp, data)
                while sum(len(d) for _, d in ref.values()) > bound:
                    ref.popitem(last=False)
        else:
            expected = ref.get(key)
            if expected is not None and expected[0] != stamp:
                del ref[key]
                expected = None
            elif expected is not None:
                ref.move_to_end(key)
            assert cache.get(*key, stamp) == (expected[1] if expected else None)
        assert len(cache) == len(ref) and cache.nbytes == sum(len(d) for _, d in ref.values()) <= bound


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_cache_bound_must_be_a_non_negative_int(bad):
    with pytest.raises(ValueError, match="max_bytes"):
        ThumbCache(bad)
