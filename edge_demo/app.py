"""The application behind ``edge_demo serve``: stats, item pages, searches and thumbnails as
plain dicts and bytes; the HTTP layer (:mod:`edge_demo.server`) only routes and encodes them."""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path

import numpy as np

from edge_demo import photos
from edge_demo.params import ApiError, int_param, str_param, upload_bytes
from edge_demo.snapshot import IndexHolder
from edge_demo.thumbs import CACHE_BYTES, ThumbCache, encode_thumbnail
from mghash_tf.core import granularity as granularity_lib
from mghash_tf.core.images import PixelBudgetError

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD = 10 * 1024 * 1024
MAX_K = 1000
MAX_ITEMS_PAGE = 1000
THUMB_DEFAULT, THUMB_MIN, THUMB_MAX = 256, 16, 1024
# Uploads decoded at once; one more waits up to UPLOAD_WAIT_S for a slot, then gets 503. Memory
# is bounded anyway (the pixel budget of mghash_tf.core.images); this bounds the queue.
UPLOAD_DECODES = 2
UPLOAD_WAIT_S = 10.0


class LockedEncoder:
    """A TFLite interpreter is not thread-safe: serialise encoding, share everything else."""

    def __init__(self, encoder):
        self._encoder, self._lock = encoder, threading.Lock()
        self.input_size, self.bits = encoder.input_size, encoder.bits
        self.layout, self.description = encoder.layout, encoder.description

    def encode_bits(self, images, *, tta: bool = False):
        with self._lock:
            return self._encoder.encode_bits(images, tta=tta)


