"""Label-free codes: the loss by hand, the config rules, unlabelled folders, and training that
beats the untrained head on data with hidden clusters."""

import logging
import math

import numpy as np
import pytest
from PIL import Image

from mghash_tf.core.metrics import mean_average_precision
from mghash_tf.data import load_source
from mghash_tf.model import unsupervised_loss as ul
from mghash_tf.training.config import TrainConfig

UNSUP = dict(labels="none", weights="w.h5", stage1_cache="heads")


def _np(x):
    return np.asarray(x, dtype=np.float32)


def test_nt_xent_hand_value():
    # Each of the 4 rows: positive at cosine 1, the other item's two codes at cosine 0, temperature 1:
    # -log(e / (e + 2)) = log(1 + 2/e) = 0.55144.
    h = _np([[1, 0], [0, 1]])
    assert float(ul.nt_xent_loss(h, h, temperature=1.0)) == pytest.approx(math.log(1 + 2 / math.e), abs=1e-5)
    # Temperature 0.5 doubles the logits: log(1 + 2/e^2) = 0.23954.
    assert float(ul.nt_xent_loss(h, h, temperature=0.5)) == pytest.approx(math.log(1 + 2 / math.e ** 2), abs=1e-5)


def test_nt_xent_prefers_matching_views():
    a = _np([[1, 1, -1], [-1, 1, 1], [1, -1, 1]])
    assert float(ul.nt_xent_loss(a, a)) < float(ul.nt_xent_loss(a, a[[1, 2, 0]]))


def test_affinity_and_feature_cosine_hand_values():
    # Codes [1, 1] and [1, -1]: inner product / K = 0; target 0.5 -> (0 - 0.5)^2 = 0.25 on both ordered pairs.
    h = _np([[1, 1], [1, -1]])
    target = _np([[1, 0.5], [0.5, 1]])
    assert float(ul.affinity_loss(h, target)) == pytest.approx(0.25, abs=1e-6)
    # Features [3, 4] and [4, 3]: cosine = 24 / 25 = 0.96.
    np.testing.assert_allclose(ul.feature_affinity(_np([[3, 4], [4, 3]])), [[1, 0.96], [0.96, 1]], atol=1e-6)


def test_loss_object_sums_its_terms():
    # plain8 layout, one segment, view 2 = view 1; rows [+1 x4, -1 x4] and [-1 x4, +1 x4] (cosine -1),
    # features [3, 4] and [4, 3] (cosine 0.96); no quantisation or balance term.
    h = np.where(np.arange(8) < 4, 1.0, -1.0).astype(np.float32)
    h = np.stack([h, -h])
    loss = ul.UnsupervisedHashingLoss(8, loss="contrastive+affinity", temperature=0.5, affinity_weight=0.5, quantization_weight=0.0,
                                      balance_weight=0.0)
    y_pred = np.concatenate([h, h], axis=1)
    features = _np([[3, 4], [4, 3]])
    # Cosine -1 between the items: each row's candidates are its positive (cos 1) and the other
    # item twice (cos -1): -log(e^2 / (e^2 + 2 e^-2)) = log(1 + 2 e^-4).
    contrastive = math.log(1 + 2 * math.exp(-4))
    affinity = (-1 - 0.96) ** 2
    assert float(loss(features, y_pred)) == pytest.approx(contrastive + 0.5 * affinity, abs=1e-5)
    assert ul.UnsupervisedHashingLoss.from_config(loss.get_config()).get_config() == loss.get_config()


def test_config_round_trip_with_the_new_fields(tmp_path):
    config = TrainConfig(backbone="mobilenet_v2", **UNSUP, unsupervised_loss="contrastive+affinity",
                         contrastive_temperature=0.3, affinity_weight=2.0, feature_dropout=0.1,
                         unsupervised_views=3)
    config.to_json(tmp_path / "c.json")
    assert TrainConfig.from_json(tmp_path / "c.json") == config
    assert TrainConfig().labels == "auto"


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels="none"), r"`labels='none'` .* needs `weights`.*Received: weights=None, stage1_cache='none'"),
    (dict(labels="none", weights="w.h5"), r"Received: weights='w.h5', stage1_cache='none'"),
    (dict(UNSUP, finetune_epochs=2), r"finetune_epochs=0. Received: finetune_epochs=2"),
    (dict(labels="hidden"), r"`labels` must be one of \('auto', 'none'\). Received: labels='hidden'"),
    (dict(UNSUP, unsupervised_loss="csq"), r"`unsupervised_loss` must join .*Received: unsupervised_loss='csq'"),
    (dict(UNSUP, contrastive_temperature=0.0), r"Received: contrastive_temperature=0.0"),
    (dict(UNSUP, feature_dropout=1.0), r"Received: feature_dropout=1.0"),
    (dict(UNSUP, unsupervised_views=0), r"`unsupervised_views` must be .*Received: unsupervised_views=0"),
    (dict(UNSUP, unsupervised_views=17), r"at most 16. Received: unsupervised_views=17"),
])
def test_config_refuses_bad_values_with_the_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def _photo(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (value, 255 - value, 60)).save(path)


