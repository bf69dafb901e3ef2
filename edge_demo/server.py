"""``python -m edge_demo serve``: a local web page to search an indexed photo folder offline.

Why the standard library's ``http.server.ThreadingHTTPServer`` and no web framework: the device
side already needs NumPy, Pillow and LiteRT, and a Raspberry Pi is often offline or has slow,
flaky package mirrors; every extra dependency is one more wheel to build for ARM and keep
patched. This app has six routes, one user and no sessions, so a framework would add far more
code than it saves. Its known limits (no HTTP/2, one thread per connection) do not matter for a
single person browsing their own photos on 127.0.0.1.

Routes (all answers JSON except images and the page):
    GET  /                      the page (``static/index.html``; assets under ``/static/``)
    GET  /api/stats             items, bits, fingerprint, layout, model description summary
    GET  /api/items?offset&limit  ``{"total", "items": [{"id", "name"}]}`` in index order
    GET  /image/<id>[?size=N]   a JPEG thumbnail of the indexed photo with that id
    GET  /api/search?id&k&granularity   nearest photos to an indexed photo (its stored code)
    POST /api/search?k&granularity      nearest photos to an uploaded image (raw body or
                                          multipart field ``image``)

Safety: photos are found only by index id, through the relative name the index stores, and the
resolved path must stay inside ``--root``; a request never names a file. Uploads are capped
(413) and must decode as an image (400) whatever their name or content type says. Errors the
client caused are 4xx with a short JSON message; anything else is logged and answered with a
generic 500 (no traceback leaves the process).

Re-indexing while serving: ``index`` writes the file atomically (rename), so the server checks
the file's identity (inode, size, mtime) on each request and loads the new index when it
changed. Each request takes one snapshot (index plus its id lookup) and uses only that, so a
swap mid-request cannot mix two indexes.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import ipaddress
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from edge_demo import photos
from mghash_tf.core import granularity as granularity_lib
from mghash_tf.core.images import decode_image

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Only these files are served from STATIC_DIR: a fixed table, so no request path reaches the disk.
STATIC_FILES = {"index.html": "text/html; charset=utf-8",
                "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
DEFAULT_MAX_UPLOAD = 10 * 1024 * 1024
MAX_K = 1000
DRAIN_FACTOR = 4
MAX_ITEMS_PAGE = 1000
THUMB_DEFAULT, THUMB_MIN, THUMB_MAX = 256, 16, 1024
THUMB_CACHE_ENTRIES = 512
# A silent client must not hold a worker thread forever.
REQUEST_TIMEOUT_S = 30
IMAGE_ROUTE = re.compile(r"/image/([0-9]{1,18})")
API = "/api"
API_STATS, API_ITEMS, API_SEARCH = (f"{API}/{name}" for name in ("stats", "items", "search"))
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                               "object-src 'none'; frame-ancestors 'none'",
}


class ApiError(Exception):
    """A client error: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = int(status), message


@dataclass(frozen=True)
class Snapshot:
    """One loaded index and the lookups derived from it; never mutated after creation."""

    index: object
    key: tuple
    row_of_id: dict = field(repr=False)


class IndexHolder:
    """The current index snapshot, reloaded when the file on disk changes.

    ``current()`` stats the file (cheap) and returns the loaded snapshot while the file's
    identity is unchanged, without locking. When it changed, one request loads the new file
    under a lock (others that saw the change wait for that load instead of repeating it) and
    swaps the reference; requests already holding the old snapshot finish with it. A file that
    fails to load (half-copied by hand, another model's index) leaves the previous snapshot
    serving and is logged once per identity.
    """

    def __init__(self, path, encoder):
        self.path, self.encoder = Path(path), encoder
        self._lock = threading.Lock()
        self._bad_key = None
        self._snapshot = self._load(self._file_key())
        if self._snapshot.index.names is None:
            raise ValueError(f"{self.path} stores no photo names; build it with "
                             "`python -m edge_demo index`")

    def _file_key(self) -> tuple:
        st = self.path.stat()
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self, key) -> Snapshot:
        index = photos.load_index_for(self.path, self.encoder)
        rows = {int(i): r for r, i in enumerate(index.ids)}
        logger.info("loaded %s: %d items", self.path, len(index))
        return Snapshot(index, key, rows)

    def current(self) -> Snapshot:
        snap = self._snapshot
        try:
            key = self._file_key()
        except OSError:  # mid-replace or deleted: keep serving what we have
            return snap
        if key == snap.key or key == self._bad_key:
            return snap
        with self._lock:
            snap = self._snapshot
            if key == snap.key or key == self._bad_key:
                return snap
            try:
                snap = self._load(key)
            except (OSError, ValueError) as e:
                self._bad_key = key
                logger.warning("keeping the previous index: cannot load %s: %s", self.path, e)
                return self._snapshot
            if snap.index.names is None:
                self._bad_key = key
                logger.warning("keeping the previous index: %s stores no names", self.path)
                return self._snapshot
            self._snapshot = snap
            return snap