class App:
    """Everything a request handler needs; one per server."""

    def __init__(self, index_path, encoder, root, *, max_upload: int = DEFAULT_MAX_UPLOAD,
                 thumb_cache_bytes: int = CACHE_BYTES):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"--root must be the indexed photo folder. Received: {root}")
        if not isinstance(max_upload, int) or max_upload < 1:
            raise ValueError(f"max_upload must be an int >= 1. Received: {max_upload!r}")
        self.encoder = LockedEncoder(encoder)
        self.holder = IndexHolder(index_path, encoder)
        self.max_upload = max_upload
        self.thumbs = ThumbCache(thumb_cache_bytes)
        self.upload_slots = threading.BoundedSemaphore(UPLOAD_DECODES)

    # -- queries ---------------------------------------------------------------------------

    def stats(self) -> dict:
        snap = self.holder.current()
        index, d = snap.index, self.encoder.description
        segments = [{"name": s.name, "bits": s.bits, "label_level": s.label_level}
                    for s in index.layout.segments]
        has_coarse = bool(granularity_lib.coarse_segments(index.layout))
        return {"items": len(index), "bits": index.num_bits, "fingerprint": index.fingerprint,
                "tta": photos.index_tta(index),
                "layout": {"segments": segments}, "index_file": self.holder.path.name,
                "granularities": ["fine"] + (["coarse"] if has_coarse else [])
                + [f"segment:{s['name']}" for s in segments],
                "model": {k: d.get(k) for k in ("fingerprint", "variant", "backbone",
                                                 "input_size", "bits", "library_version")},
                "max_upload_bytes": self.max_upload, "max_k": MAX_K}

    def items(self, query: dict) -> dict:
        snap = self.holder.current()
        offset = int_param(query, "offset", 0, 0, None)
        limit = int_param(query, "limit", 100, 1, MAX_ITEMS_PAGE)
        index = snap.index
        ids = index.ids[offset:offset + limit].tolist()
        return {"total": len(index), "offset": offset, "limit": limit,
                "items": [{"id": i, "name": n} for i, n in zip(ids, index.names[offset:offset + limit])]}

    def search_by_id(self, query: dict) -> dict:
        snap = self.holder.current()
        item_id = int_param(query, "id", None, 0, None)
        row = snap.row_of_id.get(item_id)
        if row is None:
            raise ApiError(404, f"no indexed photo has id {item_id}")
        k, spec = self._search_params(query)
        args = self._granularity(snap, spec)
        t0 = time.perf_counter()
        D, I = snap.index.search(snap.index.codes[row:row + 1], k, **args)
        search_ms = (time.perf_counter() - t0) * 1e3
        return self._answer(snap, D[0], I[0], k, spec, {"search_ms": search_ms},
                            query_item={"id": item_id, "name": snap.index.names[row]})

    def search_upload(self, query: dict, body: bytes, content_type: str) -> dict:
        snap = self.holder.current()
        k, spec = self._search_params(query)
        args = self._granularity(snap, spec)  # reject bad parameters before decoding anything
        data = upload_bytes(body, content_type)
        t0 = time.perf_counter()
        image = self._decode_upload(data)
        decode_ms = (time.perf_counter() - t0) * 1e3
        timings = {}
        # tta=None: an upload is encoded as the snapshot's photos were (with or without TTA).
        D, I = photos.search_image(image, snap.index, self.encoder, k, args, tta=None, timings=timings)
        timings["decode_ms"] += decode_ms
        return self._answer(snap, D, I, k, spec, timings, query_item=None)

    def _decode_upload(self, data: bytes) -> np.ndarray:
        if not self.upload_slots.acquire(timeout=UPLOAD_WAIT_S):
            raise ApiError(503, f"busy: {UPLOAD_DECODES} uploads are being decoded; try again")
        try:
            return photos.prepare_query(io.BytesIO(data), self.encoder.input_size)
        except PixelBudgetError as e:
            raise ApiError(413, f"the upload decodes to {e.pixels} pixels; the limit is {e.limit}") from None
        except ValueError as e:  # any other decoding failure means "not an image"
            logger.info("rejected upload (%d bytes): %s", len(data), e)
            raise ApiError(400, "the upload is not a readable image") from None
        finally:
            self.upload_slots.release()

    def _search_params(self, query: dict) -> tuple:
        k = int_param(query, "k", 10, 1, MAX_K)
        spec = str_param(query, "granularity", "fine")
        return k, spec

    @staticmethod
    def _granularity(snap, spec) -> dict:
        try:
            return granularity_lib.search_args(snap.index.layout, spec)
        except ValueError as e:
            raise ApiError(400, str(e)) from None

    @staticmethod
    def _answer(snap, distances, ids, k, spec, timings, query_item) -> dict:
        keep = np.asarray(ids) >= 0
        ids = np.asarray(ids)[keep].tolist()
        distances = np.asarray(distances)[keep].tolist()
        names = snap.index.names_of(ids) if ids else []
        results = [{"rank": r, "id": i, "name": n, "distance": number(d)}
                   for r, (i, n, d) in enumerate(zip(ids, names, distances), 1)]
        timings = {key: round(v, 3) for key, v in timings.items()}
        return {"results": results, "k": k, "granularity": spec, "items": len(snap.index),
                "query_ms": round(sum(timings.values()), 3), "timings": timings,
                "query": query_item}

    # -- images ----------------------------------------------------------------------------

    def thumbnail(self, item_id: int, query: dict) -> bytes:
        snap = self.holder.current()
        size = int_param(query, "size", THUMB_DEFAULT, THUMB_MIN, THUMB_MAX)
        row = snap.row_of_id.get(item_id)
        if row is None:
            raise ApiError(404, f"no indexed photo has id {item_id}")
        path = self._photo_path(snap.index.names[row])
        try:
            st = path.stat()
        except OSError:
            raise ApiError(404, f"photo {item_id} is indexed but its file is gone") from None
        stamp = (st.st_size, st.st_mtime_ns)
        cached = self.thumbs.get(str(path), size, stamp)
        if cached is not None:
            return cached
        try:
            data = encode_thumbnail(path, size)
        except Exception as e:  # the file changed into something unreadable since indexing
            logger.warning("cannot decode %s: %s: %s", path, type(e).__name__, e)
            raise ApiError(404, f"photo {item_id} can no longer be read") from None
        self.thumbs.put(str(path), size, stamp, data)
        return data

    def _photo_path(self, name: str) -> Path:
        """``root / name`` resolved, refused (404) unless it stays inside ``root``."""
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            # A tampered index, or a symlink pointing out of the folder: never follow it.
            logger.warning("refusing to serve %r: resolves to %s, outside %s or not a file",
                           name, path, self.root)
            raise ApiError(404, "photo not available")
        return path


def number(d):
    d = float(d)
    return int(d) if d.is_integer() else round(d, 4)
