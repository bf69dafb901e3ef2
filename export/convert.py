"""Keras model -> ``.tflite`` variants, built-in ops only, each with its description embedded.

Route (measured, ../shared/DESIGN.md §4): ``model.export(dir, format="tf_saved_model")`` then
``TFLiteConverter.from_saved_model``; the concrete-function route without frozen variables
yields a model that outputs NaN.

Variants:
    fp32      float weights and activations.
    fp16      float16 weights, float compute (weights dequantised at load).
    dynamic   int8 weights, float activations quantised on the fly.
    int8      full integer compute, float32 input and output.
    int8_io   full integer compute, uint8 pixels in and int8 codes out (no float on the path).
    int8_fhead  full integer backbone and attention; hash projection and tanh kept in float
              (a parity mitigation: the sign decision is taken in float).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path


from mghash_tf.core import description
from mghash_tf.core.encoder import interpreter_class
from mghash_tf.core.files import write_bytes_atomic
from mghash_tf.core.native_logs import filtered_stderr
from export import metadata, quantize
from export.ops import check_builtin_only, list_ops

logger = logging.getLogger(__name__)

VARIANTS = ("fp32", "fp16", "dynamic", "int8", "int8_io", "int8_fhead")
DEFAULT_VARIANTS = ("fp32", "fp16", "dynamic", "int8", "int8_io")
NEEDS_DATA = ("int8", "int8_io", "int8_fhead")


def parse_variants(spec) -> tuple:
    """``"all"``, a comma list or a sequence -> validated variant names in canonical order."""
    if isinstance(spec, str):
        names = DEFAULT_VARIANTS if spec == "all" else tuple(s.strip() for s in spec.split(","))
    else:
        names = tuple(spec)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"`variants` must be 'all' or names from {VARIANTS}. Received: {spec!r}")
    return tuple(v for v in VARIANTS if v in names)


def tflite_name(variant: str) -> str:
    return f"model_{variant}.tflite"


def export_saved_model(model, directory) -> Path:
    directory = Path(directory)
    model.export(str(directory), format="tf_saved_model", verbose=False)
    return directory


def _converter(saved_model_dir, variant: str, representative):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant in NEEDS_DATA:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = quantize.representative_dataset(representative)
        if variant != "int8_fhead":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if variant == "int8_io":
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.int8
    return converter


def convert_saved_model(saved_model_dir, variant: str, *, representative=None) -> bytes:
    """One variant's FlatBuffer bytes (no description yet).

    Args:
        saved_model_dir: a directory written by :func:`export_saved_model`.
        variant: one of ``VARIANTS``.
        representative: uint8 images (N, S, S, 3) for calibration; required for int8 variants.
    """
    parse_variants([variant])
    if variant in NEEDS_DATA and representative is None:
        raise ValueError(f"Variant {variant!r} needs representative images for calibration. "
                         "Received: representative=None")
    converter = _converter(saved_model_dir, variant, representative)
    with filtered_stderr():  # the converter prints unasked (int8: "fully_quantize: 0, ...")
        if variant == "int8_fhead":
            tflite = quantize.convert_with_float_head(converter)
        else:
            tflite = converter.convert()
    check_builtin_only(tflite)
    return tflite


def _details(tflite: bytes) -> tuple:
    interpreter = interpreter_class()(model_content=tflite)
    return interpreter.get_input_details()[0], interpreter.get_output_details()[0]


def convert_model(model, out_dir, *, variants="all", representative=None, conversion=None) -> dict:
    """Convert a Keras MGHash model to ``out_dir/model_<variant>.tflite`` for each variant.

    Returns ``{variant: path}``. Each file carries ``describe(model)`` plus the variant, the
    input/output dtypes and quantisation and the library version (see ``mghash_tf.core.description``).
    """
    import tensorflow as tf

    from mghash_tf.model import describe

    variants = parse_variants(variants)
    info = describe(model)
    if representative is not None:
        representative = quantize.check_images(representative, info["input_size"])
    paths = {}
    with tempfile.TemporaryDirectory(prefix="mghash_export_") as tmp:
        saved = export_saved_model(model, Path(tmp) / "saved_model")
        for variant in variants:
            tflite = convert_saved_model(saved, variant, representative=representative)
            in_detail, out_detail = _details(tflite)
            if variant == "int8_io" and tuple(in_detail["quantization"]) != (1.0, 0):
                logger.warning("int8_io input quantisation is %s, not (1.0, 0): the calibration images "
                               "do not span pixel values 0..255; the encoder rescales pixels",
                               in_detail["quantization"])
            settings = dict(conversion or {})
            if variant in NEEDS_DATA:
                settings["representative_count"] = int(len(representative))
            settings["ops"] = list_ops(tflite)
            desc = description.build_description(info, variant=variant, input_detail=in_detail,
                                                 output_detail=out_detail, conversion=settings,
                                                 tensorflow_version=tf.__version__)
            data = metadata.embed_description(tflite, desc)
            paths[variant] = write_bytes_atomic(Path(out_dir) / tflite_name(variant), data)
    return paths


def convert_file(model_path, out_dir, **kwargs) -> dict:
    """:func:`convert_model` for a saved ``.keras`` file."""
    from mghash_tf.model.saving import load_model

    return convert_model(load_model(model_path), out_dir, **kwargs)
