"""The model description embedded in a ``.tflite`` file: its format, its JSON (the writer's half;
``export.metadata`` puts it into the FlatBuffer) and its reader. Standard library and NumPy only.

A TFLite file is a FlatBuffer whose root ``Model`` table holds ``metadata``: a vector of
``(name, buffer index)`` pairs pointing into the ``buffers`` vector. Our entry is named
``mghash_description``; its buffer holds UTF-8 JSON (:func:`unsealed_text`, embedded by ``export.metadata``). Only those
few tables are needed, so this reader walks them by hand instead of pulling in a FlatBuffers
runtime, and bounds-checks every offset: a damaged file must fail with ValueError, never read
past its end.

Integrity: the JSON carries ``integrity.sha256``, the SHA-256 of the whole file as it was with
those 64 hex digits written as ``0`` (a digest cannot cover itself). Any flipped bit anywhere in
the file (weights, graph, the description itself) changes that hash, so a corrupt model is
refused before an interpreter ever sees it.

Description format 1 (JSON object, keys sorted, no spaces):
    format "mghash_description", format_version 1,
    layout {"segments": [{name, bits, stages, label_level, weight}, ...]}, bits,
    backbone, input_size (pixels the model takes), image_size (what the backbone sees),
    input (text), normalisation (done inside the model), params, fingerprint (SHA-256 prefix of
    the Keras weights: codes from models with different fingerprints must not be mixed),
    variant, input_dtype, input_quantization {scale, zero_point} or null, output_dtype,
    output_quantization or null, library_version, tensorflow_version,
    conversion {ops, representative_count, ...}, integrity {algorithm, sha256, scope}.
A reader refuses a higher format_version; new optional keys do not raise it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np

from mghash_tf import __version__

METADATA_NAME = "mghash_description"
FORMAT = "mghash_description"
FORMAT_VERSION = 1
FILE_IDENTIFIER = b"TFL3"
REQUIRED_KEYS = ("format", "format_version", "layout", "bits", "input_size", "variant",
                 "input_dtype", "output_dtype", "fingerprint", "library_version", "integrity")
# Schema field ids (tensorflow/lite/schema/schema.fbs): Model.buffers, Model.metadata,
# Metadata.name/.buffer, Buffer.data/.offset/.size.
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_META_NAME, _META_BUFFER = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


class _Reader:
    """Bounds-checked little-endian reads of FlatBuffer tables, vectors and strings."""

    def __init__(self, data: bytes, where: str):
        self.data, self.where = data, where

    def _unpack(self, fmt: str, pos: int):
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise ValueError(f"{self.where}: corrupt TFLite file: offset {pos} (+{size} bytes) is "
                             f"outside the file of {len(self.data)} bytes")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def field(self, table: int, slot: int) -> int | None:
        """Absolute position of field ``slot`` of the table at ``table``, None when absent."""
        vtable = table - self._unpack("<i", table)
        vtable_size = self._unpack("<H", vtable)
        table_size = self._unpack("<H", vtable + 2)
        if vtable_size < 4 or vtable_size % 2 or table_size < 4:
            raise ValueError(f"{self.where}: corrupt TFLite file: bad vtable at offset {vtable}")
        if 4 + 2 * slot + 2 > vtable_size:
            return None
        offset = self._unpack("<H", vtable + 4 + 2 * slot)
        if not offset:
            return None
        if offset + 4 > table_size:
            raise ValueError(f"{self.where}: corrupt TFLite file: field {slot} of the table at "
                             f"{table} lies outside its {table_size} bytes")
        return table + offset

    def indirect(self, pos: int) -> int:
        return pos + self._unpack("<I", pos)

    def vector(self, pos: int, element_size: int) -> tuple:
        """(first element position, length) of the vector referenced at ``pos``."""
        start = self.indirect(pos)
        length = self._unpack("<I", start)
        if start + 4 + length * element_size > len(self.data):
            raise ValueError(f"{self.where}: corrupt TFLite file: a vector of {length} elements at "
                             f"offset {start} runs past the end of the file")
        return start + 4, length

    def scalar(self, table: int, slot: int, fmt: str, default=0):
        pos = self.field(table, slot)
        return default if pos is None else self._unpack(fmt, pos)


def _as_bytes(source) -> tuple:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return f.read(), os.fspath(source)
    raise TypeError(f"`source` must be a path or bytes. Received: {type(source).__name__}")


def _buffer_region(r: _Reader, root: int, index: int) -> tuple:
    buffers = r.field(root, _MODEL_BUFFERS)
    if buffers is None:
        raise ValueError(f"{r.where}: corrupt TFLite file: the model has no buffers")
    first, count = r.vector(buffers, 4)
    if index >= count:
        raise ValueError(f"{r.where}: corrupt TFLite file: metadata points to buffer {index} of {count}")
    table = r.indirect(first + 4 * index)
    data = r.field(table, _BUFFER_DATA)
    if data is not None:
        start, length = r.vector(data, 1)
        return start, start + length
    # Models over 2 GB keep buffer bytes after the FlatBuffer, addressed by offset and size.
    offset = r.scalar(table, _BUFFER_OFFSET, "<Q")
    size = r.scalar(table, _BUFFER_SIZE, "<Q")
    if offset <= 1 or offset + size > len(r.data):
        raise ValueError(f"{r.where}: corrupt TFLite file: buffer {index} has no data in the file")
    return offset, offset + size


def metadata_names(r: _Reader, root: int) -> dict:
    """{name: buffer index} of the model's metadata entries."""
    pos = r.field(root, _MODEL_METADATA)
    if pos is None:
        return {}
    first, count = r.vector(pos, 4)
    entries = {}
    for i in range(count):
        table = r.indirect(first + 4 * i)
        name_pos = r.field(table, _META_NAME)
        if name_pos is None:
            continue
        start, length = r.vector(name_pos, 1)
        name = r.data[start:start + length].decode("utf-8", errors="replace")
        entries[name] = r.scalar(table, _META_BUFFER, "<I")
    return entries


