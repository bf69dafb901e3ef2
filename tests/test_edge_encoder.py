"""TFLiteEncoder: codes from int8_io agree with fp32, batching is invisible, flip TTA is the sign
of the mean of image and mirror, bad input is refused, and the device modules run where
TensorFlow and Keras cannot be imported."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mghash_tf.core import encoder as encoder_lib
from mghash_tf.core.encoder import TFLiteEncoder
from mghash_tf.core.index.packing import pack_bits, unpack_bits
from no_tf import no_tf_env

SIZE = 16
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images():
    from mghash_tf.data import demo_data_path, load_source

    x = load_source(f"npz:{demo_data_path()}", image_size=SIZE).x
    return x[np.random.default_rng(3).choice(len(x), 120, replace=False)]


@pytest.fixture(scope="module")
def models(tmp_path_factory, images):
    from export import convert
    from mghash_tf.model import build_model, encode

    model = build_model(backbone="small_cnn", layout="mg32", image_size=SIZE)
    spread = float(np.std(encode(model, images[:64])))  # see test_export.spread_codes
    for dense in model.get_layer("hash_head").projections:
        kernel, bias = dense.get_weights()
        dense.set_weights([kernel / spread, bias / spread])
    out = tmp_path_factory.mktemp("enc")
    return convert.convert_model(model, out, variants="fp32,int8_io", representative=images[:32])


def test_metadata_properties(models):
    enc = TFLiteEncoder(models["int8_io"])
    assert enc.input_size == SIZE and enc.bits == 32
    assert enc.layout.names == ("coarse", "fine") and enc.layout.slice("coarse") == slice(0, 8)
    assert enc.description["variant"] == "int8_io"


def test_int8_io_agrees_with_fp32_on_most_bits(models, images):
    fp32 = TFLiteEncoder(models["fp32"]).encode(images)
    int8 = TFLiteEncoder(models["int8_io"]).encode(images)
    assert int8.dtype == np.float32 and int8.shape == (len(images), 32)
    assert np.std(fp32) > 0.3
    assert ((int8 > 0) == (fp32 > 0)).mean() >= 0.85
    # Dequantised int8 output lies on the output grid: (q - zero_point) * scale.
    quant = TFLiteEncoder(models["int8_io"]).description["output_quantization"]
    steps = int8 / quant["scale"]
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)


def test_encode_bits_is_pack_of_encode(models, images):
    enc = TFLiteEncoder(models["int8_io"])
    bits = enc.encode_bits(images[:10])
    assert bits.dtype == np.uint64 and bits.shape == (10, 1)
    np.testing.assert_array_equal(bits, pack_bits(enc.encode(images[:10])))


def test_batching_does_not_change_codes(models, images):
    whole = TFLiteEncoder(models["fp32"], batch_size=64).encode(images[:37])
    small = TFLiteEncoder(models["fp32"], batch_size=5, num_threads=1).encode(images[:37])
    single = np.concatenate([TFLiteEncoder(models["fp32"]).encode(images[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(whole, small, atol=1e-6)
    np.testing.assert_allclose(whole[:3], single, atol=1e-6)


@pytest.mark.parametrize("variant", ["fp32", "int8_io"])
def test_tta_bits_are_the_sign_of_the_mean_of_image_and_mirror(models, images, variant):
    enc = TFLiteEncoder(models[variant], batch_size=7)  # 7: TTA runs across batch boundaries
    x = images[:20]
    # By hand through the plain path: the mirror reverses W (axis 2 of NHWC).
    mean = (enc.encode(x) + enc.encode(x[:, :, ::-1])) / 2
    relaxed = enc.encode(x, tta=True)
    np.testing.assert_allclose(relaxed, mean, atol=1e-6)
    bits = enc.encode_bits(x, tta=True)
    np.testing.assert_array_equal(bits, pack_bits(mean))
    np.testing.assert_array_equal(unpack_bits(bits, enc.bits), (mean > 0).astype(np.uint8))
    assert not np.allclose(relaxed, enc.encode(x))  # the mirror does change the relaxed codes


def test_tta_leaves_a_mirror_symmetric_image_unchanged(models, images):
    half = images[:6, :, :SIZE // 2]
    symmetric = np.ascontiguousarray(np.concatenate([half, half[:, :, ::-1]], axis=2))
    np.testing.assert_array_equal(symmetric, symmetric[:, :, ::-1])
    for variant in ("fp32", "int8_io"):
        enc = TFLiteEncoder(models[variant])
        np.testing.assert_allclose(enc.encode(symmetric, tta=True), enc.encode(symmetric), atol=1e-6)
        np.testing.assert_array_equal(enc.encode_bits(symmetric, tta=True), enc.encode_bits(symmetric))


def test_refuses_bad_images_and_options(models, images):
    enc = TFLiteEncoder(models["fp32"])
    with pytest.raises(ValueError, match="uint8"):
        enc.encode(images.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(N, 16, 16, 3\)"):
        enc.encode(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        TFLiteEncoder(models["fp32"], batch_size=0)
    with pytest.raises(TypeError, match="Received: tta='yes'"):
        enc.encode(images[:2], tta="yes")


def test_refuses_corrupt_model(models, tmp_path):
    data = bytearray(models["fp32"].read_bytes())
    data[len(data) // 3] ^= 0x10
    (tmp_path / "bad.tflite").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        TFLiteEncoder(tmp_path / "bad.tflite")


def test_runtime_fallback_and_missing_runtime(monkeypatch):
    fake = type(sys)("tflite_runtime.interpreter")
    fake.Interpreter = object
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", type(sys)("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    assert encoder_lib.interpreter_class() is object
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(ImportError, match="pip install ai-edge-litert"):
        encoder_lib.interpreter_class()



DEVICE_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    try:
        import tensorflow
    except ImportError:
        pass
    else:
        raise SystemExit("the TensorFlow block is not active")
    from mghash_tf.core.description import read_description
    from mghash_tf.core.encoder import TFLiteEncoder
    from mghash_tf.core.index.packing import pack_bits
    path = sys.argv[1]
    enc = TFLiteEncoder(path)
    x = np.random.default_rng(0).integers(0, 256, (4, enc.input_size, enc.input_size, 3), dtype=np.uint8)
    bits = enc.encode_bits(x)
    mean = (enc.encode(x) + enc.encode(x[:, :, ::-1])) / 2
    assert (enc.encode_bits(x, tta=True) == pack_bits(mean)).all()
    assert read_description(path)["variant"] == "int8_io"
    assert not any(m.split(".")[0] in ("tensorflow", "keras") for m in sys.modules)
    print("ok", bits.shape, bits.dtype)
""")


def test_device_modules_run_without_tensorflow(models, tmp_path):
    env = no_tf_env(tmp_path, REPO)
    result = subprocess.run([sys.executable, "-c", DEVICE_SCRIPT, str(models["int8_io"])], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok (4, 1) uint64" in result.stdout
