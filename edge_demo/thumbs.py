"""Thumbnails for ``edge_demo serve``: JPEG bytes of a photo at a requested size, decoded by the
shared rules (:func:`~mghash_tf.core.images.decode_thumbnail`: reduced JPEG decode, EXIF
orientation, RGB) and kept in a byte-bounded LRU cache.

The library page asks for a screenful of thumbnails at once and asks again on every visit, so
a thumbnail is made once per file version. A cache entry is one (file, thumbnail size) pair
stamped with the file's size and mtime when it was made; a lookup with another stamp (the photo
was edited or replaced) drops the entry, so the changed photo is decoded again and the stale
bytes stop counting against the bound.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

from mghash_tf.core.images import decode_thumbnail

JPEG_QUALITY = 85
# About 1,600 thumbnails of 256 px (~20 KB each): several library pages on a 1 GB Raspberry Pi.
CACHE_BYTES = 32 * 1024 * 1024


def encode_thumbnail(source, size: int) -> bytes:
    """JPEG bytes of ``source`` (path or file object) no larger than ``size`` on either side."""
    buf = io.BytesIO()
    decode_thumbnail(source, size).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


class ThumbCache:
    """LRU of thumbnail bytes keyed by (path, size), valid for one file ``stamp``; thread-safe.

    ``max_bytes`` bounds the sum of the stored thumbnails' lengths; a thumbnail longer than the
    whole bound is not stored.
    """

    def __init__(self, max_bytes: int = CACHE_BYTES):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"`max_bytes` must be an int >= 0. Received: max_bytes={max_bytes!r}")
        self.max_bytes = max_bytes
        self._data = OrderedDict()  # (path, size) -> (stamp, bytes), least recently used first
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        """Bytes of thumbnails held now (never above ``max_bytes``)."""
        return self._bytes

    def get(self, path: str, size: int, stamp) -> bytes | None:
        key = (path, size)
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            if entry[0] != stamp:
                self._drop(key)
                return None
            self._data.move_to_end(key)
            return entry[1]

    def put(self, path: str, size: int, stamp, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        key = (path, size)
        with self._lock:
            if key in self._data:
                self._drop(key)
            self._data[key] = (stamp, data)
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._data)))

    def _drop(self, key) -> None:
        _, data = self._data.pop(key)
        self._bytes -= len(data)
