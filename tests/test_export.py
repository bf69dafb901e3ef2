"""Conversion to every TFLite variant: runs in LiteRT, outputs close to Keras, built-in ops only,
description embedded; the CLI; parity and bench helpers on a tiny model."""

import json

import numpy as np
import pytest

from mghash_tf.core.description import read_description
from mghash_tf.core.encoder import TFLiteEncoder
from export import convert, quantize
from export.ops import check_builtin_only, list_ops
from mghash_tf.data import demo_data_path, load_source
from mghash_tf.model import build_model, describe, encode

SIZE = 16
ALL = ("fp32", "fp16", "dynamic", "int8", "int8_io", "int8_fhead")


def spread_codes(model, images):
    """Scale the hash projection so tanh inputs have unit spread: a random-init head gives
    |h| ~ 0.005, where every comparison with Keras would pass or fail for trivial reasons."""
    spread = float(np.std(encode(model, images)))
    for dense in model.get_layer("hash_head").projections:
        kernel, bias = dense.get_weights()
        dense.set_weights([kernel / spread, bias / spread])
    return model


@pytest.fixture(scope="module")
def data():
    image_set = load_source(f"npz:{demo_data_path()}", image_size=SIZE)
    rng = np.random.default_rng(0)  # 200 training and 40 test images of the sample
    train, test = np.flatnonzero(image_set.split == 0), np.flatnonzero(image_set.split == 1)
    return image_set.subset(np.sort(np.concatenate([rng.choice(train, 200, replace=False),
                                                    rng.choice(test, 40, replace=False)])))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data):
    model = build_model(backbone="small_cnn", layout="mg32", image_size=SIZE)
    spread_codes(model, data.x[:64])
    rep = quantize.representative_images_from(data, 32, SIZE)
    out = tmp_path_factory.mktemp("tflite")
    paths = convert.convert_model(model, out, variants=ALL, representative=rep)
    return model, paths


def test_parse_variants_rules():
    assert convert.parse_variants("all") == convert.DEFAULT_VARIANTS
    assert convert.parse_variants("int8_io,fp32") == ("fp32", "int8_io")
    with pytest.raises(ValueError, match="int4"):
        convert.parse_variants("fp32,int4")


def test_every_variant_runs_close_to_keras(exported, data):
    model, paths = exported
    images = data.x[:48]
    reference = encode(model, images)
    assert np.std(reference) > 0.3  # the comparison below is about real code values
    # (max abs error, min sign agreement) per variant; int8 error is a few steps of tanh's 1/128 grid.
    limits = {"fp32": (1e-5, 1.0), "fp16": (2e-2, 0.98), "dynamic": (0.1, 0.95),
              "int8": (0.25, 0.85), "int8_io": (0.25, 0.85), "int8_fhead": (0.25, 0.85)}
    for variant, path in paths.items():
        codes = TFLiteEncoder(path).encode(images)
        assert codes.shape == reference.shape and codes.dtype == np.float32
        max_err, min_agree = limits[variant]
        assert np.abs(codes - reference).max() <= max_err, variant
        assert ((codes > 0) == (reference > 0)).mean() >= min_agree, variant
        assert np.corrcoef(codes.ravel(), reference.ravel())[0, 1] > 0.9, variant


def test_files_are_named_and_described(exported):
    model, paths = exported
    assert sorted(paths) == sorted(ALL)
    info = describe(model)
    for variant, path in paths.items():
        assert path.name == f"model_{variant}.tflite"
        desc = read_description(path)
        assert desc["variant"] == variant
        assert desc["fingerprint"] == info["fingerprint"] and desc["layout"] == info["layout"]
        assert desc["input_size"] == SIZE and desc["bits"] == 32
    io = read_description(paths["int8_io"])
    assert (io["input_dtype"], io["output_dtype"]) == ("uint8", "int8")
    assert io["input_quantization"] == {"scale": 1.0, "zero_point": 0}  # pixels pass unchanged
    assert io["conversion"]["representative_count"] == 32
    assert read_description(paths["int8"])["input_dtype"] == "float32"


def test_builtin_ops_only(exported):
    _, paths = exported
    for path in paths.values():
        ops = check_builtin_only(path.read_bytes())
        assert "CONV_2D" in ops and not any(op.startswith("CUSTOM") for op in ops)
    assert "QUANTIZE" not in list_ops(paths["fp32"].read_bytes())


def test_builtin_check_refuses_flex_ops(tmp_path):
    import tensorflow as tf

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([3, 3], tf.float32)])
        def __call__(self, x):
            return tf.linalg.inv(x)  # MatrixInverse: a TensorFlow kernel, no TFLite built-in

    module = Model()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.__call__.get_concrete_function()],
                                                                module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    with pytest.raises(ValueError, match="CUSTOM:Flex"):
        check_builtin_only(converter.convert())


