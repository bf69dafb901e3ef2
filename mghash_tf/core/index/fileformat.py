"""The index file: versioned, checksummed, written atomically. No pickle. NumPy + stdlib only.

Layout (integers little-endian)::

    magic     8 bytes   b"\\x89MGHIDX\\n"  (a high byte and a newline catch text-mode damage)
    version   uint32    FORMAT_VERSION
    hlen      uint32    header length
    header    UTF-8 JSON: num_bits, count, layout, fingerprint, next_id, sections
    sections  back to back, each padded to 8 bytes: raw little-endian arrays (codes, ids, numeric
              extras); string columns (names, str extras) as int64 offsets then UTF-8 bytes
    checksum  SHA-256 of every byte before it

Reading checks magic, then version, then checksum, then every header field against the file
size, so a damaged file raises ValueError and never yields a half-read index. Writing goes to a
temporary file in the same directory, fsyncs it, renames it over the target and fsyncs the
directory: a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np

from mghash_tf.core.files import atomic_open
from mghash_tf.core.layout import CodeLayout

MAGIC = b"\x89MGHIDX\n"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII")
_DIGEST = 32
# A header is a few levels deep (header -> layout -> segments -> segment -> values).
MAX_HEADER_DEPTH = 8
MAX_ID = int(np.iinfo(np.int64).max)
ARRAY_DTYPES = ("<u8", "<i8", "<f8", "<f4", "<i4", "<u4", "<i2", "<u2", "|i1", "|u1", "|b1")


def save_index(index, path) -> None:
    header = {
        "num_bits": index.num_bits, "count": len(index), "layout": index.layout.to_dict(),
        "fingerprint": index.fingerprint, "next_id": index.next_id,
    }
    sections = [("codes", index.codes), ("ids", index.ids)]
    if index.names is not None:
        sections.append(("names", index.names))
    sections += [("extra:" + k, v) for k, v in index.extras.items()]
    write_container(path, header, sections)


def load_index(cls, path, *, expect_fingerprint=None):
    header, sections = read_container(path)
    fingerprint = header.get("fingerprint")
    if expect_fingerprint is not None and fingerprint != expect_fingerprint:
        raise ValueError(
            f"Index file {path} was built by another model: fingerprint {fingerprint!r}, "
            f"expected {expect_fingerprint!r}. Rebuild the index with the current model."
        )
    try:
        index = cls(header["num_bits"], CodeLayout.from_dict(header["layout"]),
                    fingerprint=fingerprint)
        codes, words = sections["codes"], -(-index.num_bits // 64)
        if codes.dtype != np.uint64 or codes.shape != (header["count"], words):
            raise ValueError(f"codes must be uint64 ({header['count']}, {words}): {codes.shape}")
        if sections["ids"].dtype != np.int64:
            raise ValueError(f"ids must be int64, not {sections['ids'].dtype}")
        extras = {k[6:]: v for k, v in sections.items() if k.startswith("extra:")}
        index.add(codes, sections["ids"], names=sections.get("names"),
                  extras=extras or None)
        if not isinstance(header["next_id"], int) or header["next_id"] < index.next_id:
            raise ValueError(f"next_id {header['next_id']!r} is below the stored ids")
        if header["next_id"] > MAX_ID:
            raise ValueError(f"next_id {header['next_id']} is beyond int64 ids (at most {MAX_ID})")
        index._next_id = header["next_id"]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"Index file {path} is invalid: {err}") from err
    return index


def write_container(path, header: dict, sections) -> None:
    """Write ``header`` and named arrays / string lists atomically to ``path``."""
    path = Path(path)
    payloads = [(name, _encode(value)) for name, value in sections]
    header = dict(header, sections=[dict(meta, name=name) for name, (meta, _) in payloads])
    head = json.dumps(header, sort_keys=True).encode("utf-8")
    with atomic_open(path) as f:
        digest = hashlib.sha256()
        for chunk in _chunks(head, payloads):
            f.write(chunk)
            digest.update(chunk)
        f.write(digest.digest())


def read_container(path):
    """``(header, {name: array or list of str})``; ValueError for any damaged or foreign file."""
    data = Path(path).read_bytes()
    if len(data) < _PREFIX.size + _DIGEST or data[:8] != MAGIC:
        raise ValueError(f"{path} is not an mghash_tf index file (missing magic bytes).")
    _, version, hlen = _PREFIX.unpack_from(data)
    if version > FORMAT_VERSION or version < 1:
        raise ValueError(
            f"{path} has index format version {version}; this mghash_tf reads version "
            f"{FORMAT_VERSION}. Upgrade mghash_tf or rebuild the index."
        )
    if hashlib.sha256(memoryview(data)[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise ValueError(f"{path} is corrupt or truncated (checksum mismatch).")
    end = len(data) - _DIGEST
    if _PREFIX.size + hlen > end:
        raise ValueError(f"{path} is invalid: header length {hlen} exceeds the file.")
    try:
        header = json.loads(data[_PREFIX.size : _PREFIX.size + hlen].decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{path} is invalid: the header nests deeper than JSON can be read.") from None
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{path} is invalid: the header is not UTF-8 JSON ({err}).") from None
    if _depth(header) > MAX_HEADER_DEPTH:
        raise ValueError(f"{path} is invalid: the header nests deeper than {MAX_HEADER_DEPTH} levels.")
    if not isinstance(header, dict) or not isinstance(header.get("sections"), list):
        raise ValueError(f"{path} is invalid: the header has no section list.")
    sections, offset = {}, _align(_PREFIX.size + hlen)
    for meta in header["sections"]:
        value, size = _decode(data, offset, end, meta, path)
        sections[meta["name"]] = value
        offset = _align(offset + size)
    if offset != end:
        raise ValueError(f"{path} is invalid: {end - offset} bytes do not match the sections.")
    return header, sections


def _encode(value):
    if isinstance(value, list):
        blobs = [s.encode("utf-8", "surrogateescape") for s in value]
        offsets = np.zeros(len(blobs) + 1, dtype="<i8")
        np.cumsum([len(b) for b in blobs], out=offsets[1:])
        raw = [memoryview(offsets).cast("B"), b"".join(blobs)]
        return {"kind": "str", "count": len(blobs), "nbytes": int(offsets[-1])}, raw
    arr = np.ascontiguousarray(value)
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    meta = {"kind": "array", "dtype": arr.dtype.str, "shape": list(arr.shape)}
    return meta, [memoryview(arr.reshape(-1)).cast("B")]


def _chunks(head, payloads):
    yield _PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)) + head
    size = _PREFIX.size + len(head)
    for _, (_, raw) in payloads:
        yield b"\0" * (_align(size) - size)
        size = _align(size)
        for part in raw:
            yield part
            size += len(part)
    yield b"\0" * (_align(size) - size)


def _decode(data, offset, end, meta, path):
    """One section: (value, bytes used). Every field is checked before it is trusted."""
    bad = ValueError(f"{path} is invalid: bad section entry {meta!r}.")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise bad
    if meta.get("kind") == "array":
        dtype, shape = meta.get("dtype"), meta.get("shape")
        if dtype not in ARRAY_DTYPES or not isinstance(shape, list) or not 1 <= len(shape) <= 2:
            raise bad
        if not all(_is_count(x) for x in shape):
            raise bad
        size = math.prod(shape) * np.dtype(dtype).itemsize
        if offset + size > end:
            raise bad
        count = size // np.dtype(dtype).itemsize
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        return arr.reshape(shape).astype(np.dtype(dtype).newbyteorder("="), copy=True), size
    if meta.get("kind") == "str":
        count, nbytes = meta.get("count"), meta.get("nbytes")
        if not (_is_count(count) and _is_count(nbytes)):
            raise bad
        size = 8 * (count + 1) + nbytes
        if offset + size > end:
            raise bad
        offs = np.frombuffer(data, dtype="<i8", count=count + 1, offset=offset)
        if offs[0] != 0 or offs[-1] != nbytes or (np.diff(offs) < 0).any():
            raise bad
        blob = data[offset + 8 * (count + 1) : offset + size]
        strings = [blob[a:b].decode("utf-8", "surrogateescape") for a, b in zip(offs, offs[1:])]
        return strings, size
    raise bad


def _depth(value, level: int = 1) -> int:
    """Nesting depth of parsed JSON (iterative, so a crafted header cannot recurse)."""
    deepest, stack = 0, [(value, level)]
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_HEADER_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((c, d + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _align(n: int) -> int:
    return -(-n // 8) * 8
