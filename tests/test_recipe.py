"""The fast training recipe: schedule, optimiser, Lookahead averaging, the OrthoHash term,
mixed precision and its float32 twin, flip TTA, the preset, and short fits that beat chance."""

import json

import keras
import numpy as np
import pytest

from mghash_tf.model import build_model, encode
from mghash_tf.model.losses import hash_centers, orthogonal_center_loss
from mghash_tf.model.saving import load_model
from mghash_tf.training import precision
from mghash_tf.training.callbacks import Lookahead
from mghash_tf.training.config import RECIPES, TrainConfig
from mghash_tf.training.optimizers import WarmupLinear, make_optimizer

from test_train import CHANCE_FINE, tiny_config, toy_set


@pytest.mark.parametrize("step, want", [(0, 0.0), (10, 0.5), (20, 1.0), (60, 0.5), (100, 0.0), (150, 0.0)])
def test_warmup_linear_values(step, want):
    # peak 1, 100 steps, 20 % warm-up: up 0 -> 1 over steps 0..20, down 1 -> 0 over 20..100.
    schedule = WarmupLinear(1.0, 100, warmup=0.2)
    assert float(schedule(step)) == pytest.approx(want, abs=1e-6)


def test_warmup_linear_round_trips_and_refuses_bad_values():
    schedule = WarmupLinear(0.2, 50, warmup=0.3)
    again = WarmupLinear.from_config(schedule.get_config())
    assert float(again(7)) == pytest.approx(float(schedule(7)))
    with pytest.raises(ValueError, match="warmup"):
        WarmupLinear(0.2, 50, warmup=1.0)


def test_sgd_optimiser_from_the_config():
    config = TrainConfig.preset("fast", data="toy")
    opt = make_optimizer(config, learning_rate=config.learning_rate, steps=100)
    assert isinstance(opt, keras.optimizers.SGD)
    assert opt.nesterov and opt.momentum == pytest.approx(0.85)
    assert float(opt.learning_rate) == pytest.approx(0.0)  # warm-up starts at 0
    assert isinstance(make_optimizer(tiny_config(), learning_rate=1e-3, steps=10), keras.optimizers.AdamW)


class _One(keras.Model):
    def __init__(self):
        super().__init__()
        self.w = self.add_weight(shape=(), initializer="zeros", name="w")


def test_lookahead_hand_computed_steps():
    # 2 epochs x 5 steps, every 5 steps, base 0.5: decay(5) = 0.5 * (5/10)**3 = 0.0625,
    # decay(10) = 0.5.
    model = _One()
    la = Lookahead(5, 2, every=5, base=0.5)
    la.set_model(model)
    la.on_train_begin()  # slow = 0
    la.on_epoch_begin(0)
    for step in range(5):
        model.w.assign(float(step + 1))  # live weight 5 at step 5
        la.on_train_batch_end(step)
    assert float(model.w) == pytest.approx(0.0625 * 0 + 0.9375 * 5)  # 4.6875, live restarts there
    la.on_epoch_end(0)  # same decay again at the epoch end: 0.0625 * 4.6875 + 0.9375 * 4.6875
    assert float(model.w) == pytest.approx(4.6875)
    la.on_epoch_begin(1)
    assert la.step == 5
    for step in range(5):
        model.w.assign(10.0)
        la.on_train_batch_end(step)
    assert float(model.w) == pytest.approx(0.5 * 4.6875 + 0.5 * 10.0)  # 7.34375


def test_lookahead_leaves_the_averaged_weights_in_the_trained_model(tmp_path):
    from mghash_tf.training.train import train

    config = tiny_config(weight_averaging="lookahead", frozen_epochs=3, mixed_precision="none")
    result = train(config, tmp_path, image_set=toy_set(), verbose=0)
    # best.weights.h5 was written at an epoch end, after averaging; the saved model holds it.
    reloaded = load_model(tmp_path)
    best = build_model(layout="mg32", image_size=16)
    best.load_weights(str(tmp_path / "best.weights.h5"))
    for a, b, c in zip(reloaded.get_weights(), best.get_weights(), result.model.get_weights()):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_lookahead_refuses_bad_arguments():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        Lookahead(0, 3)