def locate_description(data: bytes, where: str = "<bytes>") -> tuple:
    """(start, end) byte range of the description JSON inside the TFLite file ``data``."""
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise ValueError(f"{where}: not a TFLite model: the FlatBuffer file identifier must be "
                         f"{FILE_IDENTIFIER!r}. Received: {bytes(data[4:8])!r} ({len(data)} bytes)")
    r = _Reader(data, where)
    root = r.indirect(0)
    entries = metadata_names(r, root)
    if METADATA_NAME not in entries:
        raise ValueError(f"{where}: this TFLite model has no {METADATA_NAME!r} metadata (export it with "
                         f"`python -m export convert`). Metadata found: {sorted(entries)}")
    return _buffer_region(r, root, entries[METADATA_NAME])


PLACEHOLDER = "0" * 64


def file_digest(data: bytes, start: int, end: int, recorded: str = PLACEHOLDER) -> str:
    """SHA-256 of ``data`` with the digest ``recorded`` in the JSON at ``[start, end)`` read as
    :data:`PLACEHOLDER` (what the writer hashed before filling the digest in)."""
    if not isinstance(recorded, str) or len(recorded) != 64:
        raise ValueError(f"The description's integrity.sha256 must be 64 hex digits. Received: {recorded!r}")
    needle = f'"sha256":"{recorded}"'.encode("ascii", errors="replace")
    text = data[start:end]
    if needle not in text:
        raise ValueError("The description JSON does not hold its integrity.sha256 in canonical form")
    digest = hashlib.sha256()
    digest.update(data[:start])
    digest.update(text.replace(needle, f'"sha256":"{PLACEHOLDER}"'.encode(), 1))
    digest.update(data[end:])
    return digest.hexdigest()