class LockedEncoder:
    """A TFLite interpreter is not thread-safe: serialise encoding, share everything else."""

    def __init__(self, encoder):
        self._encoder, self._lock = encoder, threading.Lock()
        self.input_size, self.bits = encoder.input_size, encoder.bits
        self.layout, self.description = encoder.layout, encoder.description

    def encode_bits(self, images):
        with self._lock:
            return self._encoder.encode_bits(images)


class ThumbCache:
    """LRU of JPEG thumbnails keyed by file identity, so browsing a grid does not re-decode."""

    def __init__(self, entries: int = THUMB_CACHE_ENTRIES):
        self._data, self._entries, self._lock = OrderedDict(), entries, threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        return None

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._entries:
                self._data.popitem(last=False)


class App:
    """Everything a request handler needs; one per server."""

    def __init__(self, index_path, encoder, root, *, max_upload: int = DEFAULT_MAX_UPLOAD):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"--root must be the indexed photo folder. Received: {root}")
        if not isinstance(max_upload, int) or max_upload < 1:
            raise ValueError(f"max_upload must be an int >= 1. Received: {max_upload!r}")
        self.encoder = LockedEncoder(encoder)
        self.holder = IndexHolder(index_path, encoder)
        self.max_upload = max_upload
        self.thumbs = ThumbCache()

    # -- queries ---------------------------------------------------------------------------

    def stats(self) -> dict:
        snap = self.holder.current()
        index, d = snap.index, self.encoder.description
        segments = [{"name": s.name, "bits": s.bits, "label_level": s.label_level}
                    for s in index.layout.segments]
        has_coarse = bool(granularity_lib.coarse_segments(index.layout))
        return {"items": len(index), "bits": index.num_bits, "fingerprint": index.fingerprint,
                "layout": {"segments": segments}, "index_file": self.holder.path.name,
                "granularities": ["fine"] + (["coarse"] if has_coarse else [])
                + [f"segment:{s['name']}" for s in segments],
                "model": {k: d.get(k) for k in ("fingerprint", "variant", "backbone",
                                                 "input_size", "bits", "library_version")},
                "max_upload_bytes": self.max_upload, "max_k": MAX_K}

    def items(self, query: dict) -> dict:
        snap = self.holder.current()
        offset = _int_param(query, "offset", 0, 0, None)
        limit = _int_param(query, "limit", 100, 1, MAX_ITEMS_PAGE)
        index = snap.index
        ids = index.ids[offset:offset + limit].tolist()
        return {"total": len(index), "offset": offset, "limit": limit,
                "items": [{"id": i, "name": n} for i, n in zip(ids, index.names[offset:offset + limit])]}

    def search_by_id(self, query: dict) -> dict:
        snap = self.holder.current()
        item_id = _int_param(query, "id", None, 0, None)
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
        data = _upload_bytes(body, content_type)
        t0 = time.perf_counter()
        try:
            image = decode_image(io.BytesIO(data), self.encoder.input_size)
        except Exception as e:  # Pillow raises many types on malformed data: all mean "not an image"
            logger.info("rejected upload (%d bytes): %s: %s", len(data), type(e).__name__, e)
            raise ApiError(400, "the upload is not a readable image") from None
        t1 = time.perf_counter()
        code = self.encoder.encode_bits(image[None])
        t2 = time.perf_counter()
        D, I = snap.index.search(code, k, **args)
        timings = {"decode_ms": (t1 - t0) * 1e3, "encode_ms": (t2 - t1) * 1e3,
                   "search_ms": (time.perf_counter() - t2) * 1e3}
        return self._answer(snap, D[0], I[0], k, spec, timings, query_item=None)

    def _search_params(self, query: dict) -> tuple:
        k = _int_param(query, "k", 10, 1, MAX_K)
        spec = _str_param(query, "granularity", "fine")
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
        results = [{"rank": r, "id": i, "name": n, "distance": _number(d)}
                   for r, (i, n, d) in enumerate(zip(ids, names, distances), 1)]
        timings = {key: round(v, 3) for key, v in timings.items()}
        return {"results": results, "k": k, "granularity": spec, "items": len(snap.index),
                "query_ms": round(sum(timings.values()), 3), "timings": timings,
                "query": query_item}

    # -- images ----------------------------------------------------------------------------

    def thumbnail(self, item_id: int, query: dict) -> bytes:
        snap = self.holder.current()
        size = _int_param(query, "size", THUMB_DEFAULT, THUMB_MIN, THUMB_MAX)
        row = snap.row_of_id.get(item_id)
        if row is None:
            raise ApiError(404, f"no indexed photo has id {item_id}")
        path = self._photo_path(snap.index.names[row])
        try:
            st = path.stat()
        except OSError:
            raise ApiError(404, f"photo {item_id} is indexed but its file is gone") from None
        key = (str(path), st.st_size, st.st_mtime_ns, size)
        cached = self.thumbs.get(key)
        if cached is not None:
            return cached
        try:
            array = decode_image(path)
        except Exception as e:  # the file changed into something unreadable since indexing
            logger.warning("cannot decode %s: %s: %s", path, type(e).__name__, e)
            raise ApiError(404, f"photo {item_id} can no longer be read") from None
        img = Image.fromarray(array)
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        self.thumbs.put(key, data)
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


