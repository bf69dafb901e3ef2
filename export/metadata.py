"""Write the model description into a ``.tflite`` file's metadata (the format itself, its JSON
and its reader, which runs on devices, are :mod:`mghash_tf.core.description`).

The converted FlatBuffer is unpacked with the TFLite schema's object API (shipped with
``ai-edge-litert``), given one more ``(name, buffer)`` metadata entry holding the JSON, and
packed again. The JSON's ``integrity.sha256`` covers the whole file, the JSON included, as packed with a
placeholder of 64 ``0`` digits; the digest then overwrites the placeholder in place.
"""

from __future__ import annotations

import logging

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from mghash_tf.core import description as reader

logger = logging.getLogger(__name__)

# The TFLite schema asks for 16-byte aligned buffer data (force_align); the Python object API
# ignores that, so weights are packed by hand below to keep SIMD kernels on aligned loads.
_BUFFER_ALIGNMENT = 16


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


def embed_description(tflite: bytes, description: dict) -> bytes:
    """``tflite`` with ``description`` embedded (replacing an earlier one), integrity-sealed."""
    text = reader.unsealed_text(description)
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
