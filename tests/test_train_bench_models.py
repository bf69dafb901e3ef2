"""benchmarks/train_bench_models.py: the recipes per backbone and the BatchNorm re-estimation."""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import train_bench_models as tbm  # noqa: E402


def _args(**changes):
    args = tbm.parse_args(["--weights", "w.h5"])
    return SimpleNamespace(**{**vars(args), **changes})


def test_every_bench_backbone_has_a_recipe_matching_its_bench_row():
    from export.bench import DEFAULT_ROWS, LAYOUT_FOR_BITS

    assert sorted(tbm.BACKBONES) == sorted(r.backbone for r in DEFAULT_ROWS)
    for row in DEFAULT_ROWS:
        for bits in (16, 32, 64):
            config = tbm.recipe_for(row.backbone, bits, _args())
            # The bench matches trained models on (backbone, image_size, bits).
            assert (config.backbone, config.image_size, config.layout) == (row.backbone, row.image_size,
                                                                           LAYOUT_FOR_BITS[bits])
            assert (config.input_size or config.image_size) == row.input_size


def test_recipes_differ_where_the_backbones_do():
    args = _args()
    mnv2 = tbm.recipe_for("mobilenet_v2", 64, args)
    assert (mnv2.weights, mnv2.stage1_cache) == ("w.h5", "heads")
    assert tbm.recipe_for("fast_cnn", 64, args).recipe == "fast"
    for scratch in ("mobilenet_v3_small", "efficientnet_v2_b0", "small_cnn"):
        assert tbm.recipe_for(scratch, 64, args).weights is None
    assert tbm.recipe_for("small_cnn", 64, args).max_train == 10000
    assert tbm.recipe_for("efficientnet_v2_b0", 64, args).max_train == 2500
    assert tbm.recipe_for("efficientnet_v2_b0", 64, _args(max_train=500)).max_train == 500
    assert "from scratch" in tbm.describe_recipe(tbm.recipe_for("mobilenet_v3_small", 64, args))
    assert "ImageNet weights" in tbm.describe_recipe(mnv2)


def test_set_overrides_every_recipe_and_epochs_one_backbone():
    args = _args(set=tbm.parse_set(["quantization_weight=1.0", "batch_size=16"]), epochs={"small_cnn": 2})
    fast = tbm.recipe_for("fast_cnn", 16, args)
    assert (fast.quantization_weight, fast.batch_size) == (1.0, 16)
    assert tbm.recipe_for("efficientnet_v2_b0", 16, args).batch_size == 16
    assert tbm.recipe_for("small_cnn", 16, args).frozen_epochs == 2
    assert tbm.recipe_for("fast_cnn", 16, args).frozen_epochs == tbm.EPOCHS["fast_cnn"]
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        tbm.parse_set(["no_value"])


def test_batchnorm_reestimation_gives_the_mean_of_the_batch_statistics():
    import keras

    conv = keras.layers.Conv2D(2, 1, name="conv")
    bn = keras.layers.BatchNormalization(momentum=0.999, name="bn")
    inner = keras.Sequential([keras.Input((4, 4, 3)), conv, bn], name="inner")
    model = keras.Sequential([keras.Input((4, 4, 3)), inner])
    bn.trainable = False
    images = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3)).astype(np.uint8)

    assert tbm.reestimate_batchnorm(model, images, batch_size=4) == 1

    # Brute force: batches of 4, 4 and 2; per batch the channel mean and (biased) variance.
    features = np.asarray(conv(images.astype("float32")))
    batches = [features[0:4], features[4:8], features[8:10]]
    means = np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0)
    variances = np.mean([b.var(axis=(0, 1, 2)) for b in batches], axis=0)
    np.testing.assert_allclose(np.asarray(bn.moving_mean), means, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), variances, rtol=1e-4)
    assert (bn.momentum, bn.trainable) == (0.999, False)