def _number(d):
    d = float(d)
    return int(d) if d.is_integer() else round(d, 4)


def _one(query: dict, name: str):
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, f"parameter {name!r} given {len(values)} times")
    return values[0]


def _int_param(query: dict, name: str, default, minimum: int, maximum) -> int:
    raw = _one(query, name)
    if raw is None:
        if default is None:
            raise ApiError(400, f"parameter {name!r} is required")
        return default
    if not re.fullmatch(r"[0-9]{1,18}", raw.strip()):
        raise ApiError(400, f"parameter {name!r} must be a non-negative integer; got {raw[:40]!r}")
    value = int(raw)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ApiError(400, f"parameter {name!r} must be {bound}; got {value}")
    return value


def _str_param(query: dict, name: str, default: str) -> str:
    raw = _one(query, name)
    if raw is None or raw == "":
        return default
    if len(raw) > 200:
        raise ApiError(400, f"parameter {name!r} is too long")
    return raw


def _upload_bytes(body: bytes, content_type: str) -> bytes:
    """The image bytes of a raw or ``multipart/form-data`` body (field ``image`` or the first file)."""
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        if not body:
            raise ApiError(400, "empty upload: send the image as the request body")
        return body
    # email's MIME parser handles multipart/form-data; the stdlib `cgi` module is deprecated.
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise ApiError(400, "malformed multipart body")
    parts = [p for p in message.iter_parts() if p.get_param("name", header="content-disposition")]
    chosen = next((p for p in parts if p.get_param("name", header="content-disposition") == "image"),
                  next((p for p in parts if p.get_filename()), None))
    if chosen is None:
        raise ApiError(400, "multipart upload without an 'image' field")
    data = chosen.get_payload(decode=True) or b""
    if not data:
        raise ApiError(400, "the 'image' field is empty")
    return data


