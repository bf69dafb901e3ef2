import numpy as np
import pytest

import keras

from mghash_tf.model.backbones import build_backbone, stage_layers
from mghash_tf.model.layers import HashHead, PixelPreprocessing, SpatialAttentionPooling
from mghash_tf.core.layout import get_layout
from mghash_tf.model import build_model, describe, encode, get_layout_of, set_backbone_trainable
from mghash_tf.core.index.packing import pack_bits

WEIGHTS = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def _pixels(n=4, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype("float32")


def test_attention_pooling_hand_value():
    layer = SpatialAttentionPooling()
    feats = np.ones((1, 2, 2, 3), np.float32) * np.array([1.0, 2.0, 4.0], np.float32)
    layer.build(feats.shape)
    layer.score.set_weights([np.zeros((1, 1, 3, 1), np.float32), np.zeros((1,), np.float32)])
    # zero scores -> A = sigmoid(0) = 0.5 everywhere -> GAP(F * 0.5) = 0.5 * channel value
    np.testing.assert_allclose(layer(feats), [[0.5, 1.0, 2.0]], rtol=1e-6)


def test_attention_pooling_returns_map():
    layer = SpatialAttentionPooling(return_attention=True)
    pooled, att = layer(np.random.rand(2, 5, 5, 7).astype("float32"))
    assert pooled.shape == (2, 7) and att.shape == (2, 5, 5, 1)
    assert float(keras.ops.min(att)) > 0 and float(keras.ops.max(att)) < 1


@pytest.mark.parametrize("layer", [
    SpatialAttentionPooling(return_attention=True, name="a"),
    HashHead(get_layout("scales").to_dict(), name="h"),
    PixelPreprocessing(24, "symmetric", name="p"),
])
def test_get_config_round_trip(layer):
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_hash_head_segments_read_their_stages():
    head = HashHead(get_layout("scales").to_dict())
    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(2, d)).astype("float32") for d in (4, 5, 6)]
    base = np.asarray(head(feats))
    bumped = [feats[0] + 1.0, feats[1], feats[2]]
    diff = np.abs(np.asarray(head(bumped)) - base).max(axis=0)
    layout = get_layout("scales")
    # changing the low stage moves the 'low' and 'fused' segments only
    assert diff[layout.slice("low")].min() > 0 and diff[layout.slice("fused")].min() > 0
    assert diff[layout.slice("mid")].max() == 0 and diff[layout.slice("high")].max() == 0
    assert base.shape == (2, 64) and np.abs(base).max() < 1


def test_preprocessing_normalisations():
    x = np.full((1, 4, 4, 3), 255.0, np.float32)
    assert float(keras.ops.max(PixelPreprocessing(4, "unit")(x))) == pytest.approx(1.0)
    assert float(keras.ops.max(PixelPreprocessing(4, "symmetric")(x))) == pytest.approx(1.0)
    resized = PixelPreprocessing(8, "none")(x)
    assert tuple(resized.shape) == (1, 8, 8, 3)
    caffe = np.asarray(PixelPreprocessing(4, "caffe")(np.zeros((1, 4, 4, 3), np.float32)))
    np.testing.assert_allclose(caffe[0, 0, 0], [-103.939, -116.779, -123.68], rtol=1e-6)
    with pytest.raises(ValueError, match="normalisation"):
        PixelPreprocessing(4, "imagenet")


@pytest.mark.parametrize("layout,bits", [("mg64", 64), ("scales", 64), (16, 16), ("plain32", 32)])
def test_model_output_shapes(layout, bits):
    model = build_model(backbone="small_cnn", layout=layout, image_size=16)
    codes = encode(model, _pixels())
    assert codes.shape == (4, bits) and np.abs(codes).max() < 1
    assert get_layout_of(model).bits == bits


def test_model_resizes_inside():
    model = build_model(backbone="small_cnn", layout=16, image_size=32, input_size=16)
    assert model.input_shape == (None, 16, 16, 3)
    assert encode(model, _pixels(size=16)).shape == (4, 16)


def test_keras_save_load_identical_codes(tmp_path):
    model = build_model(backbone="small_cnn", layout="mg64", image_size=16)
    x = _pixels()
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: layers are registered
    np.testing.assert_array_equal(encode(model, x), encode(loaded, x))
    assert describe(loaded) == describe(model)
    np.testing.assert_array_equal(pack_bits(encode(model, x)), pack_bits(encode(loaded, x)))


def test_uint8_and_float_pixels_agree():
    model = build_model(backbone="small_cnn", layout=16, image_size=16)
    x = _pixels()
    np.testing.assert_array_equal(encode(model, x.astype(np.uint8)), encode(model, x))


def test_describe_fields():
    model = build_model(backbone="small_cnn", layout="mg64", image_size=16)
    d = describe(model)
    assert d["bits"] == 64 and d["backbone"] == "small_cnn" and d["input_size"] == 16
    assert len(d["fingerprint"]) == 16 and d["layout"]["segments"][0]["name"] == "coarse"


def test_freeze_keeps_batchnorm_frozen():
    model = build_model(backbone="small_cnn", layout=16, image_size=16)
    set_backbone_trainable(model, False)
    assert not model.get_layer("backbone").trainable_weights
    set_backbone_trainable(model, True)
    net = model.get_layer("backbone")
    assert net.trainable_weights
    assert all(not l.trainable for l in net.layers if isinstance(l, keras.layers.BatchNormalization))


def test_mobilenet_v2_stages_are_strides_8_16_32():
    net = build_backbone("mobilenet_v2", 96, weights=None)
    assert [o.shape[1] for o in net.outputs] == [12, 6, 3]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_v2_b0", "resnet50"])
def test_application_backbones_strides(name):
    net = build_backbone(name, 96, weights=None)
    assert [o.shape[1] for o in net.outputs] == [12, 6, 3]


def test_backbone_errors(tmp_path):
    with pytest.raises(ValueError, match="backbone"):
        build_backbone("vgg16", 32)
    with pytest.raises(ValueError, match="weights"):
        build_backbone("mobilenet_v2", 96, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match="from scratch"):
        build_backbone("small_cnn", 32, weights="imagenet")
    with pytest.raises(ValueError, match="three resolution levels"):
        stage_layers(_two_level_net(), 8)


def _two_level_net():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    return keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same")(x))


def test_pretrained_mobilenet_v2_from_shared_file(shared_dir):
    path = shared_dir / "weights" / WEIGHTS
    if not path.exists():
        pytest.skip(f"ImageNet weights not present at ../shared/weights/{WEIGHTS}")
    model = build_model(backbone="mobilenet_v2", layout=16, image_size=96, input_size=32, weights=str(path))
    net = model.get_layer("backbone")
    kernel = net.get_layer("Conv1").kernel
    # pretrained first-layer kernels are far from the Glorot init's tiny spread around zero
    assert float(keras.ops.std(kernel)) > 0.1
    assert encode(model, _pixels(size=32)).shape == (4, 16)
