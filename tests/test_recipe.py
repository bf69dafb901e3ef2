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
from mghash_tf.training.callbacks import Lookahead, QuantizationRamp
from mghash_tf.training.config import RECIPES, TrainConfig
from mghash_tf.training.optimizers import ScaledSGD, WarmupLinear, batchnorm_offsets, make_optimizer

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


def test_scaled_sgd_scales_the_rate_of_named_variables_but_not_their_weight_decay():
    # One step, no momentum, rate 0.1, gradient 1 on both, weight decay 0.5, start at 2:
    # decay first, w <- w - lr * wd * w = 2 - 0.1 * 0.5 * 2 = 1.9, then w <- w - lr * scale * g:
    # plain 1.9 - 0.1 = 1.8; scaled by 4: 1.9 - 0.4 = 1.5.
    a = keras.Variable(2.0, name="a")
    b = keras.Variable(2.0, name="b")
    opt = ScaledSGD(learning_rate=0.1, weight_decay=0.5, scales={b.path: 4.0})
    opt.apply_gradients([(keras.ops.ones(()), a), (keras.ops.ones(()), b)])
    assert float(a.numpy()) == pytest.approx(1.8)
    assert float(b.numpy()) == pytest.approx(1.5)
    again = ScaledSGD.from_config(opt.get_config())
    assert again.scales == {b.path: 4.0}
    with pytest.raises(ValueError, match="scales"):
        ScaledSGD(scales={"x": 0.0})


def test_bias_lr_scale_reaches_every_batchnorm_offset_of_the_model():
    model = build_model(backbone="fast_cnn", layout=16, image_size=16)
    offsets = batchnorm_offsets(model)
    assert len(offsets) == 6 and all(v.path.endswith("beta") for v in offsets)  # 3 blocks x 2
    config = TrainConfig.preset("fast", data="toy", bias_lr_scale=64.0)
    opt = make_optimizer(config, learning_rate=0.1, steps=10, model=model)
    assert isinstance(opt, ScaledSGD) and opt.scales == {v.path: 64.0 for v in offsets}
    plain = make_optimizer(config.replace(bias_lr_scale=1.0), learning_rate=0.1, steps=10, model=model)
    assert not isinstance(plain, ScaledSGD)
    with pytest.raises(ValueError, match="bias_lr_scale"):
        TrainConfig(bias_lr_scale=64.0)  # adamw


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


def test_quantization_ramp_hand_values_and_resume():
    # start 0.1, final 1.0, 2 epochs x 5 steps: weight(step) = 0.1 + 0.9 * (step / 10) ** 3.
    variable = keras.Variable(0.1)
    ramp = QuantizationRamp(variable, 0.1, 1.0, 5, 2)
    ramp.on_epoch_begin(0)
    for _ in range(5):
        ramp.on_train_batch_begin(0)
    assert float(variable.numpy()) == pytest.approx(0.1 + 0.9 * 0.4 ** 3)  # the 5th batch reads step 4
    ramp.on_epoch_begin(1)  # a resumed stage starts at its epoch's first step
    ramp.on_train_batch_begin(0)
    assert float(variable.numpy()) == pytest.approx(0.1 + 0.9 * 0.5 ** 3)
    assert ramp.weight(10) == pytest.approx(1.0) and ramp.weight(25) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="weights >= 0"):
        QuantizationRamp(variable, -0.1, 1.0, 5, 2)
    with pytest.raises(ValueError, match="quantization_weight_final"):
        TrainConfig(quantization_weight_final=-1.0)


def test_the_loss_reads_the_quantization_weight_in_force():
    from mghash_tf.model.hashing_loss import HashingLoss

    loss = HashingLoss(16, {"fine": 2, "coarse": 2}, loss="csq", quantization_weight=0.0, balance_weight=0.0)
    labels = np.zeros((4, 2), np.int32)
    codes = np.full((4, 16), 0.5, np.float32)  # quantisation term: (|0.5| - 1)^2 = 0.25
    before = float(loss(labels, codes))
    loss.quantization_weight_now.assign(2.0)
    assert float(loss(labels, codes)) == pytest.approx(before + 2.0 * 0.25, rel=1e-5)
    assert loss.get_config()["quantization_weight"] == 0.0  # the configured start


def test_quantization_ramp_reaches_its_final_weight_in_training(tmp_path, monkeypatch):
    from mghash_tf.training import stages
    from mghash_tf.training.train import train

    seen = []
    real = stages.quantization_ramp

    def spy(loss, config, steps, stage):
        ramps = real(loss, config, steps, stage)
        seen.append((loss, ramps))
        return ramps

    monkeypatch.setattr(stages, "quantization_ramp", spy)
    train(tiny_config(frozen_epochs=2, quantization_weight_final=1.5), tmp_path, image_set=toy_set(), verbose=0)
    (loss, ramps), = seen
    assert len(ramps) == 1 and isinstance(ramps[0], QuantizationRamp)
    steps = ramps[0].total_steps  # the last batch reads step total - 1
    assert float(loss.quantization_weight_now.numpy()) == pytest.approx(ramps[0].weight(steps - 1))
    assert ramps[0].weight(steps - 1) > 0.1 + 0.5 * 1.4


def test_validation_every_n_epochs_counts_back_from_the_last(tmp_path):
    from mghash_tf.core.layout import get_layout
    from mghash_tf.training.callbacks import RetrievalValidation
    from mghash_tf.training.checkpoints import BestWeights, best_logged

    v = RetrievalValidation(None, [], None, [], get_layout("mg32"), every=3, final_epoch=9)
    assert [e for e in range(10) if v.due(e)] == [0, 3, 6, 9]
    logs = {}
    v.on_epoch_end(4, logs)  # skipped: NaN columns, no prediction made
    assert set(logs) == {"val_map_fine", "val_map_coarse", "val_map_seg_coarse", "val_map_seg_fine"}
    assert all(np.isnan(x) for x in logs.values())
    with pytest.raises(ValueError, match="every"):
        RetrievalValidation(None, [], None, [], get_layout("mg32"), every=0)
    best = BestWeights(None, _One())
    best.on_epoch_end(0, {"val_map_fine": 0.5})
    best.on_epoch_end(1, {"val_map_fine": float("nan")})
    assert best.best == 0.5 and best.best_epoch == 1
    (tmp_path / "log.csv").write_text("epoch,val_map_fine\n0,0.4\n1,nan\n2,NA\n3,0.45\n")
    (tmp_path / "best.weights.h5").write_bytes(b"")
    assert best_logged(tmp_path) == 0.45


def test_training_with_val_every_keeps_the_best_validated_epoch(tmp_path):
    import csv

    from mghash_tf.training.train import train

    train(tiny_config(frozen_epochs=3, val_every=2), tmp_path, image_set=toy_set(), verbose=0)
    with open(tmp_path / "log.csv", newline="") as f:
        values = [float(r["val_map_fine"]) for r in csv.DictReader(f)]
    assert len(values) == 3 and np.isnan(values[1]) and not np.isnan(values[0]) and not np.isnan(values[2])


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
