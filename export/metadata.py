"""Write the model description into a ``.tflite`` file's metadata (the reading side, which runs
on devices, is :mod:`mghash_tf.core.description`).

The converted FlatBuffer is unpacked with the TFLite schema's object API (shipped with
``ai-edge-litert``), given one more ``(name, buffer)`` metadata entry holding the JSON, and
packed again. The JSON's ``integrity.sha256`` covers the whole file, the JSON included, as packed with a
placeholder of 64 ``0`` digits; the digest then overwrites the placeholder in place.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

import mghash_tf
from mghash_tf.core import description as reader

logger = logging.getLogger(__name__)

# The TFLite schema asks for 16-byte aligned buffer data (force_align); the Python object API
# ignores that, so weights are packed by hand below to keep SIMD kernels on aligned loads.
_BUFFER_ALIGNMENT = 16


def tensor_info(detail: dict) -> tuple:
    """(dtype name, quantisation dict or None) from an interpreter's input/output detail."""
    scale, zero_point = detail["quantization"]
    quant = None if scale == 0 else {"scale": float(scale), "zero_point": int(zero_point)}
    return np.dtype(detail["dtype"]).name, quant


def build_description(model_info: dict, *, variant: str, input_detail: dict, output_detail: dict,
                      conversion: dict | None = None) -> dict:
    """The JSON-able description of one exported variant.

    Args:
        model_info: ``mghash_tf.model.describe(model)`` (layout, bits, input size, fingerprint...).
        variant: the export variant name.
        input_detail / output_detail: the converted model's interpreter tensor details.
        conversion: converter settings worth recording (representative count, float head...).
    """
    in_dtype, in_quant = tensor_info(input_detail)
    out_dtype, out_quant = tensor_info(output_detail)
    import tensorflow as tf

    return {
        **model_info,
        "format": reader.FORMAT,
        "format_version": reader.FORMAT_VERSION,
        "variant": variant,
        "input_dtype": in_dtype,
        "input_quantization": in_quant,
        "output_dtype": out_dtype,
        "output_quantization": out_quant,
        "library_version": mghash_tf.__version__,
        "tensorflow_version": tf.__version__,
        "conversion": dict(conversion or {}),
    }


def _pack_aligned_buffer(buffer, builder):
    data = None
    if buffer.data is not None and len(buffer.data):
        payload = np.asarray(buffer.data, dtype=np.uint8).tobytes()
        builder.StartVector(1, len(payload), _BUFFER_ALIGNMENT)
        builder.head -= len(payload)
        builder.Bytes[builder.head:builder.head + len(payload)] = payload
        data = builder.EndVector()
    schema.BufferStart(builder)
    if data is not None:
        schema.BufferAddData(builder, data)
    schema.BufferAddOffset(builder, buffer.offset)
    schema.BufferAddSize(builder, buffer.size)
    return schema.BufferEnd(builder)


class _AlignedBuffer(schema.BufferT):
    def Pack(self, builder):
        return _pack_aligned_buffer(self, builder)


def _unpack(tflite: bytes):
    if len(tflite) < 8 or tflite[4:8] != reader.FILE_IDENTIFIER:
        raise ValueError(f"`tflite` must be a TFLite FlatBuffer (identifier {reader.FILE_IDENTIFIER!r}). "
                         f"Received: {bytes(tflite[4:8])!r}")
    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    buffers = []
    for b in model.buffers or []:
        aligned = _AlignedBuffer(data=b.data, offset=b.offset, size=b.size)
        if b.offset > 1:  # > 2 GB models keep data after the FlatBuffer; pull it back in
            aligned.data = np.frombuffer(tflite[b.offset:b.offset + b.size], dtype=np.uint8)
            aligned.offset = aligned.size = 0
        buffers.append(aligned)
    model.buffers = buffers
    return model


def _set_metadata(model, payload: bytes):
    data = np.frombuffer(payload, dtype=np.uint8)
    model.metadata = model.metadata or []
    for entry in model.metadata:
        if entry.name in (reader.METADATA_NAME, reader.METADATA_NAME.encode()):
            model.buffers[entry.buffer].data = data
            return
    model.buffers.append(_AlignedBuffer(data=data))
    entry = schema.MetadataT()
    entry.name = reader.METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)


def _dumps(description: dict) -> str:
    return json.dumps(description, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def embed_description(tflite: bytes, description: dict) -> bytes:
    """``tflite`` with ``description`` embedded (replacing an earlier one), integrity-sealed."""
    if not isinstance(description, dict) or "integrity" in description:
        raise ValueError("`description` must be a dict without an 'integrity' key (it is added here). "
                         f"Received: {type(description).__name__}")
    sealed = {**description, "integrity": {"algorithm": "sha256", "sha256": reader.PLACEHOLDER,
                                           "scope": "whole file, this digest read as 64 zeros"}}
    text = _dumps(sealed)
    model = _unpack(tflite)
    _set_metadata(model, text.encode("ascii"))
    builder = flatbuffers.Builder(len(tflite) + len(text) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=reader.FILE_IDENTIFIER)
    out = bytearray(builder.Output())
    start, end = reader.locate_description(bytes(out))
    digest = reader.file_digest(bytes(out), start, end)
    key = b'"sha256":"'
    at = out.index(key + reader.PLACEHOLDER.encode(), start, end) + len(key)
    out[at:at + len(digest)] = digest.encode("ascii")
    return bytes(out)


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``, so
    a crash never leaves a torn model where a device would look for one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("wrote %s (%d bytes)", path, len(data))
    return path
