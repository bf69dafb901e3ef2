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

Slow clients: reading a request is bounded as a whole, not per wait (:mod:`edge_demo.deadline`):
the request line and headers within ``HEADER_TIMEOUT_S``, a body within ``BODY_TIMEOUT_S``. A
client that runs past either (a body shorter than its Content-Length, headers trickled a byte at
a time) gets 408 and the connection is closed, logged as one warning line; a connection that
sends nothing (an idle keep-alive one included) is closed quietly after ``HEADER_TIMEOUT_S``.

This module is the HTTP layer only (routing, bodies, headers). The answers come from
:mod:`edge_demo.app`, parameters and uploads are parsed by :mod:`edge_demo.params`, and the index
is reloaded while serving by :mod:`edge_demo.snapshot`.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import logging
import os
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from edge_demo.app import DEFAULT_MAX_UPLOAD, App
from edge_demo.deadline import DeadlineReader, RequestTimeout
from edge_demo.params import ApiError

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Only these files are served from STATIC_DIR: a fixed table, so no request path reaches the disk.
STATIC_FILES = {"index.html": "text/html; charset=utf-8",
                "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
DRAIN_FACTOR = 4
# Whole-phase bounds on reading a request (see the module docstring). The header bound is also
# how long an idle keep-alive connection stays open; the body bound lets the default 10 MB upload
# through at 1.4 Mbit/s.
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 60.0
# Each send of an answer: a client that stops reading must not hold a worker thread forever.
SEND_TIMEOUT_S = 30
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


def discard(stream, length: int, chunk: int = 1 << 16) -> None:
    while length > 0:
        got = stream.read(min(chunk, length))
        if not got:
            return
        length -= len(got)


def is_loopback(host: str) -> bool:
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
    timeout = SEND_TIMEOUT_S

    @property
    def app(self) -> App:
        return self.server.app

    def setup(self):
        super().setup()
        self.rfile.close()  # the socket file: replaced by the same buffering over a deadline
        self._reader = DeadlineReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self):
        # What answering needs if the request line itself never arrives (parse_request sets them).
        self.command, self.requestline, self.request_version = "", "", self.protocol_version
        self._reader.start("request line and headers", self.server.header_timeout_s)
        try:
            super().handle_one_request()
        except RequestTimeout as e:
            if self._reader.received:
                self._answer_timeout(e)
            else:  # an idle keep-alive connection, or one that never sent anything
                logger.debug("%s: closing a silent connection: %s", self.address_string(), e)
                self.close_connection = True

    def _answer_timeout(self, error: RequestTimeout):
        request = f"{self.command} {self.path[:200]}: " if self.command else ""
        logger.warning("%s: %s%s; answered 408", self.address_string(), request, error)
        try:
            self._json(408, {"error": f"request timeout: {error}"}, close=True)
        except OSError:  # the client is gone as well
            self.close_connection = True

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
        except RequestTimeout as e:
            self._answer_timeout(e)
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
        if not is_loopback(self.server.server_address[0]):
            return
        host = (self.headers.get("Host") or "").strip()
        name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        if not is_loopback(name.lower()):
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
        self._reader.start("request body", self.server.body_timeout_s)
        if length > self.app.max_upload:
            # A browser still sending gets a connection reset, not our 413, if we close first; so
            # a moderately oversize body is read and dropped. A huge one is not worth reading.
            if length <= DRAIN_FACTOR * self.app.max_upload:
                with contextlib.suppress(RequestTimeout):  # 413 is the answer either way
                    discard(self.rfile, length)
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
    # The listen backlog: the standard library's 5 reset connections when a page asks for its
    # 60 thumbnails at once.
    request_queue_size = 128

    def __init__(self, address, app: App, *, header_timeout_s: float = HEADER_TIMEOUT_S,
                 body_timeout_s: float = BODY_TIMEOUT_S):
        for name, value in (("header_timeout_s", header_timeout_s), ("body_timeout_s", body_timeout_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"`{name}` must be a number of seconds > 0. Received: {name}={value!r}")
        self.app = app
        self.header_timeout_s, self.body_timeout_s = header_timeout_s, body_timeout_s
        super().__init__(address, Handler)


def make_server(index_path, model, root, *, host: str = "127.0.0.1", port: int = 8080,
                max_upload: int = DEFAULT_MAX_UPLOAD, num_threads=None,
                header_timeout_s: float = HEADER_TIMEOUT_S,
                body_timeout_s: float = BODY_TIMEOUT_S) -> Server:
    """A bound (not yet serving) server; ``model`` is a path or a ``TFLiteEncoder``.
    ``header_timeout_s`` and ``body_timeout_s`` bound the reading of each request (module
    docstring).

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
    if not is_loopback(host):
        logger.warning("listening on %s: anyone who can reach this address can search and view "
                       "the photos", host)
    return Server((host, port), app, header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s)