def _parse(data: bytes, start: int, end: int, where: str) -> dict:
    try:
        description = json.loads(data[start:end].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: the embedded description is not valid UTF-8 JSON ({e})") from None
    if not isinstance(description, dict):
        raise ValueError(f"{where}: the embedded description must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in description]
    if missing or description.get("format") != FORMAT:
        raise ValueError(f"{where}: not an {FORMAT} description: missing keys {missing}, "
                         f"format={description.get('format')!r}")
    version = description["format_version"]
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"{where}: description format_version must be 1..{FORMAT_VERSION} (a newer "
                         f"file needs a newer mghash_tf). Received: format_version={version!r}")
    return description


def read_model(source, *, verify: bool = True) -> tuple:
    """``(file bytes, description)`` of a ``.tflite`` file: the bytes that were checked, so a
    caller hands the interpreter exactly what was verified instead of reading the file twice."""
    data, where = _as_bytes(source)
    start, end = locate_description(data, where)
    description = _parse(data, start, end, where)
    integrity = description.pop("integrity")
    if verify:
        expected = integrity.get("sha256") if isinstance(integrity, dict) else None
        actual = file_digest(data, start, end, expected)
        if expected != actual:
            raise ValueError(f"{where}: the TFLite file is corrupt or was modified after export: "
                             f"SHA-256 {actual[:16]}… does not match the recorded "
                             f"{str(expected)[:16]}…")
    return data, description


def read_description(source, *, verify: bool = True) -> dict:
    """The description embedded in a ``.tflite`` file (path or bytes), as a dict.

    Raises ValueError when the file is not a TFLite model, lacks our description, is truncated,
    or fails the integrity check (``verify=False`` skips only the hash check). The returned dict
    omits the ``integrity`` entry.
    """
    return read_model(source, verify=verify)[1]


# --- the writer's JSON half (the FlatBuffer half is export.metadata) ---------------------------

def tensor_info(detail: dict) -> tuple:
    """(dtype name, quantisation dict or None) from an interpreter's input/output detail."""
    scale, zero_point = detail["quantization"]
    quant = None if scale == 0 else {"scale": float(scale), "zero_point": int(zero_point)}
    return np.dtype(detail["dtype"]).name, quant


def build_description(model_info: dict, *, variant: str, input_detail: dict, output_detail: dict,
                      conversion: dict | None = None, tensorflow_version: str | None = None) -> dict:
    """The JSON-able description of one exported variant.

    Args:
        model_info: ``mghash_tf.model.describe(model)`` (layout, bits, input size, fingerprint...).
        variant: the export variant name.
        input_detail / output_detail: the converted model's interpreter tensor details.
        conversion: converter settings worth recording (representative count, float head...).
        tensorflow_version: the converter's TensorFlow version.
    """
    in_dtype, in_quant = tensor_info(input_detail)
    out_dtype, out_quant = tensor_info(output_detail)
    return {
        **model_info,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "variant": variant,
        "input_dtype": in_dtype,
        "input_quantization": in_quant,
        "output_dtype": out_dtype,
        "output_quantization": out_quant,
        "library_version": __version__,
        "tensorflow_version": tensorflow_version,
        "conversion": dict(conversion or {}),
    }


def unsealed_text(description: dict) -> str:
    """The JSON to embed: ``description`` plus ``integrity`` with the :data:`PLACEHOLDER` digest,
    keys sorted, no spaces (the writer then hashes the file and fills the digest in)."""
    if not isinstance(description, dict) or "integrity" in description:
        raise ValueError("`description` must be a dict without an 'integrity' key (it is added here). "
                         f"Received: {type(description).__name__}")
    sealed = {**description, "integrity": {"algorithm": "sha256", "sha256": PLACEHOLDER,
                                           "scope": "whole file, this digest read as 64 zeros"}}
    return json.dumps(sealed, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
