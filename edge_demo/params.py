"""Request parameters and upload bodies of ``edge_demo serve``: parsed and checked, or refused
with an :class:`ApiError` (a 4xx status and a short message)."""

from __future__ import annotations

import email.parser
import email.policy
import re


class ApiError(Exception):
    """A client error: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = int(status), message


def one_value(query: dict, name: str):
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, f"parameter {name!r} given {len(values)} times")
    return values[0]


def int_param(query: dict, name: str, default, minimum: int, maximum) -> int:
    raw = one_value(query, name)
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


def str_param(query: dict, name: str, default: str) -> str:
    raw = one_value(query, name)
    if raw is None or raw == "":
        return default
    if len(raw) > 200:
        raise ApiError(400, f"parameter {name!r} is too long")
    return raw


def upload_bytes(body: bytes, content_type: str) -> bytes:
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