def test_unlabelled_folder_of_any_depth_switches_with_its_message(tmp_path, caplog):
    _photo(tmp_path / "a.jpg", 10)
    _photo(tmp_path / "2023" / "b.png", 50)
    _photo(tmp_path / "2023" / "07" / "trip" / "c.jpg", 90)
    (tmp_path / "2023" / "notes.txt").write_text("not a photo")
    with caplog.at_level(logging.WARNING, logger="mghash_tf"):
        s = load_source(f"folder:{tmp_path}", image_size=8)
    assert not s.labelled and len(s) == 3 and list(s.y_fine) == [0, 0, 0]
    assert [p.split(str(tmp_path))[1] for p in s.paths] == ["/2023/07/trip/c.jpg", "/2023/b.png", "/a.jpg"]
    assert any("image files lie directly in the folder" in r.getMessage() for r in caplog.records)


def test_labels_none_reads_a_class_folder_without_labels(tmp_path):
    for cls in ("cat", "dog"):
        _photo(tmp_path / cls / "0.png", 30)
    assert load_source(f"folder:{tmp_path}", image_size=8).labelled
    s = load_source(f"folder:{tmp_path}", image_size=8, labels="none")
    assert not s.labelled and len(s) == 2
    with pytest.raises(ValueError, match=r"`labels` must be one of \('auto', 'none'\). Received: labels='bad'"):
        load_source(f"folder:{tmp_path}", image_size=8, labels="bad")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no readable image file"):
        load_source(f"folder:{tmp_path / 'empty'}", image_size=8, labels="none")


def test_train_on_an_unlabelled_folder_switches_to_labels_none(tmp_path, mobilenet_weights, caplog):
    from mghash_tf.training.train import train

    rng = np.random.default_rng(0)
    for i in range(40):
        _photo(tmp_path / "photos" / ("" if i % 2 else "deep/er") / f"{i}.png", int(rng.integers(0, 255)))
    config = TrainConfig(data=f"folder:{tmp_path / 'photos'}", backbone="mobilenet_v2", weights=mobilenet_weights,
                         image_size=32, layout="plain16", stage1_cache="heads", frozen_epochs=2, batch_size=8)
    with caplog.at_level(logging.WARNING, logger="mghash_tf"):
        result = train(config, tmp_path / "run", verbose=0)
    assert any("training without labels" in r.getMessage() for r in caplog.records)
    assert result.metrics["labels"] == "none" and "val" not in result.metrics
    assert TrainConfig.from_json(tmp_path / "run" / "config.json").labels == "none"
    assert len(result.metrics["history"]["loss"]) == 2 and (tmp_path / "run" / "model.keras").is_file()
    with pytest.raises(ValueError, match=r"has no labels .*needs `weights`"):
        train(config.replace(weights=None, stage1_cache="none"), tmp_path / "run2", verbose=0)


