"""Calibration data for integer variants, and the float-head (selective) quantisation.

The float head: the converter first only calibrates (``_experimental_calibrate_only``), then
TFLite's MLIR quantiser runs with the hash head's ops denylisted, so the projection and tanh
stay float32 and the sign of each code bit is decided in float. The quantiser still rounds the
tanh output through int8 (a QUANTIZE -> DEQUANTIZE pair at the fixed 1/128 tanh scale, which
zeroes |h| < 1/256); :func:`drop_requantize_pairs` removes such float->int8->float round trips.
Both converter hooks are private TensorFlow APIs (the same ones ``tf.lite.experimental.
QuantizationDebugger`` uses); they are confined to this module.
"""

from __future__ import annotations

import logging

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from mghash_tf.core.description import FILE_IDENTIFIER

logger = logging.getLogger(__name__)

HEAD_OPS = ["FULLY_CONNECTED", "TANH", "CONCATENATION"]
HEAD_SCOPE = "hash_head"


def check_images(images, input_size: int) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (input_size, input_size, 3):
        raise ValueError(f"Representative images must be uint8 (N, {input_size}, {input_size}, 3). "
                         f"Received: dtype={images.dtype}, shape={images.shape}")
    if len(images) == 0:
        raise ValueError("Representative images must not be empty. Received: 0 images")
    return images


def representative_images(spec, count: int, input_size: int, *, seed: int = 0) -> np.ndarray:
    """``count`` images drawn (seeded) from the training split of a data spec (``npz:PATH``...).
    Calibration needs pixels only: a folder that is no class layout (e.g. photos sorted into
    folders of any depth) is read without labels; a split layout keeps its test split out."""
    from mghash_tf.data import load_source

    try:
        image_set = load_source(spec, image_size=input_size)
    except ValueError:
        image_set = load_source(spec, image_size=input_size, labels="none")
    return representative_images_from(image_set, count, input_size, seed=seed)


def representative_images_from(image_set, count: int, input_size: int, *, seed: int = 0) -> np.ndarray:
    """``count`` images drawn (seeded) from the training split (split 0) of an ``ImageSet``; all
    images when it has no split. The test split is never used for calibration."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"`count` must be an int >= 1. Received: count={count!r}")
    pool = np.arange(len(image_set))
    if image_set.split is not None:
        pool = np.flatnonzero(image_set.split == 0)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(pool, size=min(count, len(pool)), replace=False))
    return check_images(image_set.x[chosen], input_size)


def representative_dataset(images: np.ndarray):
    """A converter ``representative_dataset``: one float32 image per step, as the model takes."""
    def generate():
        for image in images:
            yield [image[None].astype(np.float32)]
    return generate


def convert_with_float_head(converter) -> bytes:
    """Full-integer model except the hash head (projection, tanh, concat) in float32."""
    from tensorflow.lite.python import convert as tfl_convert

    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    model = schema.ModelT.InitFromPackedBuf(bytearray(calibrated), 0)
    head = [t.name.decode() for t in model.subgraphs[0].tensors if HEAD_SCOPE.encode() in t.name]
    if not head:
        raise ValueError(f"No tensor of the converted model lies in the {HEAD_SCOPE!r} scope; "
                         "is this an MGHash model?")
    quantized = tfl_convert.mlir_quantize(calibrated, fully_quantize=False,
                                          denylisted_ops=HEAD_OPS, denylisted_nodes=head)
    return drop_requantize_pairs(quantized)


def _pack(model) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _opcode_index(model, name: str):
    code = getattr(schema.BuiltinOperator, name)
    for i, oc in enumerate(model.operatorCodes or []):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
            return i
    return None


def _rename_signatures(model, *, graph_index: int, rename: dict):
    for signature in model.signatureDefs or []:
        if signature.subgraphIndex != graph_index:
            continue
        for tensor_map in (signature.inputs or []) + (signature.outputs or []):
            tensor_map.tensorIndex = rename.get(tensor_map.tensorIndex, tensor_map.tensorIndex)


def drop_requantize_pairs(tflite: bytes) -> bytes:
    """Remove ``float -> QUANTIZE -> DEQUANTIZE -> float`` chains (a lossy identity)."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    quant, dequant = _opcode_index(model, "QUANTIZE"), _opcode_index(model, "DEQUANTIZE")
    removed = 0
    for graph in model.subgraphs:
        producer = {int(t): op for op in graph.operators for t in op.outputs}
        readers = {}
        for op in graph.operators:
            for t in op.inputs:
                readers[int(t)] = readers.get(int(t), 0) + 1
        rename, drop = {}, set()
        for op in graph.operators:
            q = producer.get(int(op.inputs[0])) if op.opcodeIndex == dequant else None
            if q is None or q.opcodeIndex != quant or readers[int(op.inputs[0])] != 1:
                continue
            if graph.tensors[int(q.inputs[0])].type != schema.TensorType.FLOAT32:
                continue
            rename[int(op.outputs[0])] = int(q.inputs[0])
            drop.update((id(q), id(op)))
        graph.operators = [op for op in graph.operators if id(op) not in drop]
        for op in graph.operators:
            op.inputs = np.array([rename.get(int(t), int(t)) for t in op.inputs], dtype=np.int32)
        graph.outputs = np.array([rename.get(int(t), int(t)) for t in graph.outputs], dtype=np.int32)
        removed += len(drop) // 2
        _rename_signatures(model, graph_index=model.subgraphs.index(graph), rename=rename)
    logger.info("removed %d float->int8->float round trips", removed)
    return _pack(model) if removed else tflite