def test_int8_file_is_under_a_third_of_fp32(exported):
    _, paths = exported
    fp32 = paths["fp32"].stat().st_size
    assert paths["int8"].stat().st_size <= 0.3 * fp32
    assert paths["int8_io"].stat().st_size <= 0.3 * fp32


def test_float_head_keeps_projection_in_float(exported):
    from ai_edge_litert import schema_py_generated as schema

    _, paths = exported
    for variant, expect in (("int8", schema.TensorType.INT8), ("int8_fhead", schema.TensorType.FLOAT32)):
        model = schema.ModelT.InitFromPackedBuf(bytearray(paths[variant].read_bytes()), 0)
        types = {t.name.decode(): t.type for t in model.subgraphs[0].tensors}
        heads = [ty for name, ty in types.items() if "hash_head" in name and name.endswith("MatMul1")]
        assert heads and all(ty == expect for ty in heads), (variant, heads)


def test_integer_variants_need_representative_images(tmp_path):
    with pytest.raises(ValueError, match="representative"):
        convert.convert_saved_model(tmp_path, "int8", representative=None)
    with pytest.raises(ValueError, match="uint8"):
        quantize.check_images(np.zeros((2, SIZE, SIZE, 3), np.float32), SIZE)


def _flat_png(path, value):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 20, 3), value, np.uint8)).save(path)


def test_calibration_from_folders_keeps_the_test_split_out_and_reads_any_depth(tmp_path):
    for i in range(3):
        for cls in ("cat", "dog"):
            _flat_png(tmp_path / "split" / "train" / cls / f"{i}.png", 10)
            _flat_png(tmp_path / "split" / "test" / cls / f"{i}.png", 200)
        _flat_png(tmp_path / "photos" / "2023" / "07" / "trip" / f"{i}.png", 50)  # deeper than any class layout
    images = quantize.representative_images(f"folder:{tmp_path / 'split'}", 10, SIZE)
    assert images.shape == (6, SIZE, SIZE, 3) and np.all(images == 10)
    images = quantize.representative_images(f"folder:{tmp_path / 'photos'}", 10, SIZE)
    assert images.shape == (3, SIZE, SIZE, 3) and np.all(images == 50)


def test_cli_convert_and_missing_rep_data(tmp_path, data, capsys):
    from export.__main__ import main

    model = build_model(backbone="small_cnn", layout="plain16", image_size=SIZE)
    model.save(tmp_path / "m.keras")
    with pytest.raises(SystemExit, match="--rep-data"):
        main(["convert", "--model", str(tmp_path / "m.keras"), "--variant", "int8", "--out", str(tmp_path)])
    main(["convert", "--model", str(tmp_path / "m.keras"), "--variant", "fp32", "--out", str(tmp_path / "o")])
    assert "model_fp32.tflite" in capsys.readouterr().out
    codes = TFLiteEncoder(tmp_path / "o" / "model_fp32.tflite").encode(data.x[:4])
    np.testing.assert_allclose(codes, encode(model, data.x[:4]), atol=1e-5)


def test_parity_report_counts(exported, data, tmp_path):
    from export.parity import parity_report
    from export.report import write_json, write_parity_markdown

    model, paths = exported
    result = parity_report(model, [paths["fp32"], paths["int8"]], data, n_query=20, n_db=60)
    fp32, int8 = result["variants"]
    assert fp32["bit_agreement"]["all"] == 1.0 and fp32["map"] == result["keras"]["map"]
    n_bits = (20 + 60) * 32
    assert sum(fp32["flips"]["all"]) == n_bits and sum(fp32["flips"]["flipped"]) == 0
    flipped = sum(int8["flips"]["flipped"])
    assert flipped == round((1 - int8["bit_agreement"]["all"]) * n_bits)
    assert set(int8["bit_agreement"]) == {"all", "coarse", "fine"}
    write_json(tmp_path / "p.json", {"command": "c", "date": "d", "machine": "m", **result})
    write_parity_markdown(tmp_path / "p.md", [json.loads((tmp_path / "p.json").read_text())])
    assert "model_int8.tflite" in (tmp_path / "p.md").read_text()


def test_parity_refuses_files_of_another_model(exported, data):
    from export.parity import parity_report

    _, paths = exported
    other = build_model(backbone="small_cnn", layout="mg32", image_size=SIZE)
    with pytest.raises(ValueError, match="another model"):
        parity_report(other, [paths["fp32"]], data, n_query=4, n_db=8)