def _clusters(n_per=48, clusters=4, seed=0):
    """Hidden clusters: each a colour with a texture, images 32 px; labels kept for measuring only."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(40, 215, (clusters, 3))
    y = np.repeat(np.arange(clusters), n_per)
    x = centres[y][:, None, None, :] + rng.normal(0, 30, (len(y), 32, 32, 3))
    return np.clip(x, 0, 255).astype("uint8"), y


def test_label_free_training_beats_the_untrained_head_on_hidden_clusters():
    import keras

    from mghash_tf.model import build_model
    from mghash_tf.training import cached, unsupervised

    keras.utils.set_random_seed(3)
    model = build_model(backbone="small_cnn", layout="plain16", image_size=32)
    split = cached.split_model(model)
    x, y = _clusters()
    arrays, gap = cached.extract(split.trunk, x, views=("identity", "hflip"))

    def hidden_label_map():
        codes = np.sign(cached.predict_cached(split.head, arrays))
        return mean_average_precision(codes, codes, y, y)

    before = hidden_label_map()
    config = TrainConfig(layout="plain16", frozen_epochs=15, batch_size=32, learning_rate=3e-3, **UNSUP)
    result = unsupervised.train_unsupervised_head(split, arrays, unsupervised.affinity_targets(gap[0]), config,
                                                  verbose=0)
    after = hidden_label_map()
    assert result["history"]["loss"][-1] < result["history"]["loss"][0]
    assert after > before + 0.1, (before, after)


def test_centred_start_gives_unit_pre_activations_and_unsaturated_codes():
    import keras

    from mghash_tf.core.layout import STAGES
    from mghash_tf.model import build_model
    from mghash_tf.training import cached, unsupervised

    keras.utils.set_random_seed(4)
    model = build_model(backbone="small_cnn", layout="mg64", image_size=32)
    split = cached.split_model(model)
    x, _ = _clusters(n_per=32)
    arrays, _ = cached.extract(split.trunk, x, views=("identity",))
    unsupervised.centre_hash_projections(model, split, arrays, sample=len(x))
    feats = cached.predict_cached(split.features, arrays)
    widths = [int(t.shape[-1]) for t in model.get_layer("backbone").outputs]
    bounds = np.cumsum([0] + widths)
    head = model.get_layer("hash_head")
    for seg, dense in zip(head._segments, head.projections):
        # Brute force: the segment's input by slicing the concatenated pooled features by stage.
        seg_x = np.concatenate([feats[:, bounds[STAGES.index(s)]:bounds[STAGES.index(s) + 1]] for s in seg.stages], 1)
        kernel, bias = dense.get_weights()
        pre = seg_x.astype("float64") @ kernel + bias
        np.testing.assert_allclose(pre.mean(axis=0), 0.0, atol=1e-3)
        np.testing.assert_allclose(pre.std(axis=0), 1.0, rtol=1e-3)
    codes = cached.predict_cached(split.head, arrays)
    assert np.mean(np.abs(codes) > 0.99) < 0.05
    assert np.all(np.abs(np.sign(codes).mean(axis=0)) < 0.9)  # no bit is constant over the images


def test_view_names_add_numbered_augmentations():
    from mghash_tf.training.cached import view_names

    assert view_names(1) == ("identity",)
    assert view_names(2) == ("identity", "hflip")
    assert view_names(4) == ("identity", "hflip", "augment_1", "augment_2")


def test_augmented_views_are_seeded_per_image_and_stay_in_range():
    from mghash_tf.training.cached import augment_view

    x = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3)).astype("uint8")
    whole = augment_view(x, 1)
    assert whole.shape == x.shape and whole.dtype == np.float32
    assert whole.min() >= 0.0 and whole.max() <= 255.0
    # Keyed on (view number, image index): the same image gets the same view in any batch.
    np.testing.assert_array_equal(augment_view(x[2:5], 1, start=2), whole[2:5])
    np.testing.assert_array_equal(augment_view(x, 1), whole)
    assert not np.allclose(augment_view(x, 2), whole)
    assert not np.allclose(whole, x.astype("float32"))
    # A flat grey image stays flat under crop, mirror and grey; brightness/contrast scale it.
    flat = np.full((3, 8, 8, 3), 100, "uint8")
    out = augment_view(flat, 3)
    assert np.allclose(out, out[:, :1, :1, :1], atol=1e-3)
    # The range comes from the dtype, not from the batch: a dark uint8 batch is not clipped at 1.
    dark = augment_view(np.ones((8, 8, 8, 3), "uint8"), 1)
    assert dark.max() > 1.0 and dark.max() <= 1.4 + 1e-5


def test_pair_batches_draw_two_different_views_when_there_are_several():
    from mghash_tf.training.unsupervised import PairBatches

    views, n = 4, 64
    # Every cached value names its view, so a batch shows which views it drew.
    cached = [np.broadcast_to(np.arange(views, dtype="float16")[:, None, None], (views, n, 1)).copy()]
    batches = PairBatches(cached, np.zeros((n, 3), "float32"), batch_size=32, seed=0)
    seen = set()
    for i in range(len(batches)):
        (first, second), _ = batches[i]
        assert (first[:, 0] != second[:, 0]).all()
        seen |= {(int(a), int(b)) for a, b in zip(first[:, 0], second[:, 0])}
    assert {a for a, _ in seen} == set(range(views)) and {b for _, b in seen} == set(range(views))