def test_orthogonal_center_loss_hand_values():
    centers = np.array([[1.0, 1.0], [1.0, -1.0]])
    h = np.array([[1.0, 0.0]])
    # Equal cosines 1/sqrt(2): log 2, with or without smoothing.
    assert float(orthogonal_center_loss(h, np.array([0]), centers, scale=1.0, margin=0.0)) == pytest.approx(np.log(2))
    assert float(orthogonal_center_loss(h, np.array([0]), centers, scale=1.0, margin=0.0,
                                        label_smoothing=0.5)) == pytest.approx(np.log(2))
    # margin 0.5 lowers the true logit by 0.5: -log(e^-0.5 / (e^-0.5 + 1)) = log(1 + e^0.5).
    assert float(orthogonal_center_loss(h, np.array([0]), centers, scale=1.0, margin=0.5)) == pytest.approx(
        np.log(1 + np.exp(0.5)), rel=1e-5)


def test_orthogonal_center_loss_prefers_the_own_centre():
    centers = hash_centers(4, 16)
    labels = np.array([0, 1, 2, 3])
    at_centre = orthogonal_center_loss(0.9 * centers, labels, centers)
    wrong = orthogonal_center_loss(0.9 * centers[[1, 2, 3, 0]], labels, centers)
    assert float(at_centre) < float(wrong)


def test_preset_sets_values_and_keeps_overrides(tmp_path):
    config = TrainConfig.preset("fast", data="toy", learning_rate=0.1)
    assert config.recipe == "fast" and config.backbone == "fast_cnn" and config.loss == "ortho"
    assert config.learning_rate == 0.1
    assert all(getattr(config, k) == v for k, v in RECIPES["fast"].items() if k != "learning_rate")
    config.to_json(tmp_path / "c.json")
    assert TrainConfig.from_json(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match="recipe"):
        TrainConfig.preset("slow")


def test_cli_recipe_flag_then_overrides():
    from mghash_tf.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--out", "x", "--recipe", "fast", "--frozen-epochs", "3"])
    config = config_from_args(args)
    assert config.recipe == "fast" and config.optimizer == "sgd" and config.frozen_epochs == 3


def test_mixed_precision_settings(tmp_path):
    assert TrainConfig(mixed_precision=True).mixed_precision == "float16"  # configs from before
    assert TrainConfig(mixed_precision=False).mixed_precision == "none"
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="int8")
    assert precision.resolve("none") is None and precision.resolve("bfloat16") == "mixed_bfloat16"
    flags = tmp_path / "cpuinfo"
    flags.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert precision.cpu_has_bf16(flags)
    flags.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert not precision.cpu_has_bf16(flags)
    assert not precision.cpu_has_bf16(tmp_path / "absent")


def test_bfloat16_training_saves_a_float32_model_with_identical_codes(tmp_path):
    from mghash_tf.training.train import train

    data = toy_set()
    result = train(tiny_config(mixed_precision="bfloat16", frozen_epochs=2), tmp_path, image_set=data, verbose=0)
    assert json.loads((tmp_path / "metrics.json").read_text())["mixed_precision"] == "mixed_bfloat16"
    codes = encode(result.model, data.x)
    assert codes.dtype == np.float32
    reloaded = load_model(tmp_path)
    assert {layer.dtype_policy.name for layer in reloaded.layers} == {"float32"}
    np.testing.assert_array_equal(encode(reloaded, data.x), codes)
    # The same weights computed in bfloat16 give (nearly) the same bits.
    with precision.policy("bfloat16"):
        bf16 = build_model(layout="mg32", image_size=16)
    bf16.set_weights(reloaded.get_weights())
    agreement = np.mean(np.sign(encode(bf16, data.x)) == np.sign(codes))
    assert agreement > 0.95


def test_float32_twin_is_the_model_itself_in_float32():
    model = build_model(layout=16, image_size=16)
    assert precision.float32_twin(model, lambda: 1 / 0) is model


def test_tta_codes_are_the_mean_of_image_and_mirror():
    model = build_model(layout=16, image_size=16)
    images = toy_set().x[:8]
    want = [(model(im[None].astype("float32")) + model(im[None, :, ::-1].astype("float32"))) / 2 for im in images]
    got = encode(model, images, tta=True)
    np.testing.assert_allclose(got, np.concatenate([keras.ops.convert_to_numpy(w) for w in want]), atol=1e-5)
    assert not np.allclose(got, encode(model, images))


def test_fast_recipe_short_fit_beats_chance(tmp_path):
    from mghash_tf.training.train import train

    config = TrainConfig.preset("fast", data="toy", image_size=16, layout="mg32", frozen_epochs=4,
                                batch_size=16, val_fraction=0.2, val_database_size=64)
    result = train(config, tmp_path, image_set=toy_set(), verbose=0)
    assert result.metrics["test"]["map_fine"] > CHANCE_FINE + 0.3
    assert result.metrics["tta"] is True
    assert TrainConfig.from_json(tmp_path / "config.json").recipe == "fast"
