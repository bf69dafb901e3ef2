"""Encode images to hash codes with an exported ``.tflite`` model. No TensorFlow needed.

The model file carries its own description (:mod:`mghash_tf.core.description`), so the encoder
knows the code layout, input size and the input/output quantisation without a side file.
"""

from __future__ import annotations

import logging

import numpy as np

from mghash_tf.core.description import read_model
from mghash_tf.core.index.packing import pack_bits
from mghash_tf.core.layout import CodeLayout
from mghash_tf.core.native_logs import filtered_stderr

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32


def interpreter_class():
    """LiteRT's Interpreter; ``tflite_runtime``'s only when LiteRT is not installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise ImportError("Running a .tflite model needs the LiteRT runtime: "
                              "`pip install ai-edge-litert`") from None
        logger.info("ai_edge_litert not found; using tflite_runtime")
    return Interpreter


def _quant(detail: dict):
    """(scale, zero point) of an interpreter tensor, None for a float tensor."""
    scale, zero_point = detail["quantization"]
    return None if scale == 0 else (float(scale), int(zero_point))


def _quantize(images: np.ndarray, dtype, quant) -> np.ndarray:
    """uint8 pixels -> the model's input tensor values (identity for the usual scale 1, zp 0)."""
    if dtype == np.float32 or quant is None:
        return images.astype(dtype)
    scale, zero_point = quant
    if dtype == np.uint8 and scale == 1.0 and zero_point == 0:
        return images
    info = np.iinfo(dtype)
    q = np.round(images.astype(np.float32) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(values: np.ndarray, quant) -> np.ndarray:
    if values.dtype == np.float32 or quant is None:
        return values.astype(np.float32)
    scale, zero_point = quant
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


class TFLiteEncoder:
    """Relaxed codes (and packed bits) from uint8 RGB images with a ``.tflite`` MGHash model.

    Args:
        path: a ``.tflite`` file written by ``python -m export convert`` (or its bytes).
        num_threads: interpreter threads (None: the runtime's default).
        batch_size: images per interpreter call.

    Raises ValueError for a file without a valid, intact description (see
    :func:`mghash_tf.core.description.read_model`) or whose tensors contradict it.
    """

    def __init__(self, path, *, num_threads: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an int >= 1. Received: batch_size={batch_size!r}")
        data, self.description = read_model(path)
        self.layout = CodeLayout.from_dict(self.description["layout"])
        self.input_size = int(self.description["input_size"])
        self.bits = self.layout.bits
        self._interpreter = interpreter_class()(model_content=data, num_threads=num_threads)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._check_tensors()
        fixed_batch = int(self._input["shape_signature"][0]) > 0
        self.batch_size = int(self._input["shape"][0]) if fixed_batch else batch_size
        self._allocated = None

    def _check_tensors(self):
        s, k = self.input_size, self.bits
        in_shape = tuple(int(v) for v in self._input["shape"][1:])
        out_width = int(self._output["shape"][-1])
        if in_shape != (s, s, 3) or out_width != k:
            raise ValueError(f"The model's tensors contradict its description: input {in_shape}, "
                             f"{out_width} outputs; description says ({s}, {s}, 3) and bits={k}")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        it = self._interpreter
        if self._allocated != len(batch):
            it.resize_tensor_input(self._input["index"], [len(batch), self.input_size, self.input_size, 3])
            with filtered_stderr():  # LiteRT announces its XNNPACK delegate here, at INFO
                it.allocate_tensors()
            self._allocated = len(batch)
        it.set_tensor(self._input["index"], _quantize(batch, self._input["dtype"], _quant(self._input)))
        it.invoke()
        return _dequantize(it.get_tensor(self._output["index"]), _quant(self._output))

    def check_images(self, images) -> np.ndarray:
        images = np.asarray(images)
        s = self.input_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ValueError(f"`images` must be uint8 RGB of shape (N, {s}, {s}, 3) (this model's "
                             f"input size). Received: dtype={images.dtype}, shape={images.shape}")
        return images

    def encode(self, images, *, tta: bool = False) -> np.ndarray:
        """uint8 (N, S, S, 3) -> float32 relaxed codes (N, K); ``h > 0`` is bit 1.

        ``tta``: flip test-time augmentation, as ``mghash_tf.model.encode``: the mean of the
        relaxed (dequantised) codes of each image and its horizontal mirror (W axis reversed).
        Averaging comes before the sign, so a bit on which the two views disagree goes to the
        more confident one; twice the interpreter work.
        """
        images = self.check_images(images)
        if not isinstance(tta, bool):
            raise TypeError(f"`tta` must be a bool. Received: tta={tta!r}")
        out = np.empty((len(images), self.bits), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            codes = self._run(np.ascontiguousarray(batch))
            if tta:
                codes = (codes + self._run(np.ascontiguousarray(batch[:, :, ::-1]))) / np.float32(2)
            out[start:start + len(batch)] = codes
        return out

    def encode_bits(self, images, *, tta: bool = False) -> np.ndarray:
        """uint8 (N, S, S, 3) -> packed codes (N, ceil(K/64)) uint64 (bit order: index.packing):
        the bits of :meth:`encode` with the same ``tta``."""
        return pack_bits(self.encode(images, tta=tta))
