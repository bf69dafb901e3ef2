"""Cached-trunk training: the split model is the full model, and training on the cache trains it."""

import numpy as np
import pytest

from mghash_tf.training import cached
from mghash_tf.training.config import TrainConfig
from mghash_tf.model import build_model, encode


def _model():
    import keras

    keras.utils.set_random_seed(3)
    return build_model(backbone="small_cnn", layout="mg32", image_size=32)


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    # Class-dependent colour so a few epochs can learn something.
    x = (rng.integers(0, 60, (n, 32, 32, 3)) + 50 * np.eye(4)[y][:, None, None, :3] * 3).clip(0, 255)
    return x.astype("uint8"), np.stack([y, y // 2], axis=1)


@pytest.mark.parametrize("train_stages", [0, 1, 2])
def test_split_head_on_cache_equals_full_model(train_stages):
    model = _model()
    split = cached.split_model(model, train_stages=train_stages)
    assert split.num_cached == 3 - train_stages
    assert (split.tail is not None) == (train_stages > 0)
    x, _ = _data(40)
    arrays, gap = cached.extract(split.trunk, x, views=("identity", "hflip"), batch_size=16, dtype="float32")
    assert [a.shape[:2] for a in arrays] == [(2, 40)] * split.num_cached
    assert gap.shape == (2, 40, 128)
    np.testing.assert_allclose(cached.predict_cached(split.head, arrays), encode(model, x), atol=1e-5)
    np.testing.assert_allclose(cached.predict_cached(split.head, arrays, view=1), encode(model, x[:, :, ::-1]),
                               atol=1e-5)
    # The frozen GAP is the mean of the high map, computed independently here.
    import keras

    high = keras.Model(model.inputs, model.get_layer("attention_high").input).predict(x.astype("float32"),
                                                                                      verbose=0)
    np.testing.assert_allclose(gap[0], high.mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)


def test_augmented_views_in_the_cache_equal_the_trunk_on_the_whole_augmented_set():
    model = _model()
    split = cached.split_model(model)
    x, _ = _data(10)
    # Batches of 3 seed each image by its index in the set: the same as augmenting all 10 at once.
    arrays, _ = cached.extract(split.trunk, x, views=("augment_2",), batch_size=3, dtype="float32")
    np.testing.assert_allclose(cached.predict_cached(split.head, arrays), encode(model, cached.augment_view(x, 2)),
                               atol=1e-5)


def test_float16_cache_keeps_the_signs():
    model = _model()
    split = cached.split_model(model)
    x, _ = _data(32)
    arrays, _ = cached.extract(split.trunk, x)
    assert arrays[0].dtype == np.float16
    agree = np.mean(np.sign(cached.predict_cached(split.head, arrays)) == np.sign(encode(model, x)))
    assert agree > 0.99


def test_train_head_trains_the_full_model_and_keeps_the_best_epoch():
    model = _model()
    before = [w.copy() for w in model.get_layer("hash_head").get_weights()]
    frozen_before = model.get_layer("backbone").get_weights()[0].copy()
    split = cached.split_model(model, train_stages=1)
    x, y = _data(128)
    arrays, _ = cached.extract(split.trunk, x, views=("identity", "hflip"))
    vx, vy = _data(48, seed=1)
    val, _ = cached.extract(split.trunk, vx)
    config = TrainConfig(frozen_epochs=3, batch_size=32, learning_rate=3e-3, layout="mg32")
    result = cached.train_head(split, arrays, y, val, vy, [a[:1] for a in arrays], y, config, verbose=0)
    history = result["history"]
    assert len(history["val_map_fine"]) == 3
    assert result["best_val_map_fine"] == pytest.approx(max(history["val_map_fine"]))
    assert result["best_epoch"] == int(np.argmax(history["val_map_fine"])) + 1
    assert not np.allclose(before[0], model.get_layer("hash_head").get_weights()[0])
    # Layers in front of the cut are untouched; the last stage trained (BN statistics kept).
    np.testing.assert_array_equal(frozen_before, model.get_layer("backbone").get_weights()[0])
    tail_bn = [layer for layer in split.tail.layers if layer.__class__.__name__ == "BatchNormalization"]
    assert tail_bn and not any(layer.trainable for layer in tail_bn)
    # The restored best weights are the full model's: the two paths still agree.
    np.testing.assert_allclose(cached.predict_cached(split.head, val), encode(model, vx), atol=1e-4)


def test_batches_draw_one_view_per_item_and_cover_the_epoch():
    n = 10
    arrays = [np.stack([np.arange(n), 100 + np.arange(n)]).astype("float16")[..., None]]
    labels = np.stack([np.arange(n), np.zeros(n, int)], axis=1)
    batches = cached.CachedBatches(arrays, labels, batch_size=3, seed=0)
    assert len(batches) == 3
    seen = []
    for i in range(len(batches)):
        (xs,), yb = batches[i]
        assert xs.dtype == np.float32
        ids = yb[:, 0]
        assert np.all((xs[:, 0] == ids) | (xs[:, 0] == ids + 100))
        seen += list(ids)
    assert len(set(seen)) == 9


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="train_stages"):
        cached.split_model(_model(), train_stages=3)
    split = cached.split_model(_model())
    with pytest.raises(ValueError, match="views"):
        cached.extract(split.trunk, np.zeros((2, 32, 32, 3), "uint8"), views=("rotate",))


def test_config_refuses_stage1_cache_without_pretrained_weights():
    with pytest.raises(ValueError, match="stage1_cache"):
        TrainConfig(stage1_cache="heads")
    with pytest.raises(ValueError, match="stage1_cache"):
        TrainConfig(stage1_cache="all", weights="w.h5")


def test_train_with_stage1_cache_writes_the_usual_outputs(tmp_path, mobilenet_weights):
    import csv
    import json

    from test_train import toy_set, tiny_config

    from mghash_tf.training.train import train

    config = tiny_config(backbone="mobilenet_v2", weights=mobilenet_weights, image_size=32, frozen_epochs=2,
                         finetune_epochs=1, stage1_cache="last_two_stages", augment=True)
    result = train(config, tmp_path, image_set=toy_set(size=32), verbose=0)
    for name in ("model.keras", "metrics.json", "log.csv", "best.weights.h5", "stage1.weights.h5"):
        assert (tmp_path / name).exists(), name
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["val_map_fine"] for r in rows)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["history"]["val_map_fine"]) == 3
    assert 0 <= metrics["test"]["map_fine"] <= 1
    # The saved model is the trained one: reloading gives the same codes.
    from mghash_tf.model.saving import load_model
    from mghash_tf.model import encode

    x = toy_set(size=32).x[:8]
    np.testing.assert_allclose(encode(load_model(tmp_path), x), encode(result.model, x), atol=1e-5)