def _discard(stream, length: int, chunk: int = 1 << 16) -> None:
    while length > 0:
        got = stream.read(min(chunk, length))
        if not got:
            return
        length -= len(got)


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Handler(BaseHTTPRequestHandler):
    server_version = "mghash-edge"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT_S

    @property
    def app(self) -> App:
        return self.server.app

    def log_message(self, fmt, *args):
        logger.info("%s %s", self.address_string(), fmt % args)

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (malformed request line, unknown method) as JSON too."""
        try:
            short = HTTPStatus(code).phrase
        except ValueError:
            short = "error"
        self._json(int(code), {"error": message or short}, close=True)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_HEAD(self):
        self._json(405, {"error": "method not allowed"}, close=True)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD

    def _dispatch(self, method: str):
        try:
            self._check_host()
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True, max_num_fields=50)
            self._route(method, url.path, query)
        except ApiError as e:
            self._json(e.status, {"error": e.message}, close=e.status >= 413 or method == "POST")
        except (BrokenPipeError, ConnectionResetError):
            logger.info("client went away: %s", self.path[:200])
        except ValueError as e:  # parse_qs limits and similar malformed input
            self._json(400, {"error": f"bad request: {e}"[:300]}, close=True)
        except Exception:
            logger.exception("internal error answering %s %s", method, self.path[:200])
            self._json(500, {"error": "internal server error"}, close=True)

    def _check_host(self):
        """When bound to loopback, answer only requests addressed to loopback names: a web page
        elsewhere cannot reach this server through DNS rebinding."""
        if not _is_loopback(self.server.server_address[0]):
            return
        host = (self.headers.get("Host") or "").strip()
        name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        if not _is_loopback(name.lower()):
            raise ApiError(403, "this server only answers requests for localhost")

    def _route(self, method: str, path: str, query: dict):
        app = self.app
        if method == "GET":
            if path in ("/", "/index.html"):
                return self._static("index.html")
            if path.startswith("/static/"):
                return self._static(path[len("/static/"):])
            match = IMAGE_ROUTE.fullmatch(path)
            if match:
                return self._send(200, app.thumbnail(int(match.group(1)), query), "image/jpeg",
                                  cache="private, max-age=60")
            if path == API_STATS:
                return self._json(200, app.stats())
            if path == API_ITEMS:
                return self._json(200, app.items(query))
            if path == API_SEARCH:
                return self._json(200, app.search_by_id(query))
        elif method == "POST" and path == API_SEARCH:
            body = self._read_body()
            return self._json(200, app.search_upload(query, body, self.headers.get("Content-Type", "")))
        elif path in (API_STATS, API_ITEMS, API_SEARCH, "/"):
            raise ApiError(405, f"{method} is not allowed on {path}")
        raise ApiError(404, "not found")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "send the upload with a Content-Length (no chunked encoding)")
        raw = self.headers.get("Content-Length")
        if raw is None or not raw.strip().isdigit():
            raise ApiError(411, "Content-Length is required")
        length = int(raw)
        if length > self.app.max_upload:
            # A browser still sending gets a connection reset, not our 413, if we close first; so
            # a moderately oversize body is read and dropped. A huge one is not worth reading.
            if length <= DRAIN_FACTOR * self.app.max_upload:
                _discard(self.rfile, length)
            raise ApiError(413, f"upload too large: {length} bytes, limit {self.app.max_upload}")
        body = self.rfile.read(length)
        if len(body) != length:
            raise ApiError(400, "upload ended early")
        return body

    def _static(self, name: str):
        content_type = STATIC_FILES.get(name)
        if content_type is None:
            raise ApiError(404, "not found")
        self._send(200, (STATIC_DIR / name).read_bytes(), content_type, cache="no-cache")

    def _json(self, status: int, payload: dict, *, close: bool = False):
        data = json.dumps(payload, allow_nan=False).encode("utf-8")
        self._send(status, data, "application/json; charset=utf-8", cache="no-store", close=close)

    def _send(self, status: int, data: bytes, content_type: str, *, cache: str, close: bool = False):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", cache)
        for key, value in SECURITY_HEADERS.items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, app: App):
        self.app = app
        super().__init__(address, Handler)


def make_server(index_path, model, root, *, host: str = "127.0.0.1", port: int = 8080,
                max_upload: int = DEFAULT_MAX_UPLOAD, num_threads=None) -> Server:
    """A bound (not yet serving) server; ``model`` is a path or a ``TFLiteEncoder``.

    A ``TFLiteEncoder`` given here belongs to the server from then on: the server serialises
    its own calls, but an interpreter used from another thread at the same time breaks.

    Call ``serve_forever()`` on it (``shutdown()`` from another thread stops it);
    ``server.server_address`` holds the actual port when ``port=0``.
    """
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535. Received: {port!r}")
    if isinstance(model, (str, os.PathLike)):
        from mghash_tf.core.encoder import TFLiteEncoder

        model = TFLiteEncoder(model, num_threads=num_threads)
    app = App(index_path, model, root, max_upload=max_upload)
    if not _is_loopback(host):
        logger.warning("listening on %s: anyone who can reach this address can search and view "
                       "the photos", host)
    return Server((host, port), app)

